"""The lifecycle guards as a truth table (one row per status)."""

from __future__ import annotations

import pytest

from runtime.container.state import Status

S = Status
# status: (start, stop, kill, pause, unpause, exec, restart, remove, remove -f)
TABLE = {
    S.CREATED:    (1, 0, 0, 0, 0, 0, 1, 1, 1),
    S.RUNNING:    (0, 1, 1, 1, 0, 1, 1, 0, 1),
    S.PAUSED:     (0, 1, 1, 0, 1, 0, 1, 0, 1),
    S.RESTARTING: (0, 1, 0, 0, 0, 0, 1, 0, 1),
    S.REMOVING:   (0, 0, 0, 0, 0, 0, 0, 0, 0),
    S.EXITED:     (1, 0, 0, 0, 0, 0, 1, 1, 1),
    S.DEAD:       (0, 0, 0, 0, 0, 0, 0, 1, 1),
}


def test_table_covers_every_status() -> None:
    assert set(TABLE) == set(Status)


@pytest.mark.parametrize("status", list(Status))
def test_guards(status: Status) -> None:
    got = (status.can_start(), status.can_stop(), status.can_kill(), status.can_pause(),
           status.can_unpause(), status.can_exec(), status.can_restart(),
           status.can_remove(force=False), status.can_remove(force=True))
    assert tuple(int(g) for g in got) == TABLE[status]


def test_only_running_and_paused_have_a_process() -> None:
    assert {s for s in Status if s.has_process} == {S.RUNNING, S.PAUSED}
