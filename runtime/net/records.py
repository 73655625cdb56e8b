"""Networking records in the daemon's SQLite database: networks, endpoints, ports.

The single source of truth for what should exist in the kernel: the bridges,
the container interfaces with their addresses (IPAM), the published ports.
The kernel state is derived from these (reconcile) and never read back as
truth. Each allocation is one transaction, so two starts racing cannot take
the same address or host port: the primary keys refuse the second.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence

from runtime.net import ipam
from runtime.net.model import (
    Driver,
    Endpoint,
    Network,
    NetworkNotFound,
    PortBinding,
    PortInUse,
    Proto,
    PublishedPort,
)
from runtime.store.db import schema, transaction

schema("net", """
CREATE TABLE IF NOT EXISTS net_networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    driver TEXT NOT NULL,
    bridge TEXT NOT NULL UNIQUE,
    subnet TEXT NOT NULL,
    gateway TEXT NOT NULL,
    internal INTEGER NOT NULL,
    created TEXT NOT NULL,
    labels TEXT NOT NULL,
    options TEXT NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS net_endpoints (
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL REFERENCES net_networks(id),
    address INTEGER NOT NULL,
    host_ifname TEXT NOT NULL UNIQUE,
    bridge TEXT NOT NULL,
    ifname TEXT NOT NULL,
    mac TEXT NOT NULL,
    aliases TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (container_id, network_id),
    UNIQUE (network_id, address)
);
CREATE TABLE IF NOT EXISTS net_ports (
    container_id TEXT NOT NULL,
    proto TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    container_ip TEXT NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
CREATE TABLE IF NOT EXISTS net_containers (
    container_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    env TEXT NOT NULL,
    exposed TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS net_state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
""")

# Docker's (and Linux's default ephemeral) range for `-p 80` host ports.
HOST_PORT_FIRST = 32768
HOST_PORT_LAST = 60999


def _network(row: sqlite3.Row) -> Network:
    return Network(
        id=row["id"], name=row["name"], bridge=row["bridge"], subnet=row["subnet"],
        gateway=row["gateway"], internal=bool(row["internal"]), driver=Driver(row["driver"]),
        created=row["created"], labels=tuple(sorted(json.loads(row["labels"]).items())),
        options=tuple(sorted(json.loads(row["options"]).items())),
    )


def insert_network(conn: sqlite3.Connection, net: Network) -> None:
    with transaction(conn):
        conn.execute(
            "INSERT INTO net_networks (id, name, driver, bridge, subnet, gateway, internal,"
            " created, labels, options) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (net.id, net.name, str(net.driver), net.bridge, net.subnet, net.gateway,
             int(net.internal), net.created, json.dumps(dict(net.labels)),
             json.dumps(dict(net.options))),
        )


def delete_network(conn: sqlite3.Connection, network_id: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM net_networks WHERE id = ?", (network_id,))


def list_networks(conn: sqlite3.Connection) -> list[Network]:
    rows = conn.execute("SELECT * FROM net_networks ORDER BY created, name").fetchall()
    return [_network(r) for r in rows]


def find_network(conn: sqlite3.Connection, ref: str) -> Network:
    """By exact name, exact id, or unique id prefix (as Docker resolves them)."""
    row = conn.execute("SELECT * FROM net_networks WHERE name = ? OR id = ?",
                       (ref, ref)).fetchone()
    if row is None and ref:
        rows = conn.execute("SELECT * FROM net_networks WHERE id LIKE ?",
                            (ref.replace("%", "") + "%",)).fetchall()
        row = rows[0] if len(rows) == 1 else None
    if row is None:
        raise NetworkNotFound(ref)
    return _network(row)


# -- endpoints (IPAM) --------------------------------------------------------

def _endpoint(row: sqlite3.Row) -> Endpoint:
    addr = ipam.to_str(row["address"])
    return Endpoint(
        container_id=row["container_id"], network_id=row["network_id"],
        network=row["net_name"], host_ifname=row["host_ifname"], ifname=row["ifname"],
        address=addr, prefixlen=int(row["subnet"].split("/")[1]), gateway=row["gateway"],
        mac=row["mac"], aliases=tuple(json.loads(row["aliases"])), name=row["name"],
        bridge=row["bridge"],
    )


_ENDPOINTS = ("SELECT e.*, n.name AS net_name, n.subnet, n.gateway FROM net_endpoints e"
              " JOIN net_networks n ON n.id = e.network_id")


class _UsedAddresses:
    """`address in used`, answered by the (network, address) index: the next free
    address is usually the first one tried, so a start does not read them all."""

    def __init__(self, conn: sqlite3.Connection, network_id: str) -> None:
        self.conn, self.network_id = conn, network_id

    def __contains__(self, address: object) -> bool:
        return self.conn.execute(
            "SELECT 1 FROM net_endpoints WHERE network_id = ? AND address = ?",
            (self.network_id, address)).fetchone() is not None


def allocate_endpoint(
    conn: sqlite3.Connection, net: Network, container_id: str, *, name: str,
    aliases: Sequence[str], host_ifname: str, ifname: str, static_ip: str = "",
    bridge: str = "",
) -> Endpoint:
    """Take an address on `net` for the container and record its endpoint, atomically."""
    with transaction(conn):
        used = _UsedAddresses(conn, net.id)
        if static_ip:
            addr = ipam.check_static(net.name, net.subnet, net.gateway, static_ip, used)
        else:
            cursor = conn.execute("SELECT cursor FROM net_networks WHERE id = ?",
                                  (net.id,)).fetchone()[0]
            addr = ipam.next_address(net.name, net.subnet, net.gateway, used, cursor)
            conn.execute("UPDATE net_networks SET cursor = ? WHERE id = ?", (addr, net.id))
        conn.execute(
            "INSERT INTO net_endpoints (container_id, network_id, address, host_ifname, bridge,"
            " ifname, mac, aliases, name) VALUES (?,?,?,?,?,?,?,?,?)",
            (container_id, net.id, addr, host_ifname, bridge or net.bridge, ifname,
             ipam.mac_for(ipam.to_str(addr)), json.dumps(list(aliases)), name),
        )
    return endpoints(conn, container_id=container_id, network_id=net.id)[0]


def endpoints(conn: sqlite3.Connection, *, container_id: str | None = None,
              network_id: str | None = None) -> list[Endpoint]:
    where, args = [], []
    if container_id is not None:
        where.append("e.container_id = ?")
        args.append(container_id)
    if network_id is not None:
        where.append("e.network_id = ?")
        args.append(network_id)
    sql = _ENDPOINTS + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY e.rowid"
    return [_endpoint(r) for r in conn.execute(sql, args)]


def bridge_usage(conn: sqlite3.Connection, network_id: str) -> dict[str, int]:
    """Endpoints per Linux bridge of a network (its own and its overflow bridges)."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT bridge, COUNT(*) FROM net_endpoints WHERE network_id = ? GROUP BY bridge",
        (network_id,))}


