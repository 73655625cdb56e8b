"""Power cuts (QMP hard reset) at random points of an update's apply.

After every cut the VM must boot a good version (A, or B if the cut came
after B's boot entry was complete), and the agent must either finish or
start the update over; in the end B runs, blessed. Two cuts per run, at
random moments of the apply (seed printed, so a failure can be replayed
with BERTH_POWERCUT_SEED).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from hostos.artifacts import ImageArtifacts
from hostos.keys import KeyStore
from hostos.release import make_release
from hostos.repo import KeyLayout, Repository
from qemu.machine import Machine
from qemu.shell import ShellError
from qemu.spec import BootMode
from tests.vm.conftest import BOOT_TIMEOUT, MachineFactory
from tests.vm.update_support import (
    IMAGE_A,
    IMAGE_B,
    PROXY,
    Served,
    build,
    configure,
    repo_nic_args,
    start_http_server,
    status,
    wait_blessed,
)

# Its first session-2 run hung in the harness (a reset noticed late; fixed in
# qemu/machine.py) before completing; not yet in make test.
pytestmark = pytest.mark.rollout

CUTS = 2
# Seconds after starting the apply. Under TCG the agent starts in ~3 s,
# downloads and verifies ~90 MB in ~5 s, writes the slot in ~20-25 s and
# reboots 25-35 s in: the window spans check, download, write and staging
# (a cut that comes after the reboot still tests the next boot).
CUT_WINDOW = (2.0, 24.0)


@pytest.fixture(scope="module")
def images() -> tuple[ImageArtifacts, ImageArtifacts]:
    return build(IMAGE_A, "0.1.0"), build(IMAGE_B, "0.2.0")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory,
         images: tuple[ImageArtifacts, ImageArtifacts]) -> Path:
    tmp = tmp_path_factory.mktemp("powercut-repo")
    r = Repository.create(tmp / "repo", KeyStore(tmp / "keys", b"vm test passphrase"),
                          KeyLayout.default())
    make_release(images[1].folder, "0.2.0", r)
    return r.path


def booted_version(m: Machine) -> str:
    m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
    return str(status(m)["booted"]["version"])


def test_power_cut_during_apply_always_boots_a_good_version(
        machine_factory: MachineFactory, images: tuple[ImageArtifacts, ImageArtifacts],
        repo: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("BERTH_POWERCUT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"\npower cut seed {seed}")
    proxy = tmp_path / "proxy.py"
    proxy.write_text(PROXY)
    with start_http_server(Served(repo)) as served:
        m = machine_factory(image=images[0], boot=BootMode.UEFI, persistent=True,
                            extra_qemu_args=repo_nic_args(proxy, served.port))
        m.start()
        m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
        configure(m, repo / "metadata" / "1.root.json")
        wait_blessed(m, 600)
        for cut in range(CUTS):
            delay = rng.uniform(*CUT_WINDOW)
            resets = m.resets
            m.check("systemctl start --no-block hostos-update.service")
            time.sleep(delay)
            phase = "rebooted by itself first"
            if m.resets == resets:
                try:
                    _, out = m.run("cat /var/lib/hostos/update/state.json", timeout=30)
                except ShellError:  # the agent's own reboot began: the shell is gone
                    out = ""
                phase = out.split('"phase": "')[1].split('"')[0] if '"phase"' in out else "?"
                m.reset()
                m.wait_reboot(timeout=60, after=resets)
            version = booted_version(m)
            print(f"cut {cut + 1} after {delay:.0f} s (phase {phase}): booted {version}")
            assert version in ("0.1.0", "0.2.0")
            if version == "0.2.0":
                break
        else:
            # Let the last attempt run to completion; it reboots into B.
            resets = m.resets
            m.check("systemctl start --no-block hostos-update.service")
            m.wait_reboot(timeout=1800, after=resets)
            assert booted_version(m) == "0.2.0"
        wait_blessed(m, 600)
        m.check("hostos update apply --no-fleet", timeout=300)
        after = status(m)
        assert after["booted"]["version"] == "0.2.0"
        assert after["phase"] in ("idle", "done")
        assert {e["file"]: e["state"] for e in after["entries"]}.get("berth_0.2.0.efi") == "good"
