"""The guestfwd relay: one guest connection (on fd 0, as QEMU's slirp hands it) to a host port."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading


def test_relay_copies_both_ways_and_passes_the_half_close() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):  # until the guest's half-close arrives
                received.extend(data)
            conn.sendall(b"reply:" + bytes(received[:5]))

    t = threading.Thread(target=serve)
    t.start()
    guest, qemu_side = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "hostos.fleetrelay", "127.0.0.1", str(port)],
                            stdin=qemu_side, stdout=qemu_side, stderr=qemu_side)
    qemu_side.close()
    payload = b"hello" + bytes(300_000)
    guest.sendall(payload)
    guest.shutdown(socket.SHUT_WR)
    answer = b""
    while data := guest.recv(65536):
        answer += data
    assert proc.wait(timeout=30) == 0
    t.join(timeout=30)
    server.close()
    assert answer == b"reply:hello"
    assert bytes(received) == payload


def test_relay_to_a_closed_port_just_closes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    guest, qemu_side = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-m", "hostos.fleetrelay", "127.0.0.1", str(port)],
                            stdin=qemu_side, stdout=qemu_side, stderr=qemu_side)
    qemu_side.close()
    assert proc.wait(timeout=30) == 1
    assert guest.recv(100) == b""  # nothing (no traceback) leaked into the connection
