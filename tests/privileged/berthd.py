"""Start a real berthd for a test: temp data/exec roots, inside the test's netns.

`start_berthd` runs the daemon under `nsenter --net=...` so its TCP listeners
live in the test's namespace, waits until the unix socket answers `_ping`,
and stops it by its PID (SIGTERM, then SIGKILL) on the way out.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from runtime import cgroups
from tests.faultproxy import registry_config
from tests.privileged.conftest import NetNS

BERTHD = [sys.executable, "-m", "runtime.daemon"]
BERTH = [sys.executable, "-m", "runtime.cli"]
ROOT = Path(__file__).resolve().parents[2]


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(str(self.unix_path))
        self.sock = sock


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(sock: Path, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Response:
    conn = UnixHTTPConnection(sock)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


@dataclass
class Berthd:
    proc: subprocess.Popen[bytes]
    socket: Path
    data_root: Path
    exec_root: Path
    log: Path
    cgroup_root: Path

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        return request(self.socket, method, path, body)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def berth(self, *args: str, input: str | None = None, check: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the `berth` CLI against this daemon (the unix socket needs no netns)."""
        r = subprocess.run([*BERTH, "-H", self.host, *args], capture_output=True, text=True,
                           input=input, timeout=timeout, cwd=ROOT,
                           stdin=None if input is not None else subprocess.DEVNULL)
        if check and r.returncode != 0:
            raise AssertionError(f"berth {' '.join(args)} failed ({r.returncode}):\n"
                                 f"{r.stdout}{r.stderr}\n--- berthd log tail:\n"
                                 f"{self.log_text()[-3000:]}")
        return r

    def remove_all_containers(self) -> None:
        listing = self.request("GET", "/containers/json?all=1")
        if listing.status != 200:
            return
        for c in listing.json():  # type: ignore[union-attr]
            self.request("DELETE", f"/containers/{c['Id']}?force=1&v=1")


def wait_for_ping(sock: Path, proc: subprocess.Popen[bytes], log: Path,
                  timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"berthd exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if request(sock, "GET", "/_ping").body == b"OK":
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"berthd did not answer on {sock} within {timeout}s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def read_until(stream: IO[bytes], marker: bytes, timeout: float = 30) -> bytes:
    """Read a pipe until `marker` shows up (a prompt), or fail after `timeout`."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"{marker!r} not seen; got {seen!r}")
        chunk = os.read(stream.fileno(), 4096)
        if not chunk:
            raise AssertionError(f"EOF before {marker!r}; got {seen!r}")
        seen += chunk
    return seen


def cgroup_root_for(workdir: Path) -> Path:
    """A cgroup subtree of the test's own, beside the engine's default one."""
    return cgroups.default_root().with_name(workdir.name)


@contextmanager
def berth_workdir() -> Iterator[Path]:
    """A temp dir the containers' mapped root users can traverse (pytest's tmp is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="berth-t-"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
        # Empty once every container is gone; a leftover is a leak the tests report.
        with contextlib.suppress(OSError):
            cgroup_root_for(d).rmdir()


@contextmanager
def start_berthd(netns: NetNS, workdir: Path, *extra: str, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = (), wait: bool = True,
                 cleanup: bool = True) -> Iterator[Berthd]:
    data_root = workdir / "data"
    exec_root = workdir / "exec"
    sock = exec_root / "berthd.sock"
    log = workdir / "berthd.log"
    cgroup_root = cgroup_root_for(workdir)
    argv = netns.argv(*prefix, *BERTHD, "--data-root", str(data_root),
                      "--exec-root", str(exec_root), "-H", f"unix://{sock}",
                      "--cgroup-parent", str(cgroup_root), "--log-level", "debug", *extra)
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})})
    daemon = Berthd(proc, sock, data_root, exec_root, log, cgroup_root)
    try:
        if wait:
            wait_for_ping(sock, proc, log)
        yield daemon
    finally:
        if cleanup and proc.poll() is None:
            daemon.remove_all_containers()
        stop(proc)


def start_registry_in(netns: NetNS, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = random.randint(20000, 60000)  # the namespace is fresh: any port is free
    (work / "registry").mkdir()
    cfg = work / "registry.yml"
    cfg.write_text(registry_config(work / "registry", port))
    log = (work / "registry.log").open("wb")
    proc = subprocess.Popen(netns.argv("/usr/bin/docker-registry", "serve", str(cfg)),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    deadline = time.monotonic() + 20
    while netns.run("curl", "-sf", f"http://127.0.0.1:{port}/v2/", check=False).returncode:
        assert proc.poll() is None and time.monotonic() < deadline, \
            (work / "registry.log").read_text()
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port}"


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not in time: {what}")
