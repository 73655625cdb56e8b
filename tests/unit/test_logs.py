"""json-file logs: Docker's line format, size rotation, and since/until/tail/follow reads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from runtime.logs import JsonFileLog, LogEntry, LogOptions, parse_rfc3339_nano, rfc3339_nano

S = 1_000_000_000


def read(driver: JsonFileLog, opts: LogOptions) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [e.line async for e in driver.read(opts, lambda: False)]

    return asyncio.run(collect())


def fill(driver: JsonFileLog, n: int) -> None:
    for i in range(n):
        driver.write(LogEntry("stdout" if i % 2 == 0 else "stderr", (1000 + i) * S,
                              f"line {i}\n".encode()))


def test_lines_are_in_dockers_json_format(tmp_path: Path) -> None:
    d = JsonFileLog(tmp_path / "c-json.log")
    d.write(LogEntry("stdout", 1_700_000_000 * S + 5, b"hello\n"))
    rec = json.loads((tmp_path / "c-json.log").read_text())
    assert rec == {"log": "hello\n", "stream": "stdout", "time": "2023-11-14T22:13:20.000000005Z"}
    assert parse_rfc3339_nano(rfc3339_nano(1_700_000_000 * S + 5)) == 1_700_000_000 * S + 5


def test_rotation_keeps_max_files_and_reads_oldest_first(tmp_path: Path) -> None:
    d = JsonFileLog(tmp_path / "c-json.log", max_size=400, max_files=3)
    fill(d, 40)
    files = d.files()
    assert [p.name for p in files] == ["c-json.log.2", "c-json.log.1", "c-json.log"]
    assert all(p.stat().st_size < 400 + 100 for p in files)
    lines = read(d, LogOptions())
    assert lines[-1] == b"line 39\n"
    assert lines == sorted(lines, key=lambda b: int(b.split()[1]))
    assert len(lines) < 40  # the oldest were rotated away


def test_since_until_tail_and_stream_selection(tmp_path: Path) -> None:
    d = JsonFileLog(tmp_path / "c-json.log")
    fill(d, 10)
    assert read(d, LogOptions(tail=2)) == [b"line 8\n", b"line 9\n"]
    assert read(d, LogOptions(tail=0)) == []
    assert read(d, LogOptions(since_ns=1005 * S, until_ns=1007 * S)) == [
        b"line 5\n", b"line 6\n", b"line 7\n"]
    assert read(d, LogOptions(stderr=False, tail=2)) == [b"line 6\n", b"line 8\n"]


def test_follow_returns_new_lines_until_the_container_stops(tmp_path: Path) -> None:
    d = JsonFileLog(tmp_path / "c-json.log")
    fill(d, 1)

    async def scenario() -> list[bytes]:
        alive = True
        got: list[bytes] = []

        async def reader() -> None:
            async for e in d.read(LogOptions(follow=True), lambda: alive):
                got.append(e.line)

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.1)
        d.write(LogEntry("stdout", 2000 * S, b"later\n"))
        await asyncio.sleep(0.2)
        alive = False
        await asyncio.wait_for(task, 2)
        return got

    assert asyncio.run(scenario()) == [b"line 0\n", b"later\n"]
