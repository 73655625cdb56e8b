"""An update's apply stays small in memory, page cache included, whatever the release size.

The agent applies a ~190 MB release (file:// repository, a GPT disk image,
an ESP folder: the unit tests' file host) inside a memory cgroup of its own,
and the cgroup's peak is read afterwards: what systemd would report as
hostos-update.service's MemoryPeak. Page cache is charged to the cgroup
that touched it, so an apply that left its downloads and writes in the cache
peaked at several times the release size (~704 MB in the VM).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostos.release import make_release
from runtime.run import run
from tests.unit.update_helpers import make_image, make_repo

ROOT = Path(__file__).resolve().parents[2]
# 64 x the unit tests' disk: 128 MiB of /usr, 16 MiB of verity, a 6.4 MB UKI, random
# bytes (incompressible: the download is as large as what is written).
SCALE = 64
# The interpreter with tuf, cryptography and requests loaded is ~45 MB; the apply adds
# one window of flushed-but-not-dropped writes and a few chunks.
PEAK_LIMIT = 120 << 20

CHILD = """
import json, os, sys
from pathlib import Path
args = json.loads(sys.argv[1])
Path(args["procs"]).write_text(str(os.getpid()))
from hostos.update.agent import Agent
from hostos.update.config import validate
from tests.unit.test_update_agent import FileHost
host = FileHost(Path(args["disk"]), Path(args["esp"]), args["usrhash"], "0.1.0")
settings = validate({"url": args["url"], "state_dir": args["state"],
                     "trusted_root": args["root"]})
print(Agent(settings, host).apply().message)
"""


class MemoryCgroup:
    """A fresh memory cgroup (v2, or the v1 memory hierarchy of a hybrid machine)."""

    def __init__(self, path: Path, v2: bool) -> None:
        self.path = path
        self.v2 = v2

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    unified = Path("/sys/fs/cgroup")
    controllers = unified / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split():
        base, v2 = unified, True
    elif (unified / "memory" / "memory.max_usage_in_bytes").exists():
        base, v2 = unified / "memory", False
    else:
        pytest.skip("no memory cgroup controller on this machine")
    cg = MemoryCgroup(base / f"berth-update-memory-{uuid.uuid4().hex[:8]}", v2)
    cg.path.mkdir()
    try:
        yield cg
    finally:
        if cg.procs.exists():
            for pid in cg.procs.read_text().split():  # only the child we started
                os.kill(int(pid), 9)
        cg.path.rmdir()


def test_apply_of_a_large_release_peaks_below_a_fixed_bound(
        tmp_path: Path, memory_cgroup: MemoryCgroup) -> None:
    a = make_image(tmp_path / "image-a", "0.1.0", SCALE)
    b = make_image(tmp_path / "image-b", "0.2.0", SCALE)
    repo = make_repo(tmp_path)
    release = make_release(b.folder, "0.2.0", repo)
    download = sum(t.length for n, t in repo.targets().items() if n.startswith("0.2.0/"))
    assert download > 150e6, download  # the bound below is well under the release size
    esp = tmp_path / "esp"
    (esp / "EFI" / "Linux").mkdir(parents=True)
    (esp / "EFI" / "Linux" / "berth_0.1.0.efi").write_bytes(a.uki)
    args = {"procs": str(memory_cgroup.procs), "disk": str(a.folder / "disk.raw"),
            "esp": str(esp), "usrhash": a.usrhash, "url": f"file://{repo.path}",
            "state": str(tmp_path / "state"),
            "root": str(repo.path / "metadata" / "1.root.json")}

    out = run([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT).stdout
    peak = memory_cgroup.peak()

    assert "rebooting into 0.2.0" in out, out
    with (a.folder / "disk.raw").open("rb") as f:
        f.seek(8704 * 512 * SCALE)
        assert f.read(len(b.usr)) == b.usr
    print(f"\napply of {download / 1e6:.0f} MB ({release.version}): "
          f"memory peak {peak / 1e6:.0f} MB")
    assert peak < PEAK_LIMIT, f"memory peak {peak / 1e6:.0f} MB, bound {PEAK_LIMIT >> 20} MiB"
