"""API shapes without a daemon process: the aiohttp app on a test server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer

from runtime import __version__
from runtime.api.app import make_app
from runtime.api.backend import Backend, DaemonInfo
from runtime.api.errors import error_response, status_for
from runtime.api.events import event_matcher
from runtime.api.filters import parse_filters
from runtime.events import Event, EventBus

Check = Callable[[TestClient[object, object]], Awaitable[None]]


def with_client(check: Check, backend: Backend | None = None) -> None:
    b = backend or Backend(info=DaemonInfo(data_root=Path("/nonexistent/data"),
                                           exec_root=Path("/nonexistent/exec")))

    async def go() -> None:
        async with TestClient(TestServer(make_app(b))) as client:
            await check(client)

    asyncio.run(go())


def test_ping_headers_and_head() -> None:
    async def check(c: TestClient[object, object]) -> None:
        for method in ("GET", "HEAD"):
            r = await c.request(method, "/_ping")
            assert r.status == 200
            assert r.headers["Api-Version"] == "1.47"
            assert r.headers["Ostype"] == "linux"
            assert r.headers["Server"].startswith(f"Berth/{__version__}")
        assert await (await c.get("/v1.40/_ping")).text() == "OK"

    with_client(check)


def test_version_shape_and_prefixes() -> None:
    async def check(c: TestClient[object, object]) -> None:
        for path in ("/version", "/v1.24/version", "/v1.47/version"):
            v = await (await c.get(path)).json()
            assert v["Version"] == __version__
            assert (v["ApiVersion"], v["MinAPIVersion"]) == ("1.47", "1.24")
            assert v["Platform"]["Name"] == "Berth" and v["Os"] == "linux"
            assert v["Components"][0]["Details"]["ApiVersion"] == "1.47"
        for path, word in (("/v1.23/version", "too old"), ("/v1.48/version", "too new")):
            r = await c.get(path)
            assert r.status == 400 and word in (await r.json())["message"]

    with_client(check)


def test_errors_have_dockers_json_shape() -> None:
    async def check(c: TestClient[object, object]) -> None:
        r = await c.get("/v1.47/no/such/route")
        assert r.status == 404 and await r.json() == {"message": "page not found"}
        r = await c.delete("/v1.47/_ping")       # dockerd: no such route either
        assert r.status == 404 and await r.json() == {"message": "page not found"}
        # No engine in this backend: a clear 501, not a crash.
        r = await c.get("/images/json")
        assert r.status == 501
        assert (await r.json())["message"] == "images are not available in this berthd"

    with_client(check)


def test_exceptions_of_other_layers_map_to_statuses() -> None:
    from runtime.container.errors import InvalidRequest, NoSuchContainer, NotRunning
    from runtime.oci import ImageNotFound
    from runtime.store.images import ImageConflict

    assert status_for(NoSuchContainer("x")) == 404
    assert status_for(ImageNotFound("x")) == 404
    assert status_for(NotRunning("x")) == 409  # through its base class Conflict
    assert status_for(ImageConflict("x", "in use")) == 409
    assert status_for(InvalidRequest("bad")) == 400
    assert status_for(ValueError("a bug")) is None
    assert json.loads(error_response(400, "a\n - b\n").text or "") == {"message": "a; b"}


def test_filters_parse_both_forms_and_refuse_unknown_keys() -> None:
    assert parse_filters('{"status": ["running"]}', ["status"]) == {"status": ["running"]}
    assert parse_filters('{"status": {"running": true}}', ["status"]) == {"status": ["running"]}
    try:
        parse_filters('{"colour": ["red"]}', ["status"])
    except Exception as e:
        assert "Invalid filter 'colour'" in str(e)
    else:
        raise AssertionError("unknown filter accepted")


def test_event_filters() -> None:
    start = Event("container", "start", "abc123def456", {"name": "web", "image": "busybox"})
    die = Event("container", "die", "abc123def456", {"name": "web", "exitCode": "0"})
    tag = Event("image", "tag", "sha256:1", {"name": "busybox:latest"})
    m = event_matcher({"type": ["container"], "event": ["start", "stop"]})
    assert [m(e) for e in (start, die, tag)] == [True, False, False]
    m = event_matcher({"container": ["web"]})
    assert [m(e) for e in (start, die, tag)] == [True, True, False]
    m = event_matcher({"image": ["busybox"]})
    assert m(start) and not m(die)


def test_events_stream_replays_and_follows() -> None:
    bus = EventBus()
    backend = Backend(info=DaemonInfo(data_root=Path("/x"), exec_root=Path("/y")), events=bus)
    bus.publish("container", "create", "c1", {"name": "one"})

    async def check(c: TestClient[object, object]) -> None:
        r = await c.get("/v1.47/events", params={"since": "0",
                                                 "filters": '{"event": ["create"]}'})
        assert r.status == 200
        first = json.loads(await r.content.readline())
        assert first["Action"] == "create" and first["Actor"]["ID"] == "c1"
        bus.publish("container", "start", "c1")   # filtered out
        bus.publish("container", "create", "c2")
        second = json.loads(await r.content.readline())
        assert second["Actor"]["ID"] == "c2"
        r.close()
        # until in the past: the stream ends by itself.
        r = await c.get("/events", params={"since": "0", "until": "1"})
        assert await r.read() == b""

    with_client(check, backend)


def test_containers_go_to_the_subtree_systemd_delegated() -> None:
    from runtime.daemon import delegated_cgroup_root

    under_unit = "0::/system.slice/berthd.service/supervisor\n"
    assert delegated_cgroup_root(under_unit, under_systemd=True) == \
        Path("/sys/fs/cgroup/system.slice/berthd.service/containers")
    # Started by hand, or not in a delegated leaf: the engine's default.
    assert delegated_cgroup_root(under_unit, under_systemd=False) is None
    assert delegated_cgroup_root("0::/user.slice/session-1.scope\n", True) is None
    assert delegated_cgroup_root("12:pids:/\n0::/\n", True) is None


def test_hook_names_select_events() -> None:
    from runtime.api.hooks import hook_env, hook_matches

    die = Event("container", "die", "c1", {"name": "web", "exitCode": "3"})
    exec_start = Event("container", "exec_start: sh -c ls", "c1")
    assert hook_matches("container.die.page", die)
    assert hook_matches("container.any.log", die) and hook_matches("any.any", die)
    assert not hook_matches("container.start", die) and not hook_matches("image.die", die)
    assert hook_matches("container.exec_start.audit", exec_start)
    assert not hook_matches("README", die)
    assert hook_env(die)["BERTH_EVENT_EXIT_CODE"] == "3"


def test_listen_addresses_and_tls_sources(tmp_path: Path) -> None:
    from runtime.api.listeners import ListenError, Scheme, parse_address, tls_files

    assert parse_address("unix:///run/x.sock").path == "/run/x.sock"
    tcp = parse_address("tcp://0.0.0.0:2376")
    assert (tcp.scheme, tcp.host, tcp.port) == (Scheme.TCP, "0.0.0.0", 2376)
    v6 = parse_address("tcp://[::1]:1234")
    assert (v6.host, v6.port, str(v6)) == ("::1", 1234, "tcp://[::1]:1234")
    assert parse_address("tcp://:2376").host == "0.0.0.0"
    assert parse_address("fd://").scheme is Scheme.FD
    for bad in ("localhost:2376", "http://x", "tcp://h:port", "tcp://h:70000"):
        try:
            parse_address(bad)
        except ListenError:
            continue
        raise AssertionError(f"{bad} accepted")

    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("berth.tls.ca", "berth.tls.cert", "berth.tls.key"):
        (creds / name).write_text("x")
    assert tls_files(None, None, None, None) is None
    assert tls_files(None, None, None, str(creds)).ca == creds / "berth.tls.ca"  # type: ignore[union-attr]
    flags = tls_files("/ca", "/cert", "/key", str(creds))
    assert flags is not None and flags.cert == Path("/cert")  # flags win over credentials
    try:
        tls_files("/ca", None, None, None)
    except ListenError as e:
        assert "go together" in str(e)
    else:
        raise AssertionError("half the TLS flags accepted")


def test_daemon_flags(tmp_path: Path) -> None:
    from runtime.api.listeners import ListenError
    from runtime.daemon import DEFAULT_CONTAINERS_DIR, config_from_args

    c = config_from_args(["--data-root", str(tmp_path), "-H", "unix:///tmp/b.sock",
                          "--log-level", "debug", "--insecure-registry", "r:5000"])
    assert c.data_root == tmp_path and c.hosts[0].path == "/tmp/b.sock"
    assert c.insecure_registries == ("r:5000",) and c.containers_dir is None
    system = config_from_args([])
    assert system.containers_dir == DEFAULT_CONTAINERS_DIR
    assert config_from_args(["--containers-dir", ""]).containers_dir is None
    try:
        config_from_args(["-H", "tcp://127.0.0.1:2375"])
    except ListenError as e:
        assert "mutual TLS" in str(e)
    else:
        raise AssertionError("plain TCP accepted")
    assert config_from_args(["-H", "tcp://127.0.0.1:2375", "--insecure-tcp"]).insecure_tcp
