"""The fleet's shared records on a real etcd: halt and resume, host reports, status."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime

from hostos.etcd import EtcdClient, start_etcd
from hostos.fleetlock.client import FleetLockClient
from hostos.fleetlock.server import start_fleetlock
from hostos.fleetstate import HostReport, hosts, report
from hostos.rollout import Decision, check, halt, parse_plan_spec


def hostos(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hostos", *argv], capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


def test_a_rollback_halts_the_version_fleet_wide_until_resumed() -> None:
    plan = parse_plan_spec("100%@0", datetime(2026, 1, 1, tzinfo=UTC))
    with start_etcd() as etcd:

        async def scenario() -> None:
            async with EtcdClient(etcd.endpoint) as c:
                assert (await check(c, "2.0", plan, "ab" * 16)).decision is Decision.INSTALL
                assert await halt(c, "2.0", "health check failed", host="node-1")
                assert not await halt(c, "2.0", "also failed", host="node-2")  # first wins
                gate = await check(c, "2.0", plan, "cd" * 16)
                assert gate.decision is Decision.HALTED and "node-1" in gate.reason
                # A fixed release is not held back by the halt of the bad one.
                assert (await check(c, "2.1", plan, "cd" * 16)).decision is Decision.INSTALL

        asyncio.run(scenario())
        status = hostos("fleet", "status", "--etcd", etcd.endpoint)
        assert status.returncode == 0, status.stderr
        assert "2.0: node-1 rolled back, health check failed" in status.stdout
        r = hostos("fleet", "resume", "--etcd", etcd.endpoint, "--version", "2.0")
        assert r.returncode == 0 and "resumed the rollout of 2.0" in r.stdout
        again = hostos("fleet", "resume", "--etcd", etcd.endpoint, "--version", "2.0")
        assert again.returncode == 1 and "no halted rollout of version 2.0" in again.stderr
        assert "Traceback" not in again.stderr

        async def after() -> Decision:
            async with EtcdClient(etcd.endpoint) as c:
                return (await check(c, "2.0", plan, "cd" * 16)).decision

        assert asyncio.run(after()) is Decision.INSTALL


def test_status_shows_versions_waves_and_slot_holders() -> None:
    with start_etcd() as etcd, start_fleetlock(etcd.endpoint, slots=1) as srv:

        async def scenario() -> None:
            async with EtcdClient(etcd.endpoint) as c:
                for i, version in enumerate(["1.0", "1.1", "1.1"]):
                    await report(c, HostReport(f"id{i}", f"node-{i}", "default", 1 + i % 2,
                                               version, "idle"))
                # A second report replaces the first and revokes its lease.
                first = await c.get("/berth/hosts/default/id0")
                await report(c, HostReport("id0", "node-0", "default", 1, "1.0", "staged",
                                           target_version="1.1"))
                assert first is not None
                assert await c.lease_keepalive(first.lease) == 0
                assert len(await hosts(c)) == 3
            assert (await FleetLockClient(srv.url, "id0", "default").pre_reboot()).ok

        asyncio.run(scenario())
        out = hostos("fleet", "status", "--etcd", etcd.endpoint)
        assert out.returncode == 0, out.stderr
        assert "default wave 1: 1.0 x1" in out.stdout
        assert "default wave 1: 1.1 x1" in out.stdout
        assert "default wave 2: 1.1 x1" in out.stdout
        assert "default: 1/1 held: id0" in out.stdout
        assert "staged" in out.stdout


def test_a_host_that_stops_reporting_drops_out() -> None:
    with start_etcd() as etcd:

        async def scenario() -> int:
            async with EtcdClient(etcd.endpoint) as c:
                await report(c, HostReport("gone", "node-gone", "default", 1, "1.0", "idle"),
                             ttl=2)
                assert len(await hosts(c)) == 1
                time.sleep(3.5)  # etcd expires leases on its own clock
                return len(await hosts(c))

        assert asyncio.run(scenario()) == 0


def test_status_against_no_etcd_is_one_clear_line() -> None:
    with start_etcd() as etcd:
        url = etcd.endpoint
    out = hostos("fleet", "status", "--etcd", url)
    assert out.returncode == 1
    assert out.stderr.startswith(f"hostos: etcd at {url}") and "Traceback" not in out.stderr
