"""First-boot provisioning: a TOML file or systemd credentials configure a host.

Sources, later ones winning per key:
  1. a config drive: a filesystem labelled `BERTH-PROV` holding provision.toml
  2. `/etc/berth/provision.toml` (or `--file PATH`)
  3. the credential `berth.provision`: a whole provision.toml
  4. credentials `berth.provision.<section>.<key>` (or `berth.provision.hostname`),
     one value each, e.g. `berth.provision.fleet.group=workers`

Flow: read every source -> merge -> validate everything (all problems are
reported, each with its place) -> build a plan of file writes -> apply it
(temp + rename + fsync) -> record a stamp, so an unchanged provisioning is
not applied twice. Invalid provisioning changes nothing: the unit fails
with the problems on the console and the host boots on (berthd's socket,
the network and the console stay up for repair).

What lands where:
  hostname        /etc/hostname, and the running hostname
  [fleet]         /etc/hostos/fleet.d/50-provision.toml (see hostos.fleet)
  [update]        /etc/hostos/update.d/50-provision.toml; tuf_root ->
                  /etc/hostos/tuf/root.json
  [tls]           /etc/credstore/berth.tls.{ca,cert,key}: berthd.service
                  imports berth.tls.* credentials from there
  [[containers]]  /etc/berth/containers.d/<name>.toml
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hostos.errors import HostosError
from hostos.fleetlock.protocol import GROUP_RE
from hostos.fleetlock.strategy import StrategyKind
from hostos.tomlout import dumps as toml_dumps
from runtime.fsutil import write_atomic
from runtime.run import CommandError, run

CREDENTIAL = "berth.provision"
DEFAULT_FILE = Path("/etc/berth/provision.toml")
CONFIG_DRIVE_LABEL = "BERTH-PROV"
STAMP = Path("var/lib/hostos/provisioned")

_HOSTNAME_RE = re.compile(r"^(?!-)[a-zA-Z0-9-]{1,63}(?<!-)(\.(?!-)[a-zA-Z0-9-]{1,63}(?<!-))*$")
_CONTAINER_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class ProvisionError(HostosError):
    def __init__(self, origin: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n  ".join(problems)
        super().__init__(f"invalid provisioning ({origin}), nothing was changed:\n  {lines}")


@dataclass(frozen=True)
class FileWrite:
    path: str  # relative to the root
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class ProvisionPlan:
    hostname: str | None
    writes: tuple[FileWrite, ...]
    digest: str  # of the merged provisioning, for the stamp


# --- reading -----------------------------------------------------------------

def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def parse_credentials(creds: Mapping[str, bytes]) -> tuple[dict[str, Any], list[str]]:
    """The provisioning carried by systemd credentials; problems as a list."""
    data: dict[str, Any] = {}
    problems: list[str] = []
    if CREDENTIAL in creds:
        try:
            data = tomllib.loads(creds[CREDENTIAL].decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            problems.append(f"credential {CREDENTIAL}: not TOML: {e}")
    for name in sorted(creds):
        if not name.startswith(CREDENTIAL + "."):
            continue
        parts = name[len(CREDENTIAL) + 1:].split(".")
        value = creds[name].decode(errors="replace").strip()
        if parts == ["hostname"]:
            data["hostname"] = value
        elif len(parts) == 2 and parts[0] in ("fleet", "update"):
            data.setdefault(parts[0], {})[parts[1]] = value
        else:
            problems.append(f"credential {name}: expected {CREDENTIAL}.hostname or "
                            f"{CREDENTIAL}.<fleet|update>.<key>")
    return data, problems


def read_credentials(directory: str | None) -> dict[str, bytes]:
    if not directory:
        return {}
    d = Path(directory)
    return {p.name: p.read_bytes() for p in d.iterdir()
            if p.name == CREDENTIAL or p.name.startswith(CREDENTIAL + ".")}


# --- validation ----------------------------------------------------------------

def _url(problems: list[str], where: str, value: Any) -> str:
    if not isinstance(value, str):
        problems.append(f"{where}: must be a URL string, not {value!r}")
        return ""
    u = urlparse(value)
    if u.scheme not in ("http", "https") or not u.hostname:
        problems.append(f"{where}: {value!r} is not an http(s) URL")
    return value


def _known(problems: list[str], where: str, table: Mapping[str, Any], keys: set[str]) -> None:
    for k in sorted(set(table) - keys):
        problems.append(f"{where}: unknown key {k!r} (known: {', '.join(sorted(keys))})")


def _table(problems: list[str], data: Mapping[str, Any], name: str) -> dict[str, Any]:
    t = data.get(name, {})
    if not isinstance(t, dict):
        problems.append(f"[{name}]: must be a table")
        return {}
    return t


def _pem(problems: list[str], where: str, value: Any, kind: str) -> bytes:
    if not isinstance(value, str) or f"-----BEGIN {kind}" not in value:
        problems.append(f"{where}: expected a PEM block '-----BEGIN {kind}...'")
        return b""
    return value.encode()


def _check_tls(problems: list[str], tls: dict[str, Any]) -> list[FileWrite]:
    _known(problems, "[tls]", tls, {"ca", "cert", "key"})
    if not tls:
        return []
    if set(tls) != {"ca", "cert", "key"}:
        problems.append("[tls]: give all of ca, cert and key (berthd needs the three)")
        return []
    ca = _pem(problems, "[tls] ca", tls["ca"], "CERTIFICATE")
    cert = _pem(problems, "[tls] cert", tls["cert"], "CERTIFICATE")
    key = _pem(problems, "[tls] key", tls["key"], "")
    if ca and cert and key:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        try:
            x509.load_pem_x509_certificate(ca)
            leaf = x509.load_pem_x509_certificate(cert)
            pub = load_pem_private_key(key, password=None).public_key()
            if pub.public_numbers() != leaf.public_key().public_numbers():  # type: ignore[union-attr]
                problems.append("[tls]: key does not belong to cert")
        except (ValueError, TypeError) as e:
            problems.append(f"[tls]: {e}")
    return [FileWrite("etc/credstore/berth.tls.ca", ca, 0o600),
            FileWrite("etc/credstore/berth.tls.cert", cert, 0o600),
            FileWrite("etc/credstore/berth.tls.key", key, 0o600)]


def _check_update(problems: list[str], upd: dict[str, Any]) -> list[FileWrite]:
    _known(problems, "[update]", upd, {"url", "tuf_root", "strategy", "window", "boot_tries"})
    out: dict[str, Any] = {}
    writes = []
    if "url" in upd:
        out["url"] = _url(problems, "[update] url", upd["url"])
    if "boot_tries" in upd:
        tries = upd["boot_tries"]
        if not isinstance(tries, int) or isinstance(tries, bool) or not 1 <= tries <= 9:
            problems.append(f"[update] boot_tries: {tries!r}: a number in 1..9")
        out["boot_tries"] = tries
    if "strategy" in upd:
        try:
            out["strategy"] = StrategyKind(upd["strategy"]).value
        except ValueError:
            problems.append(f"[update] strategy: {upd['strategy']!r} is not one of "
                            f"{', '.join(s.value for s in StrategyKind)}")
    if "window" in upd:
        out["window"] = _check_window(problems, upd["window"])
    elif out.get("strategy") == StrategyKind.WINDOW:
        problems.append("[update] strategy 'window' needs an [update.window] table")
    if "tuf_root" in upd:
        try:
            root = json.loads(upd["tuf_root"])
            if root["signed"]["_type"] != "root":
                raise ValueError(f"_type is {root['signed']['_type']!r}")
            writes.append(FileWrite("etc/hostos/tuf/root.json",
                                    json.dumps(root, indent=1).encode()))
        except (TypeError, ValueError, KeyError) as e:
            problems.append(f"[update] tuf_root: not a TUF root.json ({type(e).__name__}: {e})")
    if out:
        writes.append(FileWrite("etc/hostos/update.d/50-provision.toml",
                                toml_dumps({"update": out}).encode()))
    return writes


def _check_window(problems: list[str], w: Any) -> dict[str, Any]:
    if not isinstance(w, dict):
        problems.append("[update.window]: must be a table with days, start, minutes")
        return {}
    _known(problems, "[update.window]", w, {"days", "start", "minutes"})
    days = w.get("days", list(DAYS))
    if not isinstance(days, list) or not days or any(d not in DAYS for d in days):
        problems.append(f"[update.window] days: {days!r}: a list of {', '.join(DAYS)}")
    start = w.get("start")
    if not isinstance(start, str) or not _HHMM_RE.match(start):
        problems.append(f"[update.window] start: {start!r}: HH:MM, in UTC")
    minutes = w.get("minutes")
    if not isinstance(minutes, int) or not 1 <= minutes <= 24 * 60:
        problems.append(f"[update.window] minutes: {minutes!r}: a number in 1..1440")
    return {"days": days, "start": start, "minutes": minutes}


def _check_containers(problems: list[str], containers: Any) -> list[FileWrite]:
    if not isinstance(containers, list):
        problems.append("containers: use [[containers]] tables")
        return []
    writes, seen = [], set()
    for i, c in enumerate(containers, 1):
        where = f"[[containers]] #{i}"
        if not isinstance(c, dict):
            problems.append(f"{where}: must be a table")
            continue
        name, image = c.get("name"), c.get("image")
        if not isinstance(name, str) or not _CONTAINER_RE.match(name):
            problems.append(f"{where}: name {name!r} must match {_CONTAINER_RE.pattern}")
            continue
        if name in seen:
            problems.append(f"{where}: name {name!r} is used twice")
        seen.add(name)
        if not isinstance(image, str) or not image:
            problems.append(f"{where} ({name}): image must be a non-empty string")
        writes.append(FileWrite(f"etc/berth/containers.d/{name}.toml", toml_dumps(c).encode()))
    return writes


def plan(data: Mapping[str, Any], origin: str = "provisioning") -> ProvisionPlan:
    """Validate merged provisioning and turn it into file writes; raise on any problem."""
    problems: list[str] = []
    _known(problems, "top level", data, {"hostname", "fleet", "update", "tls", "containers"})
    hostname = data.get("hostname")
    if hostname is not None and (not isinstance(hostname, str) or len(hostname) > 64
                                 or not _HOSTNAME_RE.match(hostname)):
        problems.append(f"hostname: {hostname!r} is not a valid host name (RFC 1123, <= 64)")
    writes: list[FileWrite] = []
    if isinstance(hostname, str):
        writes.append(FileWrite("etc/hostname", (hostname + "\n").encode()))
    fleet = _table(problems, data, "fleet")
    _known(problems, "[fleet]", fleet, {"group", "fleetlock_url", "etcd_url"})
    if "group" in fleet and (not isinstance(fleet["group"], str)
                             or not GROUP_RE.match(fleet["group"])):
        problems.append(f"[fleet] group: {fleet['group']!r} must match {GROUP_RE.pattern}")
    for k in ("fleetlock_url", "etcd_url"):
        if k in fleet:
            _url(problems, f"[fleet] {k}", fleet[k])
    if fleet:
        writes.append(FileWrite("etc/hostos/fleet.d/50-provision.toml",
                                toml_dumps({"fleet": fleet}).encode()))
    update = _table(problems, data, "update")
    writes += _check_update(problems, update)
    if update.get("strategy") == StrategyKind.FLEET_LOCK and not fleet.get("fleetlock_url"):
        problems.append("[update] strategy 'fleet_lock' needs [fleet] fleetlock_url")
    writes += _check_tls(problems, _table(problems, data, "tls"))
    writes += _check_containers(problems, data.get("containers", []))
    if problems:
        raise ProvisionError(origin, problems)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return ProvisionPlan(hostname if isinstance(hostname, str) else None, tuple(writes), digest)


# --- applying --------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if mode & 0o077 == 0 else 0o755)
    write_atomic(path, data, mode)


def apply(p: ProvisionPlan, root: Path = Path("/"), *, set_hostname: bool = True) -> bool:
    """Write the plan under root; False (and nothing done) if it was applied already."""
    stamp = root / STAMP
    if stamp.exists() and stamp.read_text().strip() == p.digest:
        return False
    for w in p.writes:
        _write_atomic(root / w.path, w.data, w.mode)
    if p.hostname and set_hostname:
        socket.sethostname(p.hostname)
    _write_atomic(stamp, (p.digest + "\n").encode(), 0o644)
    return True


def gather(file: Path | None, creds: Mapping[str, bytes],
           drive: Path | None = None) -> tuple[dict[str, Any], str]:
    """Read and merge every source; returns the data and a description of its origin."""
    data: dict[str, Any] = {}
    origins, problems = [], []
    for path in (p for p in (drive, file) if p is not None):
        if path.exists():
            try:
                _merge(data, tomllib.loads(path.read_text()))
                origins.append(str(path))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
                problems.append(f"{path}: {e}")
    cred_data, cred_problems = parse_credentials(creds)
    problems += cred_problems
    if cred_data:
        _merge(data, cred_data)
        origins.append("credentials")
    origin = " + ".join(origins) or "no source"
    if problems:
        raise ProvisionError(origin, problems)
    return data, origin


@contextlib.contextmanager
def mount_config_drive() -> Iterator[Path | None]:
    """Mount a BERTH-PROV labelled filesystem read-only, if there is one."""
    dev = Path("/dev/disk/by-label") / CONFIG_DRIVE_LABEL
    if not dev.exists():
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="berth-prov-") as mnt:
        try:
            run(["mount", "-o", "ro,nosuid,nodev,noexec", str(dev), mnt])
        except CommandError as e:
            print(f"hostos provision: config drive {dev}: {e}", file=sys.stderr)
            yield None
            return
        try:
            yield Path(mnt) / "provision.toml"
        finally:
            run(["umount", mnt], check=False)


def _provision_cmd(args: argparse.Namespace) -> int:
    creds = read_credentials(os.environ.get("CREDENTIALS_DIRECTORY"))
    drive_cm = mount_config_drive() if args.config_drive else contextlib.nullcontext(None)
    with drive_cm as drive:
        data, origin = gather(args.file, creds, drive)
    if not data:
        print("hostos provision: no provisioning given; nothing to do")
        return 0
    p = plan(data, origin)
    if args.check:
        print(f"provisioning from {origin} is valid: {len(p.writes)} file(s)")
        return 0
    root = Path(args.root)
    if apply(p, root, set_hostname=root == Path("/")):
        print(f"hostos provision: applied {origin}: " + ", ".join("/" + w.path for w in p.writes))
    else:
        print(f"hostos provision: {origin} already applied")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("provision", help="apply first-boot provisioning (file or credentials)")
    p.add_argument("--file", type=Path, default=DEFAULT_FILE, help="provision.toml to read")
    p.add_argument("--root", default="/", help="write under this root (image preparation)")
    p.add_argument("--check", action="store_true", help="validate only, change nothing")
    p.add_argument("--config-drive", action="store_true",
                   help=f"also read provision.toml from a filesystem labelled {CONFIG_DRIVE_LABEL}")
    p.set_defaults(func=_provision_cmd)
