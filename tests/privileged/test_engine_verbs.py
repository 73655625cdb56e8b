"""More verbs end to end: events, --rm, restart, rename, -t, stats, wait conditions."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.container.errors import Conflict, NoSuchContainer, StartError
from runtime.container.exec import close_stdin
from runtime.container.manager import ContainerManager
from runtime.container.spec import CreateRequest, ExecRequest, VolumeRequest
from runtime.container.state import Status, WaitCondition
from runtime.events import EventBus
from runtime.store.archive import import_rootfs
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import IMAGE, EngineEnv, engine_env, leaks, output
from tests.privileged.images import busybox_rootfs_tar


@pytest.fixture
def env(netns: NetNS, tmp_path: Path) -> Iterator[EngineEnv]:
    with engine_env(netns, tmp_path) as e:
        yield e


def drive(env: EngineEnv, scenario: object, bus: EventBus | None = None) -> None:
    async def main() -> None:
        m = env.manager(events=bus)
        await m.adopt()
        try:
            await scenario(m)  # type: ignore[operator]
        finally:
            for cid in list(m.containers):
                await m.remove(cid, force=True)
            await m.shutdown()

    asyncio.run(main())


def test_events_of_a_run_in_dockers_order(env: EngineEnv) -> None:
    bus = EventBus()

    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sh", "-c", "exit 5"), name="ev"))
        await m.start(rec.id)
        await m.wait(rec.id)
        await m.remove(rec.id)
        evs = [e for e in bus.history() if e.actor_id == rec.id]
        assert [e.action for e in evs] == ["create", "start", "die", "destroy"]
        die = evs[2].to_docker()
        assert die["Actor"]["Attributes"]["exitCode"] == "5"
        assert die["Actor"]["Attributes"]["name"] == "ev"
        assert die["Actor"]["Attributes"]["image"] == IMAGE

    drive(env, scenario, bus)


def test_auto_remove_restart_rename_and_wait_removed(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rm = await m.create(CreateRequest(image=IMAGE, cmd=("true",), auto_remove=True))
        waiter = asyncio.create_task(m.wait(rm.id, WaitCondition.REMOVED))
        await m.start(rm.id)
        await asyncio.wait_for(waiter, 10)
        with pytest.raises(NoSuchContainer):
            m.inspect(rm.id)
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000"), name="a1"))
        await m.start(rec.id)
        pid = m.inspect(rec.id).state.pid
        await m.restart(rec.id, timeout=0)
        st = m.inspect(rec.id).state
        assert st.status is Status.RUNNING and st.pid != pid
        await m.rename("a1", "b1")
        assert m.inspect("b1").id == rec.id
        other = await m.create(CreateRequest(image=IMAGE, cmd=("true",), name="c1"))
        with pytest.raises(Conflict):
            await m.rename(other.id, "b1")
        with pytest.raises(Conflict, match="already in use"):
            await m.create(CreateRequest(image=IMAGE, cmd=("true",), name="b1"))
        with pytest.raises(Conflict, match="Stop the container"):
            await m.remove(rec.id)

    drive(env, scenario)
    assert leaks(env) == []


def test_tty_container_gets_a_terminal_and_attach_sees_its_output(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        # `tty` names the terminal: a /dev/pts/N of the container's own devpts instance.
        rec = await m.create(CreateRequest(
            image=IMAGE, tty=True,
            cmd=("sh", "-c", "[ -t 1 ] && echo isatty; t=$(tty) && ls $t && echo tty:$t; "
                 "read line; echo got:$line")))
        att = m.attach(rec.id)   # before the start: nothing it writes is missed
        await m.start(rec.id)
        fd = m.stdin_fd(rec.id)
        assert fd is not None
        os.write(fd, b"hello\n")
        seen = b""
        while (item := await asyncio.wait_for(att.output.get(), 10)) is not None:
            assert item[0] == "stdout"
            seen += item[1]
        assert b"isatty" in seen and b"got:hello" in seen
        assert b"tty:/dev/pts/0" in seen, seen
        assert "got:hello" in await output(m, rec.id)

    drive(env, scenario)


def test_attach_streams_a_non_tty_containers_output_from_before_its_start(
        env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(
            image=IMAGE, cmd=("sh", "-c", "echo out; echo err >&2; echo more")))
        att = m.attach(rec.id)
        late = m.attach(rec.id)
        m.detach(late)
        await m.start(rec.id)
        got: dict[str, bytes] = {"stdout": b"", "stderr": b""}
        while (item := await asyncio.wait_for(att.output.get(), 10)) is not None:
            got[item[0]] += item[1]
        assert got == {"stdout": b"out\nmore\n", "stderr": b"err\n"}
        assert late.output.empty()
        # A subscription to a container removed before it ran ends too.
        other = await m.create(CreateRequest(image=IMAGE, cmd=("true",)))
        gone = m.attach(other.id)
        await m.remove(other.id)
        assert await asyncio.wait_for(gone.output.get(), 10) is None

    drive(env, scenario)


def test_exec_with_stdin_and_with_a_tty(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sleep", "1000")))
        await m.start(rec.id)
        # -i without -t: a pipe; closing it is the process's EOF.
        eid = await m.exec_create(rec.id, ExecRequest(cmd=("sh", "-c", "cat; echo eof"),
                                                      stdin=True))
        s = await m.exec_start(eid)
        assert s.stdin >= 0
        os.write(s.stdin, b"typed\n")
        close_stdin(s)
        out = b"".join([chunk async for _, chunk in s.output()])
        assert await s.wait() == 0 and out == b"typed\neof\n"
        # -t: the pty comes from the container's devpts, so `tty` names a node inside.
        eid = await m.exec_create(rec.id, ExecRequest(
            cmd=("sh", "-c", "t=$(tty) && ls $t && echo tty:$t"), tty=True))
        s = await m.exec_start(eid)
        out = b"".join([chunk async for _, chunk in s.output()])
        assert await s.wait() == 0, out
        assert b"tty:/dev/pts/" in out

    drive(env, scenario)


def test_stats_count_the_containers_processes(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=(
            "sh", "-c", "sleep 1000 & sleep 1000 & i=0; while [ $i -lt 20000 ]; do "
            "i=$((i+1)); done; wait")))
        await m.start(rec.id)
        await asyncio.sleep(0.5)
        st = m.stats(rec.id)
        assert st.pids_current == 3
        assert st.cpu_usage_usec > 0
        info = m.info()
        assert info.running == 1 and info.cgroup_root == env.cgroup_root

    drive(env, scenario)


def test_unknown_user_fails_the_start_with_dockers_message(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("true",), user="ghost"))
        with pytest.raises(StartError, match="unable to find user ghost"):
            await m.start(rec.id)
        assert leaks(env) == []

    drive(env, scenario)


def test_interactive_stdin_without_tty_reaches_the_container_then_eof(env: EngineEnv) -> None:
    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, cmd=("sh", "-c", "cat; echo eof"),
                                           open_stdin=True))
        await m.start(rec.id)
        fd = m.stdin_fd(rec.id)
        assert fd is not None
        os.write(fd, b"piped in\n")
        m.close_stdin(rec.id)
        assert (await asyncio.wait_for(m.wait(rec.id), 10)).status_code == 0
        assert await output(m, rec.id) == "piped in\neof\n"

    drive(env, scenario)


def test_without_user_namespace_the_container_runs_as_host_root(env: EngineEnv,
                                                                  tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()

    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, userns=False,
                                           cmd=("sh", "-c", "cat /proc/self/uid_map; "
                                                "touch /etc/x && echo /out/ok > /out/f"),
                                           volumes=(VolumeRequest(str(shared), "/out"),)))
        await m.start(rec.id)
        assert (await m.wait(rec.id)).status_code == 0
        assert (await output(m, rec.id)).split() == ["0", "0", "4294967295"]
        assert (shared / "f").read_text() == "/out/ok\n"

    drive(env, scenario)
    assert leaks(env) == []


def test_etc_hostname_and_hosts_are_provided(env: EngineEnv) -> None:
    # As under /root: the data root's parent lets only root through, and the files are
    # there (on disk, as dockerd keeps them), yet the container's mapped root gets them.
    assert not env.root.parent.stat().st_mode & 0o001

    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image=IMAGE, hostname="web1", read_only=True,
                                           cmd=("sh", "-c", "cat /etc/hostname; "
                                                "grep -c localhost /etc/hosts; "
                                                "echo '10.0.0.9 db' >> /etc/hosts")))
        await m.start(rec.id)
        assert (await m.wait(rec.id)).status_code == 0
        assert (await output(m, rec.id)).split() == ["web1", "2"]
        # Writable even on a read-only rootfs, as Docker's: the container's own file.
        assert "10.0.0.9 db" in (m.data_dir(rec.id) / "hosts").read_text()
        assert (m.data_dir(rec.id) / "hostname").read_text() == "web1\n"

    drive(env, scenario)
    assert leaks(env) == []


def test_an_image_whose_resolv_conf_is_a_dangling_link_gets_the_engines_file(
        env: EngineEnv, tmp_path: Path) -> None:
    # As in images made for systemd-resolved: /etc/resolv.conf is a link to a file that
    # only a booted host has. The engine's file goes on the link itself, not where the
    # link points (that path is not in the image: following it was ENOENT).
    tar = busybox_rootfs_tar(tmp_path / "resolved.tar", links={
        "etc/resolv.conf": "../run/systemd/resolve/stub-resolv.conf"})
    with tar.open("rb") as f:
        import_rootfs(env.images, f, tag="resolved:test")

    async def scenario(m: ContainerManager) -> None:
        rec = await m.create(CreateRequest(image="resolved:test",
                                           cmd=("cat", "/etc/resolv.conf")))
        await m.start(rec.id)
        assert (await m.wait(rec.id)).status_code == 0
        written = (m.data_dir(rec.id) / "resolv.conf").read_text()
        assert await output(m, rec.id) == written

    drive(env, scenario)
    assert leaks(env) == []
