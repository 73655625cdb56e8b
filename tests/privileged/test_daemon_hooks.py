"""Event hooks: an executable in the hooks directory runs on each matching event."""

from __future__ import annotations

import json
import time

from tests.privileged.berthd import berth_workdir, start_berthd
from tests.privileged.conftest import NetNS
from tests.privileged.images import import_busybox

HOOK = """#!/bin/sh
read -r event
echo "$BERTH_EVENT_ACTION $BERTH_EVENT_NAME $BERTH_EVENT_EXIT_CODE" >> {log}
echo "$event" >> {log}.json
"""


def test_hooks_run_on_matching_events(netns: NetNS) -> None:
    with berth_workdir() as work:
        hooks = work / "hooks.d"
        hooks.mkdir()
        log = work / "hook.log"
        for name in ("container.die.record", "image.any.record"):
            hook = hooks / name
            hook.write_text(HOOK.format(log=log))
            hook.chmod(0o755)
        (hooks / "container.start.not-executable").write_text(HOOK.format(log=log))
        with start_berthd(netns, work, "--hooks-dir", str(hooks)) as d:
            import_busybox(d.berth, work)
            d.berth("run", "--name", "hooked", "busybox", "sh", "-c", "exit 4",
                    check=False)
            deadline = time.monotonic() + 20
            while not log.exists() or "die" not in log.read_text():
                assert time.monotonic() < deadline, d.log_text()[-2000:]
                time.sleep(0.05)
            lines = log.read_text().splitlines()
            assert lines[0].startswith("import ")
            assert "die hooked 4" in lines
            assert not any(line.startswith("start ") for line in lines)
            docs = [json.loads(x) for x in (work / "hook.log.json").read_text().splitlines()]
            assert {"Type": "container", "Action": "die"}.items() <= docs[-1].items()
