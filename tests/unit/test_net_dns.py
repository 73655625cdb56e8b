"""DNS packet handling of the per-network responder."""

from __future__ import annotations

import socket
import struct

from runtime.net.dns import QType, RCode, answer, encode_name, parse_query

NAMES = {"web": ["10.89.0.2"], "db": ["10.89.0.3"], "cache-alias": ["10.89.0.3"]}


def lookup(name: str) -> list[str]:
    return NAMES.get(name, [])


def reverse(address: str) -> str | None:
    return {"10.89.0.2": "web"}.get(address)


def query(name: str, qtype: int = QType.A, qid: int = 0x1234, edns: bool = False) -> bytes:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 1 if edns else 0)
    q += encode_name(name) + struct.pack("!HH", qtype, 1)
    if edns:
        q += b"\0" + struct.pack("!HHIH", 41, 1232, 0, 0)
    return q


def parse_answer(reply: bytes) -> tuple[int, int, list[bytes]]:
    qid, flags, qd, an, _, _ = struct.unpack_from("!HHHHHH", reply)
    q = parse_query(struct.pack("!HHH", qid, 0, qd) + reply[6:])
    pos = q.end
    out = []
    for _ in range(an):
        _ptr, _t, _c, _ttl, rdlen = struct.unpack_from("!HHHIH", reply, pos)
        pos += 12
        out.append(reply[pos:pos + rdlen])
        pos += rdlen
    return qid, flags & 0xF, out


def test_a_query_for_a_container_name_is_answered_case_insensitively() -> None:
    reply = answer(query("WEB.", edns=True), lookup, reverse, forward=True)
    assert reply is not None
    qid, rcode, rdata = parse_answer(reply)
    assert (qid, rcode) == (0x1234, RCode.NOERROR)
    assert [socket.inet_ntoa(r) for r in rdata] == ["10.89.0.2"]


def test_alias_resolves_and_aaaa_for_a_known_name_is_empty_not_an_error() -> None:
    reply = answer(query("cache-alias"), lookup, reverse, forward=True)
    assert reply is not None and socket.inet_ntoa(parse_answer(reply)[2][0]) == "10.89.0.3"
    reply = answer(query("db", QType.AAAA), lookup, reverse, forward=True)
    assert reply is not None and parse_answer(reply)[1:] == (RCode.NOERROR, [])


def test_ptr_for_a_container_address() -> None:
    reply = answer(query("2.0.89.10.in-addr.arpa", QType.PTR), lookup, reverse, forward=True)
    assert reply is not None
    assert parse_answer(reply)[2] == [encode_name("web")]


def test_other_names_are_forwarded_or_refused_on_an_internal_network() -> None:
    assert answer(query("example.org"), lookup, reverse, forward=True) is None
    reply = answer(query("example.org"), lookup, reverse, forward=False)
    assert reply is not None and parse_answer(reply)[1] == RCode.REFUSED


def test_garbage_gets_formerr_or_nothing() -> None:
    reply = answer(b"\x12\x34" + b"\xff" * 10, lookup, reverse, forward=True)
    assert reply is not None and struct.unpack_from("!H", reply)[0] == 0x1234
    assert struct.unpack_from("!H", reply, 2)[0] & 0xF == RCode.FORMERR
    assert answer(b"\x00", lookup, reverse, forward=True) is None


def test_a_responder_answers_only_its_own_network() -> None:
    from runtime.net.dns import DnsResponder

    dns = DnsResponder("app", lookup, reverse, [], "10.89.0.0/16")
    assert dns.serves("10.89.3.4")
    assert dns.serves("127.0.0.1")
    assert not dns.serves("10.88.0.2")  # a default-bridge container asking through the host
