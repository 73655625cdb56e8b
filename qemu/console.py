"""The serial console log: wait for a pattern, or fail showing its tail."""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable
from pathlib import Path

# systemd colours its status lines even on a serial console; patterns are
# matched against the text with escape sequences removed.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")

TAIL_LINES = 40


class ConsoleTimeout(Exception):
    def __init__(self, pattern: str, timeout: float, tail: str, why: str = "") -> None:
        self.pattern = pattern
        self.tail = tail
        reason = why or f"not seen within {timeout:.0f} s"
        super().__init__(
            f"console: {pattern!r} {reason}; last console lines:\n{tail}"
        )


def clean(text: str) -> str:
    return _ANSI.sub("", text)


class Console:
    """Reads the console log file QEMU appends to; offsets are byte offsets."""

    def __init__(self, path: Path, exit_status: Callable[[], int | None]) -> None:
        self.path = path
        self._exit_status = exit_status

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def text(self, since: int = 0) -> str:
        try:
            with self.path.open("rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return ""
        return clean(data.decode("utf-8", errors="replace"))

    def tail(self, lines: int = TAIL_LINES, since: int = 0) -> str:
        return "\n".join(self.text(since).splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float, since: int = 0) -> re.Match[str]:
        """Wait until `pattern` (a regex) appears in the console after byte `since`."""
        regex = re.compile(pattern)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        raw = ""
        offset = since
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self.path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
            if chunk:
                offset += len(chunk)
                raw += decoder.decode(chunk)
                m = regex.search(clean(raw))
                if m:
                    return m
            status = self._exit_status()
            if status is not None:
                raise ConsoleTimeout(pattern, timeout, self.tail(since=since),
                                     f"not seen: QEMU exited with status {status}")
            if time.monotonic() > deadline:
                raise ConsoleTimeout(pattern, timeout, self.tail(since=since))
            time.sleep(0.2)
