"""Privileged layer: root, and each test in a network namespace of its own.

The `netns` fixture creates a named namespace for the test and deletes it
afterwards; daemons and containers the test starts are put in it with
`nsenter --net=/run/netns/NAME` (not `ip netns exec`, which remounts /sys and
hides /sys/fs/cgroup). The machine's root network namespace is never touched.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class NetNS:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def argv(self, *argv: str) -> list[str]:
        """argv that runs a command inside this namespace only."""
        return ["nsenter", f"--net={self.path}", "--", *argv]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*argv), check=check, capture_output=True, text=True,
            stdin=subprocess.DEVNULL,
        )


@pytest.fixture(autouse=True)
def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the privileged layer needs root (run `make test` as root)")


@pytest.fixture
def netns() -> Iterator[NetNS]:
    ns = NetNS(f"berth-t-{uuid.uuid4().hex[:8]}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "delete", ns.name], check=False)
