"""hostos health against an HTTP server on a unix socket speaking the two routes it reads."""

from __future__ import annotations

import contextlib
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from hostos.health import run_checks, trial_reboot
from hostos.update.entries import BootEntry, parse_entries


class Handler(BaseHTTPRequestHandler):
    running: list[str] = []

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/_ping":
            body, ctype = b"OK", "text/plain"
        elif self.path.startswith("/containers/json"):
            body = json.dumps([{"Names": [f"/{n}"], "State": "running"} for n in self.running]
                              + [{"Names": ["/stopped"], "State": "exited"}]).encode()
            ctype = "application/json"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def start_api(sock: Path, running: list[str]) -> Iterator[None]:
    handler = type("H", (Handler,), {"running": running})
    server = UnixServer(str(sock), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        t.join()


def test_healthy_when_berthd_answers_and_declared_containers_run(tmp_path: Path) -> None:
    decl = tmp_path / "containers.d"
    decl.mkdir()
    (decl / "web.toml").write_text('image = "busybox"\n')
    with start_api(tmp_path / "api.sock", ["web"]):
        results = run_checks(tmp_path / "api.sock", decl, time.monotonic())
    assert [(r.name, r.ok) for r in results] == [("berthd", True), ("containers", True)]


def test_unhealthy_when_a_declared_container_is_not_running(tmp_path: Path) -> None:
    decl = tmp_path / "containers.d"
    decl.mkdir()
    (decl / "web.toml").write_text('image = "busybox"\n')
    (decl / "stopped.toml").write_text('image = "busybox"\n')
    with start_api(tmp_path / "api.sock", ["web"]):
        results = run_checks(tmp_path / "api.sock", decl, time.monotonic())
    assert not results[1].ok and "stopped" in results[1].detail


def test_unhealthy_when_berthd_does_not_answer(tmp_path: Path) -> None:
    results = run_checks(tmp_path / "absent.sock", tmp_path, time.monotonic())
    assert [(r.name, r.ok) for r in results] == [("berthd", False)]


def test_a_failed_or_hung_trial_boot_reboots_only_with_somewhere_to_fall_back() -> None:
    def entries(*names: str) -> list[BootEntry]:
        return parse_entries(list(names), "berth")

    # B on trial (one try done), A blessed: reboot, the boot loader counts B down.
    reason = trial_reboot("0.2.0", entries("berth_0.1.0.efi", "berth_0.2.0+2-1.efi"), "hung")
    assert reason is not None and "berth_0.2.0+2-1.efi" in reason
    # Last try used up (+0): still reboot, so systemd-boot picks A next.
    assert trial_reboot("0.2.0", entries("berth_0.1.0.efi", "berth_0.2.0+0-3.efi"), "x")
    # Blessed B turned unhealthy: reported, never a reboot loop.
    assert trial_reboot("0.2.0", entries("berth_0.1.0.efi", "berth_0.2.0.efi"), "x") is None
    # A first boot on trial with no other entry: nowhere to go.
    assert trial_reboot("0.1.0", entries("berth_0.1.0+3.efi"), "x") is None
    # The only other entry is one the boot loader gave up on: nowhere to go either.
    assert trial_reboot("0.1.0", entries("berth_0.1.0+2-1.efi", "berth_0.2.0+0-3.efi"),
                        "x") is None
