"""`python -m hostos.fleetrelay HOST PORT`: one guest connection to a host service.

QEMU's user networking runs this for each connection a guest opens to a
`guestfwd=tcp:ADDR:PORT-cmd:...` address, with the connection on fd 0 and 1
(and 2: so nothing may ever be printed). It copies bytes both ways until
both sides are done. Stdlib only, so it starts fast.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import sys

CHUNK = 65536


def relay(host: str, port: int) -> None:
    guest = socket.socket(fileno=os.dup(0))
    upstream = socket.create_connection((host, port), timeout=30)
    upstream.settimeout(None)
    peers = {guest: upstream, upstream: guest}
    sel = selectors.DefaultSelector()
    for s in peers:
        sel.register(s, selectors.EVENT_READ)
    open_reads = 2
    while open_reads:
        for key, _ in sel.select():
            src: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                data = src.recv(CHUNK)
            except ConnectionError:
                data = b""
            if data:
                peers[src].sendall(data)
                continue
            # EOF one way: pass the half-close on, keep the other way flowing.
            sel.unregister(src)
            open_reads -= 1
            with contextlib.suppress(OSError):
                peers[src].shutdown(socket.SHUT_WR)


def main() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # fd 2 is the guest's connection too: keep tracebacks out of it
    try:
        relay(sys.argv[1], int(sys.argv[2]))
    except OSError:
        sys.exit(1)


if __name__ == "__main__":
    main()
