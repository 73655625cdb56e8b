"""Watching container processes from the event loop: pidfds and log pumps.

No thread or process per container: an exit is a readable pidfd, output is
a readable FIFO (or pty master), both registered with loop.add_reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from runtime.logs import LogDriver, LogEntry

MAX_LINE = 16 * 1024          # Docker splits longer lines too
# Log FIFOs start at one page and grow to PIPE_SIZE when a container fills them (or
# before a clean daemon stop): an idle container's two pipes then cost ~100 bytes of
# slab instead of 2 x 4 KiB for 64 pipe_buffer slots (measured by bench/density.py).
PIPE_SIZE = 256 << 10      # what a container may write while berthd is away
IDLE_PIPE_SIZE = 4096
_F_SETPIPE_SZ = 1031
_F_GETPIPE_SZ = 1032
_READ_SIZE = 65536


def _pipe_size(fd: int) -> int | None:
    """The pipe's capacity, None if fd is not a pipe (a pty master)."""
    try:
        return fcntl.fcntl(fd, _F_GETPIPE_SZ)
    except OSError:
        return None


def set_pipe_size(fd: int, size: int) -> int | None:
    """Resize a pipe; None when the kernel refuses (EBUSY: more data queued than fits)."""
    try:
        return fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        return None


def exit_status(pidfd: int) -> int | None:
    """Reap our child through its pidfd: its exit code (128+signal if killed).

    None when it is not our child (re-adopted after a daemon restart): the
    status went to whoever reaped it, and cannot be known.
    """
    try:
        res = os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    except ChildProcessError:
        return None
    if res is None:
        return None
    if res.si_code == os.CLD_EXITED:
        return res.si_status
    return 128 + res.si_status


def watch_exit(pidfd: int, on_exit: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()

    def ready() -> None:
        loop.remove_reader(pidfd)
        on_exit()

    loop.add_reader(pidfd, ready)


def unwatch(pidfd: int) -> None:
    with contextlib.suppress(ValueError, OSError, RuntimeError):
        asyncio.get_running_loop().remove_reader(pidfd)


def make_fifo(path: Path) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)


def open_fifo_pair(path: Path) -> tuple[int, int]:
    """(daemon's non-blocking read end, the container's O_RDWR end).

    O_RDWR: the container itself counts as a reader, so it never gets SIGPIPE
    when berthd dies; its writes block once the pipe is full until a new
    berthd opens the FIFO again and drains it.
    """
    make_fifo(path)
    r = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    w = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    set_pipe_size(w, IDLE_PIPE_SIZE)
    return r, w


class LogPump:
    """Reads one stream (FIFO read end or pty master) into the log driver."""

    __slots__ = (
        "_inherited",
        "_partial",
        "closed",
        "driver",
        "fd",
        "on_data",
        "on_eof",
        "pipe_size",
        "stream",
    )

    def __init__(self, fd: int, stream: str, driver: LogDriver,
                 on_eof: Callable[[], None] | None = None,
                 on_data: Callable[[bytes], None] | None = None,
                 readopted: bool = False) -> None:
        self.fd = fd
        self.stream = stream
        self.driver = driver
        self.on_eof = on_eof
        self.on_data = on_data
        self._partial = b""
        self.closed = False
        # A re-adopted container's FIFO was grown by the berthd that stopped: shrink it
        # back once a read drains it (only then: whoever writes a pipe berthd made
        # itself may rely on its size).
        self.pipe_size = _pipe_size(fd)
        self._inherited = (readopted and self.pipe_size is not None
                           and self.pipe_size > IDLE_PIPE_SIZE)
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._ready)

    def _ready(self) -> None:
        try:
            chunk = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno != errno.EIO:  # EIO: pty slave side closed
                raise
            chunk = b""
        if not chunk:
            self.close()
            return
        if self.pipe_size is not None:
            self._resize(len(chunk), self.pipe_size)
        if self.on_data is not None:
            self.on_data(chunk)
        self._feed(chunk)

    def _resize(self, got: int, size: int) -> None:
        if got >= size and size < PIPE_SIZE:
            self.grow()   # the container filled the pipe: it writes a lot, give it room
        elif self._inherited and got < _READ_SIZE:   # drained it: quiet again
            self._inherited = False
            self.pipe_size = set_pipe_size(self.fd, IDLE_PIPE_SIZE) or self.pipe_size

    def grow(self) -> None:
        """Full size: before berthd stops, so the container can write while it is away."""
        if self.pipe_size is not None and not self.closed:
            self.pipe_size = set_pipe_size(self.fd, PIPE_SIZE) or self.pipe_size

    def _feed(self, chunk: bytes) -> None:
        now = time.time_ns()
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self.driver.write(LogEntry(self.stream, now, line + b"\n"))
        while len(self._partial) >= MAX_LINE:
            self.driver.write(LogEntry(self.stream, now, self._partial[:MAX_LINE]))
            self._partial = self._partial[MAX_LINE:]

    def drain(self) -> None:
        """Read what is buffered right now (at exit, before reporting `die`)."""
        while not self.closed:
            try:
                chunk = os.read(self.fd, _READ_SIZE)
            except (BlockingIOError, OSError):
                return
            if not chunk:
                self.close()
                return
            if self.on_data is not None:
                self.on_data(chunk)  # attached terminals get the last output too
            self._feed(chunk)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, RuntimeError):
            asyncio.get_running_loop().remove_reader(self.fd)
        if self._partial:
            self.driver.write(LogEntry(self.stream, time.time_ns(), self._partial))
            self._partial = b""
        os.close(self.fd)
        if self.on_eof is not None:
            self.on_eof()
