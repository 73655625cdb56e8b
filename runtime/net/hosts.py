"""The files a container's /etc gets from networking: hosts, resolv.conf, hostname.

Rendered as text here; `write_files` puts them in the container's state
folder for the engine to bind-mount over /etc.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)


@dataclass(frozen=True)
class HostResolv:
    """What the host's resolv.conf says (the DNS responders forward to these)."""

    nameservers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> HostResolv:
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            servers.append(words[1])
        elif words[0] in ("search", "domain"):
            search = words[1:]
        elif words[0] == "options":
            options.extend(words[1:])
    return HostResolv(tuple(servers), tuple(search), tuple(options))


def read_host_resolv(path: Path = Path("/etc/resolv.conf")) -> HostResolv:
    try:
        return parse_resolv_conf(path.read_text())
    except OSError:
        return HostResolv()


def render_hosts(
    hostname: str,
    addresses: Sequence[str],
    links: Iterable[tuple[str, str, str]] = (),
    extra: Iterable[tuple[str, str]] = (),
    domainname: str = "",
) -> str:
    """/etc/hosts: localhost, the container's own addresses under its hostname,
    legacy links as `IP alias name` (as Docker wrote them), then --add-host."""
    fqdn = f"{hostname}.{domainname} {hostname}" if domainname else hostname
    lines = [LOCALHOST]
    for addr in addresses:
        lines.append(f"{addr}\t{fqdn}\n")
    for alias, name, ip in links:
        names = alias if alias == name else f"{alias} {name}"
        lines.append(f"{ip}\t{names}\n")
    for host, ip in extra:
        lines.append(f"{ip}\t{host}\n")
    return "".join(lines)


def render_resolv_conf(nameservers: Sequence[str], search: Sequence[str] = (),
                       options: Sequence[str] = ()) -> str:
    out = [f"nameserver {ns}\n" for ns in nameservers]
    if search:
        out.append("search " + " ".join(search) + "\n")
    if options:
        out.append("options " + " ".join(options) + "\n")
    return "".join(out)


def _write_in_place(path: Path, text: str) -> None:
    # In place, not temp + rename: the engine bind-mounts these very inodes into
    # the container (Docker does the same), and a rename would leave the mount
    # on the old file. No fsync: they live under the exec root (tmpfs) and are
    # rewritten at every start. The container is not running yet when they are
    # written, so nobody reads half a file.
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)


def write_files(folder: Path, *, hosts: str, resolv_conf: str, hostname: str) -> dict[str, Path]:
    """Write hosts, resolv.conf and hostname into folder; {"/etc/hosts": path, ...}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, text in (("hosts", hosts), ("resolv.conf", resolv_conf),
                       ("hostname", hostname + "\n")):
        _write_in_place(folder / name, text)
        out[f"/etc/{name}"] = folder / name
    return out
