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

    def unshare(self, flags: Namespace) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: Namespace) -> None:
        self._record("setns", fd, nstype)
