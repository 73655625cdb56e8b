"""A real berthd with a containers.d: a declared container whose image is not
there yet waits with a clear logged error, and starts once `berth import` brings
the image (an image event on the daemon's bus wakes the reconciler)."""

from __future__ import annotations

import json

from tests.privileged.berthd import berth_workdir, start_berthd, wait_until
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox


def test_declared_container_starts_when_its_image_arrives(netns: NetNS) -> None:
    with berth_workdir() as work:
        declared = work / "containers.d"
        declared.mkdir()
        (declared / "web.toml").write_text(
            'image = "busybox:later"\ncmd = ["sh", "-c", "echo up; exec sleep 1000"]\n')
        with start_berthd(netns, work, "--containers-dir", str(declared)) as d:
            wait_until(lambda: "image busybox:later not found" in d.log_text(),
                       "the missing image is logged")
            assert d.berth("ps", "-aq").stdout == ""
            import_busybox(d.berth, work, ref="busybox:later")
            wait_until(lambda: d.berth("ps", "-q", "--filter", "name=web").stdout != "",
                       "web runs")
            state = json.loads(d.berth("inspect", "web").stdout)[0]["State"]
            assert state["Running"] is True
            wait_until(lambda: d.berth("logs", "web").stdout == "up\n", "web's output")
            assert "declarative: web is up" in d.log_text()
