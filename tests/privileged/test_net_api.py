"""The network endpoints of the Docker Engine API, driven by the real docker CLI.

The API runs on a unix socket in a temp dir, on the service whose "host" is
the test's namespace; `docker network ...` talks to it as to dockerd.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from runtime.api import networks
from runtime.api.app import make_app
from runtime.api.backend import Backend, DaemonInfo
from runtime.api.routes import RouteTable
from tests.privileged.conftest import NetNS
from tests.privileged.net_helpers import Lab, lab

DOCKER = shutil.which("docker")
pytestmark = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")


@pytest.fixture
def api(netns: NetNS, tmp_path: Path) -> Iterator[tuple[Lab, Path]]:
    with lab(netns.name, tmp_path) as the_lab:
        b = Backend(info=DaemonInfo(data_root=tmp_path, exec_root=tmp_path / "run"))
        b.networks = the_lab.service  # type: ignore[attr-defined]
        app = make_app(b)
        table = RouteTable()
        networks.add_routes(table)
        table.mount(app)
        sock = tmp_path / "api.sock"
        runner = web.AppRunner(app)

        async def start() -> None:
            await runner.setup()
            await web.UnixSite(runner, str(sock)).start()

        the_lab.loop.call(start())
        try:
            yield the_lab, sock
        finally:
            the_lab.loop.call(runner.cleanup())


def docker(sock: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    assert DOCKER is not None
    return subprocess.run([DOCKER, "-H", f"unix://{sock}", *argv], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL,
                          env={"HOME": str(sock.parent), "PATH": "/usr/bin:/bin"})


def test_docker_network_create_ls_inspect_rm_prune(api: tuple[Lab, Path]) -> None:
    the_lab, sock = api
    r = docker(sock, "network", "create", "--subnet", "10.77.0.0/24", "--gateway",
               "10.77.0.254", "--internal", "--label", "team=web", "backend")
    assert r.returncode == 0, r.stderr
    net_id = r.stdout.strip()
    assert len(net_id) == 64
    ls = docker(sock, "network", "ls", "--format", "{{.Name}} {{.Driver}}")
    assert sorted(ls.stdout.split("\n")[:-1]) == [
        "backend bridge", "bridge bridge", "host host", "none null"]
    doc = json.loads(docker(sock, "network", "inspect", "backend").stdout)[0]
    assert doc["Id"] == net_id
    assert doc["IPAM"]["Config"] == [{"Subnet": "10.77.0.0/24", "Gateway": "10.77.0.254"}]
    assert doc["Internal"] is True and doc["Labels"] == {"team": "web"}
    # the kernel side exists: a bridge holding the gateway address
    assert "10.77.0.254/24" in the_lab.host("ip", "-o", "addr").stdout
    dup = docker(sock, "network", "create", "backend")
    assert dup.returncode != 0 and "already exists" in dup.stderr
    bad = docker(sock, "network", "create", "--subnet", "10.77.0.0/33", "oops")
    assert bad.returncode != 0 and "invalid subnet" in bad.stderr
    clash = docker(sock, "network", "create", "--subnet", "10.77.0.128/25", "clash")
    assert clash.returncode != 0 and "overlaps" in clash.stderr
    assert docker(sock, "network", "rm", "bridge").returncode != 0
    assert docker(sock, "network", "create", "spare").returncode == 0
    pruned = docker(sock, "network", "prune", "-f")
    assert pruned.returncode == 0 and "spare" in pruned.stdout and "backend" in pruned.stdout
    gone = docker(sock, "network", "inspect", "backend")
    assert gone.returncode != 0 and "not found" in gone.stderr
    assert "10.77.0.254" not in the_lab.host("ip", "-o", "addr").stdout
