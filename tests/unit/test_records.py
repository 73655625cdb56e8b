"""Container records survive a round trip through SQLite unchanged."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from runtime.container.spec import CreateRequest, RestartPolicy, VolumeRequest, build_spec
from runtime.container.state import State, Status
from runtime.events import EventBus
from runtime.oci import ImageConfig
from runtime.rootfs import Volume, VolumeKind
from runtime.store import containers as records
from runtime.store.db import open_db


def test_record_round_trip(tmp_path: Path) -> None:
    req = CreateRequest(image="busybox", cmd=("sh",), env=("A=1",),
                        labels=MappingProxyType({"k": "v"}),
                        volumes=(VolumeRequest("/h", "/c", True),),
                        restart_policy=RestartPolicy.parse("on-failure:3"), memory=1 << 20)
    spec = build_spec(req, ImageConfig(), "f" * 64)
    rec = records.ContainerRecord(
        id="f" * 64, name="web", created=1.5, image_ref="busybox", image_id="sha256:00",
        layers=("/l0",), request=req, spec=spec,
        state=State(status=Status.RUNNING, pid=42, pid_start_time=7),
        uid_base=100000, volumes=(Volume("/h", "/c", True, VolumeKind.BIND),))
    db = open_db(tmp_path / "berth.db")
    records.save(db, rec)
    assert records.load_all(db) == [rec]
    records.delete(db, rec.id)
    assert records.load_all(db) == []


def test_event_shape_is_dockers() -> None:
    bus = EventBus()
    ev = bus.publish("container", "die", "abc", {"name": "web", "exitCode": "3"})
    d = ev.to_docker()
    assert d["Type"] == "container" and d["Action"] == "die" and d["status"] == "die"
    assert d["Actor"] == {"ID": "abc", "Attributes": {"name": "web", "exitCode": "3"}}
    assert d["time"] == d["timeNano"] // 1_000_000_000 and d["scope"] == "local"
    assert bus.history(since_ns=ev.time_ns) == [ev]
