"""Networking through the real container engine: busybox containers started by
ContainerManager, their bridge side in the test's namespace (the "host")."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.container.manager import ContainerManager, EngineConfig
from runtime.container.spec import CreateRequest
from runtime.events import EventBus
from runtime.logs import LogOptions
from runtime.net.engine import EngineNetwork
from runtime.net.model import NetworkSpec
from runtime.net.options import options_from_docker
from runtime.net.provider import NetworkService
from runtime.store.archive import import_rootfs
from runtime.store.db import open_db
from runtime.store.images import ImageStore
from tests.privileged.conftest import NetNS
from tests.privileged.images import busybox_rootfs_tar
from tests.privileged.net_helpers import LoopThread


@dataclass
class Engine:
    loop: LoopThread
    ns: NetNS
    root: Path
    images: ImageStore
    svc: NetworkService
    mgr: ContainerManager

    def run(self, name: str, cmd: tuple[str, ...], body: dict[str, Any]) -> str:
        async def go() -> str:
            mode = (body.get("HostConfig") or {}).get("NetworkMode") or "bridge"
            c = await self.mgr.create(CreateRequest(
                image="busybox", name=name, cmd=cmd, network_mode=mode,
                env=tuple(body.get("Env") or ()),
                network_options=options_from_docker(body)))
            await self.mgr.start(c.id)
            return c.id
        return self.loop.call(go())

    def curl(self, url: str) -> str:
        for _ in range(30):  # the server in the container may still be starting
            r = self.ns.run("curl", "-sS", "-m", "2", url, check=False)
            if r.returncode == 0:
                return r.stdout
            time.sleep(0.1)
        return f"FAILED: {r.stderr.strip()}"


def open_engine(loop: LoopThread, ns: NetNS, root: Path, images: ImageStore) -> Engine:
    async def make() -> Engine:
        db = open_db(root / "data" / "berth.db")
        (root / "resolv.conf").write_text("")
        svc = NetworkService(db, host_netns=Path(ns.path), resolv_conf=root / "resolv.conf")
        await svc.start()
        mgr = ContainerManager(EngineConfig(root=root / "data", exec_root=root / "run"),
                               images=images, events=EventBus(),
                               network=EngineNetwork(svc, root / "run" / "net"), db=db)
        await mgr.adopt()
        await svc.reconcile({c.id for c in mgr.list(all=False)})
        return Engine(loop, ns, root, images, svc, mgr)
    return loop.call(make())


@pytest.fixture
def engine(netns: NetNS) -> Iterator[Engine]:
    # Containers' mapped root must traverse to the exec root: pytest's tmp_path
    # sits under a 0700 folder, so a 0711 one of our own.
    tmp_path = Path(tempfile.mkdtemp(prefix="berth-net-engine-"))
    tmp_path.chmod(0o711)
    images = ImageStore(tmp_path / "data")
    with busybox_rootfs_tar(tmp_path / "busybox.tar").open("rb") as f:
        import_rootfs(images, f, tag="busybox:latest")
    loop = LoopThread()
    eng = open_engine(loop, netns, tmp_path, images)
    try:
        yield eng
    finally:
        async def down() -> None:
            for c in eng.mgr.list(all=True):
                await eng.mgr.remove(c.id, force=True)
            await eng.mgr.shutdown()
            await eng.svc.destroy()
        try:
            loop.call(down())
        finally:
            loop.stop()
            unmount_under(tmp_path)
            shutil.rmtree(tmp_path, ignore_errors=True)


def unmount_under(root: Path) -> None:
    """Safety net when a teardown failed: no mount (a netns file) outlives the test."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(f"{root}/")), reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def host_links(ns: NetNS) -> list[str]:
    return [line.split(":")[1].strip().split("@")[0]
            for line in ns.run("ip", "-o", "link").stdout.splitlines()]


