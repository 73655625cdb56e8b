"""FleetLock on etcd: cost of a reboot slot against the bare etcd floor, and etcd ops per update.

Side by side in one run, on one etcd started here:
- peer (the floor): the two etcd requests a slot needs at the very least,
  a consistent read and a compare-and-swap write, sent straight to etcd;
- ours: pre-reboot + steady-state through `hostos fleetlock serve`.
The ratio is what the HTTP server and the protocol add. Then N synthetic
hosts run one whole update's fleet steps (FleetAgent: steady at boot,
rollout gate, state reports, the reboot slot, steady after boot) through
one server with one slot, and the etcd requests are counted: the agent's
own and the server's (from its /health), per host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
import urllib.request
from datetime import UTC, datetime

import aiohttp

from hostos.etcd import Compare, EtcdClient, Get, Put, start_etcd
from hostos.fleet import FleetSettings
from hostos.fleetagent import FleetAgent
from hostos.fleetlock.client import FleetLockClient
from hostos.fleetlock.server import start_fleetlock
from hostos.fleetlock.strategy import FleetLock
from hostos.rollout import parse_plan_spec

DESCRIPTION = "FleetLock slot latency vs bare etcd CAS; etcd operations per host per update"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rounds", type=int, default=200, help="lock+unlock cycles to time")
    p.add_argument("--hosts", type=int, default=10, help="synthetic hosts for the ops count")


async def _floor(endpoint: str, rounds: int) -> list[float]:
    times = []
    async with EtcdClient(endpoint) as etcd:
        for i in range(rounds):
            t = time.perf_counter()
            res = await etcd.txn([], [Get("/bench/sem")])
            rev = res.responses[0][0].mod_revision if res.responses[0] else 0
            await etcd.txn([Compare.mod_revision("/bench/sem", rev)],
                           [Put("/bench/sem", str(i).encode())])
            times.append(time.perf_counter() - t)
    return times


async def _ours(url: str, rounds: int) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as s:
        c = FleetLockClient(url, "bench-host", "bench", session=s)
        for _ in range(rounds):
            t = time.perf_counter()
            assert (await c.pre_reboot()).ok
            assert (await c.steady_state()).ok
            times.append(time.perf_counter() - t)
    return times


def _server_ops(url: str) -> int:
    with urllib.request.urlopen(url + "health", timeout=5) as r:
        return int(json.load(r)["etcd_ops"])


def _agents(n: int, etcd: str, lock: str) -> list[FleetAgent]:
    settings = FleetSettings("default", lock, etcd)
    return [FleetAgent(settings, f"{i + 1:032x}", FleetLock(lock, f"node-{i}", "default"),
                       hostname=f"node-{i}") for i in range(n)]


def main(args: argparse.Namespace) -> int:
    # The client logs each call (the agent's journal wants that); here it is noise.
    logging.getLogger("hostos.fleetlock").setLevel(logging.WARNING)
    rollout = parse_plan_spec("100%@0", datetime(2026, 1, 1, tzinfo=UTC)).to_json()
    with start_etcd() as etcd, start_fleetlock(etcd.endpoint, slots=1) as srv:
        floor = asyncio.run(_floor(etcd.endpoint, args.rounds))
        ours = asyncio.run(_ours(srv.url, args.rounds))
        f, o = statistics.median(floor), statistics.median(ours)
        print(f"{'':34} {'median ms':>10} {'p90 ms':>8}")
        for name, xs in (("etcd read+CAS (floor, peer)", floor),
                         ("fleetlock lock+unlock (ours)", ours)):
            p90 = sorted(xs)[int(len(xs) * 0.9)]
            print(f"{name:34} {statistics.median(xs) * 1e3:10.2f} {p90 * 1e3:8.2f}")
        print(f"ratio ours/floor: {o / f:.2f}x  (one cycle = 2 HTTP requests, 4 etcd requests)")

        before = _server_ops(srv.url)
        fleet = _agents(args.hosts, etcd.endpoint, srv.url)
        for h in fleet:
            h.steady()
            h.report("idle", "1.0")
        for h in fleet:
            assert h.may_install("1.1", rollout).decision.value == "install"
            h.report("staged", "1.0", "1.1")
        for h in fleet:
            while not h.may_reboot("1.1").allowed:
                time.sleep(0.05)
            h.report("rebooting", "1.0", "1.1")
            h.steady()
            h.report("done", "1.1")
        server_ops = _server_ops(srv.url) - before
        agent_ops = sum(h.etcd_ops for h in fleet)
        print(f"\netcd requests per host per update ({args.hosts} hosts, 1 slot, hosts in turn):")
        print(f"  agent (rollout gate 1, halt check before reboot 1, 4 reports of 3-4 each): "
              f"{agent_ops / args.hosts:.1f}")
        per_host = server_ops / args.hosts
        print(f"  fleetlock server (steady at boot 1, lock 2, unlock 2): {per_host:.1f}")
        print(f"  total: {(agent_ops + server_ops) / args.hosts:.1f}")
    return 0
