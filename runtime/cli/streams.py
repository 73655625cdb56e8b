"""Attached streams: Docker's multiplexed frames, raw TTY mode, stdin pumping.

Without a TTY the daemon frames stdout and stderr: an 8-byte header
(stream id, 3 zero bytes, big-endian length) before each payload. With a TTY
the stream is raw and the local terminal goes to raw mode so that keys reach
the container as typed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO

from runtime.client import Hijacked

STDIN, STDOUT, STDERR = 0, 1, 2
_HEADER = struct.Struct(">BxxxI")


def frames(reader: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """(stream id, payload) pairs from a multiplexed stream until EOF."""
    while True:
        head = _read_exact(reader, _HEADER.size)
        if len(head) < _HEADER.size:
            return
        stream, size = _HEADER.unpack(head)
        payload = _read_exact(reader, size)
        yield stream, payload
        if len(payload) < size:
            return


def frames_from_chunks(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """The same framing over an HTTP body that arrives in arbitrary chunks (logs)."""
    buf = b""
    for chunk in chunks:
        buf += chunk
        while len(buf) >= _HEADER.size:
            stream, size = _HEADER.unpack_from(buf)
            if len(buf) < _HEADER.size + size:
                break
            yield stream, buf[_HEADER.size:_HEADER.size + size]
            buf = buf[_HEADER.size + size:]


def encode_frame(stream: int, payload: bytes) -> bytes:
    return _HEADER.pack(stream, len(payload)) + payload


def _read_exact(reader: IO[bytes], n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        data = reader.read(n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def write_out(stream: int, payload: bytes) -> None:
    target = sys.stderr if stream == STDERR else sys.stdout
    target.buffer.write(payload)
    target.buffer.flush()


def copy_output(conn: Hijacked, tty: bool) -> None:
    """Copy the container's output to ours until the daemon ends the stream."""
    if tty:
        while True:
            data = conn.reader.read1(65536)  # type: ignore[attr-defined]
            if not data:
                return
            write_out(STDOUT, data)
    for stream, payload in frames(conn.reader):
        write_out(stream, payload)


DETACH_KEYS = b"\x10\x11"     # ctrl-p ctrl-q, the docker CLI's default


class EscapeProxy:
    """Finds the detach sequence in typed input, as the docker CLI's term.EscapeProxy:
    bytes that could begin it are held back; if the sequence completes they are dropped
    (and the session detaches), if not they are sent on with what follows."""

    def __init__(self, keys: bytes = DETACH_KEYS) -> None:
        self.keys = keys
        self._held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes to send now, whether the sequence was typed)."""
        out = bytearray()
        for byte in data:
            held = self._held + bytes([byte])
            if self.keys.startswith(held):
                if held == self.keys:
                    self._held = b""
                    return bytes(out), True
                self._held = held
                continue
            out += held
            self._held = b""
        return bytes(out), False


def pump_stdin(conn: Hijacked, detached: threading.Event | None = None) -> threading.Thread:
    """Copy our stdin to the container in a thread; half-close at EOF. With `detached`
    (a TTY session) ctrl-p ctrl-q sets it and ends the session: the container runs on."""

    def run() -> None:
        fd = sys.stdin.fileno()
        escape = EscapeProxy() if detached is not None else None
        try:
            while data := os.read(fd, 65536):
                if escape is not None:
                    data, detach = escape.feed(data)
                    if data:
                        conn.sock.sendall(data)
                    if detach and detached is not None:
                        detached.set()
                        conn.sock.shutdown(socket.SHUT_RDWR)   # ends copy_output too
                        return
                    continue
                conn.sock.sendall(data)
        except OSError:
            pass
        finally:
            if detached is None or not detached.is_set():
                conn.close_write()

    t = threading.Thread(target=run, name="stdin", daemon=True)
    t.start()
    return t


@contextlib.contextmanager
def raw_terminal(enabled: bool) -> Iterator[None]:
    """Put stdin's terminal in raw mode for a TTY session, and restore it after."""
    if not enabled or not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def terminal_size() -> tuple[int, int] | None:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return None
    return size.lines, size.columns


def follow_resizes(resize: Callable[[int, int], object]) -> None:
    """Send the terminal size now and on every SIGWINCH."""

    def send(*_: object) -> None:
        size = terminal_size()
        if size is not None:
            with contextlib.suppress(Exception):
                resize(*size)

    send()
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGWINCH, send)
