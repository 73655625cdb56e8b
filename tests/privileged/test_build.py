"""`berth build` against a real berthd: RUN steps in containers, the cache, multi-stage
builds, COPY/ADD semantics, and bad input that must leave nothing behind."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import BERTH, ROOT, Berthd, berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox


@pytest.fixture
def daemon(netns: NetNS) -> Iterator[tuple[Berthd, Path]]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        import_busybox(d.berth, work)
        ctx = work / "ctx"
        ctx.mkdir()
        yield d, ctx


def build(d: Berthd, ctx: Path, *args: str, check: bool = True) -> str:
    r = d.berth("build", *args, str(ctx), check=check, timeout=180)
    return r.stdout + r.stderr


def steps(output: str) -> dict[int, bool]:
    """Step number -> whether it was taken from the cache."""
    out: dict[int, bool] = {}
    for block in re.split(r"^Step ", output, flags=re.M)[1:]:
        n = int(block.split("/", 1)[0])
        out[n] = " ---> Using cache" in block
    return out


FIVE = """FROM busybox
ENV GREETING=hello
COPY name.txt /app/name.txt
RUN echo "$GREETING $(cat /app/name.txt)" > /app/greeting
RUN echo {marker} > /app/marker
CMD ["cat", "/app/greeting", "/app/marker"]
"""


def test_build_run_then_cache_hits_and_misses(daemon: tuple[Berthd, Path]) -> None:
    d, ctx = daemon
    (ctx / "name.txt").write_text("world\n")
    (ctx / "Dockerfile").write_text(FIVE.format(marker="one"))
    stale = d.data_root / "tmp" / "build-left-by-a-crash"
    stale.mkdir(parents=True)
    first = build(d, ctx, "-t", "app:1", "-t", "app:latest")
    assert not stale.exists()
    assert "Step 1/7 : FROM busybox" in first and "Successfully tagged app:1" in first
    assert not any(steps(first)[n] for n in range(2, 8))
    assert d.berth("run", "--rm", "app:1").stdout == "hello world\none\n"
    image = d.berth("inspect", "-f", "{{.Id}}", "app:latest").stdout.strip()
    # Each step's image is kept (the cache) but, as Docker's, hidden unless -a.
    assert len(d.berth("images", "-q").stdout.split()) == 2
    assert len(d.berth("images", "-aq").stdout.split()) == 7

    again = build(d, ctx, "-t", "app:1")
    assert all(steps(again)[n] for n in range(2, 8)), again
    assert d.berth("inspect", "-f", "{{.Id}}", "app:1").stdout.strip() == image

    # Changing one instruction rebuilds from there on only.
    (ctx / "Dockerfile").write_text(FIVE.format(marker="two"))
    changed = steps(build(d, ctx, "-t", "app:1"))
    assert [changed[n] for n in range(2, 8)] == [True, True, True, False, False, False]
    assert d.berth("run", "--rm", "app:1").stdout == "hello world\ntwo\n"

    # Changing what COPY reads rebuilds from the COPY.
    (ctx / "name.txt").write_text("berth\n")
    copied = steps(build(d, ctx, "-t", "app:1"))
    assert [copied[n] for n in range(2, 8)] == [True, False, False, False, False, False]
    assert d.berth("run", "--rm", "app:1").stdout == "hello berth\ntwo\n"

    fresh = steps(build(d, ctx, "--no-cache", "-t", "app:1"))
    assert not any(fresh[n] for n in range(2, 8))
    # RUN containers are gone.
    assert d.berth("ps", "-aq").stdout == ""


def test_multistage_copy_from_target_and_build_args(daemon: tuple[Berthd, Path]) -> None:
    d, ctx = daemon
    (ctx / "Dockerfile").write_text("""ARG BASE=busybox
