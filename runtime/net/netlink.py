"""The kernel side of networking, through pyroute2 (the only module that imports it).

The "host" is the network namespace berthd runs in; tests run the provider
in-process with `host_netns` set to a namespace they created, so nothing here
ever touches the machine's root namespace by accident: every socket, sysctl
and netlink request for the host side is made inside `host_netns` when given.

Namespace changes are made in a short-lived thread (setns(2) moves only the
calling thread), which opens its socket and exits: the caller's thread never
switches namespace, and a socket keeps the namespace it was opened in.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute  # the one place in Berth that imports pyroute2
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netns import setns

from runtime.net.model import NetError

T = TypeVar("T")

NO_IPV6_LL = {"attrs": [["AF_INET6", {"attrs": [["IFLA_INET6_ADDR_GEN_MODE", 1]]}]]}
LOOPBACK_IFINDEX = 1  # lo is ifindex 1 in every network namespace
HOST_IF_PREFIX = "vb"
"""Host ends of container veths: `vb` + 11 hex (IFNAMSIZ allows 15 characters)."""
USER_BRIDGE_PREFIX = "bb-"
"""User networks' bridges: `bb-` + 12 hex of the network id (not Docker's `br-`, so a
dockerd on the same host never has its bridges mistaken for stale ones of ours)."""
# What a daemon start may delete as left behind by an earlier berthd: only names
# of exactly our shapes (a `vboxnet0` or Docker's `br-...` never match).
OURS = re.compile(r"^(vb[0-9a-f]{11}|bb-[0-9a-f]{12}|bx[0-9a-f]{12}|t[xy][0-9a-f]{12})$")


class NetlinkFailed(NetError):
    def __init__(self, what: str, cause: BaseException) -> None:
        self.what = what
        self.cause = cause
        super().__init__(f"{what}: {cause}")


def in_netns(netns: Path | None, fn: Callable[[], T]) -> T:
    """Run fn inside netns (a bind-mounted namespace file), or here if netns is None."""
    if netns is None:
        return fn()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as e:  # handed to the caller's thread below
            box["error"] = e

    t = threading.Thread(target=work, name=f"netns:{netns.name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


async def run_in_netns(netns: Path, fn: Callable[[], T]) -> T:
    """Await fn run in a fresh thread inside netns: one thread hop, no pool thread
    ever changes namespace."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                setns(fd)
            finally:
                os.close(fd)
            value = fn()
        except BaseException as e:  # handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=work, name=f"netns:{netns.name}", daemon=True).start()
    return await fut


def _ignore(codes: tuple[int, ...], fn: Callable[[], object]) -> bool:
    """Run fn; True if it did something, False if the kernel said it was already done."""
    try:
        fn()
        return True
    except NetlinkError as e:
        if e.code in codes:
            return False
        raise


def write_sysctl(netns: Path | None, key: str, value: str) -> None:
    """Per-namespace sysctls (net.*) resolve in the namespace of the opening thread."""
    path = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(path, "w") as f:
            f.write(value)

    try:
        in_netns(netns, write)
    except OSError as e:
        raise NetlinkFailed(f"sysctl {key}={value}", e) from e


