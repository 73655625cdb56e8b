"""End to end through a real berthd: the `berth` CLI runs, execs, logs, stops, removes.

Each test starts its own daemon (own data/exec roots) in its own netns and
imports a busybox image it built from Debian's busybox-static.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.privileged.berthd import (
    BERTH,
    ROOT,
    Berthd,
    UnixHTTPConnection,
    berth_workdir,
    read_until,
    start_berthd,
)
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox


@pytest.fixture
def daemon(netns: NetNS) -> Iterator[Berthd]:
    with berth_workdir() as work, start_berthd(netns, work) as d:
        import_busybox(d.berth, work)
        yield d


def wait_until(predicate: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_run_output_exit_codes_and_errors(daemon: Berthd) -> None:
    r = daemon.berth("run", "--rm", "busybox", "echo", "hello")
    assert r.stdout == "hello\n"
    r = daemon.berth("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3",
                     check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    # --rm removed them both.
    assert daemon.berth("ps", "-aq").stdout == ""

    missing = daemon.berth("run", "--rm", "--pull", "never", "nosuchimage", "true",
                           check=False)
    assert missing.returncode == 125
    assert "No such image: nosuchimage" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    bad = daemon.berth("run", "--rm", "busybox", "/no/such/binary", check=False)
    assert bad.returncode != 0 and "/no/such/binary" in bad.stderr

    gone = daemon.berth("rm", "ghost", check=False)
    assert gone.returncode == 1
    assert gone.stderr.strip() == "Error response from daemon: No such container: ghost"


def test_detached_lifecycle(daemon: Berthd) -> None:
    cid = daemon.berth("run", "-d", "--name", "web", "-e", "GREETING=hi", "-w", "/tmp",
                       "busybox", "sh", "-c", "echo started $GREETING; exec sleep 300"
                       ).stdout.strip()
    assert len(cid) == 64
    wait_until(lambda: "started hi" in daemon.berth("logs", "web").stdout)

    ps = daemon.berth("ps").stdout
    assert "web" in ps and "Up " in ps and cid[:12] in ps

    r = daemon.berth("exec", "web", "sh", "-c", "pwd; echo $GREETING; exit 7", check=False)
    assert (r.returncode, r.stdout) == (7, "/tmp\nhi\n")

    info = json.loads(daemon.berth("inspect", "web").stdout)[0]
    assert info["State"]["Running"] is True and info["Name"] == "/web"
    assert info["Config"]["Env"][-1] == "GREETING=hi"
    assert daemon.berth("inspect", "-f", "{{.State.Status}}", "web").stdout == "running\n"

    top = daemon.berth("top", "web").stdout
    assert "sleep 300" in top
    stats = daemon.berth("stats", "--no-stream", "web").stdout
    assert "web" in stats and "PIDS" in stats

    daemon.berth("pause", "web")
    assert daemon.berth("inspect", "-f", "{{.State.Status}}", "web").stdout == "paused\n"
    daemon.berth("unpause", "web")
    daemon.berth("rename", "web", "web2")
    assert daemon.berth("inspect", "-f", "{{.Name}}", cid[:12]).stdout == "/web2\n"

    # sleep as PID 1 ignores SIGTERM: stop escalates to SIGKILL after -t.
    daemon.berth("stop", "-t", "1", "web2")
    assert daemon.berth("wait", "web2").stdout == "137\n"
    assert "Exited (137)" in daemon.berth("ps", "-a").stdout
    daemon.berth("start", "web2")
    assert daemon.berth("inspect", "-f", "{{.State.Running}}", "web2").stdout == "true\n"

    busy = daemon.berth("rm", "web2", check=False)
    assert busy.returncode == 1 and "Error response from daemon" in busy.stderr
    daemon.berth("rm", "-f", "web2")
    assert daemon.berth("ps", "-aq").stdout == ""


def test_logs_tail_timestamps_and_follow(daemon: Berthd) -> None:
    daemon.berth("run", "-d", "--name", "ticker", "busybox", "sh", "-c",
                 "for i in 1 2 3 4 5; do echo line$i; done; "
                 "while [ ! -e /tmp/go ]; do sleep 0.1; done; echo late; exec sleep 300")
    wait_until(lambda: "line5" in daemon.berth("logs", "ticker").stdout)
    assert daemon.berth("logs", "--tail", "2", "ticker").stdout == "line4\nline5\n"
    stamped = daemon.berth("logs", "-t", "--tail", "1", "ticker").stdout
    assert stamped.endswith("Z line5\n") and stamped[:4].isdigit()
    assert daemon.berth("logs", "--since", "1m", "ticker").stdout.count("line") == 5
    assert daemon.berth("logs", "--until", "1h", "ticker").stdout == ""

    follow = subprocess.Popen([*BERTH, "-H", daemon.host, "logs", "-f", "--tail", "0",
                               "ticker"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        time.sleep(0.5)
        daemon.berth("exec", "ticker", "touch", "/tmp/go")
        assert follow.stdout is not None
        assert follow.stdout.readline() == "late\n"
        daemon.berth("kill", "ticker")
        # The container is gone: logs -f ends by itself.
        assert follow.wait(timeout=20) == 0
    finally:
        follow.kill()


def test_interactive_tty(daemon: Berthd) -> None:
    # `script` gives the CLI a terminal, as a user's shell would; like a user, the
    # test types only once the prompt is there (a shell flushes earlier input).
    cmd = f"{' '.join(BERTH)} -H {daemon.host} run -it --rm busybox sh"
    proc = subprocess.Popen(["script", "-qec", cmd, "/dev/null"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        read_until(proc.stdout, b"# ")
        proc.stdin.write(b"[ -t 0 ] && echo terminal; echo $((6*7))\n")
        proc.stdin.flush()
        out = read_until(proc.stdout, b"42")
        proc.stdin.write(b"exit 5\n")
        proc.stdin.flush()
        assert proc.wait(timeout=30) == 5
        assert b"terminal" in out
    finally:
        proc.kill()


def test_volumes_and_binds(daemon: Berthd, tmp_path: Path) -> None:
    assert daemon.berth("volume", "create", "data").stdout == "data\n"
    daemon.berth("run", "--rm", "-v", "data:/data", "busybox", "sh", "-c",
                 "echo kept > /data/f")
    assert daemon.berth("run", "--rm", "-v", "data:/data", "busybox", "cat",
                        "/data/f").stdout == "kept\n"
    assert "data" in daemon.berth("volume", "ls", "-q").stdout.split()
    vol = json.loads(daemon.berth("volume", "inspect", "data").stdout)[0]
    assert vol["Driver"] == "local" and Path(vol["Mountpoint"], "f").read_text() == "kept\n"

    host = daemon.data_root.parent / "shared"
    host.mkdir()
    (host / "in.txt").write_text("from host\n")
    r = daemon.berth("run", "--rm", "-v", f"{host}:/shared:ro", "busybox", "sh", "-c",
                     "cat /shared/in.txt; touch /shared/new", check=False)
    assert r.stdout == "from host\n" and r.returncode != 0
    assert not (host / "new").exists()

    daemon.berth("run", "-d", "--name", "holder", "-v", "data:/data", "busybox", "sleep", "300")
    in_use = daemon.berth("volume", "rm", "data", check=False)
    assert in_use.returncode == 1 and "in use" in in_use.stderr
    daemon.berth("rm", "-f", "holder")
    daemon.berth("volume", "rm", "data")
    assert "data" not in daemon.berth("volume", "ls", "-q").stdout.split()


def test_image_verbs(daemon: Berthd, tmp_path: Path) -> None:
    daemon.berth("tag", "busybox", "example/tool:1")
    images = daemon.berth("images").stdout
    assert "example/tool" in images and "busybox" in images
    # as dockerd shows an import: no CREATED BY, the comment says where it came from
    hist = daemon.berth("history", "--format", "{{.CreatedBy}}|{{.Comment}}", "busybox").stdout
    assert hist == "|Imported from -\n"
    out = tmp_path / "saved.tar"
    daemon.berth("save", "-o", str(out), "example/tool:1")
    daemon.berth("rmi", "example/tool:1")
    assert "example/tool" not in daemon.berth("images").stdout
    assert daemon.berth("load", "-i", str(out)).stdout == "Loaded image: example/tool:1\n"

    assert daemon.berth("rmi", "example/tool:1").stdout == "Untagged: example/tool:1\n"
    daemon.berth("create", "--name", "user", "busybox", "true")
    image_id = daemon.berth("inspect", "-f", "{{.Image}}", "user").stdout.strip()
    refused = daemon.berth("rmi", image_id, check=False)
    assert refused.returncode == 1 and "being used by container" in refused.stderr
    assert image_id[7:19] in daemon.berth("images", "-q").stdout
    daemon.berth("rm", "user")
    assert f"Deleted: {image_id}" in daemon.berth("rmi", "busybox").stdout
    assert daemon.berth("images", "-q").stdout == ""
    bad = daemon.berth("load", input="not a tar", check=False)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1


def test_events_stream_with_filters(daemon: Berthd) -> None:
    since = str(int(time.time()) - 1)
    daemon.berth("run", "--rm", "--name", "evt", "busybox", "true")
    until = str(int(time.time()) + 1)
    time.sleep(1.1)
    out = daemon.berth("events", "--since", since, "--until", until,
                       "--filter", "type=container", "--filter", "container=evt").stdout
    actions = [line.split()[2] for line in out.splitlines()]
    for action in ("create", "start", "die", "destroy"):
        assert action in actions, out
    assert actions.index("create") < actions.index("start") < actions.index("die")
    assert all("name=evt" in line for line in out.splitlines())


def test_info_df_prune(daemon: Berthd) -> None:
    daemon.berth("create", "--name", "idle", "busybox", "true")
    info = json.loads(daemon.berth("info", "--format", "json").stdout)
    assert info["Containers"] == 1 and info["Images"] == 1
    assert info["DockerRootDir"] == str(daemon.data_root)
    assert "Images" in daemon.berth("system", "df").stdout
    pruned = daemon.berth("container", "prune", "-f").stdout
    assert "Deleted Containers:" in pruned
    assert daemon.berth("ps", "-aq").stdout == ""


def test_run_flags_reach_the_container(daemon: Berthd) -> None:
    r = daemon.berth("run", "--rm", "-u", "1000:1000", "-h", "myhost", "--domainname",
                     "example.org", "--read-only", "--network", "none", "busybox", "sh", "-c",
                     "id -u; id -g; hostname; cat /proc/sys/kernel/domainname; "
                     "cat /proc/net/dev | tail -n +3 | cut -d: -f1; "
                     "touch /x 2>/dev/null || echo read-only", check=False)
    assert r.stdout.split() == ["1000", "1000", "myhost", "example.org", "lo", "read-only"], \
        r.stderr

    daemon.berth("create", "--name", "limited", "-m", "64m", "--cpus", "0.5",
                 "--pids-limit", "20", "--restart", "unless-stopped", "busybox", "true")
    hc = json.loads(daemon.berth("inspect", "-f", "{{json .HostConfig}}", "limited").stdout)
    assert (hc["Memory"], hc["NanoCpus"], hc["PidsLimit"]) == (64 << 20, 500_000_000, 20)
    assert hc["RestartPolicy"] == {"Name": "unless-stopped", "MaximumRetryCount": 0}
    daemon.berth("rm", "limited")


def test_restart_policy_and_restart_verb(daemon: Berthd) -> None:
    daemon.berth("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox",
                 "sh", "-c", "exit 1")
    wait_until(lambda: daemon.berth("inspect", "-f", "{{.RestartCount}} {{.State.Status}}",
                                    "flaky").stdout == "2 exited\n", timeout=60)
    assert daemon.berth("inspect", "-f", "{{.State.ExitCode}}", "flaky").stdout == "1\n"

    daemon.berth("run", "-d", "--name", "svc", "busybox", "sleep", "300")
    pid = daemon.berth("inspect", "-f", "{{.State.Pid}}", "svc").stdout
    daemon.berth("restart", "-t", "1", "svc")
    assert daemon.berth("inspect", "-f", "{{.State.Running}}", "svc").stdout == "true\n"
    assert daemon.berth("inspect", "-f", "{{.State.Pid}}", "svc").stdout != pid


def test_stats_stream_through_the_api(daemon: Berthd) -> None:
    cid = daemon.berth("run", "-d", "busybox", "sleep", "300").stdout.strip()
    conn = UnixHTTPConnection(daemon.socket)
    conn.request("GET", f"/v1.47/containers/{cid}/stats?stream=1")
    resp = conn.getresponse()
    first, second = json.loads(resp.readline()), json.loads(resp.readline())
    conn.close()
    assert first["id"] == cid and first["pids_stats"]["current"] == 1
    # Each sample carries the previous one: what `docker stats` turns into CPU %.
    assert second["precpu_stats"]["system_cpu_usage"] == first["cpu_stats"]["system_cpu_usage"]
    assert second["read"] > first["read"]


def test_volume_prune_keeps_named_and_used(daemon: Berthd) -> None:
    daemon.berth("volume", "create", "named")
    daemon.berth("run", "--name", "anon-user", "-v", "/scratch", "busybox", "true")
    anon = json.loads(daemon.berth("inspect", "-f", "{{json .Mounts}}", "anon-user").stdout)
    anon_name = anon[0]["Name"]
    assert daemon.berth("volume", "prune", "-f").stdout.startswith("Total reclaimed")
    daemon.berth("rm", "anon-user")
    pruned = daemon.berth("volume", "prune", "-f").stdout
    assert anon_name in pruned
    assert daemon.berth("volume", "ls", "-q").stdout.split() == ["named"]


def test_run_publish_random_port_and_port_verb(daemon: Berthd, netns: NetNS) -> None:
    # The 2014 demo: `run -d -p 80` gets a random high host port.
    daemon.berth("run", "-d", "--name", "www", "-p", "80", "busybox", "sh", "-c",
                 "mkdir -p /www && echo served > /www/index.html && exec httpd -f -p 80 -h /www")
    line = daemon.berth("port", "www").stdout.strip()
    assert line.startswith("80/tcp -> 0.0.0.0:"), line
    host_port = int(line.rsplit(":", 1)[1])
    assert 32768 <= host_port <= 60999
    assert f":{host_port}->80/tcp" in daemon.berth("ps").stdout
    deadline = time.monotonic() + 20
    while True:
        r = netns.run("curl", "-sf", f"http://127.0.0.1:{host_port}/", check=False)
        if r.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.stdout == "served\n"


def test_links_between_containers(daemon: Berthd) -> None:
    daemon.berth("run", "-d", "--name", "db", "-e", "SECRET=s3", "busybox", "sleep", "300")
    db_ip = daemon.berth("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db").stdout.strip()
    assert db_ip
    r = daemon.berth("run", "--rm", "--link", "db:database", "busybox", "sh", "-c",
                     "grep -w database /etc/hosts; ping -c 1 -W 5 database >/dev/null && "
                     "echo reachable")
    assert r.stdout.split()[0] == db_ip and r.stdout.strip().endswith("reachable")


def test_run_rm_delivers_all_output(daemon: Berthd) -> None:
    # --rm deletes the log at exit: the attach stream must not depend on reading it.
    r = daemon.berth("run", "--rm", "busybox", "sh", "-c", "seq 1 100000; seq 1 3 >&2")
    lines = r.stdout.splitlines()
    assert len(lines) == 100000 and lines[-1] == "100000"
    assert r.stderr.split() == ["1", "2", "3"]


def test_run_tty_delivers_all_output(daemon: Berthd) -> None:
    r = daemon.berth("run", "--rm", "-t", "busybox", "seq", "1", "50000")
    lines = r.stdout.splitlines()
    assert len(lines) == 50000 and lines[-1] == "50000"


def test_exec_interactive_without_tty_pipes_stdin(daemon: Berthd) -> None:
    cid = daemon.berth("run", "-d", "busybox", "sleep", "300").stdout.strip()
    r = daemon.berth("exec", "-i", cid, "sh", "-c", "wc -l; echo done",
                     input="".join(f"{i}\n" for i in range(5000)))
    assert r.stdout.split() == ["5000", "done"]
    daemon.berth("rm", "-f", cid)


def test_run_interactive_without_tty_pipes_stdin(daemon: Berthd) -> None:
    data = "".join(f"{i}\n" for i in range(20000))
    r = daemon.berth("run", "-i", "--rm", "busybox", "sh", "-c", "wc -l; echo done",
                     input=data)
    assert r.stdout.split() == ["20000", "done"]
