"""berthd as a process: listeners, mTLS, systemd notify and socket activation.

Each test starts a real berthd in its own network namespace and talks to it
with real clients (http over the unix socket, curl and the docker CLI over
TCP with mutual TLS inside the namespace).
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

from runtime import __version__, tls
from tests.privileged.berthd import BERTH, BERTHD, request, start_berthd, stop, wait_for_ping
from tests.privileged.conftest import NetNS

DOCKER = "/usr/local/bin/docker"


def make_certs(d: Path) -> Path:
    """A CA plus server and client pairs in Docker's file layout, in `d` (runtime.tls)."""
    return tls.generate(d).directory


def _port() -> int:
    # The test's netns is fresh, so any port is free in it.
    return random.randint(20000, 60000)


def test_ping_and_version_over_unix(netns: NetNS, tmp_path: Path) -> None:
    with start_berthd(netns, tmp_path) as d:
        ping = d.request("GET", "/_ping")
        assert ping.status == 200 and ping.body == b"OK"
        assert ping.headers["api-version"] == "1.47"
        assert ping.headers["ostype"] == "linux"
        assert ping.headers["server"].startswith(f"Berth/{__version__}")
        assert d.request("HEAD", "/_ping").status == 200

        for path in ("/version", "/v1.47/version", "/v1.24/version", "/v1.41/version"):
            r = d.request("GET", path)
            assert r.status == 200, path
            v = r.json()
            assert isinstance(v, dict)
            assert v["Version"] == __version__ and v["ApiVersion"] == "1.47"
            assert v["Platform"] == {"Name": "Berth"} and v["Os"] == "linux"
            assert v["Components"][0]["Name"] == "Engine"

        too_old = d.request("GET", "/v1.12/version")
        assert too_old.status == 400 and b"too old" in too_old.body
        missing = d.request("GET", "/v1.47/nothing-here")
        assert missing.status == 404 and "message" in json.loads(missing.body)

        mode = d.socket.stat().st_mode
        assert stat.S_IMODE(mode) == 0o660


