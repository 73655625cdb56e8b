"""Update agent settings: TOML fragments merged from /usr/lib, /run, /etc.

    {/usr/lib,/run,/etc}/hostos/update.d/*.toml   [update] table; later folders
                                                  win, files in name order
    {/etc,/run,/usr/lib}/hostos/tuf/root.json     trusted root; first found wins

First-boot provisioning (hostos.provision) writes /etc/hostos/update.d/
50-provision.toml and /etc/hostos/tuf/root.json; the image carries the
defaults in /usr/lib. The reboot strategy keys (`strategy`, `window`) share
the [update] table but belong to hostos.fleetlock.strategy, which validates
them. The merge happens on plain dicts; the result is validated once into a
frozen UpdateSettings, so a bad fragment is reported with its file name and
nothing runs on half-parsed settings.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostos.errors import HostosError

DEFAULT_ROOTS = (Path("/usr/lib"), Path("/run"), Path("/etc"))
MAX_TRIES = 9
# [update] keys read by the reboot strategy (hostos.fleetlock.strategy), not here.
FOREIGN_KEYS = frozenset({"strategy", "window"})


class ConfigError(HostosError):
    pass


@dataclass(frozen=True)
class UpdateSettings:
    url: str | None
    channel: str
    entry_name: str
    boot_tries: int
    state_dir: Path
    esp: Path | None
    trusted_root: Path | None

    @property
    def metadata_url(self) -> str:
        assert self.url is not None
        return self.url.rstrip("/") + "/metadata/"

    @property
    def targets_url(self) -> str:
        assert self.url is not None
        return self.url.rstrip("/") + "/targets/"


# key -> (type, default). One table drives parsing, defaults and validation.
SETTINGS: Mapping[str, tuple[type, Any]] = {
    "url": (str, None),
    "channel": (str, "stable"),
    "entry_name": (str, "berth"),
    "boot_tries": (int, 3),
    "state_dir": (str, "/var/lib/hostos/update"),
    "esp": (str, None),
    "trusted_root": (str, None),
}


def fragment_paths(roots: Sequence[Path] = DEFAULT_ROOTS) -> list[Path]:
    paths = []
    for root in roots:
        d = root / "hostos" / "update.d"
        if d.is_dir():
            paths.extend(sorted(p for p in d.iterdir() if p.suffix == ".toml"))
    return paths


def merge(fragments: Sequence[tuple[Path, Mapping[str, Any]]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path, data in fragments:
        table = data.get("update", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [update] must be a table")
        for key, value in table.items():
            if key in FOREIGN_KEYS:
                continue
            if key not in SETTINGS:
                raise ConfigError(f"{path}: unknown setting update.{key}")
            typ = SETTINGS[key][0]
            if not isinstance(value, typ) or isinstance(value, bool):
                raise ConfigError(f"{path}: update.{key} must be a {typ.__name__}")
            merged[key] = value
    return merged


def validate(values: Mapping[str, Any]) -> UpdateSettings:
    v = {k: values.get(k, default) for k, (_, default) in SETTINGS.items()}
    if not 1 <= v["boot_tries"] <= MAX_TRIES:
        raise ConfigError(f"update.boot_tries must be 1..{MAX_TRIES}, not {v['boot_tries']}")
    url = v["url"] or None
    if url is not None and not url.startswith(("http://", "https://", "file://")):
        raise ConfigError(f"update.url {url!r} must be http://, https:// or file://")
    if "/" in v["channel"] or not v["channel"]:
        raise ConfigError(f"update.channel {v['channel']!r} must be a plain name")
    return UpdateSettings(
        url=url,
        channel=v["channel"],
        entry_name=v["entry_name"],
        boot_tries=v["boot_tries"],
        state_dir=Path(v["state_dir"]),
        esp=Path(v["esp"]) if v["esp"] else None,
        trusted_root=Path(v["trusted_root"]) if v["trusted_root"] else None,
    )


def _trusted_root_default(roots: Sequence[Path]) -> Path | None:
    for root in reversed(roots):
        p = root / "hostos" / "tuf" / "root.json"
        if p.is_file():
            return p
    return None


def load_settings(roots: Sequence[Path] = DEFAULT_ROOTS) -> UpdateSettings:
    """Merge the fragments into validated settings."""
    fragments: list[tuple[Path, Mapping[str, Any]]] = []
    for path in fragment_paths(roots):
        try:
            fragments.append((path, tomllib.loads(path.read_text())))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: {e}") from e
    values = merge(fragments)
    if "trusted_root" not in values:
        found = _trusted_root_default(roots)
        values["trusted_root"] = str(found) if found else None
    return validate(values)
