"""A recording `Sys`: remembers each call instead of making it (unit tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from runtime.sys.protocol import MountFlag, Namespace, Umount


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[object, ...]


@dataclass
class RecordingSys:
    """Records calls in order; `fail` maps a call name to an OSError to raise."""

    calls: list[Call] = field(default_factory=list)
    flags_by_path: dict[str, MountFlag] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    fail: dict[str, OSError] = field(default_factory=dict)

    def _record(self, name: str, *args: object) -> None:
        if name in self.fail:
            raise self.fail[name]
        self.calls.append(Call(name, args))

    def named(self, name: str) -> list[tuple[object, ...]]:
        return [c.args for c in self.calls if c.name == name]

    def mount(self, source: str, target: str, fstype: str | None,
              flags: MountFlag, data: str | None = None) -> None:
        self._record("mount", source, target, fstype, flags, data)

    def umount(self, target: str, flags: Umount = Umount.NONE) -> None:
        self._record("umount", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def chdir(self, path: str) -> None:
        self._record("chdir", path)

    def chroot(self, path: str) -> None:
        self._record("chroot", path)

    def makedirs(self, path: str, mode: int = 0o755) -> None:
        self._record("makedirs", path, mode)

    def touch(self, path: str) -> None:
        self._record("touch", path)

    def symlink(self, target: str, link: str) -> None:
        self._record("symlink", target, link)

    def path_kind(self, path: str) -> str | None:
        return self.kinds.get(path)

    def mount_flags(self, path: str) -> MountFlag:
        return self.flags_by_path.get(path, MountFlag.NONE)

    def idmapped_bind(self, source: str, target: str, userns_fd: int) -> None:
        self._record("idmapped_bind", source, target, userns_fd)

    def unshare(self, flags: Namespace) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: Namespace) -> None:
        self._record("setns", fd, nstype)

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def setdomainname(self, name: str) -> None:
        self._record("setdomainname", name)
