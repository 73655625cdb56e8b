"""The agent end to end on files: a GPT disk image, an ESP folder, a file:// repository.

The host seam is a disk image instead of /dev/vda and a folder instead of
the mounted ESP; what boots is set by the test (as systemd-boot would), and
a reboot is recorded instead of performed. The VM tests do the real thing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest

from hostos.release import make_release
from hostos.repo import Repository
from hostos.update import gpt
from hostos.update.agent import Agent
from hostos.update.check import CheckError, Verdict
from hostos.update.config import validate
from hostos.update.host import LocalHost
from hostos.update.manifest import ArtifactKind
from hostos.update.slots import BootDisk, Esp, InstallStep, SlotError, SlotTable
from hostos.update.state import Phase, StateStore, UpdateState
from hostos.update.uncached import UncachedWriter
from hostos.update.version import Version
from runtime.run import run
from tests.unit.update_helpers import LAYOUT, SECTOR, FakeImage, make_image, make_repo


@dataclass
class FileHost:
    disk_path: Path
    esp_path: Path
    usrhash: str
    version: str
    reboots: list[str] = field(default_factory=list)

    def booted_usrhash(self) -> str:
        return self.usrhash

    def running_version(self) -> Version:
        return Version.parse(self.version)

    def disk(self) -> BootDisk:
        return BootDisk(self.disk_path)

    def esp(self) -> Esp:
        return Esp(self.esp_path, "berth")

    def reboot(self) -> None:
        self.reboots.append(self.version)

    def memory_peak(self) -> int | None:
        return None


@dataclass
class World:
    tmp: Path
    a: FakeImage
    b: FakeImage
    repo: Repository
    host: FileHost
    agent: Agent

    def uki_dir(self) -> Path:
        return self.host.esp_path / "EFI" / "Linux"

    def boot(self, image: FakeImage, rename: dict[str, str] | None = None) -> None:
        """What systemd-boot + the kernel would leave behind after booting image."""
        for old, new in (rename or {}).items():
            (self.uki_dir() / old).rename(self.uki_dir() / new)
        self.host.usrhash, self.host.version = image.usrhash, image.version


def disk_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def region(path: Path, key: str) -> bytes:
    start, size = LAYOUT[key]
    with path.open("rb") as f:
        f.seek(start * SECTOR)
        return f.read(size * SECTOR)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path)


def make_world(tmp_path: Path, zeros: float = 0.0) -> World:
    a = make_image(tmp_path / "image-a", "0.1.0")
    b = make_image(tmp_path / "image-b", "0.2.0", zeros=zeros)
    repo = make_repo(tmp_path)
    esp = tmp_path / "esp"
    (esp / "EFI" / "Linux").mkdir(parents=True)
    (esp / "EFI" / "Linux" / "berth_0.1.0.efi").write_bytes(a.uki)
    host = FileHost(a.folder / "disk.raw", esp, a.usrhash, "0.1.0")
    settings = validate({"url": f"file://{repo.path}", "state_dir": str(tmp_path / "state"),
                         "trusted_root": str(repo.path / "metadata" / "1.root.json")})
    return World(tmp_path, a, b, repo, host, Agent(settings, host))


def test_active_slot_is_the_one_that_booted(world: World) -> None:
    table = BootDisk(world.host.disk_path).read_table()
    slots = SlotTable.from_table(table, world.a.usrhash)
    assert (slots.active.name, slots.active.version) == ("a", "0.1.0")
    assert (slots.inactive.name, slots.inactive.version) == ("b", None)
    with pytest.raises(SlotError, match="no slot holds the booted usrhash"):
        SlotTable.from_table(table, world.b.usrhash)


def test_apply_writes_the_inactive_slot_only_and_reboots_into_b(world: World) -> None:
    make_release(world.b.folder, "0.2.0", world.repo)
    disk = world.host.disk_path
    before_a = (region(disk, "usr_a"), region(disk, "verity_a"), region(disk, "root"))

    result = world.agent.apply()

    assert result.state.phase is Phase.REBOOTING
    assert world.host.reboots == ["0.1.0"]
    assert (region(disk, "usr_a"), region(disk, "verity_a"), region(disk, "root")) == before_a
    assert region(disk, "usr_b") == world.b.usr
    assert region(disk, "verity_b").startswith(world.b.verity)
    # An independent GPT reader sees B's labels and the UUIDs its usrhash names.
    parts = json.loads(run(["sfdisk", "--json", str(disk)]).stdout)["partitiontable"]["partitions"]
    data_uuid, hash_uuid = gpt.uuids_for_roothash(world.b.usrhash)
    assert (parts[3]["name"], parts[3]["uuid"].lower()) == ("berth_0.2.0", str(data_uuid))
    assert (parts[4]["name"], parts[4]["uuid"].lower()) == ("berth_0.2.0_verity", str(hash_uuid))
    assert parts[1]["name"] == "berth_0.1.0"
    ukis = sorted(p.name for p in world.uki_dir().iterdir())
    assert ukis == ["berth_0.1.0.efi", "berth_0.2.0+3.efi"]
    assert (world.uki_dir() / "berth_0.2.0+3.efi").read_bytes() == world.b.uki

    # systemd-boot boots B (counting down), then systemd-bless-boot blesses it.
    world.boot(world.b, {"berth_0.2.0+3.efi": "berth_0.2.0+2-1.efi"})
    assert world.agent.apply().state.phase is Phase.VERIFYING
    world.boot(world.b, {"berth_0.2.0+2-1.efi": "berth_0.2.0.efi"})
    result = world.agent.apply()
    assert result.state.phase is Phase.IDLE
    assert result.decision is not None and result.decision.verdict is Verdict.UP_TO_DATE
    assert world.host.reboots == ["0.1.0"]


def test_a_slot_ships_without_its_zero_tail_and_is_written_back_whole(tmp_path: Path) -> None:
    world = make_world(tmp_path, zeros=0.75)
    disk = world.host.disk_path
    start, size = LAYOUT["usr_b"]
    with disk.open("r+b") as f:   # slot B still holds an older release's bytes
        f.seek(start * SECTOR)
        f.write(os.urandom(size * SECTOR))

    manifest = make_release(world.b.folder, "0.2.0", world.repo)

    usr = manifest.artifacts[ArtifactKind.USR]
    assert usr.length == size * SECTOR and usr.zero_tail >= size * SECTOR // 2
    assert manifest.to_json()["format"] == 2   # agents that would leave the tail refuse it
    shipped = [p.stat().st_size for p in (world.repo.path / "targets").rglob("*usr.zst")]
    assert shipped and max(shipped) < size * SECTOR // 3
    assert world.agent.apply().state.phase is Phase.REBOOTING
    assert region(disk, "usr_b") == world.b.usr   # zeros over the old bytes included
    assert region(disk, "verity_b") == world.b.verity


def test_rollback_marks_the_version_bad_and_it_is_never_installed_again(world: World) -> None:
    make_release(world.b.folder, "0.2.0", world.repo)
    world.agent.apply()
    # B failed its health check on every try; systemd-boot went back to A.
    world.boot(world.a, {"berth_0.2.0+3.efi": "berth_0.2.0+0-3.efi"})
    state, _ = world.agent.resume()
    assert state.phase is Phase.FAILED
    assert state.bad_versions == ("0.2.0",)
    assert state.last_error is not None and "rolled back to 0.1.0" in state.last_error
    before = disk_digest(world.host.disk_path)
    result = world.agent.apply()
    assert result.decision is not None and result.decision.verdict is Verdict.KNOWN_BAD
    assert disk_digest(world.host.disk_path) == before
    assert world.host.reboots == ["0.1.0"]


class PowerCut(BaseException):
    """The machine stops here: nothing after it runs, not even the agent's error handling."""