def test_published_ports_of_a_container_reach_its_http_server(engine: Engine) -> None:
    cid = engine.run("web", ("httpd", "-f", "-p", "80", "-h", "/etc"), {
        "ExposedPorts": {"80/tcp": {}},
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": ""}, {"HostPort": "8080"}]}}})
    ports = engine.svc.ports(cid)
    random_port = next(p.binding.host_port for p in ports if p.binding.host_port != 8080)
    assert engine.curl(f"http://127.0.0.1:{random_port}/passwd").startswith("root:")
    assert engine.curl("http://127.0.0.1:8080/passwd").startswith("root:")
    gw = engine.svc.endpoints(cid)[0].gateway
    assert engine.curl(f"http://{gw}:8080/passwd").startswith("root:")


def test_rm_force_of_everything_leaves_nothing(engine: Engine) -> None:
    before = host_links(engine.ns)
    ids = [engine.run(f"c{i}", ("sleep", "60"), {
        "HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": ""}]}}}) for i in range(3)]
    assert len([n for n in host_links(engine.ns) if n.startswith("vb")]) == 3

    async def rm_all() -> None:
        for cid in ids:
            await engine.mgr.remove(cid, force=True)
    engine.loop.call(rm_all())
    assert host_links(engine.ns) == before
    assert "dnat to" not in engine.ns.run("nft", "list", "table", "ip", "berth").stdout
    assert list((engine.root / "run" / "netns").iterdir()) == []
    assert all(engine.svc.endpoints(cid) == [] for cid in ids)


def test_a_failed_start_leaves_nothing(engine: Engine) -> None:
    engine.run("first", ("sleep", "60"),
               {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}})
    before = host_links(engine.ns)
    with pytest.raises(Exception, match="already allocated"):
        engine.run("second", ("sleep", "60"),
                   {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}})
    assert host_links(engine.ns) == before
    second = engine.mgr.inspect("second")
    assert engine.svc.endpoints(second.id) == []
    assert not (engine.root / "run" / "netns" / second.id).exists()  # its netns is gone too
    assert "already allocated" in second.state.error


