"""The tests run what the image ships: constraints.txt against the image manifest.

Every pin in constraints.txt names a Python distribution that the image
installs from Debian trixie (python3-*), pinned to trixie's upstream
version. `pin_mismatches` compares the pins with a built image's package
manifest (mkosi's ManifestFormat=json); tests/vm/test_image_pins.py fails
on any difference, so a trixie point release or a pin bump cannot drift
apart silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from hostos.errors import HostosError
from hostos.mkosi import upstream_version

# PyPI name (normalised) -> Debian binary package, where "python3-" + name is wrong.
DEBIAN_PACKAGE = {
    "systemd-python": "python3-systemd",
    "attrs": "python3-attr",
    "markdown-it-py": "python3-markdown-it",
    "pyyaml": "python3-yaml",
    "pynacl": "python3-nacl",
    # Debian ships the cffi runtime part as its own package.
    "cffi": "python3-cffi-backend",
}

_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def normalise(name: str) -> str:
    """PEP 503 name normalisation."""
    return re.sub(r"[-_.]+", "-", name).lower()


def debian_package(pypi_name: str) -> str:
    name = normalise(pypi_name)
    return DEBIAN_PACKAGE.get(name, f"python3-{name}")


def parse_constraints(text: str) -> dict[str, str]:
    """`name==version` lines -> {normalised name: version}; comments ignored."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if (m := _PIN.match(line.split("#", 1)[0])) is not None:
            pins[normalise(m.group(1))] = m.group(2)
    return pins


def manifest_versions(manifest: Mapping[str, object]) -> dict[str, str]:
    """Debian package name -> Debian version from a mkosi JSON manifest."""
    packages = manifest.get("packages")
    if not isinstance(packages, list):
        raise HostosError("the image manifest has no package list (ManifestFormat=json?)")
    out: dict[str, str] = {}
    for p in packages:
        if isinstance(p, dict) and p.get("type") == "deb":
            out[str(p["name"])] = str(p["version"])
    return out


def load_manifest(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise HostosError(f"cannot read the image manifest {path}: {e}") from e
    if not isinstance(data, dict):
        raise HostosError(f"{path} is not a mkosi JSON manifest")
    return manifest_versions(data)


@dataclass(frozen=True)
class PinMismatch:
    name: str
    pinned: str
    package: str
    shipped: str | None

    def __str__(self) -> str:
        if self.shipped is None:
            return f"{self.name}=={self.pinned}: {self.package} is not in the image"
        return (f"{self.name}=={self.pinned} but the image ships {self.package} "
                f"{self.shipped} (upstream {upstream_version(self.shipped)})")


def pin_mismatches(pins: Mapping[str, str], shipped: Mapping[str, str]) -> list[PinMismatch]:
    out = []
    for name, version in sorted(pins.items()):
        package = debian_package(name)
        debian = shipped.get(package)
        if debian is None or upstream_version(debian) != version:
            out.append(PinMismatch(name, version, package, debian))
    return out


def format_mismatches(mismatches: Iterable[PinMismatch]) -> str:
    return "\n".join(str(m) for m in mismatches)