FROM --platform=$BUILDPLATFORM ${BASE} AS builder
ARG VERSION=0.0
ARG TARGETARCH
RUN mkdir /out && echo "v$VERSION $TARGETARCH" > /out/version && echo secret > /out/.hidden
FROM scratch AS final
COPY --from=builder /out/version /version
COPY --from=0 /bin/busybox /bin/sh
COPY --from=builder /bin/cat /bin/cat
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /version"]
FROM builder AS debug
RUN echo debug > /out/debug
""")
    out = build(d, ctx, "--target", "final", "--build-arg", "VERSION=2.1", "-t", "small:1")
    assert "Step 11/11 : LABEL" in out and "echo debug" not in out  # stops at the target
    assert "ignored" not in out  # $BUILDPLATFORM is linux/amd64: nothing to say
    assert d.berth("run", "--rm", "small:1").stdout == "v2.1 amd64\n"
    # Only what was copied (the engine adds its mount points to the container, not the image).
    listing = set(d.berth("run", "--rm", "small:1", "ls /").stdout.split())
    assert listing - {"dev", "proc", "sys", "etc"} == {"bin", "version"}
    # busybox twice (sh, and cat: a symlink source is copied as its target, as Docker does)
    size = json.loads(d.berth("inspect", "small:1").stdout)[0]["Size"]
    assert 3_000_000 < size < 5_000_000
    dbg = build(d, ctx, "-t", "dbg:1")
    assert d.berth("run", "--rm", "dbg:1", "cat", "/out/version", "/out/debug").stdout == \
        "v0.0 amd64\ndebug\n"
    assert "[Warning]" not in dbg


def test_copy_add_semantics(daemon: tuple[Berthd, Path], netns: NetNS) -> None:
    d, ctx = daemon
    (ctx / "dir" / "sub").mkdir(parents=True)
    (ctx / "dir" / "a.txt").write_text("a")
    (ctx / "dir" / "sub" / "b.txt").write_text("b")
    (ctx / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (ctx / "run.sh").chmod(0o750)
    (ctx / "junk.tmp").write_text("junk")
    (ctx / ".dockerignore").write_text("*.tmp\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("pkg/README")
        info.size = 5
        info.uid = info.gid = 1000
        tar.addfile(info, io.BytesIO(b"hello"))
    (ctx / "pkg.tar.gz").write_bytes(buf.getvalue())
    (ctx / "Dockerfile").write_text("""FROM busybox
