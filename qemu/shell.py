"""Commands in the guest through a root shell on its second serial port.

The harness boots with `systemd.debug_shell=ttyS1`, so systemd's own
debug-shell.service puts bash on ttyS1, which QEMU connects to a unix
socket. Nothing in the image enables it: without that kernel argument the
port is silent. (The hypervisor that sets kernel arguments owns the guest
anyway.)

Each command goes over as base64 and runs in a child `bash -c` with stdin
from /dev/null; its combined output comes back base64-encoded between two
markers, followed by its exit status. The markers are printed as two
printf arguments, so the echo of the command line never matches them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

# The tty reads lines of at most 4095 bytes in canonical mode: longer
# commands are staged in a file in chunks.
CHUNK = 3000
PROBE_INTERVAL = 10.0
# The kernel's EFI stub prints this to every firmware console as it starts:
# from then on no key reaches the firmware or the boot menu.
STUB_MARKER = b"EFI stub: "


class ShellError(Exception):
    pass


class GuestCommandTimeout(ShellError):
    def __init__(self, cmd: str, timeout: float) -> None:
        self.cmd = cmd
        super().__init__(f"guest command {cmd!r} did not finish within {timeout:.0f} s")


class GuestShell:
    def __init__(self, socket_path: Path, exit_status: Callable[[], int | None],
                 transcript: Path | None = None,
                 doomed: Callable[[], str | None] = lambda: None,
                 boot_menu: bool = False) -> None:
        """`doomed` says why no shell will ever answer (e.g. emergency mode), or None.

        `boot_menu`: the firmware and systemd-boot read keys from ttyS1 too
        (UEFI boot), so nothing is sent before the kernel's EFI stub has
        printed: a probe typed into the boot menu stops its countdown, or
        opens the command line editor and boots a mangled command line.
        """
        self._path = socket_path
        self._doomed = doomed
        self._transcript = transcript
        self._exit_status = exit_status
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._closed = False
        self._ready = False
        self._reader: threading.Thread | None = None
        # Bytes received in all, and at the last reboot: the guest has opened
        # ttyS1 once it has written to it.
        self._received = 0
        self._received_at_boot = 0
        self._boot_menu = boot_menu
        self._stub_seen = False
        self._tail = b""    # the last bytes read, for a marker split across reads

    def connect(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(self._path))
                break
            except OSError as e:
                s.close()
                if time.monotonic() > deadline:
                    raise ShellError(f"test shell {self._path}: cannot connect: {e}") from e
                time.sleep(0.1)
        self._sock = s
        self._reader = threading.Thread(target=self._read, name="guest-shell", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._sock is not None
        log = self._transcript.open("ab") if self._transcript else None
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if log is not None:
                log.write(data)
                log.flush()
            with self._cond:
                if not data:
                    self._closed = True
                else:
                    self._buf += data
                    self._received += len(data)
                    window = self._tail + data
                    self._stub_seen = self._stub_seen or STUB_MARKER in window
                    self._tail = window[-len(STUB_MARKER):]
                self._cond.notify_all()
            if not data:
                if log is not None:
                    log.close()
                return

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._reader is not None:
            self._reader.join(5)

    def forget(self) -> None:
        """The guest rebooted: its shell is a new one, to be probed again."""
        with self._cond:
            self._ready = False
            self._received_at_boot = self._received
            self._stub_seen = False
            self._tail = b""

    def _check_doomed(self) -> None:
        reason = self._doomed()
        if reason:
            raise ShellError(f"no test shell will answer: {reason}")

    def _spoke_since(self, after: int) -> bool:
        """The guest wrote to ttyS1 after `after` bytes, and (UEFI) its kernel runs."""
        return self._received > after and (self._stub_seen or not self._boot_menu)

    def _wait_until(self, ready: Callable[[], bool], deadline: float) -> bool:
        """Wait until `ready()` (checked under the lock) holds; False at the deadline."""
        with self._cond:
            while not ready():
                if self._closed or self._exit_status() is not None:
                    raise ShellError("QEMU exited while waiting for the test shell")
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 3.0))
                self._check_doomed()
            return True

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise ShellError("test shell is not connected")
        if self._transcript is not None:
            with self._transcript.open("ab") as log:
                log.write(b"\n>>> " + data + b"\n<<< ")
        self._sock.sendall(data)

    def _wait(self, regex: re.Pattern[bytes], timeout: float) -> re.Match[bytes] | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                # A bytes snapshot: a match keeps reading the object it
                # searched, and the buffer is trimmed right below.
                m = regex.search(bytes(self._buf))
                if m:
                    del self._buf[: m.end()]
                    return m
                status = self._exit_status()
                if status is not None or self._closed:
                    raise ShellError(f"QEMU exited (status {status}) during a guest command")
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 1.0))

    def wait_ready(self, timeout: float) -> None:
        """Probe until a shell of the booted system (not the initrd's) answers.

        bash echoes a line through readline, which is slow under TCG; a slow
        answer to an earlier probe counts, so probes never cancel each other.
        Probes carry no quotes, so a garbled one fails as a command instead
        of leaving bash inside a string; and no ^C: bash drops input that
        arrives while it handles SIGINT.
        """
        if self._ready:
            return
        deadline = time.monotonic() + timeout
        tokens: list[bytes] = []
        seen = self._received_at_boot
        while time.monotonic() < deadline:
            if not tokens:
                # Nothing goes to ttyS1 before the guest has opened it (systemd
                # resets the tty for debug-shell.service, which writes to it):
                # input that arrives while the kernel sets the UART up loses
                # the port for the whole boot.
                # Under UEFI, not before the kernel's EFI stub has printed either.
                if not self._wait_until(functools.partial(self._spoke_since, seen), deadline):
                    break
                time.sleep(1.0)
            self._check_doomed()
            tok = secrets.token_hex(8).encode()
            tokens.append(tok)
            # The first line also turns off readline and echo, for speed.
            self._send(
                b"stty -echo -onlcr 2>/dev/null; set +o emacs +o vi; PS1= PS2=; "
                b"test -e /etc/initrd-release && printf %s%s\\\\n I " + tok
                + b" || printf %s%s\\\\n R " + tok + b"\n"
            )
            answer = re.compile(rb"([IR])(" + b"|".join(tokens) + rb")")
            m = self._wait(answer, PROBE_INTERVAL)
            if m and m.group(1) == b"R":
                self._ready = True
                return
            if m:  # the initrd's shell; the real one starts after switch-root
                tokens.clear()
                with self._cond:
                    seen = self._received
        raise ShellError(
            f"no test shell answered on ttyS1 within {timeout:.0f} s "
            "(booted with systemd.debug_shell=ttyS1? is debug-shell.service in the image?)"
        )

    def run(self, cmd: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run `cmd` with bash in the guest; returns (exit status, stdout+stderr)."""
        self.wait_ready(max(timeout, 60.0))
        tok = secrets.token_hex(8).encode()
        payload = base64.b64encode(cmd.encode())
        staged = b"/run/.harness-" + tok
        if len(payload) > CHUNK:
            for i in range(0, len(payload), CHUNK):
                self._send(b"printf %s " + payload[i:i + CHUNK] + b" >> " + staged + b"\n")
            source = b"base64 -d " + staged + b"; rm -f " + staged
        else:
            source = b"printf %s " + payload + b" | base64 -d"
        self._send(
            b"stty -echo -onlcr 2>/dev/null; printf %s%s\\\\n B " + tok
            + b'; bash -c "$(' + source + b')" </dev/null 2>&1 | base64 -w0; '
            + b"printf \\\\n%s%s:%s\\\\n E " + tok + b" ${PIPESTATUS[0]}\n"
        )
        regex = re.compile(b"B" + tok + rb"\r?\n(.*?)\r?\nE" + tok + rb":(\d+)\r?\n", re.DOTALL)
        m = self._wait(regex, timeout)
        if m is None:
            # Interrupt it; the next command probes again, as bash may drop
            # input while it handles the SIGINT.
            self._send(b"\x03")
            self._ready = False
            raise GuestCommandTimeout(cmd, timeout)
        try:
            output = base64.b64decode(re.sub(rb"\s", b"", m.group(1)), validate=True)
        except binascii.Error as e:
            raise ShellError(f"guest command {cmd!r}: garbled output: {e}") from e
        return int(m.group(2)), output.decode("utf-8", errors="replace")
