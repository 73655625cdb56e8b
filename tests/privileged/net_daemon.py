"""A minimal berthd for the kill -9 test: engine + networking, no API.

    python -m tests.privileged.net_daemon ROOT [--run NAME:HOSTPORT ...] [--rm-all]

Run under `nsenter --net=<test netns>` (the namespace is its "host", as for
the real berthd). It opens the image store, the network service and the
engine on ROOT, adopts the containers a previous instance left and
reconciles networking, starts busybox httpd containers publishing
HOSTPORT -> 80, prints one line `READY {"name": [id, pid], ...}` and then
waits to be killed. `--rm-all` removes every container, removes the
networking state from the kernel and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from runtime.container.manager import ContainerManager, EngineConfig
from runtime.container.spec import CreateRequest
from runtime.events import EventBus
from runtime.net.engine import EngineNetwork
from runtime.net.options import options_from_docker
from runtime.net.provider import NetworkService
from runtime.store.db import open_db
from runtime.store.images import ImageStore


async def main(root: Path, runs: list[str], rm_all: bool) -> None:
    db = open_db(root / "data" / "berth.db")
    (root / "resolv.conf").touch()
    svc = NetworkService(db, resolv_conf=root / "resolv.conf")
    await svc.start()
    mgr = ContainerManager(EngineConfig(root=root / "data", exec_root=root / "run"),
                           images=ImageStore(root / "data"), events=EventBus(),
                           network=EngineNetwork(svc, root / "run" / "net"), db=db)
    await mgr.adopt()
    await svc.reconcile({c.id for c in mgr.list(all=False)})
    if rm_all:
        for c in mgr.list(all=True):
            await mgr.remove(c.id, force=True)
        await mgr.shutdown()
        await svc.destroy()
        return
    started = {}
    for spec in runs:
        name, _, port = spec.partition(":")
        body = {"HostConfig": {"PortBindings": {"80/tcp": [{"HostPort": port}]}}}
        rec = await mgr.create(CreateRequest(
            image="busybox", name=name, cmd=("httpd", "-f", "-p", "80", "-h", "/etc"),
            network_mode="bridge", network_options=options_from_docker(body)))
        await mgr.start(rec.id)
        started[name] = [rec.id, mgr.inspect(rec.id).state.pid]
    print("READY " + json.dumps(started), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("root", type=Path)
    p.add_argument("--run", action="append", default=[])
    p.add_argument("--rm-all", action="store_true")
    a = p.parse_args()
    asyncio.run(main(a.root, a.run, a.rm_all))
    sys.exit(0)
