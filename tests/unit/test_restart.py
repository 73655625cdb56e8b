"""Restart policy decisions and the back-off schedule."""

from __future__ import annotations

from runtime.container.restart import BACKOFF_MAX, backoff, should_restart, should_start_on_boot
from runtime.container.spec import RestartPolicy

NO, ALWAYS = RestartPolicy.parse("no"), RestartPolicy.parse("always")
ON_FAIL_2, UNLESS = RestartPolicy.parse("on-failure:2"), RestartPolicy.parse("unless-stopped")


def test_policies() -> None:
    assert not should_restart(NO, 1, 0, False)
    assert should_restart(ALWAYS, 0, 99, False)
    assert not should_restart(ALWAYS, 0, 0, stopped_by_user=True)
    assert should_restart(ON_FAIL_2, 1, 0, False) and should_restart(ON_FAIL_2, 1, 1, False)
    assert not should_restart(ON_FAIL_2, 1, 2, False)
    assert not should_restart(ON_FAIL_2, 0, 0, False)
    assert should_restart(RestartPolicy.parse("on-failure"), 1, 1000, False)
    assert should_restart(UNLESS, 0, 0, False)


def test_daemon_start() -> None:
    assert should_start_on_boot(ALWAYS, stopped_by_user=True)
    assert not should_start_on_boot(UNLESS, stopped_by_user=True)
    assert should_start_on_boot(UNLESS, stopped_by_user=False)
    assert not should_start_on_boot(ON_FAIL_2, stopped_by_user=False)


def test_backoff_doubles_then_caps() -> None:
    assert [backoff(n) for n in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert backoff(50) == BACKOFF_MAX
