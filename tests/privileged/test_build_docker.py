"""The real docker CLI's legacy builder (DOCKER_BUILDKIT=0) against berthd's POST /build."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import Berthd, berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox

DOCKER = "/usr/local/bin/docker"


@pytest.fixture
def daemon(netns: NetNS) -> Iterator[tuple[Berthd, Path]]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        import_busybox(d.berth, work)
        ctx = work / "ctx"
        ctx.mkdir()
        yield d, ctx


def docker(d: Berthd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([DOCKER, "-H", d.host, *args], capture_output=True, text=True,
                       timeout=180, stdin=subprocess.DEVNULL,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(d.data_root),
                            "DOCKER_BUILDKIT": "0",
                            "DOCKER_CONFIG": str(d.data_root / "docker-cli")})
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}):\n{r.stdout}"
                             f"{r.stderr}\n--- berthd log:\n{d.log_text()[-3000:]}")
    return r


def test_docker_build_legacy_builder(daemon: tuple[Berthd, Path]) -> None:
    d, ctx = daemon
    (ctx / "app.sh").write_text("#!/bin/sh\necho \"app $MODE\"\n")
    (ctx / "app.sh").chmod(0o755)
    (ctx / "big.bin").write_bytes(b"\0" * 1000)
    (ctx / ".dockerignore").write_text("big.bin\n")
    (ctx / "Dockerfile.custom").write_text("""FROM busybox AS base
ARG MODE=dev
ENV MODE=$MODE
COPY app.sh /usr/bin/app
RUN test ! -e /big.bin && echo "built in $MODE"
FROM base AS unused
RUN exit 1
FROM base
EXPOSE 8080/tcp 53/udp
VOLUME /data
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=30s --timeout=3s --retries=2 CMD app || exit 1
SHELL ["/bin/sh", "-ec"]
ONBUILD RUN echo child
CMD ["app"]
""")
    iid = d.data_root / "iid"
    out = docker(d, "build", "-f", str(ctx / "Dockerfile.custom"), "-t", "web:1", "-t", "web:2",
                 "--build-arg", "MODE=prod", "--label", "team=core", "--iidfile", str(iid),
                 str(ctx))
    assert "Step 1/" in out.stdout and "built in prod" in out.stdout
    assert "Successfully tagged web:1" in out.stdout and "Successfully tagged web:2" in out.stdout
    assert iid.read_text().startswith("sha256:")
    assert docker(d, "run", "--rm", "web:2").stdout == "app prod\n"
    info = json.loads(docker(d, "image", "inspect", "web:1").stdout)[0]
    assert info["Id"] == iid.read_text()
    assert info["Config"]["Labels"]["team"] == "core"
    cfg = info["Config"]
    assert set(cfg["ExposedPorts"]) == {"8080/tcp", "53/udp"}
    assert set(cfg["Volumes"]) == {"/data"} and cfg["StopSignal"] == "SIGQUIT"
    assert cfg["Healthcheck"]["Test"] == ["CMD-SHELL", "app || exit 1"]
    assert cfg["Healthcheck"]["Interval"] == 30 * 10**9 and cfg["Healthcheck"]["Retries"] == 2
    assert cfg["Shell"] == ["/bin/sh", "-ec"] and cfg["OnBuild"] == ["RUN echo child"]
    assert cfg["Env"][-1] == "MODE=prod" and cfg["Cmd"] == ["app"]
    assert info["Config"]["Labels"]["dev.berth.dockerfile.digest"].startswith("sha256:")

    again = docker(d, "build", "-q", "-f", str(ctx / "Dockerfile.custom"), "--build-arg",
                   "MODE=prod", "--label", "team=core", "-t", "web:1", str(ctx))
    assert again.stdout.strip() == iid.read_text()   # all cached: the same image
    verbose = docker(d, "build", "-f", str(ctx / "Dockerfile.custom"), "--build-arg",
                     "MODE=prod", "--label", "team=core", str(ctx))
    assert "Using cache" in verbose.stdout

    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo broken && exit 7\n")
    bad = docker(d, "build", "-t", "broken:1", str(ctx), check=False)
    assert bad.returncode != 0
    assert "Dockerfile:2: RUN: The command '/bin/sh -c echo broken && exit 7' returned a " \
           "non-zero code: 7" in bad.stderr
    assert docker(d, "images", "-q", "broken").stdout == ""
    assert docker(d, "ps", "-aq").stdout == ""
