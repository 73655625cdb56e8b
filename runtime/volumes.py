"""Named volumes: directories under <root>/volumes/<name>/_data (Docker's layout).

Owned by host root: the engine binds them through an idmapped mount, so each
container sees them owned by its own root whatever its uid range.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


class VolumeError(Exception):
    pass


class NoSuchVolume(VolumeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"get {name}: no such volume")


class VolumeInUse(VolumeError):
    pass


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    mountpoint: Path
    created_at: float
    labels: Any = field(default_factory=lambda: MappingProxyType({}))
    driver: str = "local"
    anonymous: bool = False


class VolumeStore:
    def __init__(self, root: Path) -> None:
        self.root = root / "volumes"
        self.root.mkdir(parents=True, exist_ok=True)

    def _meta(self, name: str) -> Path:
        return self.root / name / "meta.json"

    def create(self, name: str | None = None, labels: dict[str, str] | None = None,
               anonymous: bool = False) -> VolumeInfo:
        """Create (or return the existing) volume; a None name makes an anonymous one."""
        if name is None:
            name = secrets.token_hex(32)
            anonymous = True
        if not _NAME.match(name):
            raise VolumeError(f"create {name}: includes invalid characters for a local volume "
                              f"name, only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        if self._meta(name).exists():
            return self.inspect(name)
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "_data").mkdir(parents=True)
        meta = {"created": time.time(), "labels": labels or {}, "anonymous": anonymous}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, self.root / name)
        return self.inspect(name)

    def inspect(self, name: str) -> VolumeInfo:
        try:
            meta = json.loads(self._meta(name).read_text())
        except FileNotFoundError:
            raise NoSuchVolume(name) from None
        return VolumeInfo(name, self.root / name / "_data", meta["created"],
                          MappingProxyType(meta.get("labels", {})),
                          anonymous=meta.get("anonymous", False))

    def list(self) -> list[VolumeInfo]:
        return [self.inspect(p.name) for p in sorted(self.root.iterdir())
                if not p.name.startswith(".") and (p / "meta.json").exists()]

    def remove(self, name: str, in_use: bool = False, force: bool = False) -> None:
        if in_use:
            raise VolumeInUse(f"remove {name}: volume is in use")
        if not (self.root / name).exists():
            if force:
                return
            raise NoSuchVolume(name)
        trash = self.root / f".{name}.removing"
        os.replace(self.root / name, trash)
        shutil.rmtree(trash, ignore_errors=True)
