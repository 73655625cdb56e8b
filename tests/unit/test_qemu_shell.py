"""The test shell on ttyS1 sends nothing while the firmware's boot menu could read it."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import pytest

from qemu.shell import GuestShell, ShellError


class FakeGuest:
    """The QEMU end of the serial socket: records what the harness typed."""

    def __init__(self, path: Path) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.conn: socket.socket | None = None
        self.typed = b""
        self._accepted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.conn, _ = self.server.accept()
        self._accepted.set()
        while data := self.conn.recv(65536):
            self.typed += data
            for tok in re.findall(rb"R ([0-9a-f]{16})", data):
                self.conn.sendall(b"R" + tok + b"\n")   # a booted system's shell answers

    def say(self, data: bytes) -> None:
        self._accepted.wait(5)
        assert self.conn is not None
        self.conn.sendall(data)


def test_no_probe_reaches_the_boot_menu_before_the_kernel_starts(tmp_path: Path) -> None:
    guest = FakeGuest(tmp_path / "ttyS1")
    shell = GuestShell(tmp_path / "ttyS1", lambda: None, boot_menu=True)
    shell.connect()
    try:
        guest.say(b"\x1b[2J\x1b[01;01HBoot in 3 s.")    # systemd-boot's menu on ttyS1
        with pytest.raises(ShellError, match="no test shell answered"):
            shell.wait_ready(3)
        assert guest.typed == b""
        guest.say(b"EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path\r\n")
        shell.wait_ready(30)
        assert b"initrd-release" in guest.typed
    finally:
        shell.close()