def test_daemon_restart_keeps_published_ports(engine: Engine) -> None:
    engine.run("web", ("httpd", "-f", "-p", "80", "-h", "/etc"),
               {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": "8080"}]}}})
    assert engine.curl("http://127.0.0.1:8080/passwd").startswith("root:")

    async def stop() -> None:
        await engine.mgr.shutdown()  # containers keep running
        await engine.svc.close()
    engine.loop.call(stop())
    again = open_engine(engine.loop, engine.ns, engine.root, engine.images)
    engine.svc, engine.mgr = again.svc, again.mgr
    assert engine.curl("http://127.0.0.1:8080/passwd").startswith("root:")


def start_daemon(ns: NetNS, root: Path, *args: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        ns.argv(sys.executable, "-m", "tests.privileged.net_daemon", str(root), *args),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY "), f"mini daemon failed: {line!r}"
    return proc, json.loads(line[6:])


def test_kill_9_of_the_daemon_and_restart_keeps_published_ports(netns: NetNS) -> None:
    root = Path(tempfile.mkdtemp(prefix="berth-net-kill-"))
    root.chmod(0o711)
    try:
        images = ImageStore(root / "data")
        with busybox_rootfs_tar(root / "busybox.tar").open("rb") as f:
            import_rootfs(images, f, tag="busybox:latest")
        first, started = start_daemon(netns, root, "--run", "web:8080", "--run", "ghost:8081")
        probe = Engine(LoopThread(), netns, root, images, None, None)  # type: ignore[arg-type]
        try:
            assert probe.curl("http://127.0.0.1:8080/passwd").startswith("root:")
            assert probe.curl("http://127.0.0.1:8081/passwd").startswith("root:")
            first.kill()  # SIGKILL: no cleanup at all
            first.wait(10)
            # the ghost container dies while no daemon is there to see it
            os.kill(started["ghost"][1], signal.SIGKILL)
            assert probe.curl("http://127.0.0.1:8080/passwd").startswith("root:")
            ghost_veths = [n for n in host_links(netns) if n.startswith("vb")]
            second, _ = start_daemon(netns, root)
            try:
                assert probe.curl("http://127.0.0.1:8080/passwd").startswith("root:")
                assert probe.curl("http://127.0.0.1:8081/").startswith("FAILED")
                table = netns.run("nft", "list", "table", "ip", "berth").stdout
                assert "dport 8080" in table and "dport 8081" not in table
                assert len([n for n in host_links(netns) if n.startswith("vb")]) == 1
                assert len(ghost_veths) == 2
            finally:
                second.kill()
                second.wait(10)
        finally:
            probe.loop.stop()
            subprocess.run(netns.argv(sys.executable, "-m", "tests.privileged.net_daemon",
                                      str(root), "--rm-all"),
                           cwd=Path(__file__).resolve().parents[2], check=False, timeout=60)
        assert host_links(netns) == ["lo"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def logs_of(engine: Engine, ref: str) -> str:
    async def read() -> str:
        await engine.mgr.wait(ref)
        out = b""
        async for entry in engine.mgr.logs(ref, LogOptions()):
            out += entry.line
        return out.decode()
    return engine.loop.call(read())


def test_containers_on_a_user_network_find_each_other_by_name(engine: Engine) -> None:
    engine.loop.call(engine.svc.create_network(NetworkSpec("app")))
    web = engine.run("web", ("httpd", "-f", "-p", "80", "-h", "/etc"), {
        "HostConfig": {"NetworkMode": "app"},
        "NetworkingConfig": {"EndpointsConfig": {"app": {"Aliases": ["www"]}}}})
    ip = engine.svc.endpoints(web)[0].address
    # busybox's nslookup reads the /etc/resolv.conf berth bound into the container
    engine.run("client", ("sh", "-c", "cat /etc/resolv.conf /etc/hostname; nslookup web; "
                          "nslookup www; for i in 1 2 3 4 5; do wget -qO- http://$(nslookup web"
                          " | sed -n 's/^Address: *//p' | tail -1)/hostname && break; sleep 1;"
                          " done"),
               {"HostConfig": {"NetworkMode": "app"}})
    out = logs_of(engine, "client")
    assert f"nameserver {engine.svc.network('app').gateway}" in out
    assert out.count(f"Address: {ip}") == 2, out
    assert out.rstrip().endswith(web[:12]), out  # web's /etc/hostname, fetched by HTTP


def test_link_env_and_hosts_in_a_container(engine: Engine) -> None:
    db = engine.run("db", ("httpd", "-f", "-p", "5432", "-h", "/etc"), {
        "Env": ["POSTGRES_DB=app"], "ExposedPorts": {"5432/tcp": {}}})
    ip = engine.svc.endpoints(db)[0].address
    engine.run("web", ("sh", "-c", "env | grep ^DBA | sort; grep dba /etc/hosts; "
                       "for i in 1 2 3 4 5; do wget -qO- http://"
                       "$(sed -n 's/[[:space:]]*dba.*//p' /etc/hosts):5432/hostname && break; "
                       "sleep 1; done"),
               {"HostConfig": {"Links": ["/db:/web/dba"]}})
    out = logs_of(engine, "web")
    assert f"DBA_PORT_5432_TCP=tcp://{ip}:5432" in out, out
    assert "DBA_ENV_POSTGRES_DB=app" in out
    assert "DBA_NAME=/web/dba" in out
    assert f"{ip}\tdba db" in out
    assert out.rstrip().endswith(db[:12]), out  # db's /etc/hostname, fetched by HTTP


def test_publish_all_uses_the_images_expose_and_links_show_its_env(engine: Engine) -> None:
    with busybox_rootfs_tar(engine.root / "web.tar").open("rb") as f:
        import_rootfs(engine.images, f, tag="webimg:latest",
                      changes=["EXPOSE 80", "ENV GREETING=hello"])

    async def go() -> str:
        c = await engine.mgr.create(CreateRequest(
            image="webimg", name="img", cmd=("httpd", "-f", "-p", "80", "-h", "/etc"),
            network_mode="bridge",
            network_options=options_from_docker({"HostConfig": {"PublishAllPorts": True}})))
        await engine.mgr.start(c.id)
        return c.id
    cid = engine.loop.call(go())
    (published,) = engine.svc.ports(cid)
    assert (published.binding.container_port, str(published.binding.proto)) == (80, "tcp")
    port = published.binding.host_port
    assert engine.curl(f"http://127.0.0.1:{port}/hostname") == cid[:12] + "\n"
    engine.run("client", ("sh", "-c", "env | grep ^WEB_"),
               {"HostConfig": {"Links": ["img:web"]}})
    out = logs_of(engine, "client")
    assert "WEB_ENV_GREETING=hello" in out
    assert "WEB_PORT_80_TCP_PORT=80" in out