def delete_endpoint(conn: sqlite3.Connection, container_id: str, network_id: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM net_endpoints WHERE container_id = ? AND network_id = ?",
                     (container_id, network_id))


# -- published ports -----------------------------------------------------------

def _conflicts(conn: sqlite3.Connection, b: PortBinding, port: int) -> bool:
    # *:8080 and 127.0.0.1:8080 collide too: the wildcard covers every address.
    row = conn.execute(
        "SELECT 1 FROM net_ports WHERE proto = ? AND host_port = ?"
        " AND (host_ip = ? OR host_ip = '' OR ? = '')",
        (str(b.proto), port, b.host_ip, b.host_ip)).fetchone()
    return row is not None


def allocate_ports(
    conn: sqlite3.Connection, container_id: str, container_ip: str,
    bindings: Iterable[PortBinding], is_free: Callable[[PortBinding], str | None],
) -> list[PublishedPort]:
    """Record each binding; `-p 80` gets the next free port of the high range
    (round robin, persisted). `is_free(binding)` probes the host and returns why
    a port is busy, or None."""
    out: list[PublishedPort] = []
    with transaction(conn):
        row = conn.execute("SELECT value FROM net_state WHERE key = 'port_cursor'").fetchone()
        cursor = row[0] if row else HOST_PORT_FIRST - 1
        for b in bindings:
            if b.host_port:
                if _conflicts(conn, b, b.host_port):
                    raise PortInUse(b.host_ip, b.host_port, b.proto, "by another container")
                why = is_free(b)
                if why:
                    raise PortInUse(b.host_ip, b.host_port, b.proto, why)
                port = b.host_port
            else:
                port = 0
                size = HOST_PORT_LAST - HOST_PORT_FIRST + 1
                for i in range(size):
                    cand = HOST_PORT_FIRST + (cursor + 1 - HOST_PORT_FIRST + i) % size
                    trial = PortBinding(b.container_port, b.proto, b.host_ip, cand)
                    if not _conflicts(conn, trial, cand) and is_free(trial) is None:
                        port = cursor = cand
                        break
                if not port:
                    raise PortInUse(b.host_ip, 0, b.proto, "no free port in the high range")
            bound = PortBinding(b.container_port, b.proto, b.host_ip, port)
            conn.execute(
                "INSERT INTO net_ports (container_id, proto, container_port, host_ip, host_port,"
                " container_ip) VALUES (?,?,?,?,?,?)",
                (container_id, str(b.proto), b.container_port, b.host_ip, port, container_ip))
            out.append(PublishedPort(container_id, bound, container_ip))
        conn.execute("INSERT OR REPLACE INTO net_state (key, value) VALUES ('port_cursor', ?)",
                     (cursor,))
    return out


