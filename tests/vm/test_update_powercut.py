"""Power cuts (QMP hard reset) aimed at phases of an update's apply.

The agent saves its phase, and within `writing` the install step, before
each begins (state.json); the test reads it through the test shell and
cuts the power at a random moment inside:
- always one in the write of the inactive /usr (phase writing, step usr),
  ~4 s under TCG (its ~60 MB of erofs; the zero tail is zeroed in place);
- the other, chosen by the seed: in the download (phase downloading) or in
  the write of B's UKI into the ESP (phase writing, step uki).
After a cut that landed where aimed the VM must boot A, still blessed, with
no entry of B and, if the cut came before the slot was labelled, the slot
still `_empty` (a half-written slot is never taken for B); the agent, started
again, must start the update over. (A cut whose step ended before its delay
did lands later; past the UKI, B boots on trial, which is as good.) In the
end B runs, blessed. The seed is printed; a failure replays with
BERTH_POWERCUT_SEED.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from hostos.artifacts import ImageArtifacts
from hostos.keys import KeyStore
from hostos.release import make_release
from hostos.repo import KeyLayout, Repository
from qemu.machine import Machine
from qemu.spec import BootMode
from tests.vm.conftest import BOOT_TIMEOUT, MachineFactory, build
from tests.vm.update_support import (
    IMAGE_A,
    IMAGE_B,
    PROXY,
    Served,
    agent_state,
    configure,
    repo_nic_args,
    start_http_server,
    status,
    wait_blessed,
)


class Aim:
    """A saved agent phase (and install step) to cut in, after a random delay."""

    def __init__(self, phase: str, step: str | None, delay: float) -> None:
        self.phase, self.step, self.delay = phase, step, delay

    def matches(self, state: dict[str, Any]) -> bool:
        return state.get("phase") == self.phase and (
            self.step is None or state.get("step") == self.step)

    @property
    def where(self) -> str:
        return self.phase + (f"/{self.step}" if self.step else "")

    def __str__(self) -> str:
        return f"{self.where} + {self.delay:.1f} s"


def aims(rng: random.Random) -> list[Aim]:
    """Two cuts; delays inside what each lasts under TCG (usr ~4 s: its ~60 MB of
    erofs, the zero tail is one BLKZEROOUT; the ~35 MB download and the UKI a few
    seconds each). A cut in the download comes first, while nothing is downloaded
    yet (a later attempt reuses the verified files). A step that ends before its
    delay does (a faster machine) moves the cut later: the checks follow where it
    landed."""
    usr = Aim("writing", "usr", rng.uniform(0.5, 3.0))
    if rng.random() < 0.5:
        return [Aim("downloading", None, rng.uniform(0.0, 1.0)), usr]
    return [usr, Aim("writing", "uki", rng.uniform(0.0, 1.0))]


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


def start_apply(m: Machine) -> int:
    """Start the agent as its timer would; returns the attempt it will record."""
    attempt = int(agent_state(m).get("attempts", 0)) + 1
    m.check("systemctl start --no-block hostos-update.service")
    return attempt


def cut_at(m: Machine, aim: Aim, attempt: int, timeout: float = 900) -> str:
    """Wait for `aim` in this attempt's saved state, wait its delay, reset the VM.

    Returns the state read just before the cut (phase/step) for the log.
    """
    deadline = time.monotonic() + timeout
    while not ((state := agent_state(m)).get("attempts") == attempt and aim.matches(state)):
        if state.get("phase") == "failed":  # (a cut leaves downloading/writing, never this)
            raise AssertionError(f"the agent failed instead of starting over: {state}")
        if state.get("attempts") == attempt and state.get("phase") in ("staged", "rebooting"):
            raise AssertionError(f"the agent went past {aim} without the test seeing it: "
                                 f"{state}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {aim} within {timeout:.0f} s: {state}")
        time.sleep(0.2)
    time.sleep(aim.delay)
    state = agent_state(m)
    resets = m.resets
    m.reset()
    m.wait_reboot(timeout=60, after=resets)
    return f"{state.get('phase')}/{state.get('step')}"


def test_power_cuts_aimed_at_the_apply_always_boot_a_good_version(
        machine_factory: MachineFactory, images: tuple[ImageArtifacts, ImageArtifacts],
        repo: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("BERTH_POWERCUT_SEED", random.randrange(1 << 30)))
    plan = aims(random.Random(seed))
    print(f"\npower cut seed {seed}: cuts at {', '.join(map(str, plan))}")
    proxy = tmp_path / "proxy.py"
    proxy.write_text(PROXY)
    with start_http_server(Served(repo)) as served:
        m = machine_factory(image=images[0], boot=BootMode.UEFI, persistent=True,
                            extra_qemu_args=repo_nic_args(proxy, served.port))
        m.start()
        m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
        configure(m, repo / "metadata" / "1.root.json")
        wait_blessed(m, 600)
        for n, aim in enumerate(plan, 1):
            seen = cut_at(m, aim, start_apply(m))
            m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
            after = status(m)
            print(f"cut {n} at {aim} (state then: {seen}): booted "
                  f"{after['booted']['version']}, slots {after['slots']}")
            if not seen.startswith(aim.where):
                # The aimed step ended first and the cut landed later; past the UKI, B
                # boots on trial (a good version).
                assert after["booted"]["version"] in ("0.1.0", "0.2.0"), after
                if after["booted"]["version"] == "0.2.0":
                    break
            # A boots, still blessed; B has no boot entry (its UKI is last and was cut
            # or not yet begun), so nothing half-written can boot.
            assert after["booted"]["version"] == "0.1.0", after
            assert [e["file"] for e in after["entries"]] == ["berth_0.1.0.efi"], after
            if seen.startswith("downloading") or seen in ("writing/empty", "writing/usr",
                                                          "writing/verity"):
                assert after["slots"][1]["version"] is None, after  # still `_empty`
            # What the agent makes of it: start over, not on a half-written slot.
            assert after["phase"] == "checking", after
            wait_blessed(m, 600)
        else:
            # The agent, started again, completes the update and reboots into B.
            resets = m.resets
            start_apply(m)
            m.wait_reboot(timeout=1800, after=resets)
            m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
        wait_blessed(m, 600)
        m.check("hostos update apply --no-fleet", timeout=300)
        final = status(m)
        assert final["booted"]["version"] == "0.2.0"
        assert final["phase"] in ("idle", "done")
        assert {e["file"]: e["state"] for e in final["entries"]}.get("berth_0.2.0.efi") == "good"
