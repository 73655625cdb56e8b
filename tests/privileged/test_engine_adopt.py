"""Daemon restart: kill -9 of the engine's process leaves containers running; a new
engine re-adopts them (logs continue, exec works), and reports honestly on those
that ended meanwhile (exit code 255 + error) or restarts them by policy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.container.manager import ContainerManager
from runtime.container.spec import ExecRequest
from runtime.container.start import UNKNOWN_EXIT, UNKNOWN_EXIT_ERROR
from runtime.container.state import Status
from runtime.sys.libc import set_child_subreaper
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import IMAGE, EngineEnv, engine_env, leaks, output

ROOT = Path(__file__).resolve().parents[2]
IDLE = 50

FIRST_DAEMON = """
import asyncio, json, sys
from pathlib import Path
from runtime.container.manager import ContainerManager, EngineConfig
from runtime.container.spec import CreateRequest, RestartPolicy
from runtime.events import EventBus
from runtime.store.images import ImageStore

root, exec_root, cgroup_root, image, idle = sys.argv[1:6]

async def main():
    m = ContainerManager(EngineConfig(root=Path(root), exec_root=Path(exec_root),
                                      cgroup_root=Path(cgroup_root)),
                         ImageStore(Path(root)), EventBus())
    await m.adopt()
    made = {}
    async def run(key, cmd, **kw):
        rec = await m.create(CreateRequest(image=image, cmd=cmd, name=key, **kw))
        await m.start(rec.id)
        made[key] = m.inspect(rec.id).state.pid
    tick = "i=0; while true; do echo line$i; i=$((i+1)); sleep 0.02; done"
    await run("ticker", ("sh", "-c", tick))
    await run("victim", ("sleep", "1000"))
    await run("phoenix", ("sleep", "1000"), restart_policy=RestartPolicy.parse("always"))
    for i in range(int(idle)):
        await run(f"idle{i}", ("sleep", "1000"))
    # Stop reading before the kill: what the ticker writes from now on waits in
    # its FIFO. (A kill -9 in the middle of a pump's read can lose that chunk.)
    await asyncio.sleep(0.2)
    await m.shutdown()
    print(json.dumps(made), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.fixture
def env(netns: NetNS, tmp_path: Path) -> Iterator[EngineEnv]:
    with engine_env(netns, tmp_path) as e:
        yield e


def test_kill_9_of_the_daemon_then_readoption(env: EngineEnv) -> None:
    # As under systemd: the dead daemon's containers go to init, not to the next
    # daemon (this test process may be a subreaper from an earlier engine test).
    set_child_subreaper(False)
    argv = env.netns.argv(sys.executable, "-c", FIRST_DAEMON, str(env.root), str(env.exec_root),
                          str(env.cgroup_root), IMAGE, str(IDLE))
    daemon = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              text=True)
    try:
        assert daemon.stdout is not None
        pids = json.loads(daemon.stdout.readline())
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    # While no daemon runs: two containers end, the ticker keeps writing into its FIFO.
    os.kill(pids["victim"], signal.SIGKILL)
    os.kill(pids["phoenix"], signal.SIGKILL)
    for pid in (pids["victim"], pids["phoenix"]):
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.01)
    assert all(Path(f"/proc/{pids[f'idle{i}']}").exists() for i in range(IDLE))

    async def scenario() -> None:
        m = env.manager()
        await m.adopt()
        try:
            await check(m)
        finally:
            for cid in list(m.containers):
                await m.remove(cid, force=True)
            await m.shutdown()
        assert leaks(env) == []

    async def check(m: ContainerManager) -> None:
        idle = [m.inspect(f"idle{i}") for i in range(IDLE)]
        assert all(r.state.status is Status.RUNNING for r in idle)
        assert [r.state.pid for r in idle] == [pids[f"idle{i}"] for i in range(IDLE)]
        victim = m.inspect("victim").state
        assert (victim.status, victim.exit_code, victim.error) == (
            Status.EXITED, UNKNOWN_EXIT, UNKNOWN_EXIT_ERROR)
        phoenix = m.inspect("phoenix").state
        assert phoenix.status is Status.RUNNING and phoenix.pid != pids["phoenix"]
        # Logs continue with no line lost across the restart (the FIFO kept them).
        await asyncio.sleep(0.3)
        lines = (await output(m, "ticker")).split()
        numbers = [int(x[4:]) for x in lines]
        assert numbers == list(range(len(numbers))) and len(numbers) > 10
        eid = await m.exec_create("ticker", ExecRequest(cmd=("cat", "/proc/1/cmdline")))
        s = await m.exec_start(eid)
        out = b"".join([c async for _, c in s.output()])
        assert out.startswith(b"sh\0-c\0") and await s.wait() == 0
        # A re-adopted container is not our child: its exit status is unknowable.
        await m.stop("idle0", timeout=0)
        st = m.inspect("idle0").state
        assert (st.status, st.exit_code, st.error) == (Status.EXITED, UNKNOWN_EXIT,
                                                      UNKNOWN_EXIT_ERROR)

    asyncio.run(scenario())
