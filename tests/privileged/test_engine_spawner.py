"""The spawner: containers it clones are the engine's own children (CLONE_PARENT)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.container.errors import StartError
from runtime.container.manager import ContainerManager
from runtime.container.spawner import SpawnerClient
from runtime.container.spec import CreateRequest, ExecRequest, VolumeRequest
from runtime.container.state import Status
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import (
    IMAGE,
    EngineEnv,
    engine_env,
    leaks,
    mountinfo_under,
    output,
    run_engine,
)


@pytest.fixture
def env(netns: NetNS, tmp_path: Path) -> Iterator[EngineEnv]:
    with engine_env(netns, tmp_path) as e:
        yield e


def ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_containers_and_execs_are_children_of_the_engine_not_of_the_spawner(
        env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        spawner = m.spawner()
        assert isinstance(spawner, SpawnerClient) and spawner.alive()
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000")))
        await m.start(rec.id)
        pid = m.inspect(rec.id).state.pid
        assert ppid(pid) == os.getpid()
        eid = await m.exec_create(rec.id, ExecRequest(cmd=("sleep", "1000")))
        s = await m.exec_start(eid)
        assert ppid(s.pid) == os.getpid()
        await m.kill(rec.id, "KILL")
        # Reaped through the pidfd: only a child of ours can report its real status.
        assert (await m.wait(rec.id)).status_code == 137
        assert await s.wait() == 137

    run_engine(env, scenario)
    assert leaks(env) == []


def test_a_dead_spawner_is_replaced_at_the_next_start(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        first = m.spawner()
        assert isinstance(first, SpawnerClient)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("echo", "still starts")))
        await m.start(rec.id)
        assert (await m.wait(rec.id)).status_code == 0
        assert await output(m, rec.id) == "still starts\n"
        second = m.spawner()
        assert second is not first and isinstance(second, SpawnerClient) and second.alive()

    run_engine(env, scenario)


def test_shutdown_stops_the_spawner_and_containers_keep_running(env: EngineEnv) -> None:
    async def first_life() -> tuple[int, int]:
        m = env.manager()
        await m.adopt()
        spawner = m.spawner()
        assert isinstance(spawner, SpawnerClient)
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000"), name="keep"))
        await m.start(rec.id)
        await m.shutdown()
        assert spawner.proc.poll() is not None   # gone, not left behind
        return m.inspect(rec.id).state.pid, spawner.proc.pid

    pid, _ = asyncio.run(first_life())
    os.kill(pid, 0)   # still running without the engine

    async def second_life(m: ContainerManager) -> None:
        assert m.inspect("keep").state.pid == pid
        await m.kill("keep", "KILL")
        await m.wait("keep")

    run_engine(env, second_life)
    assert leaks(env) == []


def test_in_process_clone_still_works_without_the_spawner(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        assert not isinstance(m.spawner(), SpawnerClient)
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sh", "-c", "echo $$")))
        await m.start(rec.id)
        assert (await m.wait(rec.id)).status_code == 0
        assert await output(m, rec.id) == "1\n"

    run_engine(env, scenario, spawner=False)


def test_a_host_mount_failing_in_the_spawner_fails_the_start_and_leaves_nothing(
        env: EngineEnv, tmp_path: Path) -> None:
    src = tmp_path / "gone"
    src.mkdir()

    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("ls", "/data"),
                                           volumes=(VolumeRequest(str(src), "/data"),)))
        src.rmdir()   # the spawner's idmapped bind of it fails after the clone
        with pytest.raises(StartError, match="gone"):
            await m.start(rec.id)
        assert m.inspect(rec.id).state.status is Status.CREATED
        assert leaks(env) == []
        src.mkdir()
        (src / "here").touch()
        await m.start(rec.id)
        assert (await m.wait(rec.id)).status_code == 0
        assert await output(m, rec.id) == "here\n"

    run_engine(env, scenario)
    assert leaks(env) == []


def test_etc_files_are_the_containers_own_root_owned_and_writable(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        script = ("stat -c '%u:%g %a %n' /etc/hosts /etc/hostname /etc/resolv.conf && "
                  "echo 10.0.0.9 extra >> /etc/hosts && tail -n1 /etc/hosts && hostname")
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sh", "-c", script),
                                           hostname="box7"))
        await m.start(rec.id)
        assert (await m.wait(rec.id)).status_code == 0
        assert (await output(m, rec.id)).splitlines() == [
            "0:0 644 /etc/hosts", "0:0 644 /etc/hostname", "0:0 644 /etc/resolv.conf",
            "10.0.0.9 extra", "box7"]

    run_engine(env, scenario)
    assert leaks(env) == []


def test_no_rootfs_mount_stays_in_the_host_namespace_while_a_container_runs(
        env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sh", "-c", "ls /bin/sh; sleep 1000")))
        await m.start(rec.id)
        # The detach runs in a worker thread right after the start's answer (each
        # umount waits for an RCU grace period: longer on a loaded host).
        for _ in range(200):
            if not mountinfo_under(env.root, env.exec_root):
                break
            await asyncio.sleep(0.025)
        assert mountinfo_under(env.root, env.exec_root) == []
        assert m.inspect(rec.id).state.status is Status.RUNNING
        for _ in range(100):
            if await output(m, rec.id):
                break
            await asyncio.sleep(0.05)
        assert await output(m, rec.id) == "/bin/sh\n"   # its own copies are intact

    run_engine(env, scenario)
    assert leaks(env) == []
