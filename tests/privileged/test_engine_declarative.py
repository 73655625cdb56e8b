"""containers.d: files become running containers; changes replace, removals remove,
and a broken file changes nothing. The directory is watched with inotify."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.container.manager import ContainerManager
from runtime.container.state import Status
from runtime.declarative import Reconciler
from tests.privileged.conftest import NetNS
from tests.privileged.engine_env import IMAGE, EngineEnv, engine_env, leaks, run_engine

WEB = f'image = "{IMAGE}"\ncmd = ["sleep", "1000"]\nenv = {{ MODE = "a" }}\n'


@pytest.fixture
def env(netns: NetNS, tmp_path: Path) -> Iterator[EngineEnv]:
    with engine_env(netns, tmp_path) as e:
        yield e


def test_reconcile_create_update_bad_file_and_remove(env: EngineEnv, tmp_path: Path) -> None:
    d = tmp_path / "containers.d"
    d.mkdir()

    async def scenario(m: ContainerManager) -> None:
        r = Reconciler(m, d)
        (d / "web.toml").write_text(WEB)
        await r.reconcile()
        first = m.inspect("web")
        assert first.state.status is Status.RUNNING and "MODE=a" in first.spec.env
        await r.reconcile()
        assert m.inspect("web").id == first.id          # unchanged file: left alone
        (d / "web.toml").write_text(WEB.replace('"a"', '"b"'))
        await r.reconcile()
        second = m.inspect("web")
        assert second.id != first.id and "MODE=b" in second.spec.env
        (d / "web.toml").write_text("image = ")          # broken: nothing changes
        (d / "other.toml").write_text('image = "no-such-image"\n')
        await r.reconcile()
        assert m.inspect("web").id == second.id
        assert m.inspect("web").state.status is Status.RUNNING
        assert "not valid TOML" in r.last_errors["web.toml"]
        assert [rec.name for rec in m.list(all=True)] == ["web"]
        (d / "web.toml").unlink()
        (d / "other.toml").unlink()
        await r.reconcile()
        assert m.list(all=True) == []

    run_engine(env, scenario)
    assert leaks(env) == []


def test_inotify_watch_starts_a_dropped_in_file(env: EngineEnv, tmp_path: Path) -> None:
    d = tmp_path / "containers.d"

    async def scenario(m: ContainerManager) -> None:
        r = Reconciler(m, d)
        task = asyncio.create_task(r.watch())
        await asyncio.sleep(0.2)
        (d / ".web.tmp").write_text(WEB)
        (d / ".web.tmp").rename(d / "web.toml")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if any(rec.name == "web" for rec in m.list()):
                break
        assert m.inspect("web").state.status is Status.RUNNING
        (d / "web.toml").unlink()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not m.list(all=True):
                break
        assert m.list(all=True) == []
        task.cancel()

    run_engine(env, scenario)


def test_a_file_waiting_for_its_image_starts_once_the_image_is_there(
        env: EngineEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "containers.d"
    later = WEB.replace(IMAGE, "later:1")

    async def scenario(m: ContainerManager) -> None:
        r = Reconciler(m, d)
        task = asyncio.create_task(r.watch())
        await asyncio.sleep(0.2)
        (d / "web.toml").write_text(later)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if "web" in r.waiting:
                break
        assert "image later:1 not found" in r.waiting["web"]
        assert m.list(all=True) == []
        await asyncio.sleep(1.5)     # a retry or two meanwhile: the error is logged once
        # The image arrives behind the daemon's back (no image event): the back-off
        # retry finds it.
        env.images.tag(IMAGE, "later:1")
        for _ in range(200):
            await asyncio.sleep(0.05)
            if any(rec.name == "web" for rec in m.list()):
                break
        assert m.inspect("web").state.status is Status.RUNNING
        assert r.waiting == {}
        task.cancel()

    with caplog.at_level("INFO", logger="berth.declarative"):
        run_engine(env, scenario)
    errors = [rec.getMessage() for rec in caplog.records if rec.levelname == "ERROR"]
    assert errors == ["declarative: web: image later:1 not found: the container starts once "
                      "it is loaded or pulled (retrying)"], errors
    assert leaks(env) == []
