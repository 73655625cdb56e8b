"""A daemon restart must not touch containers: kill -9 with 50 running, re-adopt all.

The second berthd finds every container from its record, its pid (with the
process start time) and its cgroup; nothing is left behind after `rm -f`
(processes, cgroups, mounts, run directories).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.privileged.berthd import Berthd, berth_workdir, cgroup_root_for, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox

COUNT = 50


def api(d: Berthd, method: str, path: str, body: Any = None) -> Any:
    r = d.request(method, path, json.dumps(body).encode() if body is not None else None)
    assert r.status < 300, (method, path, r.status, r.body)
    return r.json() if r.body.strip() else None


def run_detached(d: Berthd, name: str, *cmd: str) -> str:
    cid: str = api(d, "POST", f"/v1.47/containers/create?name={name}",
                   {"Image": "busybox", "Cmd": list(cmd)})["Id"]
    api(d, "POST", f"/v1.47/containers/{cid}/start")
    return cid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it only waits for its parent to reap it.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def children_running(parent: int, module: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            if any(module.encode() in arg for arg in cmdline) and ppid(int(entry)) == parent:
                found.append(int(entry))
        except OSError:
            continue   # ended meanwhile
    return found


def mounts_under(root: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(root))]


def test_kill9_with_50_running_containers_then_readopt(netns: NetNS) -> None:
    with berth_workdir() as work:
        with start_berthd(netns, work, cleanup=False) as first:
            import_busybox(first.berth, work)
            ids = [run_detached(first, f"c{i}", "sh", "-c", f"echo hello {i}; exec sleep 600")
                   for i in range(COUNT)]
            short = run_detached(first, "short", "sh", "-c", "sleep 1; exit 3")
            pids = {cid: api(first, "GET", f"/containers/{cid}/json")["State"]["Pid"]
                    for cid in ids}
            assert all(pid > 0 and alive(pid) for pid in pids.values())
            # Cloned by berthd's spawner with CLONE_PARENT: berthd's own children.
            assert {ppid(pid) for pid in pids.values()} == {first.proc.pid}
            spawners = children_running(first.proc.pid, "runtime.container.spawner")
            assert len(spawners) == 1
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait()
            # The spawner dies with berthd (PR_SET_PDEATHSIG): no process of it stays.
            deadline = time.monotonic() + 5
            while any(alive(p) for p in spawners) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(alive(p) for p in spawners)

        # berthd is gone; its containers are not. `short` ends meanwhile.
        assert all(alive(pid) for pid in pids.values())
        time.sleep(2)

        with start_berthd(netns, work) as second:
            listing = api(second, "GET", "/containers/json")
            running = {c["Id"]: c for c in listing}
            assert set(running) == set(ids)
            for cid in ids:
                state = api(second, "GET", f"/containers/{cid}/json")["State"]
                assert state["Running"] is True and state["Pid"] == pids[cid]

            ended = api(second, "GET", f"/containers/{short}/json")["State"]
            assert ended["Status"] == "exited" and ended["Running"] is False
            # Its exit status went to init while berthd was away: said so, not invented.
            assert ended["ExitCode"] == 255 and "berthd" in ended["Error"]

            # Re-adopted containers are fully managed: logs, exec, stop.
            one = ids[7]
            assert second.berth("logs", one).stdout == "hello 7\n"
            assert second.berth("exec", one, "echo", "inside").stdout == "inside\n"
            second.berth("stop", "-t", "1", one)
            assert not alive(pids[one])
            assert api(second, "GET", f"/containers/{one}/json")["State"]["Status"] == "exited"

            second.berth("rm", "-f", *ids, short)
            assert api(second, "GET", "/containers/json?all=1") == []

        # Nothing leaked: processes, cgroups, mounts, run directories.
        assert not any(alive(pid) for pid in pids.values())
        root = cgroup_root_for(work)
        assert [cid for cid in [*ids, short] if (root / cid).exists()] == []
        assert mounts_under(work) == []
        assert list((work / "exec" / "containers").iterdir()) == []


def test_sigterm_stops_the_daemon_not_the_containers(netns: NetNS) -> None:
    with berth_workdir() as work:
        with start_berthd(netns, work, cleanup=False) as first:
            import_busybox(first.berth, work)
            cid = run_detached(first, "steady", "sh", "-c",
                               "echo before; sleep 2; echo during; exec sleep 600")
            pid = api(first, "GET", f"/containers/{cid}/json")["State"]["Pid"]
            deadline = time.monotonic() + 20
            while "before" not in first.berth("logs", cid).stdout:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert stop_daemon(first) == 0
        assert alive(pid)
        time.sleep(2.5)  # the container writes "during" while no daemon reads its output
        with start_berthd(netns, work) as second:
            assert api(second, "GET", f"/containers/{cid}/json")["State"]["Pid"] == pid
            deadline = time.monotonic() + 20
            while second.berth("logs", cid).stdout != "before\nduring\n":
                assert time.monotonic() < deadline
                time.sleep(0.05)


def stop_daemon(d: Berthd) -> int:
    d.proc.send_signal(signal.SIGTERM)
    return d.proc.wait(timeout=30)
