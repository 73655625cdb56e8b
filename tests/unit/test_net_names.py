"""Which interface names a restarting berthd may delete as its own leftovers."""

from __future__ import annotations

import pytest

from runtime.net.model import overflow_names
from runtime.net.netlink import OURS


@pytest.mark.parametrize("name", ["vb0123456789a", "bb-0123456789ab",
                                  *overflow_names("0123456789abcdef", 1)])
def test_berths_own_names(name: str) -> None:
    assert OURS.match(name)


@pytest.mark.parametrize("name", ["vboxnet0", "br-0123456789ab", "docker0", "veth1234567",
                                  "berth0", "eth0", "vb0123456789ab", "bb-0123"])
def test_other_peoples_interfaces_are_never_ours(name: str) -> None:
    assert not OURS.match(name)