def bound_socket(netns: Path | None, kind: socket.SocketKind, address: str,
                 port: int) -> socket.socket:
    """A socket bound in netns: the DNS responder's, or a probe for a free host port."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
        except BaseException:
            s.close()
            raise
        return s

    return in_netns(netns, make)


class Netlink:
    """Bridges and veths on the host side, addresses and routes inside containers."""

    def __init__(self, host_netns: Path | None = None) -> None:
        self.host_netns = host_netns
        self._lock = threading.Lock()
        self._ipr: IPRoute | None = None
        # bridge name -> ifindex: saves a lookup per container start; dropped when
        # a bridge is deleted, refreshed when an attach finds it stale
        self._bridges: dict[str, int] = {}

    # pyroute2's IPRoute is untyped: keep Any from leaking past this class.
    def _host(self) -> Any:
        if self._ipr is None:
            self._ipr = in_netns(self.host_netns, IPRoute)
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, ifname: str) -> int | None:
        found = self._host().link_lookup(ifname=ifname)
        return int(found[0]) if found else None

    def link_names(self) -> list[str]:
        with self._lock:
            return [str(m.get_attr("IFLA_IFNAME")) for m in self._host().get_links()]

    def ensure_bridge(self, name: str, gateway: str, prefixlen: int, mac: str) -> None:
        """Create the bridge if missing; give it its gateway address, a fixed MAC,
        route_localnet and arp_announce (for DNAT of 127.0.0.1 to a container);
        bring it up."""
        with self._lock:
            ipr = self._host()
            try:
                idx = self._index(name)
                if idx is None:
                    ipr.link("add", ifname=name, kind="bridge", address=mac)
                    idx = self._index(name)
                    assert idx is not None
                have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
                if gateway not in have:
                    ipr.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
                ipr.link("set", index=idx, state="up")
            except NetlinkError as e:
                raise NetlinkFailed(f"create bridge {name} ({gateway}/{prefixlen})", e) from e
        write_sysctl(self.host_netns, f"net.ipv4.conf.{name}.route_localnet", "1")
        # ...and ARP for such a packet must not announce 127.0.0.1 as its sender
        # (containers drop that as a martian): use the bridge's own address.
        write_sysctl(self.host_netns, f"net.ipv4.conf.{name}.arp_announce", "2")

    def _ignore_missing(self, name: str) -> None:
        """Best-effort removal of a half-made link while handling another error."""
        try:
            idx = self._index(name)
            if idx is not None:
                self._host().link("del", index=idx)
        except NetlinkError:
            pass

    def ensure_overflow(self, bridge: str, overflow: str, trunk: str, trunk_peer: str) -> None:
        """An overflow bridge in the same L2 domain as `bridge`: a trunk veth pair
        joins them (star topology, no loops). It has no address: traffic to the
        gateway crosses the trunk, so the nft rules on `bridge` still apply."""
        with self._lock:
            ipr = self._host()
            try:
                ovf = self._index(overflow)
                if ovf is None:
                    ipr.link("add", ifname=overflow, kind="bridge")
                    ovf = self._index(overflow)
                ipr.link("set", index=ovf, state="up")
                if self._index(trunk) is None:
                    br = self._index(bridge)
                    # No hairpin on a trunk: the bridge would reflect every
                    # broadcast back into the overflow bridge it came from.
                    ipr.link("add", ifname=trunk, kind="veth", master=br, state="up",
                             peer=trunk_peer)
                ipr.link("set", index=self._index(trunk_peer), master=ovf, state="up")
            except NetlinkError as e:
                raise NetlinkFailed(f"create overflow bridge {overflow} of {bridge}", e) from e
        # The overflow bridge is L2 only. Its own (local) port would otherwise
        # answer containers' ARP for the gateway with its MAC (arp_ignore=0
        # replies for any local address), and their traffic would enter the
        # host through it instead of the network's bridge.
        write_sysctl(self.host_netns, f"net.ipv4.conf.{overflow}.arp_ignore", "8")
        write_sysctl(self.host_netns, f"net.ipv6.conf.{overflow}.disable_ipv6", "1")

    def delete_link(self, name: str) -> bool:
        """Delete a link (a bridge, or a veth and with it its peer); False if absent."""
        with self._lock:
            self._bridges.pop(name, None)
            ipr = self._host()
            try:
                idx = self._index(name)
                if idx is None:
                    return False
                return _ignore((errno.ENODEV,), lambda: ipr.link("del", index=idx))
            except NetlinkError as e:
                raise NetlinkFailed(f"delete link {name}", e) from e

    def routes(self) -> list[str]:
        """Destinations of the host's IPv4 routes (to keep new subnets clear of them)."""
        with self._lock:
            out = []
            for r in self._host().get_routes(family=2):
                dst = r.get_attr("RTA_DST")
                if dst and r["dst_len"]:
                    out.append(str(ipaddress.IPv4Network(f"{dst}/{r['dst_len']}", strict=False)))
            return out

    async def attach(self, *, bridge: str, host_ifname: str, netns: Path, ifname: str,
                     mac: str, address: str, prefixlen: int, gateway: str | None) -> None:
        """A veth pair: host end in the bridge, peer as `ifname` in the container's
        namespace with its address, up, and (if gateway) the default route.

        All of it runs in one thread that has entered the container's namespace:
        the pair is created through the host socket (opened earlier in the host
        namespace; a socket keeps its namespace) with its peer already in the
        container's namespace, in the bridge and up, in one request; the
        container side takes three more on a socket opened where the thread is.
        """
        if self._ipr is None:
            await asyncio.to_thread(self._host)

        def work() -> None:
            # This thread is in the container's namespace: eth0, made next,
            # inherits "default", so it never gets IPv6 (Berth is IPv4 only).
            with contextlib.suppress(OSError), open(
                    "/proc/sys/net/ipv6/conf/default/disable_ipv6", "w") as f:
                f.write("1")
            self._create_veth(bridge, host_ifname, netns, ifname, mac)
            try:
                with IPRoute() as cipr:
                    idx = cipr.link_lookup(ifname=ifname)[0]
                    cipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
                    cipr.link("set", index=idx, state="up")
                    cipr.link("set", index=LOOPBACK_IFINDEX, state="up")
                    if gateway:
                        cipr.route("add", dst="0.0.0.0/0", gateway=gateway)
            except (NetlinkError, OSError, IndexError) as e:
                self.delete_link(host_ifname)
                raise NetlinkFailed(f"configure {ifname} ({address}) in {netns}", e) from e

        await run_in_netns(netns, work)

    def _create_veth(self, bridge: str, host_ifname: str, netns: Path, ifname: str,
                     mac: str) -> None:
        with self._lock:
            ipr = self._ipr
            assert ipr is not None
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                try:
                    self._add_veth(ipr, self._bridge_index(bridge), host_ifname, fd, ifname, mac)
                except NetlinkError as e:
                    if e.code != errno.ENODEV:
                        raise
                    self._bridges.pop(bridge, None)  # the bridge was re-made: new index
                    self._add_veth(ipr, self._bridge_index(bridge), host_ifname, fd, ifname, mac)
                # Hairpin (a container reaching its own published port through the
                # host's address gets its packet back out of the same port) and no
                # IPv6 link-local, addressed by name: no index lookup.
                port = ifinfmsg()
                port["index"] = 0
                port["attrs"] = [
                    ("IFLA_IFNAME", host_ifname), ("IFLA_AF_SPEC", NO_IPV6_LL),
                    ("IFLA_LINKINFO", {"attrs": [
                        ("IFLA_INFO_SLAVE_KIND", "bridge"),
                        ("IFLA_INFO_SLAVE_DATA", {"attrs": [("IFLA_BRPORT_MODE", 1)]})]})]
                ipr.nlm_request(port, msg_type=RTM_NEWLINK, msg_flags=NLM_F_REQUEST | NLM_F_ACK)
            except NetlinkError as e:
                self._ignore_missing(host_ifname)
                raise NetlinkFailed(f"create veth {host_ifname} into {netns}", e) from e
            finally:
                os.close(fd)

    @staticmethod
    def _add_veth(ipr: Any, br: int, host_ifname: str, fd: int, ifname: str, mac: str) -> None:
        ipr.link("add", ifname=host_ifname, kind="veth", master=br, state="up",
                 peer={"ifname": ifname, "net_ns_fd": fd, "address": mac})

    def _bridge_index(self, bridge: str) -> int:
        idx = self._bridges.get(bridge)
        if idx is None:
            idx = self._index(bridge)
            if idx is None:
                raise NetError(f"bridge {bridge} is missing (restart berthd to reconcile)")
            self._bridges[bridge] = idx
        return idx
