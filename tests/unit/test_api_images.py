"""The image routes on a test server over a real image store: filters, rmi, prune."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from runtime.api.app import make_app
from runtime.api.backend import Backend, DaemonInfo
from runtime.events import EventBus
from runtime.store.archive import import_rootfs
from runtime.store.commit import HistoryEntry, create_image
from runtime.store.images import ImageStore

Check = Callable[[TestClient[object, object]], Awaitable[None]]


class Users:
    def __init__(self) -> None:
        self.using: dict[str, list[str]] = {}

    def containers_using(self, image_id: str) -> Sequence[str]:
        return self.using.get(image_id, [])


def serve(store: ImageStore, check: Check, events: EventBus | None = None) -> None:
    b = Backend(info=DaemonInfo(data_root=store.root, exec_root=store.root / "exec"),
                images=store, events=events)

    async def go() -> None:
        async with TestClient(TestServer(make_app(b))) as client:
            await check(client)

    asyncio.run(go())


def base_image(store: ImageStore, tag: str, created: str) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("file")
        ti.size = len(tag)
        t.addfile(ti, io.BytesIO(tag.encode()))
    rec = import_rootfs(store, io.BytesIO(buf.getvalue()), tag=None)
    return create_image(store, base=rec.id, layers=[], created=created, tags=[tag],
                        history=[HistoryEntry(f"LABEL t={tag}", empty_layer=True)]).id


def flt(**f: list[str]) -> str:
    return json.dumps(f)


def test_before_since_and_until_filters(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    events = EventBus()
    old = base_image(store, "old:1", "2020-01-01T00:00:00Z")
    mid = base_image(store, "mid:1", "2022-01-01T00:00:00Z")
    new = base_image(store, "new:1", "2024-01-01T00:00:00Z")

    async def check(c: TestClient[object, object]) -> None:
        async def ids(f: str) -> set[str]:
            r = await c.get("/images/json", params={"filters": f})
            assert r.status == 200, await r.text()
            return {i["Id"] for i in await r.json()}

        assert await ids(flt(before=["mid:1"])) == {old}
        assert await ids(flt(since=["mid:1"])) == {new}
        assert await ids(flt(until=["2023-01-01T00:00:00Z"])) == {old, mid}
        r = await c.get("/images/json", params={"filters": flt(since=["nothere:1"])})
        assert r.status == 404
        r = await c.get("/images/json", params={"filters": flt(until=["soon"])})
        assert r.status == 400 and "until=soon" in (await r.json())["message"]
        # prune -a --filter until=: only images created before that time go
        r = await c.post("/images/prune", params={"filters": flt(
            dangling=["false"], until=["2023-01-01T00:00:00Z"])})
        deleted = {e["Deleted"] for e in (await r.json())["ImagesDeleted"] if "Deleted" in e}
        assert {old, mid} <= deleted and new not in deleted
        assert await ids(flt()) == {new}
        seen = [(e.action, e.actor_id) for e in events.history()]
        assert ("untag", "old:1") in seen and ("delete", old) in seen
        assert seen[-1] == ("prune", "")

    serve(store, check, events)


def test_rmi_conflict_and_noprune(tmp_path: Path) -> None:
    users = Users()
    store = ImageStore(tmp_path, users=users)
    base = base_image(store, "base:1", "2020-01-01T00:00:00Z")
    step = create_image(store, base=base, layers=[], history=[HistoryEntry("ENV A=1")]).id
    app = create_image(store, base=step, layers=[], tags=["app:1"],
                       history=[HistoryEntry("CMD x")]).id
    users.using[app] = ["ab" * 32]

    async def check(c: TestClient[object, object]) -> None:
        r = await c.delete("/images/app:1")
        assert r.status == 409
        assert (await r.json())["message"] == (
            'conflict: unable to remove repository reference "app:1" (must force) - '
            f"container abababababab is using its referenced image {app[7:19]}")
        users.using.clear()
        r = await c.delete("/images/app:1", params={"noprune": "1"})
        assert await r.json() == [{"Untagged": "app:1"}, {"Deleted": app}]
        r = await c.get("/images/json", params={"all": "1"})
        assert {i["Id"] for i in await r.json()} >= {step, base}

    serve(store, check)
