"""The engine under test: a ContainerManager on temp roots, inside the test's netns.

`engine_env` makes a data root, an exec root (searchable by containers' mapped
roots), a cgroup root under the unified hierarchy with a random name, and an
image store holding a busybox image imported from Debian's busybox-static.
`run_engine` runs a scenario against a fresh manager on its own event loop
and force-removes what the scenario left. `leaks` lists what a removed
container could have left behind: mounts, cgroups, netns files, FIFOs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from runtime import cgroups
from runtime.container.manager import ContainerManager, EngineConfig
from runtime.events import EventBus
from runtime.logs import LogOptions
from runtime.store.archive import import_rootfs
from runtime.store.images import ImageStore
from runtime.sys import Namespace, Umount
from runtime.sys.libc import LibcSys
from tests.privileged.conftest import NetNS
from tests.privileged.images import busybox_rootfs_tar

T = TypeVar("T")
IMAGE = "busybox:test"


@dataclass
class EngineEnv:
    root: Path
    exec_root: Path
    cgroup_root: Path
    images: ImageStore
    netns: NetNS

    def config(self, **kw: object) -> EngineConfig:
        return EngineConfig(root=self.root, exec_root=self.exec_root,
                            cgroup_root=self.cgroup_root, **kw)  # type: ignore[arg-type]

    def manager(self, events: EventBus | None = None, **kw: object) -> ContainerManager:
        return ContainerManager(self.config(**kw), self.images, events or EventBus())


def mountinfo_under(*paths: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if any(str(p) in line for p in paths)]


def leaks(env: EngineEnv) -> list[str]:
    found = [f"mount: {m.split()[4]}" for m in mountinfo_under(env.root, env.exec_root)]
    if env.cgroup_root.is_dir():
        found += [f"cgroup: {p}" for p in env.cgroup_root.iterdir() if p.is_dir()]
    netns_dir = env.exec_root / "netns"
    if netns_dir.is_dir():
        found += [f"netns: {p}" for p in netns_dir.iterdir()]
    run_dir = env.exec_root / "containers"
    if run_dir.is_dir():
        found += [f"run dir: {p}" for p in run_dir.iterdir()]
    return found


@contextmanager
def engine_env(netns: NetNS, tmp_path: Path) -> Iterator[EngineEnv]:
    exec_root = Path(tempfile.mkdtemp(prefix="berth-run-"))
    exec_root.chmod(0o711)
    cgroup_root = cgroups.default_root().with_name(f"berth-test-{uuid.uuid4().hex[:8]}")
    root = tmp_path / "data"
    images = ImageStore(root)
    tar = busybox_rootfs_tar(tmp_path / "busybox.tar")
    with tar.open("rb") as f:
        import_rootfs(images, f, tag=IMAGE, changes=["CMD [\"sh\"]"])
    sys = LibcSys()
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns.path, os.O_RDONLY)
    sys.setns(target, Namespace.NET)
    try:
        yield EngineEnv(root, exec_root, cgroup_root, images, netns)
    finally:
        sys.setns(own, Namespace.NET)
        os.close(own)
        os.close(target)
        for m in reversed(mountinfo_under(root, exec_root)):
            with contextlib.suppress(OSError):
                sys.umount(m.split()[4], Umount.DETACH)
        if cgroup_root.is_dir():
            for p in cgroup_root.iterdir():
                if p.is_dir():
                    (p / "cgroup.kill").write_text("1")
                    for _ in range(200):
                        try:
                            p.rmdir()
                            break
                        except OSError:
                            time.sleep(0.01)
            cgroup_root.rmdir()
        shutil.rmtree(exec_root, ignore_errors=True)


def run_engine(env: EngineEnv, scenario: Callable[[ContainerManager], Awaitable[T]],
               **config: object) -> T:
    async def main() -> T:
        m = env.manager(**config)
        await m.adopt()
        try:
            return await scenario(m)
        finally:
            for cid in list(m.containers):
                await m.remove(cid, force=True)
            await m.shutdown()

    return asyncio.run(main())


async def output(m: ContainerManager, ref: str, **opts: object) -> str:
    o = LogOptions(**opts)  # type: ignore[arg-type]
    return b"".join([e.line async for e in m.logs(ref, o)]).decode()
