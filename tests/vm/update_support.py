"""Shared by the update VM tests: images A and B, a TUF repo over HTTP, guest helpers.

The repository is served by python's http.server on 127.0.0.1 (random
port); the guest reaches it as http://10.0.3.100/ through a second
user-mode NIC whose guestfwd runs a tiny stdin/stdout proxy per connection
(restrict=on everywhere: the guest reaches nothing else). UEFI boot with a
persistent disk and EFI variables, so systemd-boot's boot counting and the
A/B switch are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from qemu.machine import Machine
from tests.vm.conftest import IMAGE_DIR, ROOT

# A is the image every VM test boots (version 0.1.0, pyproject's); B is a
# second build of the same inputs with another version.
IMAGE_A = Path(os.environ.get("BERTH_UPDATE_IMAGE_A", IMAGE_DIR))
IMAGE_B = Path(os.environ.get("BERTH_UPDATE_IMAGE_B", ROOT / "build" / "image-b"))
REPO_ADDR = "10.0.3.100"
STATE_FILE = "/var/lib/hostos/update/state.json"
PROXY = """\
import os, selectors, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ)
sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj == 0:
            data = os.read(0, 65536)
            if not data:
                sel.unregister(0)
                s.shutdown(socket.SHUT_WR)
            else:
                s.sendall(data)
        else:
            data = s.recv(65536)
            if not data:
                sys.exit(0)
            os.write(1, data)
"""


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A power cut mid-download resets the guest's connection: expected, not news.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Served:
    """The folder the test HTTP server serves; tests switch it between repo variants."""

    folder: Path
    port: int = 0


@contextlib.contextmanager
def start_http_server(served: Served) -> Iterator[Served]:
    def handler(*args: Any, **kwargs: Any) -> QuietHandler:
        return QuietHandler(*args, directory=str(served.folder), **kwargs)

    server = QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    served.port = server.server_address[1]
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def repo_nic_args(proxy: Path, port: int) -> tuple[str, ...]:
    fwd = f"guestfwd=tcp:{REPO_ADDR}:80-cmd:{sys.executable} {proxy} {port}"
    return ("-netdev", f"user,id=net1,net=10.0.3.0/24,restrict=on,{fwd}",
            "-device", "virtio-net-pci,netdev=net1,mac=52:54:00:12:34:99")


def configure(m: Machine, root_json: Path, tries: int = 3) -> None:
    """Point the agent at the test repository; the test starts hostos-update.service
    itself, so the timer is masked, for the boots to come too (it would otherwise race
    the test's steps a minute after each reboot). A run the timer already started is
    stopped before the settings are written: on a slow boot it had fired, loaded the
    settings this wrote a moment later, and applied the update behind the test's back."""
    root = root_json.read_text()
    m.check("systemctl mask --now hostos-update.timer && systemctl stop hostos-update.service")
    m.check("mkdir -p /etc/hostos/update.d /etc/hostos/tuf")
    m.check(f"cat > /etc/hostos/tuf/root.json <<'EOF'\n{root}\nEOF")
    m.check("cat > /etc/hostos/update.d/90-test.toml <<'EOF'\n[update]\n"
            f'url = "http://{REPO_ADDR}/"\nboot_tries = {tries}\nEOF')


def status(m: Machine) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(m.check("hostos update status --json --no-fleet",
                                              timeout=120))
    return data


def image_version(m: Machine) -> str:
    """IMAGE_VERSION from the booted /usr's os-release (shell-quoted there)."""
    for line in m.check("cat /usr/lib/os-release").splitlines():
        key, _, value = line.partition("=")
        if key == "IMAGE_VERSION":
            return value.strip().strip('"')
    raise AssertionError("no IMAGE_VERSION in /usr/lib/os-release")


def wait_blessed(m: Machine, timeout: float) -> None:
    """Wait until this boot is blessed: a trial boot marked good by systemd-bless-boot,
    or a boot of an entry blessed before ("clean": no counter) whose health check passed
    (it has no boot-complete.target to reach: nothing counts it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, out = m.run("/usr/lib/systemd/systemd-bless-boot status")
        if out.strip() == "good":
            return
        if out.strip() == "clean" and m.run(
                "systemctl is-active --quiet hostos-health.service")[0] == 0:
            return
        time.sleep(3)
    raise AssertionError("the boot was not blessed in time:\n"
                         + m.check("systemctl --failed --no-legend; "
                                   "/usr/lib/systemd/systemd-bless-boot status; "
                                   "journalctl -b -u hostos-health --no-pager | tail -20"))


def agent_state(m: Machine) -> dict[str, Any]:
    """The agent's saved state (state.json; {} before its first run)."""
    code, out = m.run(f"cat {STATE_FILE}", timeout=60)
    if code != 0:
        return {}
    data: dict[str, Any] = json.loads(out)
    return data


def memory_peaks(journal: str) -> tuple[float | None, float | None]:
    """MB from an apply's journal: the agent's own memory.peak line (logged when staged)
    and systemd's "Consumed ..., N memory peak" as the unit stopped (None if absent)."""
    agent = re.search(r"memory peak of this run: (\d+) MB", journal)
    unit = re.search(r"Consumed .*?([\d.]+)([KMG]) memory peak", journal)
    scale = {"K": 1e-3, "M": 1.0, "G": 1e3}
    return (float(agent.group(1)) if agent else None,
            float(unit.group(1)) * scale[unit.group(2)] * 1.048576 if unit else None)


def sha_of_inactive(m: Machine, slot_devices: tuple[str, ...] = ("/dev/vda4", "/dev/vda5")) -> str:
    """Hashes of the inactive slot's partitions plus the GPT: what an update would change."""
    return m.check(f"sha256sum {' '.join(slot_devices)}; "
                   "dd if=/dev/vda bs=512 count=34 status=none | sha256sum", timeout=600)