COPY dir /app/
COPY --chown=nobody:nogroup --chmod=0600 dir/a.txt /app/owned
COPY run.sh dir/*.txt /bin/
ADD pkg.tar.gz /opt/
COPY <<EOF /etc/motd
welcome $NAME
EOF
WORKDIR /work/deep
RUN rm /app/a.txt && touch made-here
RUN <<EOF
set -e
echo "from a heredoc" > /etc/heredoc
readlink /proc/self/ns/net > /etc/netns-none
EOF
RUN --network=host readlink /proc/self/ns/net > /etc/netns-host
RUN mkdir -p /usr/local/tools && ln -s /usr/local/tools /opt/tools
COPY run.sh /opt/tools/
ONBUILD RUN echo triggered > /tmp/onbuild
USER nobody
""")
    build(d, ctx, "-t", "sem:1")

    def sh(cmd: str, image: str = "sem:1") -> str:
        return d.berth("run", "--rm", "--user", "0", image, "sh", "-c", cmd).stdout

    assert sh("cat /app/sub/b.txt; ls /app") == "bowned\nsub\n"    # dir contents, whiteout
    assert sh("stat -c '%U:%G %a' /app/owned") == "nobody:nogroup 600\n"
    assert sh("stat -c '%a' /bin/run.sh; /bin/run.sh; cat /bin/a.txt") == "750\nran\na"
    assert sh("stat -c '%u %s' /opt/pkg/README") == "1000 5\n"      # ADD extracted the tar
    assert sh("cat /etc/motd") == "welcome \n"
    assert sh("pwd; ls") == "/work/deep\nmade-here\n"
    assert sh("stat -c %u made-here") == "0\n"  # RUN ran in a userns: ids shifted back
    assert sh("cat /etc/heredoc") == "from a heredoc\n"
    # COPY through a symlinked directory writes its target and keeps the link.
    assert sh("readlink /opt/tools; ls /usr/local/tools") == "/usr/local/tools\nrun.sh\n"
    # RUN has no network unless asked; --network=host shares the daemon's namespace.
    daemon_ns = f"net:[{os.stat(netns.path).st_ino}]\n"
    assert sh("cat /etc/netns-host") == daemon_ns
    assert sh("cat /etc/netns-none") != daemon_ns
    assert sh("ls /app/junk.tmp /junk.tmp 2>&1 | grep -c 'No such'") == "2\n"
    assert d.berth("run", "--rm", "sem:1", "id", "-u").stdout == "65534\n"
    # A child image runs the ONBUILD trigger right after its FROM.
    child = ctx / "child"
    child.mkdir()
    (child / "Dockerfile").write_text("FROM sem:1\nCMD [\"cat\", \"/tmp/onbuild\"]\n")
    out = build(d, child, "-t", "child:1")
    assert "# Executing 1 build trigger" in out
    assert d.berth("run", "--rm", "child:1").stdout == "triggered\n"


@pytest.mark.parametrize(("dockerfile", "message"), [
    ("FROM busybox\nRUN true\nRUN exit 3\n",
     "Dockerfile:3: RUN: The command '/bin/sh -c exit 3' returned a non-zero code: 3"),
    ("FROM busybox\n\nCOPY missing.txt /x\n",
     "Dockerfile:3: COPY: COPY failed: file not found in build context"),
    ("FROM busybox\nCOPY --from=nowhere /a /b\n",
     "Dockerfile:2: COPY: invalid from flag value nowhere"),
    ("FROM notpulled:1\n", "Dockerfile:1: FROM: image 'notpulled:1' is not in the image store"),
    ("FROM busybox\nRUN [\"/no/such/binary\"]\n", "Dockerfile:2: RUN: "),
    ("FROM busybox\nWHAT now\n", "Dockerfile:2: WHAT: unknown instruction"),
    ("FROM busybox\nUSER ghost\nRUN true\n", "Dockerfile:3: RUN: unable to find user ghost"),
    ("FROM busybox\nADD https://example.com/x.tgz /x\n",
     "Dockerfile:2: ADD: ADD https://example.com/x.tgz: remote URLs cannot be fetched"),
])
def test_bad_builds_fail_clearly_and_leave_nothing(daemon: tuple[Berthd, Path], dockerfile: str,
                                                   message: str) -> None:
    d, ctx = daemon
    (ctx / "Dockerfile").write_text(dockerfile)
    r = d.berth("build", "-t", "bad:1", str(ctx), check=False, timeout=120)
    assert r.returncode == 1
    assert message in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    assert d.berth("images", "-q", "bad").stdout == ""       # nothing tagged
    assert d.berth("ps", "-aq").stdout == ""                 # no container left
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(d.data_root) not in mounts and str(d.exec_root / "containers") not in mounts
    assert not list((d.data_root / "tmp").glob("build-*"))  # the context is gone


def test_bad_tag_is_refused_before_anything_runs(daemon: tuple[Berthd, Path]) -> None:
    d, ctx = daemon
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo ran > /x\n")
    r = d.berth("build", "-t", "good:1", "-t", "Bad Tag", str(ctx), check=False)
    assert r.returncode == 1 and "invalid tag 'Bad Tag'" in r.stderr
    assert "ran" not in r.stdout and "Step 1" not in r.stdout
    assert d.berth("images", "-q", "good").stdout == ""


def test_a_daemon_crash_mid_build_leaves_nothing_after_the_next_build(netns: NetNS) -> None:
    with berth_workdir() as work:
        ctx = work / "ctx"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text("FROM busybox\nRUN sleep 60\n")
        with start_berthd(netns, work) as d:
            import_busybox(d.berth, work)
            client = subprocess.Popen([*BERTH, "-H", d.host, "build", str(ctx)], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while not d.berth("ps", "-q").stdout.strip():
                assert time.monotonic() < deadline, "the RUN container never started"
                time.sleep(0.2)
            d.proc.kill()  # berthd dies in the middle of the RUN step
            d.proc.wait()
            client.wait(timeout=30)
        with start_berthd(netns, work) as d:
            assert d.berth("ps", "-aq").stdout.strip()  # the step's container, re-adopted
            assert list((d.data_root / "tmp").glob("build-*"))
            (ctx / "Dockerfile").write_text("FROM busybox\nRUN true\n")
            build(d, ctx, "-t", "after:1")
            assert d.berth("ps", "-aq").stdout == ""
            assert not list((d.data_root / "tmp").glob("build-*"))