def ports(conn: sqlite3.Connection, container_id: str | None = None) -> list[PublishedPort]:
    sql = "SELECT * FROM net_ports"
    args: tuple[str, ...] = ()
    if container_id is not None:
        sql += " WHERE container_id = ?"
        args = (container_id,)
    return [
        PublishedPort(r["container_id"],
                      PortBinding(r["container_port"], Proto(r["proto"]), r["host_ip"],
                                  r["host_port"]),
                      r["container_ip"])
        for r in conn.execute(sql + " ORDER BY rowid", args)
    ]


def delete_ports(conn: sqlite3.Connection, container_id: str) -> int:
    with transaction(conn):
        return conn.execute("DELETE FROM net_ports WHERE container_id = ?",
                            (container_id,)).rowcount


# -- what a --link to a container shows -----------------------------------------

def record_container(conn: sqlite3.Connection, container_id: str, name: str,
                     env: Sequence[str], exposed: Sequence[str]) -> None:
    with transaction(conn):
        conn.execute("INSERT OR REPLACE INTO net_containers (container_id, name, env, exposed)"
                     " VALUES (?,?,?,?)",
                     (container_id, name, json.dumps(list(env)), json.dumps(list(exposed))))


def link_target(conn: sqlite3.Connection, name: str) -> tuple[str, list[str], list[str]] | None:
    """(container_id, env, exposed ports) of the attached container called name."""
    row = conn.execute("SELECT * FROM net_containers WHERE name = ? OR container_id = ?",
                       (name.lstrip("/"), name)).fetchone()
    if row is None:
        return None
    return row["container_id"], json.loads(row["env"]), json.loads(row["exposed"])


def forget_container(conn: sqlite3.Connection, container_id: str) -> None:
    with transaction(conn):
        conn.execute("DELETE FROM net_containers WHERE container_id = ?", (container_id,))


def container_ids(conn: sqlite3.Connection) -> set[str]:
    ids = {r[0] for r in conn.execute("SELECT container_id FROM net_endpoints")}
    ids |= {r[0] for r in conn.execute("SELECT container_id FROM net_containers")}
    return ids | {r[0] for r in conn.execute("SELECT container_id FROM net_ports")}
