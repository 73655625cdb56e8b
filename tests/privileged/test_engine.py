"""The container engine on real namespaces, overlayfs and cgroup v2 (busybox image)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.container.errors import StartError
from runtime.container.manager import ContainerManager
from runtime.container.spec import CreateRequest, ExecRequest, RestartPolicy, VolumeRequest
from runtime.container.state import Status
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import IMAGE, EngineEnv, engine_env, leaks, output, run_engine


@pytest.fixture
def env(netns: NetNS, tmp_path: Path) -> Iterator[EngineEnv]:
    with engine_env(netns, tmp_path) as e:
        yield e


async def run(m: ContainerManager, *cmd: str, **kw: object) -> tuple[int, str]:
    rec = await m.create(CreateRequest(image=IMAGE, cmd=cmd, **kw))  # type: ignore[arg-type]
    await m.start(rec.id)
    res = await m.wait(rec.id)
    return res.status_code, await output(m, rec.id)


def test_run_echo_logs_and_exit_code(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        code, out = await run(m, "sh", "-c", "echo hello; echo oops >&2; exit 3")
        assert code == 3
        assert out == "hello\noops\n"
        rec = m.list(all=True)[0]
        assert rec.state.status is Status.EXITED and rec.state.exit_code == 3
        only_err = await output(m, rec.id, stdout=False)
        assert only_err == "oops\n"

    run_engine(env, scenario)
    assert leaks(env) == []


def test_env_user_workdir_hostname(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        code, out = await run(m, "sh", "-c", 'echo "$FOO $HOME"; id -u; id -g; pwd; hostname',
                              env=("FOO=bar",), user="65534:65534", working_dir="/work/dir",
                              hostname="box1")
        assert code == 0
        assert out.split("\n") == ["bar /nonexistent", "65534", "65534", "/work/dir", "box1",
                                   ""]

    run_engine(env, scenario)


def test_command_not_found_is_reported_like_docker(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("nosuchcmd",)))
        with pytest.raises(StartError, match=r'exec: "nosuchcmd": executable file not found '
                                             r'in \$PATH'):
            await m.start(rec.id)
        state = m.inspect(rec.id).state
        assert state.status is Status.CREATED and state.exit_code == 127
        assert leaks(env) == []

    run_engine(env, scenario)


def test_pid_namespace_exec_and_top(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000")))
        await m.start(rec.id)
        eid = await m.exec_create(rec.id, ExecRequest(cmd=("ps", "-o", "pid,args")))
        s = await m.exec_start(eid)
        out = b"".join([chunk async for _, chunk in s.output()]).decode()
        assert await s.wait() == 0
        first = out.splitlines()[1].split(None, 1)
        assert first == ["1", "sleep 1000"]
        eid = await m.exec_create(rec.id, ExecRequest(cmd=("sh", "-c", "exit 7")))
        assert await (await m.exec_start(eid)).wait() == 7
        top = await m.top(rec.id)
        assert "PID" in top.titles and [p[-1] for p in top.processes] == ["sleep 1000"]

    run_engine(env, scenario)


def test_stop_escalates_after_timeout_and_a_trapping_shell_exits_cleanly(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        stubborn = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000")))
        polite = await m.create(CreateRequest(
            image=IMAGE, cmd=("sh", "-c", "trap 'echo bye; exit 0' TERM; "
                              "while true; do sleep 0.05; done")))
        for rec in (stubborn, polite):
            await m.start(rec.id)
        await asyncio.sleep(0.2)
        await m.stop(stubborn.id, timeout=0.5)   # PID 1 ignores SIGTERM: SIGKILL follows
        await m.stop(polite.id, timeout=10)
        assert m.inspect(stubborn.id).state.exit_code == 137
        assert m.inspect(polite.id).state.exit_code == 0
        assert await output(m, polite.id) == "bye\n"

    run_engine(env, scenario)


def test_kill_with_a_signal(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(
            image=IMAGE, cmd=("sh", "-c", "trap 'exit 42' USR1; while true; do sleep 0.05; done")))
        await m.start(rec.id)
        await asyncio.sleep(0.2)
        await m.kill(rec.id, "USR1")
        assert (await m.wait(rec.id)).status_code == 42

    run_engine(env, scenario)


def test_pause_freezes_and_unpause_resumes(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(
            image=IMAGE, cmd=("sh", "-c", "while true; do echo tick; sleep 0.02; done")))
        await m.start(rec.id)
        await asyncio.sleep(0.2)
        await m.pause(rec.id)
        assert m.inspect(rec.id).state.status is Status.PAUSED
        await asyncio.sleep(0.1)
        frozen_at = (await output(m, rec.id)).count("tick")
        await asyncio.sleep(0.3)
        assert (await output(m, rec.id)).count("tick") == frozen_at
        await m.unpause(rec.id)
        await asyncio.sleep(0.3)
        assert (await output(m, rec.id)).count("tick") > frozen_at

    run_engine(env, scenario)


def test_masked_and_readonly_proc_paths(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        _code, out = await run(m, "sh", "-c",
                              "wc -c < /proc/keys; ls /proc/acpi 2>&1 | wc -l; "
                              "(echo 1 > /proc/sys/kernel/domainname) 2>/dev/null "
                              "&& echo wrote || echo ro; "
                              "grep -c ' /proc/sys ' /proc/mounts; "
                              # both masked dirs: empty, read-only (one shared tmpfs)
                              "ls -A /sys/firmware | wc -l; "
                              "touch /sys/firmware/x /proc/acpi/x 2>/dev/null || echo ro; "
                              "grep -E ' /(sys/firmware|proc/acpi) ' /proc/mounts | "
                              "grep -c ' ro,'")
        assert out.split() == ["0", "0", "ro", "1", "0", "ro", "2"]

    run_engine(env, scenario)


def test_read_only_rootfs_with_a_tmpfs(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        _code, out = await run(m, "sh", "-c", "touch /x 2>/dev/null && echo rw || echo ro; "
                              "touch /scratch/x && echo scratch-ok",
                              read_only=True, tmpfs=("/scratch",))
        assert out.split() == ["ro", "scratch-ok"]

    run_engine(env, scenario)


def test_bind_volumes_rw_ro_and_named_volume(env: EngineEnv, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "hello").write_text("from host\n")

    async def scenario(m: ContainerManager) -> None:
        code, out = await run(m, "sh", "-c",
                              "echo data > /rw/new; cat /ro/hello; "
                              "touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused; "
                              "stat -c %u /ro/hello; echo shared > /vol/f",
                              volumes=(VolumeRequest(str(rw), "/rw"),
                                       VolumeRequest(str(ro), "/ro", read_only=True),
                                       VolumeRequest("myvol", "/vol")))
        assert code == 0
        assert out.split("\n") == ["from host", "ro-refused", "0", ""]
        assert (rw / "new").read_text() == "data\n"
        # Files written by container root land owned by host root (idmapped mount).
        assert (rw / "new").stat().st_uid == 0
        _code, out = await run(m, "cat", "/v2/f", volumes=(VolumeRequest("myvol", "/v2"),))
        assert out == "shared\n"

    run_engine(env, scenario)


def test_on_failure_restart_policy_gives_up_after_the_maximum(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sh", "-c", "echo run; exit 1"),
                                           restart_policy=RestartPolicy.parse("on-failure:2")))
        await m.start(rec.id)
        for _ in range(200):
            await asyncio.sleep(0.05)
            st = m.inspect(rec.id).state
            if st.status is Status.EXITED and st.restart_count == 2:
                break
        st = m.inspect(rec.id).state
        assert (st.status, st.restart_count, st.exit_code) == (Status.EXITED, 2, 1)
        assert (await output(m, rec.id)).count("run") == 3

    run_engine(env, scenario)


def test_rm_force_of_running_containers_leaves_nothing(env: EngineEnv) -> None:
    before = leaks(env)

    async def scenario(m: ContainerManager) -> None:
        ids = []
        for _ in range(3):
            rec = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000")))
            await m.start(rec.id)
            ids.append(rec.id)
        await m.pause(ids[0])
        assert len(os.listdir(env.cgroup_root)) >= 3
        for cid in ids:
            await m.remove(cid, force=True)
        assert m.list(all=True) == []
        assert leaks(env) == before

    run_engine(env, scenario)


def test_host_network_sees_the_test_namespace(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        _, own = await run(m, "sh", "-c", "ls /sys/class/net")
        _, host = await run(m, "sh", "-c", "ls /sys/class/net", network_mode="host")
        assert own.split() == ["lo"]
        assert "lo" in host.split()

    run_engine(env, scenario)
