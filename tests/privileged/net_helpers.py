"""Helpers for the networking tests: an event loop in a thread running a
NetworkService whose "host" is the test's namespace, and "containers" that are
plain network namespaces (plus a private mount namespace for their /etc files).
"""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from runtime.net import hosts
from runtime.net.model import ContainerNetConfig, ContainerNetResult
from runtime.net.provider import NetworkService
from runtime.store.db import open_db

T = TypeVar("T")


class LoopThread:
    """An asyncio loop in a thread: the DNS responders need a running loop while
    the test's own thread runs clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class FakeContainer:
    """A container's network namespace, with its /etc files; processes run in it
    through nsenter + a private mount namespace that binds those files."""

    name: str
    netns: str
    folder: Path
    result: ContainerNetResult | None = None
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def netns_path(self) -> Path:
        return Path(f"/run/netns/{self.netns}")

    def argv(self, *argv: str) -> list[str]:
        binds = ""
        if self.result is not None:
            for etc in ("hosts", "resolv.conf", "hostname"):
                binds += f"mount --bind {self.folder / etc} /etc/{etc} && "
        script = binds + "exec " + shlex.join(argv)
        return ["nsenter", f"--net={self.netns_path}", "--", "unshare", "-m",
                "--propagation", "private", "sh", "-c", script]

    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    def start(self, *argv: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(self.argv(*argv), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(p)
        return p

    def attached(self, result: ContainerNetResult) -> None:
        self.result = result
        hosts.write_files(self.folder, hosts=result.hosts, resolv_conf=result.resolv_conf,
                          hostname=result.hostname)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(10)
        self.procs.clear()


class Lab:
    """The service under test plus the fake containers made for one test."""

    def __init__(self, host_netns: str, tmp: Path) -> None:
        self.host_netns = Path(f"/run/netns/{host_netns}")
        self.tmp = tmp
        self.resolv = tmp / "host-resolv.conf"
        if not self.resolv.exists():
            self.resolv.write_text("search example.test\n")
        self.loop = LoopThread()
        self.service = self.new_service()
        self.containers: list[FakeContainer] = []

    def new_service(self) -> NetworkService:
        async def make() -> NetworkService:
            svc = NetworkService(open_db(self.tmp / "berth.db"), host_netns=self.host_netns,
                                 resolv_conf=self.resolv)
            await svc.start()
            return svc
        return self.loop.call(make())

    def container(self, name: str) -> FakeContainer:
        ns = f"berth-tc-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        c = FakeContainer(name, ns, self.tmp / f"ctr-{name}")
        self.containers.append(c)
        return c

    def setup(self, c: FakeContainer, config: ContainerNetConfig | None = None,
              cid: str | None = None) -> ContainerNetResult:
        config = config or ContainerNetConfig(name=c.name, hostname=c.name)
        result = self.loop.call(self.service.setup(cid or self.cid(c), c.netns_path, config))
        c.attached(result)
        return result

    @staticmethod
    def cid(c: FakeContainer) -> str:
        return (c.name.encode().hex() + "0" * 64)[:64]

    def host(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net={self.host_netns}", "--", *argv],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, check=False)

    def close(self) -> None:
        try:
            for c in self.containers:
                try:
                    c.stop()
                    self.loop.call(self.service.teardown(self.cid(c)))
                finally:
                    subprocess.run(["ip", "netns", "delete", c.netns], check=False)
            self.loop.call(self.service.destroy())
        finally:
            self.loop.stop()


@contextmanager
def lab(host_netns: str, tmp: Path) -> Iterator[Lab]:
    the_lab = Lab(host_netns, tmp)
    try:
        yield the_lab
    finally:
        the_lab.close()


OUTSIDE_ADDR = "192.0.2.2"
HOST_ADDR = "192.0.2.1"

# Replies to one HTTP request per connection with the client's address: shows
# whether a container's traffic was masqueraded.
WHOAMI_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", 80))
s.listen(16)
while True:
    c, a = s.accept()
    c.recv(4096)
    body = a[0].encode()
    c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n%s" % (len(body), body))
    c.close()
"""

# A stand-in for the host's upstream resolver: answers every A query with 192.0.2.99.
UPSTREAM_DNS = """
import socket, struct, sys
sys.path.insert(0, %r)
from runtime.net.dns import parse_query, build_response, RCode
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("", 53))
while True:
    data, addr = s.recvfrom(4096)
    q = parse_query(data)
    s.sendto(build_response(data, q, RCode.NOERROR, [(1, socket.inet_aton("192.0.2.99"))]), addr)
"""


def add_outside(the_lab: Lab) -> FakeContainer:
    """A namespace standing for the world outside the host: 192.0.2.2, linked to
    the host namespace (192.0.2.1) by a veth pair, running a who-am-I web server
    and an upstream DNS server."""
    out = the_lab.container("outside")
    host_if = f"vo{uuid.uuid4().hex[:8]}"
    the_lab.host("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                 "netns", str(out.netns_path))
    the_lab.host("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", host_if)
    the_lab.host("ip", "link", "set", host_if, "up")
    for cmd in (["ip", "addr", "add", f"{OUTSIDE_ADDR}/24", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"]):
        subprocess.run(["nsenter", f"--net={out.netns_path}", "--", *cmd], check=True)
    root = str(Path(__file__).resolve().parents[2])
    out.start("python3", "-c", WHOAMI_SERVER)
    out.start("python3", "-c", UPSTREAM_DNS % root)
    for _ in range(100):
        if the_lab.host("curl", "-s", "-m", "1", f"http://{OUTSIDE_ADDR}/").returncode == 0:
            return out
        time.sleep(0.05)
    raise AssertionError("the outside web server did not start")
