"""Networking for berthd: the default bridge, user networks, container endpoints,
published ports, DNS responders; records first, then the kernel.

Each change is recorded first (an address or a host port is taken in one
SQLite transaction), then made in the kernel; a failure undoes what was done,
so a failed start leaves nothing. `start()` re-creates the kernel side from
the records (bridges, the nft table, DNS responders) and removes what the
records do not know (a veth or a bridge left by a daemon killed mid-change);
`reconcile(running)` releases the endpoints of containers that died while
the daemon was away.

Database work stays on the event loop's thread; netlink and nft run in worker
threads (`asyncio.to_thread`), so a slow kernel never stalls the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import re
import secrets
import socket
import sqlite3
import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from runtime.net import hosts, ipam, links, nftables, records
from runtime.net.dns import DnsResponder
from runtime.net.model import (
    DEFAULT_BRIDGE,
    DEFAULT_NETWORK,
    DEFAULT_SUBNET,
    OVERFLOW_PREFIX,
    TRUNK_PREFIX,
    Attachment,
    ContainerNetConfig,
    ContainerNetResult,
    Driver,
    Endpoint,
    LinkRequest,
    NetError,
    Network,
    NetworkInUse,
    NetworkNotFound,
    NetworkSpec,
    PortBinding,
    PublishedPort,
    overflow_names,
)
from runtime.net.netlink import (
    HOST_IF_PREFIX,
    OURS,
    USER_BRIDGE_PREFIX,
    Netlink,
    bound_socket,
    write_sysctl,
)

log = logging.getLogger("berth.net")

_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
RESERVED = ("bridge", "host", "none", "default")
# Containers per Linux bridge before an overflow bridge is added (the kernel's
# limit is 1023 ports; a few stay free for the trunks to overflow bridges).
BRIDGE_PORTS = 1000


class NetworkExists(NetError):
    def __init__(self, name: str) -> None:
        super().__init__(f"network with name {name} already exists")


def pseudo_network_id(name: str) -> str:
    """Stable ids for the `host` and `none` pseudo-networks (they have no record)."""
    return hashlib.sha256(f"berth-network-{name}".encode()).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class NetworkService:
    """Implements the engine's NetworkProvider (setup/teardown) and the network API."""

    def __init__(self, db: sqlite3.Connection, *, host_netns: Path | None = None,
                 table: str = nftables.TABLE,
                 resolv_conf: Path = Path("/etc/resolv.conf"),
                 bridge_ports: int = BRIDGE_PORTS) -> None:
        self.db = db
        self.bridge_ports = bridge_ports
        self.host_netns = host_netns
        self.table = table
        self.resolv_conf = resolv_conf
        self.netlink = Netlink(host_netns)
        self._dns: dict[str, DnsResponder] = {}
        self._names: dict[str, dict[str, list[str]]] = {}
        self._ptr: dict[str, dict[str, str]] = {}
        self._nft_lock = asyncio.Lock()
        self._nft_wanted = 0
        self._nft_done = 0

    # -- daemon lifecycle --------------------------------------------------------

    async def start(self) -> None:
        """Make the kernel match the records: default network, bridges, nft, DNS."""
        self._ensure_default()
        nets = records.list_networks(self.db)
        eps = records.endpoints(self.db)
        known_ifs = {e.host_ifname for e in eps}
        bridges = {n.bridge for n in nets}
        overflows = {self._overflow_of(e) for e in eps if e.bridge not in bridges}
        keep = known_ifs | bridges | {name for o in overflows for name in o[1:]}
        for name in await asyncio.to_thread(self.netlink.link_names):
            if OURS.match(name) and name not in keep:
                log.info("removing %s left behind by an earlier berthd", name)
                await asyncio.to_thread(self.netlink.delete_link, name)
        # Forwarding is per namespace: on for the host side of the bridges.
        await asyncio.to_thread(write_sysctl, self.host_netns, "net.ipv4.ip_forward", "1")
        # Bridged frames must not pass the IP hooks (br_netfilter, when loaded):
        # Berth's rules are for routed traffic; the image's sysctl.d says the same.
        for key in ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
                    "net.bridge.bridge-nf-call-arptables"):
            with contextlib.suppress(NetError):
                await asyncio.to_thread(write_sysctl, self.host_netns, key, "0")
        for net in nets:
            await self._ensure_bridge(net)
        for o in sorted(overflows):
            await asyncio.to_thread(self.netlink.ensure_overflow, *o)
        await self._sync_nft()
        for net in nets:
            await self._start_dns(net)

    async def reconcile(self, running: Collection[str]) -> list[str]:
        """Release the endpoints and ports of containers not in `running`."""
        gone = sorted(records.container_ids(self.db) - set(running))
        for cid in gone:
            await self.teardown(cid)
        return gone

    async def close(self) -> None:
        """Stop the DNS responders; kernel state stays (containers keep running)."""
        for dns in self._dns.values():
            await dns.close()
        self._dns.clear()
        self.netlink.close()

    async def destroy(self) -> None:
        """Remove everything Berth made in the kernel (tests, uninstall): call
        after every container is gone."""
        await self.close()
        for net in records.list_networks(self.db):
            await self._delete_bridges(net)
        await asyncio.to_thread(nftables.apply, nftables.delete_table_script(self.table),
                                self.host_netns)
        self.netlink.close()

    # -- networks ----------------------------------------------------------------

    def _ensure_default(self) -> None:
        try:
            records.find_network(self.db, DEFAULT_NETWORK)
        except NetworkNotFound:
            subnet, gw = ipam.validate_subnet(DEFAULT_SUBNET)
            records.insert_network(self.db, Network(
                id=secrets.token_hex(32), name=DEFAULT_NETWORK, bridge=DEFAULT_BRIDGE,
                subnet=subnet, gateway=gw, created=_now(),
                options=(("com.docker.network.bridge.name", DEFAULT_BRIDGE),)))

    def networks(self) -> list[Network]:
        return records.list_networks(self.db)

    def network(self, ref: str) -> Network:
        return records.find_network(self.db, ref)

    def network_endpoints(self, ref: str) -> list[Endpoint]:
        return records.endpoints(self.db, network_id=self.network(ref).id)

    async def create_network(self, spec: NetworkSpec) -> Network:
        if not _NAME_RE.match(spec.name):
            raise NetError(f"invalid network name {spec.name!r}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        if spec.name in RESERVED:
            raise NetError(f"{spec.name} is a pre-defined network and cannot be created")
        if spec.driver != Driver.BRIDGE:
            raise NetError(f"network driver {spec.driver} is not supported (only bridge)")
        with contextlib.suppress(NetworkNotFound):
            records.find_network(self.db, spec.name)
            raise NetworkExists(spec.name)
        taken = [n.subnet for n in records.list_networks(self.db)]
        taken += await asyncio.to_thread(self.netlink.routes)
        if spec.subnet:
            subnet, gw = ipam.validate_subnet(spec.subnet, spec.gateway)
            clash = ipam.overlaps(subnet, taken)
            if clash:
                raise NetError(f"subnet {subnet} overlaps {clash}, already in use")
        else:
            if spec.gateway:
                raise NetError("--gateway needs --subnet")
            subnet, gw = ipam.validate_subnet(ipam.pick_subnet(taken))
        nid = secrets.token_hex(32)
        net = Network(id=nid, name=spec.name, bridge=USER_BRIDGE_PREFIX + nid[:12],
                      subnet=subnet, gateway=gw, internal=spec.internal, created=_now(),
                      labels=spec.labels, options=spec.options)
        records.insert_network(self.db, net)
        try:
            await self._ensure_bridge(net)
            await self._sync_nft()
            await self._start_dns(net)
        except BaseException:
            await self._drop_network(net)
            raise
        return net

    async def remove_network(self, ref: str) -> None:
        net = self.network(ref)
        if net.is_default:
            raise NetError(f"{net.name} is a pre-defined network and cannot be removed")
        users = sorted({e.container_id for e in records.endpoints(self.db, network_id=net.id)})
        if users:
            raise NetworkInUse(net.name, users)
        await self._drop_network(net)

    async def prune(self) -> list[str]:
        """Remove every user network without endpoints; their names."""
        removed = []
        for net in records.list_networks(self.db):
            if not net.is_default and not records.endpoints(self.db, network_id=net.id):
                await self._drop_network(net)
                removed.append(net.name)
        return removed

    async def _drop_network(self, net: Network) -> None:
        dns = self._dns.pop(net.id, None)
        if dns is not None:
            await dns.close()
        records.delete_network(self.db, net.id)
        await self._delete_bridges(net)
        await self._sync_nft()

    async def _delete_bridges(self, net: Network) -> None:
        """The network's bridge, its overflow bridges and their trunks."""
        for name in await asyncio.to_thread(self.netlink.link_names):
            if name.startswith((OVERFLOW_PREFIX + net.id[:9], TRUNK_PREFIX + net.id[:9])):
                await asyncio.to_thread(self.netlink.delete_link, name)
        await asyncio.to_thread(self.netlink.delete_link, net.bridge)

    async def _ensure_bridge(self, net: Network) -> None:
        prefix = ipaddress.IPv4Network(net.subnet).prefixlen
        await asyncio.to_thread(self.netlink.ensure_bridge, net.bridge, net.gateway, prefix,
                                ipam.mac_for(net.gateway))

    # -- containers (the engine's NetworkProvider) ------------------------------

    async def setup(self, container_id: str, netns_path: Path,
                    config: ContainerNetConfig) -> ContainerNetResult:
        """Attach the container to its networks, publish its ports; on any failure
        undo all of it and raise."""
        nets = [(self.network(a.network), a) for a in config.attachments]
        if config.links and any(not n.is_default for n, _ in nets):
            raise NetError("--link is only supported on the default bridge network; "
                           "on user networks containers reach each other by name")
        link_targets = [self._resolve_link(lk) for lk in config.links]
        try:
            records.record_container(self.db, container_id, config.name, config.env,
                                     config.exposed_ports)
            eps = [await self._attach(container_id, netns_path, net, a, config.name, i)
                   for i, (net, a) in enumerate(nets)]
            published = await self._publish(container_id, eps, config.ports)
        except BaseException:
            await self.teardown(container_id)
            raise
        env: list[str] = []
        for lk, ip in link_targets:
            env += links.link_env(config.name, lk.alias, ip, lk.exposed_ports, lk.env)
        host_resolv = hosts.read_host_resolv(self.resolv_conf)
        if config.dns:
            servers = list(config.dns)
        elif eps:
            servers = [eps[0].gateway]
        else:
            servers = list(host_resolv.nameservers)
        resolv = hosts.render_resolv_conf(
            servers, config.dns_search or host_resolv.search,
            ["ndots:0"] if not config.dns and eps else host_resolv.options)
        hosts_text = hosts.render_hosts(
            config.hostname, [e.address for e in eps],
            [(lk.alias, lk.name, ip) for lk, ip in link_targets], config.extra_hosts,
            config.domainname)
        return ContainerNetResult(hosts=hosts_text, resolv_conf=resolv,
                                  hostname=config.hostname, env=tuple(env),
                                  endpoints=tuple(eps), ports=tuple(published))

    def link_env(self, config: ContainerNetConfig) -> tuple[str, ...]:
        """The --link environment variables of config (targets must be attached)."""
        env: list[str] = []
        for lk in config.links:
            lk, ip = self._resolve_link(lk)
            env += links.link_env(config.name, lk.alias, ip, lk.exposed_ports, lk.env)
        return tuple(env)

    async def teardown(self, container_id: str) -> None:
        """Idempotent: remove the container's veths, addresses and published ports."""
        for ep in records.endpoints(self.db, container_id=container_id):
            await self._detach(ep)
        records.forget_container(self.db, container_id)
        if records.delete_ports(self.db, container_id):
            await self._sync_nft()

    async def connect(self, container_id: str, netns_path: Path, attachment: Attachment,
                      name: str) -> Endpoint:
        """`network connect`: one more interface (eth1, eth2...) for a running container."""
        net = self.network(attachment.network)
        mine = records.endpoints(self.db, container_id=container_id)
        if any(e.network_id == net.id for e in mine):
            raise NetError(f"container {name} is already connected to network {net.name}")
        used = {e.ifname for e in mine}
        n = next(i for i in range(len(mine) + 1) if f"eth{i}" not in used)
        return await self._attach(container_id, netns_path, net, attachment, name, n,
                                  default_route=not mine)

    async def disconnect(self, container_id: str, ref: str) -> None:
        net = self.network(ref)
        eps = [e for e in records.endpoints(self.db, container_id=container_id)
               if e.network_id == net.id]
        if not eps:
            raise NetError(f"container {container_id[:12]} is not connected to network "
                           f"{net.name}")
        for ep in eps:
            await self._detach(ep)

    def endpoints(self, container_id: str) -> list[Endpoint]:
        return records.endpoints(self.db, container_id=container_id)

    def ports(self, container_id: str) -> list[PublishedPort]:
        return records.ports(self.db, container_id)

    # -- the steps ---------------------------------------------------------------

    async def _attach(self, container_id: str, netns_path: Path, net: Network,
                      a: Attachment, name: str, n: int, *,
                      default_route: bool | None = None) -> Endpoint:
        host_ifname = HOST_IF_PREFIX + secrets.token_hex(6)[:11]
        aliases = tuple(dict.fromkeys(a.aliases))
        bridge = self._bridge_with_room(net)
        ep = records.allocate_endpoint(
            self.db, net, container_id, name=name, aliases=aliases, host_ifname=host_ifname,
            ifname=f"eth{n}", static_ip=a.ip, bridge=bridge)
        route = (n == 0) if default_route is None else default_route
        try:
            if bridge != net.bridge:
                await asyncio.to_thread(self.netlink.ensure_overflow, *self._overflow_of(ep))
            await self.netlink.attach(
                bridge=bridge, host_ifname=host_ifname,
                netns=netns_path, ifname=ep.ifname, mac=ep.mac, address=ep.address,
                prefixlen=ep.prefixlen, gateway=net.gateway if route and not net.internal
                else None)
        except BaseException:
            records.delete_endpoint(self.db, container_id, net.id)
            raise
        self._add_names(ep)
        return ep

    def _bridge_with_room(self, net: Network) -> str:
        """The network's bridge, or the first overflow bridge with a free port
        (a Linux bridge takes at most 1023 ports: BR_MAX_PORTS)."""
        usage = records.bridge_usage(self.db, net.id)
        k = 0
        while True:
            name = net.bridge if k == 0 else overflow_names(net.id, k)[0]
            if usage.get(name, 0) < self.bridge_ports:
                return name
            k += 1

    def _overflow_of(self, ep: Endpoint) -> tuple[str, str, str, str]:
        """(network bridge, overflow bridge, trunk, trunk peer) of an overflow endpoint."""
        net = next(n for n in records.list_networks(self.db) if n.id == ep.network_id)
        k = int(ep.bridge[-3:], 16)
        return (net.bridge, *overflow_names(net.id, k))

    async def _detach(self, ep: Endpoint) -> None:
        await asyncio.to_thread(self.netlink.delete_link, ep.host_ifname)
        records.delete_endpoint(self.db, ep.container_id, ep.network_id)
        self._drop_names(ep)

    async def _publish(self, container_id: str, eps: Sequence[Endpoint],
                       bindings: Sequence[PortBinding]) -> list[PublishedPort]:
        if not bindings:
            return []
        internal = {n.id for n in records.list_networks(self.db) if n.internal}
        outward = [e for e in eps if e.network_id not in internal]
        if not outward:
            raise NetError("ports cannot be published from a container on internal "
                           "networks only")
        published = records.allocate_ports(self.db, container_id, outward[0].address,
                                           bindings, self._probe_port)
        await self._sync_nft()
        return published

    def _probe_port(self, b: PortBinding) -> str | None:
        kind = socket.SOCK_STREAM if b.proto == "tcp" else socket.SOCK_DGRAM
        try:
            bound_socket(self.host_netns, kind, b.host_ip or "0.0.0.0", b.host_port).close()
        except OSError as e:
            return e.strerror or str(e)
        return None

    def _resolve_link(self, lk: LinkRequest) -> tuple[LinkRequest, str]:
        """The link with its target filled in from the records, and the target's address."""
        if not lk.container_id:
            found = records.link_target(self.db, lk.name)
            if found is None:
                raise NetError(f"cannot link to {lk.name}: no such running container "
                               f"on the default bridge network")
            cid, env, exposed = found
            lk = replace(lk, container_id=cid, env=tuple(env), exposed_ports=tuple(exposed))
        default = self.network(DEFAULT_NETWORK)
        for ep in records.endpoints(self.db, container_id=lk.container_id,
                                    network_id=default.id):
            return lk, ep.address
        raise NetError(f"cannot link to {lk.name}: it is not running on the default bridge "
                       f"network")

    async def _sync_nft(self) -> None:
        """Re-render and apply the table. Concurrent callers coalesce: one apply
        that started after a caller's change serves that caller too."""
        self._nft_wanted += 1
        gen = self._nft_wanted
        async with self._nft_lock:
            if self._nft_done >= gen:
                return
            target = self._nft_wanted
            nets = records.list_networks(self.db)
            internal_nets = {n.id for n in nets if n.internal}
            internal_ips = frozenset(e.address for e in records.endpoints(self.db)
                                     if e.network_id in internal_nets)
            script = nftables.render_table(nets, records.ports(self.db),
                                           internal_ips=internal_ips, table=self.table)
            t0 = time.perf_counter()
            await asyncio.to_thread(nftables.apply, script, self.host_netns)
            log.debug("nft table applied in %.1f ms", (time.perf_counter() - t0) * 1000)
            self._nft_done = target

    # -- DNS -------------------------------------------------------------------

    @staticmethod
    def _dns_names(ep: Endpoint) -> set[str]:
        return {n.lower() for n in (ep.name, *ep.aliases, ep.container_id[:12]) if n}

    def _refresh_names(self, network_id: str) -> None:
        self._names[network_id] = {}
        self._ptr[network_id] = {}
        for ep in records.endpoints(self.db, network_id=network_id):
            self._add_names(ep)

    def _add_names(self, ep: Endpoint) -> None:
        # Kept incrementally: a rebuild per start would make N starts cost O(N^2).
        names = self._names.setdefault(ep.network_id, {})
        for n in self._dns_names(ep):
            names.setdefault(n, []).append(ep.address)
        if ep.name:
            self._ptr.setdefault(ep.network_id, {})[ep.address] = ep.name

    def _drop_names(self, ep: Endpoint) -> None:
        names = self._names.get(ep.network_id, {})
        for n in self._dns_names(ep):
            addrs = [a for a in names.get(n, []) if a != ep.address]
            if addrs:
                names[n] = addrs
            else:
                names.pop(n, None)
        self._ptr.get(ep.network_id, {}).pop(ep.address, None)

    async def _start_dns(self, net: Network) -> None:
        if net.id in self._dns:
            return
        self._refresh_names(net.id)
        gateways = {n.gateway for n in records.list_networks(self.db)}
        upstreams = [] if net.internal else [
            s for s in hosts.read_host_resolv(self.resolv_conf).nameservers
            if s not in gateways and ":" not in s]
        nid = net.id

        def lookup(name: str) -> list[str]:
            return self._names.get(nid, {}).get(name, [])

        def reverse(address: str) -> str | None:
            return self._ptr.get(nid, {}).get(address)

        dns = DnsResponder(net.name, lookup, reverse, upstreams, net.subnet)
        try:
            sock = await asyncio.to_thread(bound_socket, self.host_netns, socket.SOCK_DGRAM,
                                           net.gateway, 53)
        except OSError as e:
            raise NetError(f"DNS for network {net.name}: cannot listen on {net.gateway}:53 "
                           f"({e.strerror or e}): is another DNS server listening there, or on all "
                           f"addresses?") from e
        up = await asyncio.to_thread(bound_socket, self.host_netns, socket.SOCK_DGRAM,
                                     "0.0.0.0", 0) if upstreams else None
        await dns.start(sock, up)
        self._dns[net.id] = dns

