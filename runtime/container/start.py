"""`start`: cgroup, stdio, spawn (spawn.py), network; and what happens at exit.

At exit the daemon reaps through the pidfd, drains the log FIFOs, reads OOM
kills from memory.events, tears down the run (cgroup, netns), records the
exit and applies the restart policy with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from typing import TYPE_CHECKING

from runtime import rootfs
from runtime.cgroups import Resources
from runtime.container import caps as caps_mod
from runtime.container import restart as restart_mod
from runtime.container.errors import Conflict, NotModified, StartError
from runtime.container.init import ChildPlan
from runtime.container.network import NetworkRequest
from runtime.container.spawn import IdMap, InitTimeout, Launch, Stdio, proc_start_time
from runtime.container.state import Status
from runtime.container.supervisor import LogPump, exit_status, open_fifo_pair, unwatch, watch_exit
from runtime.seccomp import default_profile_bpf
from runtime.sys import MountFlag, Namespace, Umount

if TYPE_CHECKING:
    from runtime.container.manager import Container, ContainerManager

log = logging.getLogger("berth.engine")

UNKNOWN_EXIT = 255
UNKNOWN_EXIT_ERROR = ("exit status unknown: the container's process ended while it was not "
                      "a child of this berthd (it exited during a daemon restart)")


def resources(c: Container) -> Resources:
    r = c.record.request
    return Resources(memory=r.memory, memory_swap=r.memory_swap, nano_cpus=r.nano_cpus,
                     cpu_shares=r.cpu_shares, pids_limit=r.pids_limit, io_weight=r.io_weight)


def network_files(mgr: ContainerManager, c: Container) -> tuple[rootfs.Volume, ...]:
    """/etc/hosts, /etc/resolv.conf, /etc/hostname from the network provider, bound
    like volumes (bridge modes only). Added by the networking helper (issue 4)."""
    files_for = getattr(mgr.network, "files_for", None)
    if files_for is None or c.record.spec.network_mode in ("none", "host"):
        return ()
    return tuple(rootfs.Volume(str(src), dst) for dst, src in files_for(c.id).items())


ETC_FILES = ("hosts", "hostname", "resolv.conf")
LOCALHOST_HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                   "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n"
                   "ff02::2\tip6-allrouters\n")


def own_etc_files(mgr: ContainerManager, c: Container) -> tuple[rootfs.Volume, ...]:
    """/etc/hosts, /etc/hostname, /etc/resolv.conf kept by the engine when no network
    provider writes them (none and host modes), bound like volumes, as dockerd does."""
    if network_files(mgr, c):
        return ()
    taken = {v.destination for v in c.record.volumes}
    # In the data dir (on disk), as dockerd keeps them, written afresh at every start.
    # Not in the run dir: on its tmpfs each small file holds a whole page that cannot
    # be reclaimed (12 KiB per container); on disk their pages are page cache.
    d = mgr.data_dir(c.id)
    return tuple(rootfs.Volume(str(d / name), f"/etc/{name}", kind=rootfs.VolumeKind.FILE)
                 for name in ETC_FILES if f"/etc/{name}" not in taken)


def write_etc_files(mgr: ContainerManager, c: Container) -> None:
    spec = c.record.spec
    host_files = {name: _read_host(f"/etc/{name}") for name in ("hosts", "resolv.conf")}
    content = {
        "hostname": f"{spec.hostname}\n",
        # host mode shares the host's names, as with dockerd; none has loopback only
        "hosts": host_files["hosts"] if spec.network_mode == "host" else LOCALHOST_HOSTS,
        "resolv.conf": host_files["resolv.conf"],
    }
    owner = c.record.uid_base   # the container's root (0 without a user namespace)
    for vol in own_etc_files(mgr, c):
        fd = os.open(vol.source, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, content[os.path.basename(vol.source)].encode())
            if owner:
                os.fchown(fd, owner, owner)
        finally:
            os.close(fd)


def _read_host(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def rootfs_spec(mgr: ContainerManager, c: Container) -> rootfs.RootfsSpec:
    rec = c.record
    data, run = mgr.data_dir(c.id), mgr.run_dir(c.id)
    # The engine's mount points layer lowest: /etc/hosts etc. exist in every rootfs
    # without a copy-up into the container's upper dir (see manager.MOUNT_POINTS).
    return rootfs.RootfsSpec(
        layers=(str(mgr.mount_points), *rec.layers), upper=str(data / "upper"),
        work=str(data / "work"),
        rootfs=str(run / "rootfs"), staging=str(run / "stage"),
        volumes=rec.volumes + network_files(mgr, c) + own_etc_files(mgr, c),
        read_only=rec.spec.read_only, idmap=rec.uid_base != 0,
        new_netns=rec.spec.network_mode != "host")


def exit_code_for(error: str) -> int:
    # Docker: 127 when the command is not found, 126 when it cannot be run.
    if "not found" in error or "no such file" in error:
        return 127
    if "permission denied" in error:
        return 126
    return 128


async def start(mgr: ContainerManager, c: Container) -> None:
    await settle(c)
    status = c.state.status
    if status.has_process:
        raise NotModified(f"container {c.id} is already running")
    if not status.can_start() and status is not Status.RESTARTING:
        raise Conflict(f"cannot start container {c.id}: it is {status}")
    rec, spec = c.record, c.record.spec
    cg = mgr.hierarchy.container(c.id)
    warnings = cg.create(resources(c))
    for w in warnings:
        log.warning("container %s: %s", c.id[:12], w)
    c.oom_at_start = c.oom_seen = cg.oom_kills()
    run = mgr.run_dir(c.id)
    run.mkdir(parents=True, exist_ok=True)
    parent_fds: list[int] = []
    child_fds: list[int] = []
    try:
        stdio: Stdio | None = None   # -t: the child opens a pty of its own devpts
        if not spec.tty:
            out_r, out_w = open_fifo_pair(run / "stdout")
            err_r, err_w = open_fifo_pair(run / "stderr")
            if spec.open_stdin:
                # -i: a plain pipe, so closing our end gives the container EOF; it
                # does not outlive berthd (the container then reads EOF).
                stdin_r, stdin_w = os.pipe2(os.O_CLOEXEC)
                c.stdin_w = stdin_w
            else:
                stdin_r = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            parent_fds += [out_r, err_r]
            child_fds += [out_w, err_w, stdin_r]
            stdio = Stdio(stdin_r, out_w, err_w)
        idmap = IdMap(rec.uid_base, mgr.config.subuid_count) if rec.uid_base else None
        ns = Namespace.PID | Namespace.UTS | Namespace.IPC
        if idmap is not None:
            ns |= Namespace.USER
        if spec.network_mode != "host":
            ns |= Namespace.NET
        env = spec.env
        if spec.network_mode not in ("none", "host") and mgr.network is not None:
            # the provider's /etc files must exist before they are staged, and
            # --link variables are known before the clone (networking helper)
            prepare = getattr(mgr.network, "prepare_files", None)
            if prepare is not None:
                prepare(c.id)
            link_env = getattr(mgr.network, "link_env", None)
            if link_env is not None:
                try:
                    env = env + tuple(link_env(_network_request(c)))
                except Exception as e:  # e.g. a --link to a container that is not running
                    raise StartError(str(e)) from e
        write_etc_files(mgr, c)
        rspec = rootfs_spec(mgr, c)
        cap_set = caps_mod.resolve(spec.cap_add, spec.cap_drop)
        plan = ChildPlan(
            steps=tuple(rootfs.container_plan(rspec)), args=spec.args, env=env,
            user=spec.user, working_dir=spec.working_dir, hostname=spec.hostname, caps=cap_set,
            seccomp_bpf=None if spec.seccomp == "unconfined" else default_profile_bpf(cap_set),
            userns=idmap is not None, unshare=Namespace.MOUNT | Namespace.CGROUP, tty=spec.tty,
            domainname=c.record.request.domainname)
        bridged = spec.network_mode not in ("none", "host") and mgr.network is not None
        # One retry of a child that hung before exec (not with a network set up: the
        # provider's state belongs to the first attempt).
        attempts = 1 if bridged else 2
        c.host_mounts = True
        for attempt in range(1, attempts + 1):
            launch = Launch(plan, rspec, stdio, cg, idmap, ns, mgr.sys, cloner=mgr.spawner(),
                            hold=bridged)
            pid = launch.begin()
            try:
                # Read while the child sets up its mounts (fixed at the clone), not after.
                start_time = proc_start_time(pid)
                if bridged:
                    result = await _setup_network(mgr, c, pid)
                    mgr.save(c, record_network=result)
                pidfd = launch.finish()
                # The host's copies of the rootfs mounts, off the loop: each umount waits
                # for an RCU grace period (1-2 ms here), which would hold up the answer
                # and the container's exit seen right after.
                c.host_detach = mgr.spawn_task(_detach_host(c, launch))
                if spec.tty:
                    parent_fds.append(launch.pty_master)
                break
            except InitTimeout as e:
                launch.abort()
                if attempt == attempts:
                    raise
                log.warning("container %s: %s; retrying once", c.id[:12], e)
            except BaseException:
                launch.abort()
                raise
    except (StartError, OSError) as e:
        for fd in parent_fds:
            os.close(fd)
        if c.stdin_w >= 0:
            os.close(c.stdin_w)
            c.stdin_w = -1
        message = str(e) if isinstance(e, StartError) else f"{e.strerror or e}"
        await teardown_run(mgr, c)
        mgr.save(c, exit_code=exit_code_for(message), error=message, pid=0)
        raise StartError(message) from e
    finally:
        for fd in child_fds:
            os.close(fd)
    c.pidfd = pidfd
    c.is_child = True
    c.mark_stopped(False)
    if spec.tty:
        c.pty_master = parent_fds[0]
    c.pumps = output_pumps(c, parent_fds)
    mgr.save(c, status=Status.RUNNING, pid=pid, pid_start_time=start_time,
             started_at=time.time(), exit_code=0, error="", oom_killed=False,
             stopped_by_user=False)
    watch_exit(pidfd, lambda: on_exit(mgr, c))
    mgr.oom_watch.add(c.id, cg.path)
    mgr.publish(c, "start")


async def _detach_host(c: Container, launch: Launch) -> None:
    await asyncio.to_thread(_detach_and_clean, launch)
    c.host_mounts = launch.mounted
    if c.host_detach is asyncio.current_task():
        c.host_detach = None   # done: the handle need not keep the task


def _detach_and_clean(launch: Launch) -> None:
    """Detach the host's copies of the rootfs mounts, then remove their (empty) mount
    point dirs from the run dir: tmpfs inodes a running container no longer needs."""
    launch.detach_host()
    if launch.mounted or launch.spec is None:
        return
    spec = launch.spec
    for target in (*rootfs.host_teardown(spec), spec.staging):
        # rmdir/unlink only: never a recursive removal, which would walk into a mount
        # that is somehow still there. A staged file volume is an empty file.
        try:
            os.rmdir(target)
        except NotADirectoryError:
            with contextlib.suppress(OSError):
                os.unlink(target)
        except OSError:
            pass


async def _host_detached(c: Container) -> None:
    """Wait for the detach started after the last start, if it is still going on."""
    task = c.host_detach
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)
        c.host_detach = None


def output_pumps(c: Container, fds: list[int], readopted: bool = False) -> list[LogPump]:
    """Pumps from the stdout (pty master) and stderr read ends into the log and to
    attached clients."""
    def pump(fd: int, stream: str) -> LogPump:
        def fan_out(data: bytes) -> None:
            for q in c.listeners or ():
                q.put_nowait((stream, data))
        return LogPump(fd, stream, c.log, on_data=fan_out, readopted=readopted)
    return [pump(fd, stream) for fd, stream in zip(fds, ("stdout", "stderr"), strict=False)]


def end_output(c: Container) -> None:
    """Attached clients: this run's output is complete."""
    for q in c.listeners or ():
        q.put_nowait(None)
    c.listeners = None


