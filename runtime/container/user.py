"""--user resolution against a container's own /etc/passwd and /etc/group.

The rules live in `_clone` (C): a container's child resolves its user there
between clone and exec, and the build's COPY --chown uses the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.sys import _clone


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...]    # the primary group first, as dockerd sets AdditionalGids
    home: str


class UserError(ValueError):
    pass


def resolve(user: str, passwd: str, group: str) -> ExecUser:
    """user is "", "name", "uid", "name:group", "uid:gid" (Docker's --user)."""
    try:
        uid, gid, groups, home = _clone.resolve_user(user, passwd, group)
    except LookupError as e:
        raise UserError(str(e)) from None
    return ExecUser(uid, gid, groups, home)
