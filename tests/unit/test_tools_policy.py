"""A test whose program is missing is skipped naming the package, and fails under CI=true."""

from __future__ import annotations

import pytest

from tests.tools import TOOL_PACKAGES, XFS, missing_tools, require_tools


def test_missing_program_names_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert missing_tools(*XFS) == ("not installed: mkfs.xfs (package xfsprogs), xfs_growfs "
                                   "(package xfsprogs), xfs_info (package xfsprogs)")
    assert TOOL_PACKAGES["kubectl"] == "kubectl"


def test_skipped_on_a_fresh_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="xfsprogs"):
        require_tools("mkfs.xfs")


def test_a_failure_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run every test"):
        require_tools("mkfs.xfs")


def test_present_programs_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require_tools("sh")
