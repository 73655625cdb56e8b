"""Test layers by folder: tests/unit, tests/privileged, tests/vm.

Each test gets its layer's marker from the folder it lives in, so
`pytest -m unit` (no root, fast), `-m privileged` (root, own netns) and
`-m vm` (QEMU) select the layers without every test repeating the marker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LAYERS = ("unit", "privileged", "vm")
ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in LAYERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
