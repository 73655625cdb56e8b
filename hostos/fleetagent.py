"""The update agent's window on the fleet: one object, called at each step.

    fleet = FleetAgent.from_host()
    fleet.steady()                           # booted healthy: give back the reboot slot
    gate = fleet.may_install(v, rollout)     # wave open and not halted?
    fleet.report(phase, booted, target, err) # what `hostos fleet status` shows
    verdict = fleet.may_reboot(v)            # not halted? then the strategy (FleetLock, window)
    fleet.rolled_back(v, reason)             # halts the rollout of v fleet-wide

Synchronous, because the agent is: each call runs its own short event loop.
Without fleet settings (no etcd URL) the gate always opens and reports are
skipped. With an etcd that cannot be reached, the gate stays shut: a host
that cannot see a halt must not be the one that spreads a bad release.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from hostos.etcd import EtcdClient, EtcdError
from hostos.fleet import FleetSettings, load_fleet_settings
from hostos.fleetlock.strategy import RebootStrategy, Verdict, load_strategy
from hostos.fleetstate import HostReport, report
from hostos.rollout import (
    Decision,
    Gate,
    RolloutError,
    RolloutPlan,
    app_specific_id,
    check,
    decide,
    fleet_position,
    halt,
    halt_of,
    read_machine_id,
)

log = logging.getLogger("hostos.fleet")
T = TypeVar("T")


@dataclass
class FleetAgent:
    settings: FleetSettings
    machine_id: str
    strategy: RebootStrategy
    hostname: str = field(default_factory=socket.gethostname)
    etcd_ops: int = 0  # requests this agent sent to etcd (for the figures)
    _wave: int = 0  # learnt from the last release's rollout plan

    @property
    def node_id(self) -> str:
        return app_specific_id(self.machine_id)

    @classmethod
    def from_host(cls, root: Path = Path("/")) -> FleetAgent:
        settings = load_fleet_settings(root)
        machine_id = read_machine_id(root)
        return cls(settings, machine_id, load_strategy(app_specific_id(machine_id), root,
                                                       settings))

    def _etcd(self, what: Callable[[EtcdClient], Awaitable[T]]) -> T:
        async def run() -> T:
            async with EtcdClient(self.settings.etcd_url) as etcd:
                try:
                    return await what(etcd)
                finally:
                    self.etcd_ops += etcd.ops

        return asyncio.run(run())

    def may_install(self, version: str, rollout: Mapping[str, Any] | None) -> Gate:
        try:
            plan = RolloutPlan.from_release(rollout)
        except RolloutError as e:
            return Gate(Decision.WAIT, 0, fleet_position(self.machine_id),
                        f"release {version} has an unusable rollout plan: {e}")
        if not self.settings.etcd_url:
            return decide(version, plan, self.machine_id, datetime.now(UTC), None)
        self._wave = plan.wave_of(fleet_position(self.machine_id)) + 1 if plan else 1
        try:
            return self._etcd(lambda etcd: check(etcd, version, plan, self.machine_id))
        except EtcdError as e:
            return Gate(Decision.WAIT, 0, fleet_position(self.machine_id),
                        f"cannot check the fleet's halt record, not installing: {e}")

    def wave(self, rollout: Mapping[str, Any] | None) -> int:
        try:
            plan = RolloutPlan.from_release(rollout)
        except RolloutError:
            return 0
        return plan.wave_of(fleet_position(self.machine_id)) + 1 if plan else 1

    def rolled_back(self, version: str, reason: str) -> bool:
        """Record the halt; True if this host is the one that stopped the rollout."""
        if not self.settings.etcd_url:
            return False
        try:
            first = self._etcd(lambda etcd: halt(etcd, version, reason, self.hostname))
        except EtcdError as e:
            log.warning("could not record the halt of %s in etcd: %s", version, e)
            return False
        log.warning("rollout of %s halted fleet-wide: %s", version, reason)
        return first

    def report(self, phase: str, booted: str, target: str = "", last_error: str = "",
               wave: int = 0) -> None:
        if not self.settings.etcd_url:
            return
        rep = HostReport(self.node_id, self.hostname, self.settings.group,
                         wave or self._wave, booted, phase, last_error, target)
        try:
            self._etcd(lambda etcd: report(etcd, rep))
        except EtcdError as e:  # a report is best effort: the update goes on without it
            log.warning("could not report to the fleet: %s", e)

    def may_reboot(self, version: str = "") -> Verdict:
        """The strategy's verdict, unless the rollout of the staged version was halted.

        A host may have staged a release before the canary rolled back from it;
        rebooting into it then would spread what the halt is there to stop.
        """
        if version and self.settings.etcd_url:
            try:
                stopped = self._etcd(lambda etcd: halt_of(etcd, version))
            except EtcdError as e:
                return Verdict(False, f"cannot check the fleet's halt record, not rebooting: {e}")
            if stopped is not None:
                return Verdict(False, f"rollout of {version} halted: {stopped.host} rolled back "
                                      f"({stopped.reason}); not rebooting into it")
        return self.strategy.may_reboot()

    def steady(self) -> Verdict:
        return self.strategy.report_steady()
