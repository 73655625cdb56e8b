"""A small DNS responder per network, on the daemon's asyncio loop.

It listens on the network's gateway address, port 53 (UDP), in the host
namespace; containers on the network have it as their only nameserver. It
answers A queries for the names it knows on that network (container names,
aliases, short ids) and PTR queries for their addresses, and forwards every
other query unchanged to the host's resolvers (from the host side, so a
resolver on the host's 127.0.0.53 works too). An internal network has no way
out, so its responder answers its own names and refuses the rest.

Only what a stub resolver sends is handled: one question, UDP; answers are
small enough that truncation never arises for our own names.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import cast

log = logging.getLogger("berth.net.dns")

TTL = 10  # seconds: names follow containers, which come and go
FORWARD_TIMEOUT = 3.0


class QType(IntEnum):
    A = 1
    PTR = 12
    AAAA = 28


class RCode(IntEnum):
    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    REFUSED = 5


class BadPacket(ValueError):
    pass


@dataclass(frozen=True)
class Question:
    id: int
    flags: int
    name: str
    qtype: int
    qclass: int
    end: int  # offset just past the question


def parse_query(packet: bytes) -> Question:
    if len(packet) < 12:
        raise BadPacket("shorter than a DNS header")
    qid, flags, qdcount = struct.unpack_from("!HHH", packet)
    if flags & 0x8000 or qdcount != 1:
        raise BadPacket("not a query with one question")
    labels: list[str] = []
    pos = 12
    while True:
        if pos >= len(packet):
            raise BadPacket("name runs past the packet")
        n = packet[pos]
        pos += 1
        if n == 0:
            break
        if n & 0xC0:
            raise BadPacket("compressed name in a question")
        labels.append(packet[pos:pos + n].decode("ascii", "replace"))
        pos += n
    if pos + 4 > len(packet):
        raise BadPacket("question runs past the packet")
    qtype, qclass = struct.unpack_from("!HH", packet, pos)
    return Question(qid, flags, ".".join(labels), qtype, qclass, pos + 4)


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise BadPacket(f"bad label in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\0"


def build_response(packet: bytes, q: Question, rcode: RCode,
                   answers: Sequence[tuple[int, bytes]] = ()) -> bytes:
    """A response to q: its question echoed, answers as (type, rdata) for q's name."""
    rd = q.flags & 0x0100
    opcode = q.flags & 0x7800
    flags = 0x8000 | opcode | 0x0400 | rd | 0x0080 | int(rcode)  # QR AA RD RA
    header = struct.pack("!HHHHHH", q.id, flags, 1, len(answers), 0, 0)
    body = packet[12:q.end]
    for rtype, rdata in answers:
        # 0xC00C: a pointer to the question's name at offset 12
        body += struct.pack("!HHHIH", 0xC00C, rtype, 1, TTL, len(rdata)) + rdata
    return header + body


def ptr_name(address: str) -> str:
    return ipaddress.IPv4Address(address).reverse_pointer


Lookup = Callable[[str], list[str]]
"""name (lower case, no trailing dot) -> its IPv4 addresses on this network, or []."""
Reverse = Callable[[str], str | None]
"""IPv4 address -> the container name that has it on this network, or None."""


def answer(packet: bytes, lookup: Lookup, reverse: Reverse,
           *, forward: bool) -> bytes | None:
    """Our reply to packet, or None when it should be forwarded upstream."""
    try:
        q = parse_query(packet)
    except BadPacket:
        if len(packet) >= 12:
            qid = struct.unpack_from("!H", packet)[0]
            return struct.pack("!HHHHHH", qid, 0x8000 | int(RCode.FORMERR), 0, 0, 0, 0)
        return None
    name = q.name.lower().rstrip(".")
    addrs = lookup(name) if q.qclass == 1 else []
    if addrs:
        if q.qtype == QType.A:
            return build_response(packet, q, RCode.NOERROR,
                                  [(QType.A, socket.inet_aton(a)) for a in addrs])
        return build_response(packet, q, RCode.NOERROR)  # the name exists, no such record
    if q.qtype == QType.PTR and name.endswith(".in-addr.arpa"):
        parts = name.split(".")[:-2]
        if len(parts) == 4:
            found = reverse(".".join(reversed(parts)))
            if found:
                return build_response(packet, q, RCode.NOERROR,
                                      [(QType.PTR, encode_name(found))])
    if not forward:
        return build_response(packet, q, RCode.REFUSED)
    return None


class _Upstream(asyncio.DatagramProtocol):
    """One socket toward the host's resolvers, replies matched by our own query id."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[bytes]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if len(data) >= 2:
            fut = self.pending.pop(struct.unpack_from("!H", data)[0], None)
            if fut is not None and not fut.done():
                fut.set_result(data)


class _Server(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder) -> None:
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: Python 3.11's selector transport does not subclass it
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not self.responder.serves(str(addr[0])):
            return  # another network's container (through the host): its names are not theirs
        reply = answer(data, self.responder.lookup, self.responder.reverse,
                       forward=bool(self.responder.upstreams))
        if reply is not None:
            if self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        task = asyncio.get_running_loop().create_task(self.responder.forward(data, addr))
        self.responder.tasks.add(task)
        task.add_done_callback(self.responder.tasks.discard)


class DnsResponder:
    """Serves one network. `sock` is a bound UDP socket (made in the host namespace);
    `upstream_sock` an unbound one there too, or None for an internal network."""

    def __init__(self, network: str, lookup: Lookup, reverse: Reverse,
                 upstreams: Sequence[str], subnet: str = "") -> None:
        self.network = network
        self.subnet = ipaddress.IPv4Network(subnet) if subnet else None
        self.lookup = lookup
        self.reverse = reverse
        self.upstreams = tuple(upstreams)
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: _Server | None = None
        self._up: _Upstream | None = None
        self._transports: list[asyncio.DatagramTransport] = []

    def serves(self, client: str) -> bool:
        """Only the network's own containers (and the host) get answers."""
        if self.subnet is None:
            return True
        try:
            ip = ipaddress.IPv4Address(client)
        except ValueError:
            return False
        return ip in self.subnet or ip.is_loopback

    async def start(self, sock: socket.socket, upstream_sock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        transport, server = await loop.create_datagram_endpoint(
            lambda: _Server(self), sock=sock)
        self._server = server
        self._transports.append(transport)
        if upstream_sock is not None and self.upstreams:
            upstream_sock.setblocking(False)
            up_t, up = await loop.create_datagram_endpoint(_Upstream, sock=upstream_sock)
            self._up = up
            self._transports.append(up_t)
        elif upstream_sock is not None:
            upstream_sock.close()

    async def forward(self, packet: bytes, client: tuple[str | object, int]) -> None:
        up, server = self._up, self._server
        if up is None or server is None or server.transport is None:
            return
        original_id = packet[:2]
        for ns in self.upstreams:
            qid = secrets.randbits(16)
            while qid in up.pending:
                qid = secrets.randbits(16)
            fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            up.pending[qid] = fut
            up_transport = self._transports[-1]
            up_transport.sendto(struct.pack("!H", qid) + packet[2:], (ns, 53))
            try:
                reply = await asyncio.wait_for(fut, FORWARD_TIMEOUT)
            except TimeoutError:
                up.pending.pop(qid, None)
                log.debug("dns %s: upstream %s timed out", self.network, ns)
                continue
            server.transport.sendto(original_id + reply[2:], client)
            return
        with contextlib.suppress(BadPacket):
            q = parse_query(packet)
            server.transport.sendto(build_response(packet, q, RCode.SERVFAIL), client)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for t in self._transports:
            t.close()
        self._transports.clear()
