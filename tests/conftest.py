"""Shared pytest configuration: tests that need root, and tests that need a program of the
machine (see tests/tools.py: skipped where missing, naming the package; failed under CI=true)."""

from __future__ import annotations

import os

import pytest

from tests.tools import require_tools


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "tools(*programs): runs these programs; skipped (naming the package to install) where "
        "one is missing, failed instead under CI=true",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: creates loop devices, runs mkfs and mount")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item: pytest.Item) -> None:
    programs = [p for marker in item.iter_markers("tools") for p in marker.args]
    if programs:
        require_tools(*programs)