def _network_request(c: Container) -> NetworkRequest:
    spec = c.record.spec
    return NetworkRequest(c.id, c.record.name, spec.hostname, spec.network_mode,
                          c.record.request.network_options)


async def _setup_network(mgr: ContainerManager, c: Container, pid: int) -> object:
    assert mgr.network is not None
    path = mgr.netns_path(c.id)
    path.touch(exist_ok=True)
    mgr.sys.mount(f"/proc/{pid}/ns/net", str(path), None, MountFlag.BIND)
    try:
        result = await mgr.network.setup(c.id, path, _network_request(c))
    except (StartError, OSError):
        raise
    except Exception as e:
        # A provider failure (port taken, no such network) fails the start like any
        # other, so the caller tears the run down (netns file, cgroup) and records it.
        raise StartError(str(e)) from e
    from runtime.container.codec import to_jsonable

    return to_jsonable(result)


async def teardown_run(mgr: ContainerManager, c: Container) -> None:
    """Undo what a run left: network, netns file, cgroup, run dir. Idempotent."""
    if mgr.network is not None and c.record.spec.network_mode not in ("none", "host"):
        try:
            await mgr.network.teardown(c.id)
        except Exception as e:
            log.warning("container %s: network teardown: %s", c.id[:12], e)
    path = mgr.netns_path(c.id)
    if os.path.lexists(path):   # bound only for a bridged network
        with contextlib.suppress(OSError):
            mgr.sys.umount(str(path), Umount.DETACH)
        path.unlink(missing_ok=True)
    cg = mgr.hierarchy.container(c.id)
    deadline = time.monotonic() + 10
    while not cg.try_remove():
        cg.kill()
        if time.monotonic() > deadline:
            log.warning("container %s: cgroup %s still busy", c.id[:12], cg.path)
            break
        await asyncio.sleep(0.01)
    await _host_detached(c)
    if c.host_mounts:   # not already detached right after the start
        rootfs.detach_all(rootfs.host_teardown(rootfs_spec(mgr, c)), mgr.sys)
        c.host_mounts = False
    # In a worker thread: ~20 file operations that would otherwise run on the loop while
    # the next request (often the next container's create and start) is being served.
    await asyncio.to_thread(shutil.rmtree, mgr.run_dir(c.id), True)


