"""A/B update of a real VM: image A (0.1.0) takes release B (0.2.0) from a TUF repo over HTTP.

One boot of A and one of B serve every assertion of the A->B path: applied
through hostos-update.service, rebooted by it, B blessed by systemd-bless-boot
after hostos-health passed, /var kept, the old version kept as the fallback.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from hostos.artifacts import ImageArtifacts
from hostos.keys import KeyStore
from hostos.release import make_release
from hostos.repo import KeyLayout, Repository
from qemu.spec import BootMode
from runtime import tls
from tests.vm.conftest import BOOT_TIMEOUT, ApiClient, MachineFactory, build, client_context
from tests.vm.update_support import (
    IMAGE_A,
    IMAGE_B,
    PROXY,
    Served,
    configure,
    image_version,
    memory_peaks,
    repo_nic_args,
    sha_of_inactive,
    start_http_server,
    status,
    wait_blessed,
)

# MB: hostos-update.service's memory peak while applying (it was ~704 MB when the
# apply left the release in the page cache).
MEMORY_PEAK_MB = 150


@pytest.fixture(scope="module")
def images() -> tuple[ImageArtifacts, ImageArtifacts]:
    return build(IMAGE_A, "0.1.0"), build(IMAGE_B, "0.2.0")


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory,
          images: tuple[ImageArtifacts, ImageArtifacts]) -> dict[str, Path]:
    """"b": release 0.2.0; "downgrade": later, 0.1.0 re-released (signed) as the newest."""
    tmp = tmp_path_factory.mktemp("update-repo")
    store = KeyStore(tmp / "keys", b"vm test passphrase")
    r = Repository.create(tmp / "repo", store, KeyLayout.default())
    started = time.monotonic()
    make_release(images[1].folder, "0.2.0", r)
    size = sum(t.length for name, t in r.targets().items() if name.startswith("0.2.0/"))
    print(f"\nrelease 0.2.0: {size / 1e6:.1f} MB to download, "
          f"published in {time.monotonic() - started:.0f} s")
    out = {"root": r.path / "metadata" / "1.root.json",
           "b": Path(shutil.copytree(r.path, tmp / "b"))}
    make_release(images[0].folder, "0.1.0", r)
    out["downgrade"] = r.path
    return out


def test_a_to_b_applies_reboots_blesses_and_keeps_var(
        machine_factory: MachineFactory, images: tuple[ImageArtifacts, ImageArtifacts],
        repos: dict[str, Path], tls_files: tls.TlsFiles, tmp_path: Path) -> None:
    proxy = tmp_path / "proxy.py"
    proxy.write_text(PROXY)
    with start_http_server(Served(repos["b"])) as served:
        m = machine_factory(image=images[0], boot=BootMode.UEFI, persistent=True,
                            extra_qemu_args=repo_nic_args(proxy, served.port))
        m.start()
        m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
        configure(m, repos["root"])
        m.check("echo kept-across-updates > /var/lib/update-test-marker; sync")
        before = status(m)
        assert before["booted"]["version"] == "0.1.0"
        assert [s["active"] for s in before["slots"]] == [True, False]

        assert "0.1.0 -> 0.2.0" in m.check("hostos update check --no-fleet", timeout=300)
        found = time.monotonic()
        resets = m.resets
        m.check("systemctl start --no-block hostos-update.service")
        m.wait_reboot(timeout=1800, after=resets)
        rebooted = time.monotonic()
        m.wait_for_unit("berthd.service", BOOT_TIMEOUT)
        # A trial boot: the deadline for a hung boot is armed (hostos-boot-deadline.timer).
        assert m.check("systemctl is-active hostos-boot-deadline.timer").strip() == "active"
        wait_blessed(m, 600)
        blessed = time.monotonic()

        assert image_version(m) == "0.2.0"
        assert m.check("cat /var/lib/update-test-marker").strip() == "kept-across-updates"
        m.check("hostos update apply --no-fleet", timeout=300)
        after = status(m)
        assert after["booted"]["version"] == "0.2.0"
        # berthd's API reports the same, over the forwarded mTLS port.
        code, api = ApiClient(m.api_port, client_context(tls_files)).get("/berth/update")
        assert code == 200 and api["booted"]["version"] == "0.2.0", api
        assert after["phase"] in ("idle", "done")
        assert [s["active"] for s in after["slots"]] == [False, True]
        assert [s["version"] for s in after["slots"]] == ["0.1.0", "0.2.0"]
        files = {e["file"]: e["state"] for e in after["entries"]}
        assert files.get("berth_0.2.0.efi") == "good", files
        assert "0.1.0" in {e["version"] for e in after["entries"]}  # fallback kept
        # An old version re-signed as new: refused, nothing written, no reboot.
        served.folder = repos["downgrade"]
        untouched = sha_of_inactive(m, ("/dev/vda2", "/dev/vda3"))
        resets = m.resets
        out = m.check("hostos update apply --no-fleet", timeout=600)
        assert "refusing a downgrade" in out, out
        assert sha_of_inactive(m, ("/dev/vda2", "/dev/vda3")) == untouched
        assert m.resets == resets
        journal = m.check("journalctl -b -1 -u hostos-update --no-pager -o short-monotonic")
        agent_peak, unit_peak = memory_peaks(journal)
        print(f"\nupdate found -> reboot: {rebooted - found:.0f} s; "
              f"-> blessed 0.2.0: {blessed - found:.0f} s (TCG); memory peak of the apply: "
              f"{agent_peak} MB (agent, when staged), {unit_peak} MB (systemd, at stop)\n"
              f"{journal[-1500:]}")
        # The apply streams: its memory (page cache included, as systemd counts it)
        # stays far below the release's ~300 MB of /usr + UKI.
        assert agent_peak is not None, journal
        assert agent_peak < MEMORY_PEAK_MB
        assert unit_peak is None or unit_peak < MEMORY_PEAK_MB
