"""The tests use the dependency versions the image ships.

constraints.txt pins every Python dependency to Debian trixie's version;
the venv the tests run in is installed with it. Here the pins meet the
built image's package manifest (mkosi ManifestFormat=json): a pin that
differs from what the image installs, or names a package the image lacks,
fails.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

from hostos.artifacts import ImageArtifacts
from hostos.pins import (
    format_mismatches,
    load_manifest,
    normalise,
    parse_constraints,
    pin_mismatches,
)

ROOT = Path(__file__).resolve().parents[2]


def test_every_pin_equals_the_version_in_the_image(image: ImageArtifacts) -> None:
    pins = parse_constraints((ROOT / "constraints.txt").read_text())
    assert pins, "constraints.txt pins nothing"
    shipped = load_manifest(image.manifest)
    mismatches = pin_mismatches(pins, shipped)
    assert not mismatches, "constraints.txt and the image disagree:\n" + format_mismatches(
        mismatches)


def test_the_test_environment_runs_the_pinned_versions() -> None:
    pins = parse_constraints((ROOT / "constraints.txt").read_text())
    installed = {normalise(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {name: (version, installed.get(name)) for name, version in pins.items()
             if installed.get(name) not in (None, version)}
    assert not wrong, f"venv differs from constraints.txt (pinned, installed): {wrong}"


def test_the_image_ships_python_3_13_and_the_runtime_packages(image: ImageArtifacts) -> None:
    # The project is installed by image-defs/mkosi.build.chroot, not from a
    # Debian package, so it is not in the manifest; its Debian dependencies are.
    shipped = load_manifest(image.manifest)
    for package in ("python3", "python3-aiohttp", "python3-systemd", "python3-pyroute2",
                    "systemd", "systemd-boot", "linux-image-cloud-amd64"):
        assert package in shipped, f"{package} missing from the image"
    assert shipped["python3"].startswith("3.13"), shipped["python3"]
