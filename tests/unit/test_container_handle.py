"""What berthd keeps per container stays small and behaves the same (density)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from runtime.container.manager import Container, make_mount_points
from runtime.container.spec import CreateRequest, build_spec
from runtime.container.state import State
from runtime.logs import JsonFileLog
from runtime.oci import ImageConfig
from runtime.store import containers as records
from runtime.store.db import open_db


def _record() -> records.ContainerRecord:
    req = CreateRequest(image="busybox", cmd=("sleep", "1000"))
    return records.ContainerRecord(
        id="f" * 64, name="web", created=1.5, image_ref="busybox", image_id="sha256:00",
        layers=("/l0",), request=req, spec=build_spec(req, ImageConfig(), "f" * 64),
        state=State(), uid_base=100000)


def test_a_plain_record_is_stored_without_its_defaults_and_loads_back_whole(
        tmp_path: Path) -> None:
    rec = _record()
    row = records.encode(rec)
    doc = json.loads(row)
    assert "memory" not in doc["request"] and doc["state"] == {}   # all at defaults
    assert doc["request"]["cmd"] == ["sleep", "1000"] and doc["uid_base"] == 100000
    assert len(row) < 1000
    db = open_db(tmp_path / "berth.db")
    records.save(db, rec)
    assert records.load_all(db) == [rec]


def test_stopped_is_a_flag_until_someone_waits_then_the_event_follows_it(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        c = Container(record=_record(), log=JsonFileLog(tmp_path / "log"))
        assert isinstance(c._stopped, bool) and c._removed is None and c._lock is None
        c.mark_stopped(False)
        assert not c.stopped.is_set()         # made now, with the flag's state
        waiter = asyncio.ensure_future(c.stopped.wait())
        await asyncio.sleep(0)
        c.mark_stopped(True)
        assert await asyncio.wait_for(waiter, 1) is True
        nxt = asyncio.ensure_future(c.next_exit.wait())
        await asyncio.sleep(0)
        c.signal_exit()
        assert await asyncio.wait_for(nxt, 1) is True
        assert not c.next_exit.is_set()       # a fresh one for the next exit
        assert c.outputs() is c.outputs()

    asyncio.run(scenario())


def test_mount_points_layer_holds_empty_mount_points_and_is_made_idempotently(
        tmp_path: Path) -> None:
    root = make_mount_points(tmp_path / "mp")
    (root / "etc" / "hosts").write_text("")   # a second daemon start keeps what is there
    make_mount_points(root)
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["hostname", "hosts",
                                                                "resolv.conf"]
    assert all((root / d).is_dir() for d in ("proc", "dev", "sys"))
    assert all(p.stat().st_size == 0 for p in (root / "etc").iterdir())
