"""--user resolution against the container's own /etc/passwd and /etc/group."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExecUser:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


class UserError(ValueError):
    pass


def _table(text: str) -> list[list[str]]:
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve(user: str, passwd: str, group: str) -> ExecUser:
    """user is "", "name", "uid", "name:group", "uid:gid" (Docker's --user)."""
    name, _, grp = (user or "0").partition(":")
    users = _table(passwd)
    groups = _table(group)
    entry = next((u for u in users if len(u) >= 7 and u[0] == name), None)
    if entry is None and name.isdigit():
        entry = next((u for u in users if len(u) >= 7 and u[2] == name), None)
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
        uname = entry[0]
    elif name.isdigit():
        uid, gid, home, uname = int(name), int(name) if name == "0" else 0, "/", ""
    else:
        raise UserError(f"unable to find user {name}: no matching entries in passwd file")
    if grp:
        g = next((x for x in groups if len(x) >= 3 and x[0] == grp), None)
        if g is not None:
            gid = int(g[2])
        elif grp.isdigit():
            gid = int(grp)
        else:
            raise UserError(f"unable to find group {grp}: no matching entries in group file")
    extra = tuple(sorted({int(g[2]) for g in groups
                          if len(g) >= 4 and uname and uname in g[3].split(",")} - {gid}))
    # The primary group leads the supplementary ones, as dockerd sets AdditionalGids
    # (since the fix for GHSA-rc4r-wh2q-q6c4): `id` shows groups=<gid>,...
    return ExecUser(uid, gid, (gid, *extra), home or "/")
