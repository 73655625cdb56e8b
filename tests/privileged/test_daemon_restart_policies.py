"""Restart policies as a Docker user sees them across `stop`, a crash and a daemon
restart: `always` and `unless-stopped` bring back a container whose process died;
neither restarts a container the user stopped; at the next daemon start `always`
starts it again and `unless-stopped` leaves it stopped; `no` stays down."""

from __future__ import annotations

import json
import os
import signal
import time

from tests.privileged.berthd import Berthd, berth_workdir, start_berthd, wait_until
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox


def info(d: Berthd, name: str) -> dict[str, object]:
    out: dict[str, object] = json.loads(d.berth("inspect", name).stdout)[0]
    return out


def status(d: Berthd, name: str) -> str:
    return str(info(d, name)["State"]["Status"])  # type: ignore[index]


def test_policies_across_stop_crash_and_daemon_restart(netns: NetNS) -> None:
    with berth_workdir() as work:
        with start_berthd(netns, work, cleanup=False) as first:
            import_busybox(first.berth, work)
            for name, policy in (("always", "always"), ("unless", "unless-stopped"),
                                 ("crash", "always"), ("never", "no")):
                first.berth("run", "-d", "--name", name, "--restart", policy, "busybox",
                            "sleep", "600")
            first.berth("stop", "-t", "1", "always", "unless")
            first.berth("kill", "never")
            # A crash (the process killed from outside, not through berthd) is restarted.
            pid = int(info(first, "crash")["State"]["Pid"])  # type: ignore[index]
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: info(first, "crash")["RestartCount"] == 1
                       and status(first, "crash") == "running", "crash restarted")
            time.sleep(1)   # a restart of a stopped container would have happened by now
            assert [status(first, n) for n in ("always", "unless", "never")] == \
                ["exited"] * 3
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(timeout=30) == 0
        with start_berthd(netns, work) as second:
            assert status(second, "always") == "running"     # started at daemon start
            assert status(second, "unless") == "exited"      # the user stopped it
            assert status(second, "never") == "exited"
            assert status(second, "crash") == "running"      # re-adopted, never stopped