def detach_watchers(c: Container) -> None:
    """Stop watching without touching the process (daemon shutdown)."""
    if c.pidfd >= 0:
        unwatch(c.pidfd)
        os.close(c.pidfd)
        c.pidfd = -1
    for pump in c.pumps:
        pump.on_eof = None
        pump.grow()
        pump.close()
    c.pumps = []


def on_exit(mgr: ContainerManager, c: Container) -> None:
    code = exit_status(c.pidfd) if c.is_child else None
    os.close(c.pidfd)
    c.pidfd = -1
    for pump in c.pumps:
        pump.drain()
        pump.close()
    c.pumps = []
    end_output(c)
    if c.pty_master >= 0:
        c.pty_master = -1  # closed by its pump
    if c.stdin_w >= 0:
        os.close(c.stdin_w)
        c.stdin_w = -1
    mgr.oom_watch.remove(c.id)
    cg = mgr.hierarchy.container(c.id)
    oom = cg.oom_kills() > c.oom_at_start
    error = "" if code is not None else UNKNOWN_EXIT_ERROR
    exit_code = code if code is not None else UNKNOWN_EXIT
    ran = time.time() - c.state.started_at
    restart = restart_mod.should_restart(c.record.request.restart_policy, exit_code,
                                         c.state.restart_count, c.state.stopped_by_user)
    mgr.save(c, status=Status.RESTARTING if restart else Status.EXITED, exit_code=exit_code,
             oom_killed=oom, finished_at=time.time(), pid=0, pid_start_time=0, error=error)
    mgr.note_oom(c.id)   # an OOM kill the live watch has not reported yet: `oom` before `die`
    mgr.publish(c, "die", exitCode=str(exit_code))
    if restart:
        mgr.spawn_task(_after_exit(mgr, c, ran))
        return
    # Waiters learn of the exit now, not after the teardown (~10 ms of umount, rmdir):
    # the next start or rm of this container awaits `settle()` first.
    c.mark_stopped(True)
    c.signal_exit()
    c.teardown = mgr.spawn_task(_teardown_soon(mgr, c))
    if c.record.request.auto_remove:
        from runtime.container import delete

        mgr.spawn_task(delete.remove(mgr, c, force=True, volumes=True))


