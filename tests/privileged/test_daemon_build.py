"""Trusted builds through berthd: `berth build` and `docker build` (legacy builder API),
the recorded provenance, and a signed provenance attestation in a registry."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import BERTH, Berthd, berth_workdir, start_berthd, start_registry_in
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox

DOCKER = "/usr/local/bin/docker"
DOCKERFILE = 'FROM busybox\nRUN echo built > /built\nCOPY data.txt /data.txt\n' \
             'CMD ["cat", "/built", "/data.txt"]\n'


@pytest.fixture
def setup(netns: NetNS) -> Iterator[tuple[Berthd, str, Path]]:
    with berth_workdir() as work:
        registry, address = start_registry_in(netns, work)
        try:
            with start_berthd(netns, work, "--insecure-registry", address) as d:
                import_busybox(d.berth, work)
                ctx = work / "ctx"
                ctx.mkdir()
                (ctx / "Dockerfile").write_text(DOCKERFILE)
                (ctx / "data.txt").write_text("context data\n")
                (ctx / "secret.txt").write_text("not for the image\n")
                (ctx / ".dockerignore").write_text("secret.txt\n")
                yield d, address, ctx
        finally:
            registry.terminate()
            registry.wait(timeout=20)


def test_berth_build_run_and_provenance(setup: tuple[Berthd, str, Path]) -> None:
    d, _, ctx = setup
    iid_file = ctx.parent / "iid"
    out = d.berth("build", "-t", "app:1", "--iidfile", str(iid_file), str(ctx)).stdout
    assert "Step 1/" in out and "Successfully tagged app:1" in out
    image_id = iid_file.read_text()
    assert d.berth("inspect", "-f", "{{.Id}}", "app:1").stdout.strip() == image_id
    assert d.berth("run", "--rm", "app:1").stdout == "built\ncontext data\n"
    ignored = d.berth("run", "--rm", "app:1", "cat", "/secret.txt", check=False)
    assert ignored.returncode != 0

    record = json.loads(d.berth("inspect", "--provenance", "app:1").stdout)
    prov = record["Provenance"]
    assert record["Id"] == image_id and prov["dockerfile"] == "Dockerfile"
    assert prov["base_images"][0][0] == "busybox"
    assert prov["dockerfile_digest"] == "sha256:" + hashlib.sha256(DOCKERFILE.encode()).hexdigest()

    # A second build of the same context comes from the cache: same image.
    again = d.berth("build", "-q", str(ctx)).stdout.strip()
    assert again == image_id

    missing = d.berth("build", str(ctx.parent / "nothere"), check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_docker_cli_build_through_berthd(setup: tuple[Berthd, str, Path]) -> None:
    d, _, ctx = setup
    r = subprocess.run([DOCKER, "-H", d.host, "build", "-t", "viadocker:1", str(ctx)],
                       capture_output=True, text=True, timeout=300,
                       env={"PATH": "/usr/bin:/bin", "DOCKER_BUILDKIT": "0",
                            "DOCKER_CONFIG": str(d.data_root / "docker-cli")})
    assert r.returncode == 0, r.stderr
    assert "Successfully tagged viadocker:1" in r.stdout
    assert d.berth("run", "--rm", "viadocker:1").stdout == "built\ncontext data\n"


def test_attest_then_verify_provenance_in_the_registry(setup: tuple[Berthd, str, Path],
                                                       netns: NetNS) -> None:
    d, registry, ctx = setup
    ref = f"{registry}/trusted/app:1"
    d.berth("build", "-t", ref, str(ctx))
    d.berth("push", ref)
    keys = ctx.parent / "keys"
    keys.mkdir()
    env = {**os.environ, "COSIGN_PASSWORD": "pw", "HOME": str(keys)}

    def berth_in_netns(*args: str) -> subprocess.CompletedProcess[str]:
        # Client-side verbs reach the registry themselves: run them in the test's netns.
        return subprocess.run(netns.argv(*BERTH, "-H", d.host, *args), capture_output=True,
                              text=True, timeout=120, env=env, cwd=keys,
                              stdin=subprocess.DEVNULL)

    made = subprocess.run([*BERTH, "generate-key-pair"], capture_output=True, text=True,
                          env=env, cwd=keys, timeout=60)
    assert made.returncode == 0, made.stderr
    attested = berth_in_netns("attest", "--key", str(keys / "cosign.key"),
                              "--allow-insecure-registry", ref)
    assert attested.returncode == 0, attested.stderr
    assert "Pushing provenance attestation" in attested.stdout

    verified = berth_in_netns("inspect", "--provenance", "--key", str(keys / "cosign.pub"),
                              "--allow-insecure-registry", ref)
    assert verified.returncode == 0, verified.stderr
    doc = json.loads(verified.stdout)
    assert doc["Digest"].startswith("sha256:") and doc["Statements"]

    other = subprocess.run([*BERTH, "generate-key-pair", "--output-key-prefix", "other"],
                           capture_output=True, text=True, env=env, cwd=keys, timeout=60)
    assert other.returncode == 0
    refused = berth_in_netns("inspect", "--provenance", "--key", str(keys / "other.pub"),
                             "--allow-insecure-registry", ref)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