@pytest.mark.parametrize("cut", [*(str(s) for s in InstallStep), "usr-half", "uki-half"])
def test_a_cut_anywhere_in_the_slot_write_boots_a_and_the_next_run_redoes_it(
        world: World, cut: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut as a step begins (its state saved, nothing of it written) or halfway through
    writing usr or the UKI: A still boots, and no half-written slot is taken for good."""
    make_release(world.b.folder, "0.2.0", world.repo)
    step, _, half = cut.partition("-")
    save, write = StateStore.save, UncachedWriter.write

    def save_then_cut(store: StateStore, state: UpdateState) -> UpdateState:
        save(store, state)
        if state.step == step and not half:
            raise PowerCut(cut)
        return state

    def write_half_then_cut(writer: UncachedWriter, data: bytes) -> None:
        if half and world.agent.store.load().step == step:
            write(writer, data[:len(data) // 2])
            raise PowerCut(cut)
        write(writer, data)

    monkeypatch.setattr(StateStore, "save", save_then_cut)
    monkeypatch.setattr(UncachedWriter, "write", write_half_then_cut)
    with pytest.raises(PowerCut):
        world.agent.apply()
    monkeypatch.undo()

    stored = world.agent.store.load()
    assert (stored.phase, stored.step) == (Phase.WRITING, step)
    # systemd-boot sees only A's entry (a temp UKI is no entry), so A boots.
    assert [str(e.version) for e in world.host.esp().entries()] == ["0.1.0"]
    slots = SlotTable.from_table(BootDisk(world.host.disk_path).read_table(), world.a.usrhash)
    if step in ("empty", "usr", "verity", "label"):
        assert slots.inactive.version is None  # labelled only once its bytes are verified
    world.boot(world.a)
    assert world.agent.resume()[0].phase is Phase.CHECKING

    result = world.agent.apply()
    assert result.state.phase is Phase.REBOOTING and world.host.reboots == ["0.1.0"]
    assert region(world.host.disk_path, "usr_b") == world.b.usr
    assert sorted(p.name for p in world.uki_dir().iterdir()) == [
        "berth_0.1.0.efi", "berth_0.2.0+3.efi"]
    assert (world.uki_dir() / "berth_0.2.0+3.efi").read_bytes() == world.b.uki


def test_a_uki_left_half_written_by_a_cut_does_not_hold_the_esp(world: World) -> None:
    # A cut while writing 0.1.5's UKI; the next release is another version.
    (world.uki_dir() / ".berth_0.1.5+3.efi.tmp").write_bytes(b"MZ" + b"\0" * 1000)
    make_release(world.b.folder, "0.2.0", world.repo)
    world.agent.apply()
    assert sorted(p.name for p in world.uki_dir().iterdir()) == [
        "berth_0.1.0.efi", "berth_0.2.0+3.efi"]


@pytest.mark.parametrize("attack", ["tampered", "expired", "downgrade"])
def test_hostile_repository_changes_nothing(world: World, attack: str) -> None:
    if attack == "downgrade":
        old = make_image(world.tmp / "image-old", "0.0.9")
        make_release(old.folder, "0.0.9", world.repo)
    else:
        make_release(world.b.folder, "0.2.0", world.repo)
    if attack == "tampered":
        for f in (world.repo.path / "targets" / "0.2.0").glob("*.usr.zst"):
            f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    if attack == "expired":
        world.repo.refresh_timestamp(timedelta(seconds=-10))
    disk_before = disk_digest(world.host.disk_path)
    esp_before = sorted(p.name for p in world.uki_dir().iterdir())

    if attack == "downgrade":
        result = world.agent.apply()
        assert result.decision is not None and result.decision.verdict is Verdict.DOWNGRADE
        assert result.state.last_error is not None and "downgrade" in result.state.last_error
    else:
        with pytest.raises(CheckError, match=r"length/hash mismatch|expired"):
            world.agent.apply()
        assert world.agent.store.load().phase is Phase.FAILED

    assert disk_digest(world.host.disk_path) == disk_before
    assert sorted(p.name for p in world.uki_dir().iterdir()) == esp_before
    assert world.host.reboots == []


def test_a_host_without_an_update_url_has_nothing_to_do(world: World) -> None:
    settings = validate({"state_dir": str(world.tmp / "state2")})
    agent = Agent(settings, world.host)
    result = agent.apply()
    assert "not configured" in result.message
    assert result.state.phase is Phase.IDLE and world.host.reboots == []


def test_the_agent_reads_its_memory_peak_from_its_own_cgroup(tmp_path: Path) -> None:
    """What it logs when staged: systemd's MemoryPeak of hostos-update.service."""
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text(
        "0::/system.slice/hostos-update.service\n")
    host = LocalHost(validate({}), root=tmp_path)
    assert host.memory_peak() is None  # no memory controller there: nothing to report
    unit = tmp_path / "sys" / "fs" / "cgroup" / "system.slice" / "hostos-update.service"
    unit.mkdir(parents=True)
    (unit / "memory.peak").write_text("61865984\n")
    assert host.memory_peak() == 61865984


@pytest.mark.parametrize("torn", [b"", b'{"signed": {"_type": "ro'])
def test_a_trusted_root_torn_by_a_power_cut_is_taken_again_from_the_image(
        world: World, torn: bytes) -> None:
    """Cut soon after the first run copied the trusted root (or python-tuf replaced it):
    the host must not refuse updates forever; it starts the root chain over."""
    make_release(world.b.folder, "0.2.0", world.repo)
    world.agent.check()
    root = world.agent.settings.state_dir / "metadata" / "root.json"
    root.write_bytes(torn)
    result = world.agent.apply()
    assert result.state.phase is Phase.REBOOTING and world.host.reboots == ["0.1.0"]
    assert json.loads(root.read_bytes())["signed"]["_type"] == "root"
