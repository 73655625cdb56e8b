"""hostos.etcd, the gateway client FleetLock and the fleet records stand on, on a real etcd."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from hostos.etcd import (
    Compare,
    Delete,
    EtcdClient,
    EtcdError,
    Get,
    Put,
    served_requests,
    start_etcd,
)


def test_kv_txn_and_leases_on_a_real_etcd() -> None:
    with start_etcd() as etcd:

        async def scenario() -> None:
            async with EtcdClient(etcd.endpoint) as c:
                assert (await c.version()).startswith("3.")
                await c.put("/t/a", "1")
                await c.put("/t/b", b"\xff\x00binary")
                await c.put("/u", "outside")
                got = await c.range("/t/", prefix=True)
                assert [(kv.key, kv.value) for kv in got.kvs] == [
                    ("/t/a", b"1"), ("/t/b", b"\xff\x00binary")]
                a = await c.get("/t/a")
                assert a is not None and a.version == 1
                # Compare-and-swap: only the writer that saw the current revision wins.
                first = await c.txn([Compare.mod_revision("/t/a", a.mod_revision)],
                                    [Put("/t/a", b"2")], [Get("/t/a")])
                second = await c.txn([Compare.mod_revision("/t/a", a.mod_revision)],
                                     [Put("/t/a", b"3")], [Get("/t/a")])
                assert first.succeeded and not second.succeeded
                assert second.responses[0][0].value == b"2"
                # Create-if-absent is a compare on revision 0.
                assert (await c.txn([Compare.mod_revision("/t/new", 0)], [Put("/t/new", b"x")])
                        ).succeeded
                assert not (await c.txn([Compare.mod_revision("/t/new", 0)],
                                        [Put("/t/new", b"y")])).succeeded
                assert (await c.txn([], [Delete("/t/", prefix=True)])).succeeded
                assert (await c.range("/t/", prefix=True)).kvs == ()
                assert await c.get("/u") is not None

                lease = await c.lease_grant(2)
                await c.put("/leased", "v", lease=lease)
                kv = await c.get("/leased")
                assert kv is not None and kv.lease == lease
                assert await c.lease_keepalive(lease) == 2
                await c.lease_revoke(lease)
                assert await c.get("/leased") is None
                assert await c.lease_keepalive(lease) == 0
                assert c.ops > 10

        asyncio.run(scenario())


def test_unreachable_etcd_is_a_clear_error() -> None:
    with start_etcd() as etcd:
        endpoint = etcd.endpoint

    async def scenario() -> None:
        async with EtcdClient(endpoint, timeout=3) as c:
            with pytest.raises(EtcdError, match=f"etcd at {endpoint}: kv/range"):
                await c.get("/x")

    asyncio.run(scenario())


def test_etcd_counts_what_clients_sent() -> None:
    with start_etcd() as etcd:
        before = served_requests(etcd.endpoint)

        async def some_requests() -> Counter[str]:
            async with EtcdClient(etcd.endpoint) as c:
                lease = await c.lease_grant(30)
                await c.put("/n/a", "1", lease=lease)
                await c.get("/n/a")
                await c.txn([Compare.mod_revision("/n/a", 0)], [Put("/n/a", b"2")])
                await c.lease_revoke(lease)
                assert c.ops == 5
                return c.calls

        sent = asyncio.run(some_requests())
        served = served_requests(etcd.endpoint) - before
    assert served == sent == {"LeaseGrant": 1, "Put": 1, "Range": 1, "Txn": 1, "LeaseRevoke": 1}
