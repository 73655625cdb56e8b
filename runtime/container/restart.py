"""Restart policies (Docker's): whether to restart after an exit, and when."""

from __future__ import annotations

from runtime.container.spec import RestartPolicy, RestartPolicyName

BACKOFF_START = 0.1      # seconds, doubled on each consecutive restart (as dockerd)
BACKOFF_MAX = 60.0
RESET_AFTER = 10.0       # a run this long resets the back-off


def should_restart(policy: RestartPolicy, exit_code: int, restart_count: int,
                   stopped_by_user: bool) -> bool:
    if stopped_by_user:
        return False
    match policy.name:
        case RestartPolicyName.ALWAYS | RestartPolicyName.UNLESS_STOPPED:
            return True
        case RestartPolicyName.ON_FAILURE:
            if exit_code == 0:
                return False
            return policy.maximum_retry_count <= 0 or restart_count < policy.maximum_retry_count
        case _:
            return False


def should_start_on_boot(policy: RestartPolicy, stopped_by_user: bool) -> bool:
    """At daemon start: always, and unless-stopped if it was not stopped by the user."""
    if policy.name is RestartPolicyName.ALWAYS:
        return True
    return policy.name is RestartPolicyName.UNLESS_STOPPED and not stopped_by_user


def backoff(consecutive: int) -> float:
    """Delay before the n-th consecutive restart (0-based)."""
    return min(BACKOFF_START * (1 << min(consecutive, 20)), BACKOFF_MAX)
