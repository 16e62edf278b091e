"""Shared test set-up: hardware tests are skipped unless --hardware is given; the ``rig`` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from stage_kit import Rig


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hardware", action="store_true", help="run tests that need real devices")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hardware"):
        return
    skip = pytest.mark.skip(reason="needs real hardware: pass --hardware")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["grbl", "zaber"])
def rig(request: pytest.FixtureRequest) -> Iterator[Rig]:
    """An emulated stage of each kind behind a real pyserial URL (tests/stage_kit.py)."""
    from stage_kit import make_rig  # here, so that only the tests using it load the emulators

    r = make_rig(request.param)
    yield r
    r.close()
