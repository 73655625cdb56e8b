"""Networking through the real berthd and the real docker CLI: `run -p`, `port`,
`ps`, `network ...`, a daemon killed with SIGKILL and restarted, `rm -f`.

berthd runs inside the test's namespace (its "host"); the docker CLI talks to
its unix socket, which needs no namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import Berthd, berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox

DOCKER = shutil.which("docker")
pytestmark = pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed")


def docker(d: Berthd, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert DOCKER is not None
    r = subprocess.run([DOCKER, "-H", d.host, *argv], capture_output=True, text=True,
                       timeout=60, stdin=subprocess.DEVNULL,
                       env={"HOME": str(d.data_root.parent), "PATH": "/usr/bin:/bin"})
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(argv)}: {r.stdout}{r.stderr}\n"
                             f"--- berthd log tail:\n{d.log_text()[-3000:]}")
    return r


def curl(ns: NetNS, url: str) -> str:
    for _ in range(30):  # a server just started may not listen yet
        r = ns.run("curl", "-sS", "-m", "2", url, check=False)
        if r.returncode == 0:
            return r.stdout
        time.sleep(0.1)
    return f"FAILED: {r.stderr.strip()}"


def links(ns: NetNS) -> list[str]:
    return sorted(line.split(":")[1].strip().split("@")[0]
                  for line in ns.run("ip", "-o", "link").stdout.splitlines())


@pytest.fixture
def workdir() -> Iterator[Path]:
    with berth_workdir() as d:
        yield d


def test_run_p_port_ps_kill_9_restart_and_rm(netns: NetNS, workdir: Path) -> None:
    with start_berthd(netns, workdir, cleanup=False) as d:
        import_busybox(d.berth, workdir)
        cid = docker(d, "run", "-d", "--name", "web", "-p", "80", "-p", "8080:80",
                     "busybox", "httpd", "-f", "-p", "80", "-h", "/etc").stdout.strip()
        lines = sorted(docker(d, "port", "web").stdout.split("\n")[:-1])
        random_port = next(int(x.rsplit(":", 1)[1]) for x in lines if ":8080" not in x)
        assert lines == sorted([f"80/tcp -> 0.0.0.0:{random_port}", "80/tcp -> 0.0.0.0:8080"])
        assert sorted(docker(d, "port", "web", "80").stdout.split()) == sorted(
            [f"0.0.0.0:{random_port}", "0.0.0.0:8080"])
        assert "0.0.0.0:8080->80/tcp" in docker(d, "ps", "--format", "{{.Ports}}").stdout
        settings = json.loads(docker(d, "inspect", cid).stdout)[0]["NetworkSettings"]
        assert {"HostIp": "0.0.0.0", "HostPort": "8080"} in settings["Ports"]["80/tcp"]
        ip = settings["Networks"]["bridge"]["IPAddress"]
        assert ip.startswith("10.88.")
        assert curl(netns, f"http://127.0.0.1:{random_port}/hostname") == cid[:12] + "\n"
        d.proc.kill()  # SIGKILL: berthd gets no chance to clean anything
        d.proc.wait(10)
        assert curl(netns, "http://127.0.0.1:8080/hostname") == cid[:12] + "\n"
    with start_berthd(netns, workdir, cleanup=False) as d:
        assert curl(netns, "http://127.0.0.1:8080/hostname") == cid[:12] + "\n"
        assert curl(netns, f"http://127.0.0.1:{random_port}/hostname") == cid[:12] + "\n"
        assert sorted(docker(d, "port", "web").stdout.split("\n")[:-1]) == lines
        other = docker(d, "run", "-d", "-p", "8080:80", "busybox", "sleep", "60", check=False)
        assert other.returncode != 0 and "already allocated" in other.stderr
        ids = docker(d, "ps", "-aq").stdout.split()
        docker(d, "rm", "-f", *ids)
        assert links(netns) == ["berth0", "lo"]
        assert "dnat to" not in netns.run("nft", "list", "table", "ip", "berth").stdout
        assert list((d.exec_root / "netns").iterdir()) == []


def test_docker_network_commands_names_and_isolation(netns: NetNS, workdir: Path) -> None:
    with start_berthd(netns, workdir) as d:
        import_busybox(d.berth, workdir)
        docker(d, "network", "create", "--subnet", "10.66.0.0/24", "app")
        docker(d, "network", "create", "other")
        web = docker(d, "run", "-d", "--name", "web", "--network", "app",
                     "--network-alias", "www", "busybox", "httpd", "-f", "-p", "80", "-h",
                     "/etc").stdout.strip()
        look = docker(d, "run", "--rm", "--network", "app", "busybox", "nslookup", "www")
        assert "Address: 10.66.0." in look.stdout
        far = docker(d, "run", "--rm", "--network", "other", "busybox", "nslookup", "www",
                     check=False)
        assert "10.66.0." not in far.stdout  # names are per network
        doc = json.loads(docker(d, "network", "inspect", "app").stdout)[0]
        assert web in doc["Containers"]
        probe = docker(d, "run", "-d", "--name", "probe", "--network", "other", "busybox",
                       "sleep", "60").stdout.strip()
        web_ip = doc["Containers"][web]["IPv4Address"].split("/")[0]
        # (busybox wget -T crashes; `timeout` bounds a connect that is dropped)
        cmd = ["exec", "probe", "timeout", "3", "wget", "-qO-", f"http://{web_ip}/hostname"]
        blocked = docker(d, *cmd, check=False)
        assert blocked.returncode == 143 and blocked.stdout == ""  # isolated: no answer at all
        docker(d, "network", "connect", "app", "probe")
        assert docker(d, *cmd).stdout.strip() == web[:12]
        shown = json.loads(docker(d, "inspect", "probe").stdout)[0]["NetworkSettings"]
        assert sorted(shown["Networks"]) == ["app", "other"]
        docker(d, "network", "disconnect", "app", "probe")
        assert docker(d, *cmd, check=False).returncode != 0
        shown = json.loads(docker(d, "inspect", "probe").stdout)[0]["NetworkSettings"]
        assert sorted(shown["Networks"]) == ["other"]
        busy = docker(d, "network", "rm", "app", check=False)
        assert busy.returncode != 0 and "active endpoints" in busy.stderr
        docker(d, "rm", "-f", web, probe)
        docker(d, "network", "rm", "app", "other")
        assert sorted(docker(d, "network", "ls", "--format", "{{.Name}}").stdout.split()) == [
            "bridge", "host", "none"]
        assert links(netns) == ["berth0", "lo"]


def test_berth_cli_network_verbs_alias_ip_and_port(netns: NetNS, workdir: Path) -> None:
    with start_berthd(netns, workdir) as d:
        import_busybox(d.berth, workdir)
        net_id = d.berth("network", "create", "--subnet", "10.67.0.0/24", "--internal",
                         "back").stdout.strip()
        ls = d.berth("network", "ls").stdout
        assert net_id[:12] in ls and "back" in ls and "bridge" in ls
        d.berth("run", "-d", "--name", "db", "--network", "back", "--network-alias", "database",
                "--ip", "10.67.0.50", "busybox", "httpd", "-f", "-p", "80", "-h", "/etc")
        look = d.berth("run", "--rm", "--network", "back", "busybox", "nslookup", "database")
        assert "Address: 10.67.0.50" in look.stdout
        doc = json.loads(d.berth("network", "inspect", "back").stdout)[0]
        assert doc["Internal"] is True
        assert [c["IPv4Address"] for c in doc["Containers"].values()] == ["10.67.0.50/24"]
        d.berth("run", "-d", "--name", "web", "-p", "127.0.0.1::80", "busybox", "httpd", "-f",
                "-p", "80", "-h", "/etc")
        (line,) = d.berth("port", "web").stdout.split("\n")[:-1]
        assert line.startswith("80/tcp -> 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        assert curl(netns, f"http://127.0.0.1:{port}/hostname").strip() == \
            json.loads(d.berth("inspect", "web").stdout)[0]["Id"][:12]
        d.berth("network", "connect", "--alias", "front", "back", "web")
        again = d.berth("run", "--rm", "--network", "back", "busybox", "nslookup", "front")
        assert "Address: 10.67.0." in again.stdout
        d.berth("network", "disconnect", "back", "web")
        d.berth("rm", "-f", "db", "web")
        assert d.berth("network", "prune", "-f").stdout.split() == ["Deleted", "Networks:",
                                                                   "back"]
