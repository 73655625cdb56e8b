"""Linux capabilities by name, and Docker's default set for containers."""

from __future__ import annotations

from collections.abc import Iterable

from runtime.container.errors import InvalidRequest

CAPS: dict[str, int] = {name: i for i, name in enumerate((
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
))}

# moby oci/caps/defaults.go
DEFAULT_CAPS: tuple[str, ...] = (
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
)


def _norm(name: str) -> str:
    n = name.strip().upper()
    n = n.removeprefix("CAP_")
    if n != "ALL" and n not in CAPS:
        raise InvalidRequest(f"unknown capability: {name!r}")
    return n


def resolve(cap_add: Iterable[str] = (), cap_drop: Iterable[str] = ()) -> tuple[int, ...]:
    """Docker's rule: start from the defaults (or ALL), add, then drop (ALL drops all)."""
    add = [_norm(c) for c in cap_add]
    drop = [_norm(c) for c in cap_drop]
    caps = set(CAPS) if "ALL" in add else set(DEFAULT_CAPS) | set(add)
    if "ALL" in drop:
        caps = {c for c in add if c != "ALL"}
    else:
        caps -= set(drop)
    return tuple(sorted(CAPS[c] for c in caps))
