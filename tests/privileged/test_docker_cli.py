"""The real docker CLI (28.x, /usr/local/bin/docker) against berthd over its unix socket.

A user's session of the 2014 talk's verbs: import an image, run -d, ps, logs,
exec, inspect, top, stats, pause, stop, wait, rm, images, events, volumes;
Docker's own client does the version negotiation, the hijacked attach and
the multiplexed streams.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import Berthd, berth_workdir, read_until, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import busybox_rootfs_tar

DOCKER = "/usr/local/bin/docker"


class DockerCLI:
    def __init__(self, daemon: Berthd) -> None:
        self.daemon = daemon

    def in_terminal(self, args: str, cwd: Path | None = None,
                    client: str = DOCKER) -> subprocess.Popen[bytes]:
        """`docker ARGS` (or another CLIENT of the daemon, e.g. berth) on a terminal
        (`script` gives it one), for -it and attach."""
        cmd = f"{client} -H {self.daemon.host} {args}"
        proc = subprocess.Popen(["script", "-qec", cmd, "/dev/null"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, cwd=cwd,
                                env={"PATH": "/usr/bin:/bin", "TERM": "dumb",
                                     "DOCKER_CONFIG": str(self.daemon.data_root / "cli")})
        assert proc.stdin is not None and proc.stdout is not None
        return proc

    def __call__(self, *args: str, check: bool = True, input: str | None = None,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([DOCKER, "-H", self.daemon.host, *args], capture_output=True,
                           text=True, input=input, timeout=timeout,
                           stdin=None if input is not None else subprocess.DEVNULL,
                           env={"PATH": "/usr/bin:/bin", "HOME": str(self.daemon.data_root),
                                "DOCKER_CONFIG": str(self.daemon.data_root / "docker-cli")})
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout}{r.stderr}\n--- berthd log tail:\n"
                                 f"{self.daemon.log_text()[-3000:]}")
        return r


@pytest.fixture
def docker(netns: NetNS) -> Iterator[DockerCLI]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        cli = DockerCLI(d)
        tar = busybox_rootfs_tar(work / "rootfs.tar")
        image_id = cli("import", str(tar), "busybox:latest").stdout.strip()
        assert image_id.startswith("sha256:")
        yield cli


def test_docker_cli_session(docker: DockerCLI) -> None:
    assert "Server: Berth" in docker("version").stdout
    images = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert images == ["busybox:latest"]

    assert docker("run", "--rm", "busybox", "echo", "hello from docker").stdout == \
        "hello from docker\n"
    failed = docker("run", "--rm", "busybox", "sh", "-c", "echo oops >&2; exit 4", check=False)
    assert (failed.returncode, failed.stderr) == (4, "oops\n")

    cid = docker("run", "-d", "--name", "web", "-e", "WHO=docker", "busybox", "sh", "-c",
                 "echo up $WHO; exec sleep 300").stdout.strip()
    assert len(cid) == 64
    ps = docker("ps", "--format", "{{.Names}} {{.Status}}").stdout
    assert ps.startswith("web Up")
    deadline = time.monotonic() + 20
    while "up docker" not in docker("logs", "web").stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert docker("logs", "--tail", "1", "-t", "web").stdout.endswith("Z up docker\n")

    ex = docker("exec", "web", "sh", "-c", "echo $WHO; exit 3", check=False)
    assert (ex.returncode, ex.stdout) == (3, "docker\n")
    # -i without -t: the exec reads the client's stdin, then EOF.
    ex = docker("exec", "-i", "web", "sh", "-c", "tr a-z A-Z; echo end", input="piped\n")
    assert ex.stdout == "PIPED\nend\n"

    piped = docker("run", "-i", "--rm", "busybox", "tr", "a-z", "A-Z", input="shout\n")
    assert piped.stdout == "SHOUT\n"

    info = json.loads(docker("inspect", "web").stdout)[0]
    assert info["Id"] == cid and info["State"]["Status"] == "running"
    assert info["Config"]["Image"] == "busybox"
    assert docker("inspect", "-f", "{{.State.Running}} {{.Name}}", "web").stdout == \
        "true /web\n"
    assert "sleep 300" in docker("top", "web").stdout
    stats = docker("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "web").stdout
    assert stats == "web 1\n"

    docker("pause", "web")
    assert "(Paused)" in docker("ps", "--format", "{{.Status}}").stdout
    docker("unpause", "web")
    docker("rename", "web", "web2")
    assert docker("stop", "-t", "1", "web2").stdout == "web2\n"
    assert docker("wait", "web2").stdout == "137\n"
    assert "Exited (137)" in docker("ps", "-a", "--format", "{{.Status}}").stdout
    assert docker("rm", "web2").stdout == "web2\n"
    assert docker("ps", "-aq").stdout == ""

    gone = docker("rm", "web2", check=False)
    assert gone.returncode != 0 and "No such container: web2" in gone.stderr


def test_docker_cli_events_volumes_and_images(docker: DockerCLI) -> None:
    since = str(int(time.time()) - 1)
    docker("volume", "create", "vol1")
    docker("run", "--rm", "--name", "writer", "-v", "vol1:/v", "busybox", "sh", "-c",
           "echo persisted > /v/f")
    assert docker("run", "--rm", "-v", "vol1:/v", "busybox", "cat", "/v/f").stdout == \
        "persisted\n"
    assert "vol1" in docker("volume", "ls", "-q").stdout.split()
    until = str(int(time.time()) + 1)
    time.sleep(1.1)
    events = docker("events", "--since", since, "--until", until, "--filter",
                    "container=writer", "--format", "{{.Type}} {{.Action}}").stdout.split("\n")
    assert "container create" in events and "container start" in events
    assert "container die" in events and "container destroy" in events
    docker("volume", "rm", "vol1")

    docker("tag", "busybox", "mine/bb:2")
    assert "mine/bb" in docker("images").stdout
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}|{{.Comment}}",
                     "busybox").stdout
    assert history == "|Imported from -\n"
    docker("rmi", "mine/bb:2")
    assert "mine/bb" not in docker("images").stdout
    info = docker("info", "--format", "{{.Images}} {{.Driver}}").stdout
    assert info == "1 overlay2\n"


def test_docker_cli_interactive_tty(docker: DockerCLI) -> None:
    # docker run -it needs a terminal: `script` gives it one; type after the prompt.
    proc = docker.in_terminal("run -it --rm busybox sh")
    assert proc.stdin is not None and proc.stdout is not None
    try:
        read_until(proc.stdout, b"# ")
        proc.stdin.write(b"[ -t 1 ] && echo terminal; echo $((6*7))\n")
        proc.stdin.flush()
        out = read_until(proc.stdout, b"42")
        assert b"terminal" in out
        proc.stdin.write(b"exit 6\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 6
    finally:
        proc.kill()
