"""The FleetLock server against the protocol, with a real etcd and real servers.

Each test starts `hostos fleetlock serve` as a child (two of them where the
test is about two servers behind a load balancer) on one etcd started by
the module, and speaks to them with the agent's own client.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import aiohttp
import pytest

from hostos.etcd import EtcdClient, EtcdServer, start_etcd
from hostos.fleetlock.client import FleetLockClient, LockResult
from hostos.fleetlock.semaphore import (
    AuditEntry,
    AuditOp,
    FleetSemaphore,
    GroupConfig,
    max_concurrent_holders,
)
from hostos.fleetlock.server import start_fleetlock


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with start_etcd() as server:
        yield server


@pytest.fixture
def group() -> str:
    return f"g-{uuid.uuid4().hex[:8]}"


async def _set_slots(etcd: EtcdServer, group: str, slots: int) -> None:
    async with EtcdClient(etcd.endpoint) as client:
        await FleetSemaphore(client).set_config(group, GroupConfig(slots=slots))


async def _audit(etcd: EtcdServer, group: str) -> list[AuditEntry]:
    async with EtcdClient(etcd.endpoint) as client:
        return await FleetSemaphore(client).audit_log(group)


def test_concurrent_clients_never_exceed_the_slots(etcd: EtcdServer, group: str) -> None:
    slots, clients, rounds = 2, 24, 2
    asyncio.run(_set_slots(etcd, group, slots))
    with start_fleetlock(etcd.endpoint, name="s1") as s1, \
            start_fleetlock(etcd.endpoint, name="s2") as s2:

        async def hammer() -> tuple[int, int]:
            inside = peak = 0
            async with aiohttp.ClientSession() as session:

                async def host(n: int) -> int:
                    nonlocal inside, peak
                    # Alternate servers, as a load balancer would.
                    url = (s1, s2)[n % 2].url
                    c = FleetLockClient(url, f"host-{n}", group, session=session)
                    done = 0
                    for _ in range(rounds):
                        while not (await c.pre_reboot()).ok:
                            await asyncio.sleep(0.01)
                        inside += 1
                        peak = max(peak, inside)
                        await asyncio.sleep(0.005)
                        inside -= 1
                        assert (await c.steady_state()).ok
                        done += 1
                    return done

                done = await asyncio.gather(*(host(n) for n in range(clients)))
            return peak, sum(done)

        peak, done = asyncio.run(hammer())
    assert done == clients * rounds  # everyone got through, nobody starved for good
    assert 1 <= peak <= slots
    log = asyncio.run(_audit(etcd, group))
    assert max_concurrent_holders(log) == slots  # the slots were used, never exceeded
    assert sum(e.op is AuditOp.LOCK for e in log) == clients * rounds
    assert {e.server for e in log} == {"s1", "s2"}


def test_only_the_owner_unlocks(etcd: EtcdServer, group: str) -> None:
    with start_fleetlock(etcd.endpoint, slots=1) as srv:

        async def scenario() -> None:
            a = FleetLockClient(srv.url, "host-a", group)
            b = FleetLockClient(srv.url, "host-b", group)
            assert (await a.pre_reboot()).ok
            # UnlockIfHeld by someone else succeeds but releases nothing.
            assert (await b.steady_state()).ok
            refused = await b.pre_reboot()
            assert refused.result is LockResult.REFUSED and refused.status == 409
            assert "host-a" in refused.detail
            assert (await a.steady_state()).ok
            assert (await b.pre_reboot()).ok

        asyncio.run(scenario())


def test_lock_is_recursive(etcd: EtcdServer, group: str) -> None:
    with start_fleetlock(etcd.endpoint, slots=2) as srv:

        async def scenario() -> None:
            a = FleetLockClient(srv.url, "host-a", group)
            assert (await a.pre_reboot()).ok
            assert (await a.pre_reboot()).ok  # same id again: still one slot
            assert (await FleetLockClient(srv.url, "host-b", group).pre_reboot()).ok
            assert not (await FleetLockClient(srv.url, "host-c", group).pre_reboot()).ok
            assert (await a.steady_state()).ok  # one unlock frees it, however many locks
            assert (await a.steady_state()).ok  # and unlocking again is fine
            assert (await FleetLockClient(srv.url, "host-c", group).pre_reboot()).ok

        asyncio.run(scenario())
    assert [e.op for e in asyncio.run(_audit(etcd, group))] == [
        AuditOp.LOCK, AuditOp.LOCK, AuditOp.UNLOCK, AuditOp.LOCK]


def test_stale_holder_expires(etcd: EtcdServer, group: str) -> None:
    with start_fleetlock(etcd.endpoint, slots=1, max_hold=2) as srv:

        async def scenario() -> None:
            gone = FleetLockClient(srv.url, "host-that-died", group)
            b = FleetLockClient(srv.url, "host-b", group)
            assert (await gone.pre_reboot()).ok
            assert not (await b.pre_reboot()).ok
            await asyncio.sleep(2.5)
            assert (await b.pre_reboot()).ok

        asyncio.run(scenario())
    log = asyncio.run(_audit(etcd, group))
    assert [(e.op, e.id) for e in log][-2:] == [
        (AuditOp.EXPIRE, "host-that-died"), (AuditOp.LOCK, "host-b")]


def test_two_servers_share_one_semaphore(etcd: EtcdServer, group: str) -> None:
    with start_fleetlock(etcd.endpoint, slots=1) as s1, \
            start_fleetlock(etcd.endpoint, slots=1) as s2:

        async def scenario() -> None:
            assert (await FleetLockClient(s1.url, "host-a", group).pre_reboot()).ok
            assert not (await FleetLockClient(s2.url, "host-b", group).pre_reboot()).ok
            # The slot taken on one server is released through the other.
            assert (await FleetLockClient(s2.url, "host-a", group).steady_state()).ok
            assert (await FleetLockClient(s1.url, "host-b", group).pre_reboot()).ok

        asyncio.run(scenario())


def test_slots_per_group_come_from_etcd(etcd: EtcdServer, group: str) -> None:
    frozen, wide = f"{group}-frozen", f"{group}-wide"
    asyncio.run(_set_slots(etcd, frozen, 0))
    asyncio.run(_set_slots(etcd, wide, 3))
    with start_fleetlock(etcd.endpoint, slots=1) as srv:

        async def scenario() -> None:
            assert not (await FleetLockClient(srv.url, "h0", frozen).pre_reboot()).ok
            got = [(await FleetLockClient(srv.url, f"h{i}", wide).pre_reboot()).ok
                   for i in range(4)]
            assert got == [True, True, True, False]

        asyncio.run(scenario())


def test_protocol_requests_zincati_sends_and_refuses_the_rest(
        etcd: EtcdServer, group: str) -> None:
    with start_fleetlock(etcd.endpoint, slots=1) as srv:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as s:
                async def post(body: object, header: bool = True) -> tuple[int, dict[str, str]]:
                    headers = {"fleet-lock-protocol": "true"} if header else {}
                    async with s.post(srv.url + "v1/pre-reboot", data=json.dumps(body),
                                      headers=headers) as r:
                        return r.status, await r.json()

                old = {"client_params": {"node_uuid": "c988d2509fdf4cdcbed39037c56406fb",
                                         "group": group}}
                assert (await post(old))[0] == 200  # the older field name still works
                status, err = await post({"client_params": {"id": "x", "group": group}},
                                         header=False)
                assert status == 400 and "fleet-lock-protocol" in err["value"]
                status, err = await post({"client_params": {"id": "x", "group": "a b"}})
                assert status == 400 and err["kind"] == "bad_request" and "group" in err["value"]
                status, err = await post({"client_params": {"group": group}})
                assert status == 400 and "id" in err["value"]
                status, err = await post({"client_params": {"id": "y", "group": group}})
                assert status == 409 and err["kind"] == "failed_lock"

        asyncio.run(scenario())


def test_the_agents_fleet_lock_strategy_gates_reboots(etcd: EtcdServer, group: str) -> None:
    from hostos.fleetlock.strategy import FleetLock

    with start_fleetlock(etcd.endpoint, slots=1) as srv:
        a, b = FleetLock(srv.url, "host-a", group), FleetLock(srv.url, "host-b", group)
        assert a.may_reboot().allowed
        refused = b.may_reboot()
        assert not refused.allowed and "refused" in refused.reason and "host-a" in refused.reason
        assert a.report_steady().allowed  # host-a booted healthy: its slot goes back
        assert b.may_reboot().allowed
    down = FleetLock(srv.url, "host-c", group).may_reboot()
    assert not down.allowed and "unreachable" in down.reason
