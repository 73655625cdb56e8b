"""Log pumps and the stdout FIFOs that let output outlive a daemon restart."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from runtime.container.supervisor import MAX_LINE, LogPump, open_fifo_pair
from runtime.logs import LogEntry


class Collect:
    """A log driver that keeps what it is given (the pump's only collaborator)."""

    name = "collect"

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []

    def write(self, entry: LogEntry) -> None:
        self.entries.append(entry)


def test_pump_splits_lines_keeps_partials_and_flushes_at_eof() -> None:
    async def scenario() -> list[bytes]:
        r, w = os.pipe()
        got = Collect()
        done = asyncio.Event()
        LogPump(r, "stderr", got, on_eof=done.set)  # type: ignore[arg-type]
        # Written from a thread: when the machine's pipe quota is spent a pipe
        # holds one page, and a blocking write on the loop would starve the pump.
        await asyncio.to_thread(os.write, w, b"one\ntw")
        await asyncio.sleep(0.05)
        await asyncio.to_thread(os.write, w, b"o\n" + b"x" * (MAX_LINE + 10))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(os.write, w, b"\nlast-without-newline")
        os.close(w)
        await asyncio.wait_for(done.wait(), 5)
        assert {e.stream for e in got.entries} == {"stderr"}
        return [e.line for e in got.entries]

    lines = asyncio.run(scenario())
    assert lines == [b"one\n", b"two\n", b"x" * MAX_LINE, b"x" * 10 + b"\n",
                     b"last-without-newline"]


def test_fifo_keeps_output_while_nobody_reads_and_never_sigpipes(tmp_path: Path) -> None:
    fifo = tmp_path / "stdout"
    reader, container_end = open_fifo_pair(fifo)
    os.close(reader)                      # the daemon goes away
    os.write(container_end, b"while away\n")   # no EPIPE, no SIGPIPE
    again = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)   # a new daemon opens it again
    assert os.read(again, 100) == b"while away\n"
    os.close(container_end)               # the container exits: EOF for the daemon
    assert os.read(again, 100) == b""
    os.close(again)