async def _teardown_soon(mgr: ContainerManager, c: Container) -> None:
    await asyncio.sleep(0)  # the woken waiters answer their clients first
    await teardown_run(mgr, c)


async def settle(c: Container) -> None:
    """Wait for the teardown of the last run, if one is still going on."""
    await _host_detached(c)
    task = c.teardown
    if task is not None:
        c.teardown = None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)


async def _after_exit(mgr: ContainerManager, c: Container, ran: float) -> None:
    await teardown_run(mgr, c)
    c.signal_exit()
    if ran > restart_mod.RESET_AFTER:
        c.consecutive_restarts = 0
    delay = restart_mod.backoff(c.consecutive_restarts)
    c.consecutive_restarts += 1
    c.restart_task = mgr.spawn_task(_restart_later(mgr, c, delay))


async def _restart_later(mgr: ContainerManager, c: Container, delay: float) -> None:
    await asyncio.sleep(delay)
    async with c.lock:
        if c.state.status is not Status.RESTARTING:
            return
        mgr.save(c, restart_count=c.state.restart_count + 1)
        try:
            await start(mgr, c)
        except StartError as e:
            log.warning("container %s: restart failed: %s", c.id[:12], e)
            again = restart_mod.should_restart(c.record.request.restart_policy,
                                               c.state.exit_code, c.state.restart_count,
                                               c.state.stopped_by_user)
            if again:
                delay = restart_mod.backoff(c.consecutive_restarts)
                c.consecutive_restarts += 1
                c.restart_task = mgr.spawn_task(_restart_later(mgr, c, delay))
            else:
                mgr.save(c, status=Status.EXITED)
                c.mark_stopped(True)
            return
    # No `restart` event here: dockerd's policy restarts show as die, start (the `restart`
    # event belongs to the restart verb).