def test_docker_cli_version_over_unix(netns: NetNS, tmp_path: Path) -> None:
    with start_berthd(netns, tmp_path) as d:
        r = subprocess.run([DOCKER, "-H", d.host, "version", "--format", "{{json .}}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        v = json.loads(r.stdout)
        assert v["Server"]["Platform"]["Name"] == "Berth"
        assert v["Server"]["Version"] == __version__
        assert v["Client"]["ApiVersion"] == "1.47"  # negotiated down from the CLI's newest
        plain = subprocess.run([DOCKER, "-H", d.host, "version"], capture_output=True,
                               text=True, timeout=60)
        assert plain.returncode == 0 and "Server: Berth" in plain.stdout


def test_mtls_tcp_listener(netns: NetNS, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    port = _port()
    with start_berthd(netns, tmp_path, "-H", f"tcp://127.0.0.1:{port}",
                      "--tlscacert", str(certs / "ca.pem"),
                      "--tlscert", str(certs / "server-cert.pem"),
                      "--tlskey", str(certs / "server-key.pem")):
        url = f"https://127.0.0.1:{port}/version"
        ok = netns.run("curl", "-sS", "--cacert", str(certs / "ca.pem"),
                       "--cert", str(certs / "cert.pem"), "--key", str(certs / "key.pem"), url)
        assert json.loads(ok.stdout)["Version"] == __version__

        refused = netns.run("curl", "-sS", "--cacert", str(certs / "ca.pem"), url, check=False)
        assert refused.returncode != 0, refused.stdout
        plain = netns.run("curl", "-sS", f"http://127.0.0.1:{port}/version", check=False)
        assert plain.returncode != 0 or "Version" not in plain.stdout

        docker = netns.run(DOCKER, "--tlsverify", "--tlscacert", str(certs / "ca.pem"),
                           "--tlscert", str(certs / "cert.pem"),
                           "--tlskey", str(certs / "key.pem"),
                           "-H", f"tcp://127.0.0.1:{port}", "version", check=False)
        assert docker.returncode == 0, docker.stderr
        assert "Server: Berth" in docker.stdout

        berth = netns.run(*BERTH, "--tlsverify", "--tlscacert", str(certs / "ca.pem"),
                          "--tlscert", str(certs / "cert.pem"), "--tlskey",
                          str(certs / "key.pem"), "-H", f"tcp://127.0.0.1:{port}", "version",
                          "--format", "{{.Server.Version}}", check=False)
        assert berth.stdout == f"{__version__}\n", berth.stderr
        no_cert = netns.run(*BERTH, "--tlsverify", "--tlscacert", str(certs / "ca.pem"),
                            "-H", f"tcp://127.0.0.1:{port}", "ps", check=False)
        assert no_cert.returncode == 1 and "Traceback" not in no_cert.stderr


def test_tls_from_systemd_credentials(netns: NetNS, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    creds = tmp_path / "creds"
    creds.mkdir()
    for src, name in (("ca.pem", "berth.tls.ca"), ("server-cert.pem", "berth.tls.cert"),
                      ("server-key.pem", "berth.tls.key")):
        (creds / name).write_bytes((certs / src).read_bytes())
    port = _port()
    with start_berthd(netns, tmp_path, "-H", f"tcp://127.0.0.1:{port}",
                      env={"CREDENTIALS_DIRECTORY": str(creds)}):
        r = netns.run("curl", "-sS", "--cacert", str(certs / "ca.pem"),
                      "--cert", str(certs / "cert.pem"), "--key", str(certs / "key.pem"),
                      f"https://127.0.0.1:{port}/_ping")
        assert r.stdout == "OK"


def test_plain_tcp_is_refused_without_tls(netns: NetNS, tmp_path: Path) -> None:
    r = subprocess.run(netns.argv(*BERTHD, "--data-root", str(tmp_path / "d"), "--exec-root",
                                  str(tmp_path / "e"), "-H", "tcp://127.0.0.1:2375"),
                       capture_output=True, text=True, timeout=30,
                       env={k: v for k, v in os.environ.items()
                            if k != "CREDENTIALS_DIRECTORY"})
    assert r.returncode != 0
    assert "mutual TLS" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()


def test_sd_notify_ready_watchdog_and_clean_stop(netns: NetNS, tmp_path: Path) -> None:
    notify_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(30)
    try:
        with start_berthd(netns, tmp_path, wait=False,
                          env={"NOTIFY_SOCKET": str(notify_path),
                               "WATCHDOG_USEC": "200000"}) as d:
            messages: list[str] = []
            while not any("WATCHDOG=1" in m for m in messages):
                messages.append(listener.recv(4096).decode())
            first = messages[0]
            assert "READY=1" in first and "STATUS=Listening on unix://" in first
            assert "0 running" in first
            assert any("STATUS=0 running, 0 paused, 0 stopped containers" in m
                       for m in messages if "WATCHDOG=1" in m)
            # READY means it answers now, no polling needed.
            assert d.request("GET", "/_ping").body == b"OK"
            assert stop(d.proc, signal.SIGTERM) == 0
            rest = listener.recv(4096).decode()
            while "STOPPING=1" not in rest:
                rest = listener.recv(4096).decode()
            assert not d.socket.exists()
    finally:
        listener.close()


def test_systemd_socket_activation(netns: NetNS, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    sock = tmp_path / "activated.sock"
    port = _port()
    # systemd-socket-activate binds both sockets, then execs berthd with LISTEN_FDS
    # on the first connection, as berthd.socket does on the host OS.
    argv = netns.argv("systemd-socket-activate", "-l", str(sock), "-l", f"127.0.0.1:{port}",
                      *BERTHD, "--data-root", str(tmp_path / "data"),
                      "--exec-root", str(tmp_path / "exec"),
                      "--tlscacert", str(certs / "ca.pem"),
                      "--tlscert", str(certs / "server-cert.pem"),
                      "--tlskey", str(certs / "server-key.pem"))
    log = tmp_path / "berthd.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=Path(__file__).parents[2])
    try:
        # The first connection (wait_for_ping's) is what makes berthd start.
        wait_for_ping(sock, proc, log)
        version = request(sock, "GET", "/v1.47/version").json()
        assert isinstance(version, dict) and version["Version"] == __version__
        r = netns.run("curl", "-sS", "--cacert", str(certs / "ca.pem"),
                      "--cert", str(certs / "cert.pem"), "--key", str(certs / "key.pem"),
                      f"https://127.0.0.1:{port}/_ping")
        assert r.stdout == "OK"
        # berthd did not bind its default socket: it used the sockets it was given.
        assert not (tmp_path / "exec" / "berthd.sock").exists()
    finally:
        stop(proc)


def test_sigterm_ends_open_streams(netns: NetNS, tmp_path: Path) -> None:
    with start_berthd(netns, tmp_path) as d:
        follower = subprocess.Popen([*BERTH, "-H", d.host, "events"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while "GET /v1.47/events" not in d.log_text():
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert stop(d.proc, signal.SIGTERM, timeout=20) == 0
            # The stream was ended by the daemon, not left hanging.
            assert follower.wait(timeout=20) == 0
        finally:
            follower.kill()


def test_containers_over_mtls(netns: NetNS) -> None:
    """Remote management as a fleet operator does it: the docker CLI and berth over TCP."""
    from tests.privileged.berthd import berth_workdir
    from tests.privileged.images import import_busybox

    with berth_workdir() as work:
        certs = make_certs(work / "certs")
        port = _port()
        with start_berthd(netns, work, "-H", f"tcp://127.0.0.1:{port}",
                          "--tlscacert", str(certs / "ca.pem"),
                          "--tlscert", str(certs / "server-cert.pem"),
                          "--tlskey", str(certs / "server-key.pem")) as d:
            import_busybox(d.berth, work)
            tls = ["--tlsverify", "--tlscacert", str(certs / "ca.pem"), "--tlscert",
                   str(certs / "cert.pem"), "--tlskey", str(certs / "key.pem"),
                   "-H", f"tcp://127.0.0.1:{port}"]
            r = netns.run(DOCKER, *tls, "run", "--rm", "busybox", "echo", "over tls",
                          check=False)
            assert (r.returncode, r.stdout) == (0, "over tls\n"), r.stderr
            r = netns.run(*BERTH, *tls, "run", "-d", "--name", "remote", "busybox",
                          "sleep", "300", check=False)
            assert r.returncode == 0, r.stderr
            r = netns.run(DOCKER, *tls, "exec", "remote", "sh", "-c", "echo in; exit 2",
                          check=False)
            assert (r.returncode, r.stdout) == (2, "in\n"), r.stderr
            r = netns.run(*BERTH, *tls, "logs", "remote", check=False)
            assert r.returncode == 0
