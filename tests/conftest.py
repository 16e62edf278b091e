"""Shared test set-up: hardware tests are skipped unless --hardware is given."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hardware", action="store_true", help="run tests that need real devices")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hardware"):
        return
    skip = pytest.mark.skip(reason="needs real hardware: pass --hardware")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)
