"""Berth's nftables table: rendered whole from the records, applied atomically.

One table (`ip berth`) holds every rule Berth needs, so it is created and
removed as a unit and never mixes with the host's own rules. Each change
re-renders the table from the records and replaces it in one `nft -f`
transaction (`table; delete table; table {...}`): the kernel swaps old for new
atomically, so a published port never blinks, and a daemon that restarts
after `kill -9` re-applies exactly what its records say (reconcile).

Chains:
- `prerouting`/`output` (nat): packets to a local address jump to `published`,
  which DNATs each published port to its container. `output` is what makes
  `curl 127.0.0.1:PORT` on the host work: the DNAT happens on the locally
  generated packet, the bridge has `route_localnet=1` so a 127.0.0.1 source
  may leave through it, and `postrouting` masquerades that source to the
  bridge's gateway address (a container would drop a packet from 127.0.0.1
  as a martian).
- `postrouting` (nat): masquerade what leaves a (non-internal) network for
  the outside; hairpin NAT for a container that reaches its own network
  through a published port (without it, the reply would go straight back
  with the wrong source and the client would drop it).
- `forward` (filter): internal networks have no way out and no way in;
  published ports are reachable from anywhere; otherwise traffic between two
  Berth bridges is dropped (networks are isolated; a container attached to
  both talks through its own interfaces and is not forwarded).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from runtime.net.model import NetError, Network, PublishedPort, overflow_pattern
from runtime.run import CommandError, run

TABLE = "berth"


def _q(ifname: str) -> str:
    return f'"{ifname}"'


def _set(names: Iterable[str]) -> str:
    items = sorted(names)
    return _q(items[0]) if len(items) == 1 else "{ " + ", ".join(_q(n) for n in items) + " }"


def render_table(
    networks: Sequence[Network],
    published: Iterable[PublishedPort],
    *,
    internal_ips: frozenset[str] = frozenset(),
    table: str = TABLE,
) -> str:
    """The `nft -f` script that replaces Berth's table with one matching the records.

    `internal_ips` are container addresses on internal networks: ports
    published to them are not rendered (an internal network has no way in).
    """
    out = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]

    out += ["\tchain prerouting {",
            "\t\ttype nat hook prerouting priority dstnat; policy accept;",
            "\t\tfib daddr type local jump published",
            "\t}",
            "\tchain output {",
            "\t\ttype nat hook output priority -100; policy accept;",
            "\t\tfib daddr type local jump published",
            "\t}",
            "\tchain published {"]
    rules = []
    for p in published:
        if p.container_ip in internal_ips:
            continue
        b = p.binding
        match = f"ip daddr {b.host_ip} " if b.host_ip else ""
        rules.append((b.host_port, str(b.proto), b.host_ip,
                      f"\t\t{match}{b.proto} dport {b.host_port} "
                      f"dnat to {p.container_ip}:{b.container_port}"))
    # Address-specific bindings first, so 127.0.0.1:8080 wins over *:8080 if both exist.
    out += [r[3] for r in sorted(rules, key=lambda r: (r[2] == "", r[0], r[1]))]
    out += ["\t}"]

    out += ["\tchain postrouting {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;"]
    for net in networks:
        br = _q(net.bridge)
        if not net.internal:
            # != the overflow bridges too: with br_netfilter loaded, frames bridged
            # between two containers of the network pass this hook with the
            # overflow bridge as oifname, and must not be masqueraded.
            out.append(f"\t\tip saddr {net.subnet} oifname != {br} "
                       f"oifname != {_q(overflow_pattern(net.id))} masquerade")
            out.append(f"\t\toifname {br} ip saddr 127.0.0.0/8 masquerade")
            out.append(f"\t\toifname {br} ip saddr {net.subnet} ct status dnat masquerade")
    out += ["\t}"]

    out += ["\tchain forward {",
            "\t\ttype filter hook forward priority filter; policy accept;"]
    internal = [n for n in networks if n.internal]
    for net in internal:
        br = _q(net.bridge)
        out.append(f"\t\tiifname {br} oifname != {br} drop")
        out.append(f"\t\toifname {br} iifname != {br} drop")
    out.append("\t\tct status dnat accept")
    bridges = [n.bridge for n in networks if not n.internal]
    for br in bridges:
        others = [b for b in bridges if b != br]
        if others:
            out.append(f"\t\tiifname {_q(br)} oifname {_set(others)} drop")
    out += ["\t}", "}"]
    return "\n".join(out) + "\n"


def delete_table_script(table: str = TABLE) -> str:
    # `table` first makes the delete succeed whether or not the table exists.
    return f"table ip {table}\ndelete table ip {table}\n"


def nft_cmd(host_netns: Path | None) -> list[str]:
    """argv of `nft -f -`, entered into host_netns when the "host" is a test's namespace."""
    prefix = ["nsenter", f"--net={host_netns}", "--"] if host_netns else []
    return [*prefix, "nft", "-f", "-"]


class NftFailed(NetError):
    pass


def apply(script: str, host_netns: Path | None = None) -> None:
    try:
        run(nft_cmd(host_netns), input=script)
    except CommandError as e:
        raise NftFailed(f"applying Berth's nft table failed: {e.stderr.strip() or e}") from e
    except FileNotFoundError as e:
        raise NftFailed("nft is not installed: published ports and NAT need nftables") from e
