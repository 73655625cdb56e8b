"""A hostile update server, then a bad release: one VM built as A (0.1.0).

Hostile: the server offers a tampered target, then an expired timestamp
(an old version re-signed as new is refused in test_update.py, on B). Each
apply is refused and the inactive slot, the partition table and the ESP are
byte for byte as before.

Bad release: 0.2.0 whose UKI masks berthd on its command line, so
hostos-health fails on it. The VM reboots into it; its first try is cut
short by the hung-boot deadline (started early by the test), its second
fails its health check; systemd-boot falls back to A, and the agent records
0.2.0 as bad and never installs it again.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest

from hostos.artifacts import ImageArtifacts
from hostos.keys import KeyStore
from hostos.release import make_release
from hostos.repo import KeyLayout, Repository
from hostos.uki import broken_release_image
from qemu.spec import BootMode
from tests.vm.conftest import BOOT_TIMEOUT, MachineFactory, build
from tests.vm.update_support import (
    IMAGE_A,
    IMAGE_B,
    PROXY,
    Served,
    configure,
    image_version,
    repo_nic_args,
    sha_of_inactive,
    start_http_server,
    status,
    wait_blessed,
)

BOOT_TRIES = 2
BREAK_BERTHD = "systemd.mask=berthd.socket systemd.mask=berthd.service"


@pytest.fixture(scope="module")
def images() -> tuple[ImageArtifacts, ImageArtifacts]:
    return build(IMAGE_A, "0.1.0"), build(IMAGE_B, "0.2.0")


def snapshot(repo: Repository, dest: Path) -> Path:
    shutil.copytree(repo.path, dest)
    return dest


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory,
             images: tuple[ImageArtifacts, ImageArtifacts]) -> dict[str, Path]:
    """Repository states in the order the host sees them (metadata versions only grow)."""
    tmp = tmp_path_factory.mktemp("hostile")
    store = KeyStore(tmp / "keys", b"vm test passphrase")
    repo = Repository.create(tmp / "repo", store, KeyLayout.default())
    out = {"root": repo.path / "metadata" / "1.root.json"}
    bad = broken_release_image(images[1], tmp / "image-bad", BREAK_BERTHD)
    make_release(bad, "0.2.0", repo)
    out["bad"] = snapshot(repo, tmp / "bad")
    tampered = snapshot(repo, tmp / "tampered")
    for f in (tampered / "targets" / "0.2.0").glob("*.usr.zst"):
        data = bytearray(f.read_bytes())
        data[len(data) // 3] ^= 0x55
        f.write_bytes(bytes(data))
    out["tampered"] = tampered
    Repository.open(repo.path, store).refresh_timestamp(timedelta(minutes=-5))
    out["expired"] = snapshot(repo, tmp / "expired")
    return out


def test_hostile_server_is_refused_then_bad_release_rolls_back(
        machine_factory: MachineFactory, images: tuple[ImageArtifacts, ImageArtifacts],
        variants: dict[str, Path], tmp_path: Path) -> None:
    proxy = tmp_path / "proxy.py"
    proxy.write_text(PROXY)
    served = Served(variants["tampered"])
    with start_http_server(served):
        m = machine_factory(image=images[0], boot=BootMode.UEFI, persistent=True,
                            extra_qemu_args=repo_nic_args(proxy, served.port))
        m.start()
        m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
        configure(m, variants["root"], tries=BOOT_TRIES)
        wait_blessed(m, 600)
        untouched = sha_of_inactive(m)
        esp_before = status(m)["entries"]

        for name, message in (("tampered", "length/hash mismatch"), ("expired", "expired")):
            served.folder = variants[name]
            code, out = m.run("hostos update apply --no-fleet", timeout=900)
            assert code != 0 and re.search(message, out), (name, out)
        assert sha_of_inactive(m) == untouched
        assert status(m)["entries"] == esp_before
        assert status(m)["booted"]["version"] == "0.1.0"

        # The bad release: installed, booted BOOT_TRIES times, rolled back.
        served.folder = variants["bad"]
        started = time.monotonic()
        resets = m.resets
        m.check("systemctl start --no-block hostos-update.service")
        m.wait_reboot(timeout=1800, after=resets)
        # Try 1 of 2: still checking its health (berthd cannot answer, so hostos-health
        # retries for two minutes) when the hung-boot deadline arrives: it reboots.
        m.wait_for_unit("multi-user.target", BOOT_TIMEOUT)
        assert image_version(m) == "0.2.0"
        assert m.check("systemctl is-active hostos-boot-deadline.timer").strip() == "active"
        assert m.run("systemctl is-active boot-complete.target")[0] != 0
        m.check("systemctl start --no-block hostos-boot-deadline.service")
        m.wait_reboot(timeout=600, after=resets + 1)
        # Try 2: the health check fails by itself and reboots; then systemd-boot boots A.
        m.wait_reboot(timeout=1800, after=resets + 2)
        m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
        rolled_back = time.monotonic()
        assert image_version(m) == "0.1.0"
        # A blessed boot is on no trial: no deadline armed.
        assert m.run("systemctl is-active hostos-boot-deadline.timer")[0] != 0
        tries = m.check("journalctl -b -2 -u hostos-boot-deadline -u hostos-health --no-pager; "
                        "journalctl -b -1 -u hostos-boot-deadline -u hostos-health --no-pager")
        assert "not reached by the boot deadline on trial boot of 0.2.0" in tries, tries
        assert "hostos-health failed (exit-code) on trial boot of 0.2.0" in tries, tries
        m.check("hostos update apply --no-fleet", timeout=300)
        after = status(m)
        assert after["booted"]["version"] == "0.1.0"
        assert after["phase"] in ("failed", "idle")
        assert "0.2.0" in after["bad_versions"]
        # Never again: the next run refuses it without writing or rebooting.
        resets = m.resets
        out = m.check("hostos update apply --no-fleet", timeout=300)
        assert "failed on this host before" in out
        time.sleep(5)
        assert m.resets == resets
        print(f"\nbad release: apply -> back on 0.1.0 after {BOOT_TRIES} tries: "
              f"{rolled_back - started:.0f} s (TCG)")
