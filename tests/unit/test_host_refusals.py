"""Which command failures are the node's state (FailedPrecondition) and which stay INTERNAL."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinder_csi.errors import CommandFailed, FailedPrecondition
from cinder_csi.host.refusals import (
    GROW_REASONS,
    MOUNT_FAILURE,
    MOUNT_REASONS,
    explaining,
    refusal,
)

DEVICE = Path("/dev/vdb")


def failed(argv0: str, code: int, stderr: str) -> CommandFailed:
    return CommandFailed(f"{argv0} failed", argv=(argv0, "x"), returncode=code, stdout="",
                         stderr=stderr)


@pytest.mark.parametrize(("stderr", "meaning"), [
    ("mount: /m: wrong fs type, bad option, bad superblock on /dev/vdb, missing codepage or "
     "helper program, or other error.", "may be damaged"),
    ("mount: /m: cannot mount; probably corrupted filesystem on /dev/vdb.", "may be damaged"),
    ("mount: /m: mount(2) system call failed: Structure needs cleaning.", "may be damaged"),
    ("mount: /m: can't read superblock on /dev/vdb.", "cannot be read"),
    ("mount: /m: unknown filesystem type 'xfs'.", "cannot mount xfs"),
    ("mount: /m: permission denied.", "not allowed to mount"),
])
def test_mount_refusals_say_what_they_mean(stderr: str, meaning: str) -> None:
    error = refusal(failed("mount", MOUNT_FAILURE, stderr), doing="mount /dev/vdb (xfs) at /m",
                    device=DEVICE, fstype="xfs", reasons=MOUNT_REASONS,
                    refusal_codes=(MOUNT_FAILURE,))
    assert isinstance(error, FailedPrecondition)
    assert meaning in error.message and stderr.split(": ")[-1].strip() in error.message
    assert "cannot mount /dev/vdb (xfs) at /m" in error.message
    assert "Nothing on /dev/vdb was changed" in error.message


def test_damage_names_the_repair_tool_of_the_filesystem() -> None:
    for fstype, tool in (("xfs", "xfs_repair /dev/vdb"), ("ext4", "e2fsck -f /dev/vdb")):
        error = refusal(failed("mount", MOUNT_FAILURE, "bad superblock"), doing="mount",
                        device=DEVICE, fstype=fstype, reasons=MOUNT_REASONS)
        assert error is not None and tool in error.message


def test_any_other_mount_failure_is_still_a_refusal() -> None:
    error = refusal(failed("mount", MOUNT_FAILURE, "mount: /m: something new."), doing="mount",
                    device=DEVICE, fstype="ext4", reasons=MOUNT_REASONS,
                    refusal_codes=(MOUNT_FAILURE,))
    assert error is not None and "something new" in error.message


@pytest.mark.parametrize(("code", "stderr"), [
    (1, "resize2fs: Memory allocation failed while trying to resize"),  # nobody foresaw it
    (MOUNT_FAILURE, ""),
])
def test_an_unforeseen_grow_failure_stays_internal(code: int, stderr: str) -> None:
    original = failed("resize2fs", code, stderr)
    assert refusal(original, doing="grow", device=DEVICE, fstype="ext4",
                   reasons=GROW_REASONS) is None
    with pytest.raises(CommandFailed) as info, explaining(
            doing="grow", device=DEVICE, fstype="ext4", reasons=GROW_REASONS):
        raise original
    assert info.value is original


@pytest.mark.parametrize(("argv0", "stderr", "meaning"), [
    ("resize2fs", "Please run 'e2fsck -f /dev/vdb' first.", "must be checked"),
    ("resize2fs", "resize2fs: Permission denied to resize filesystem", "recorded errors"),
    ("xfs_growfs", "xfs_growfs: XFS_IOC_FSGROWFSDATA xfsctl failed: Read-only file system",
     "read-only"),
    ("xfs_growfs", "xfs_growfs: /m is not a mounted XFS filesystem", "shut down"),
])
def test_grow_refusals_say_what_they_mean(argv0: str, stderr: str, meaning: str) -> None:
    with pytest.raises(FailedPrecondition) as info, explaining(
            doing="grow the ext4 filesystem on /dev/vdb", device=DEVICE, fstype="ext4",
            reasons=GROW_REASONS):
        raise failed(argv0, 1, stderr)
    assert meaning in info.value.message and f"{argv0} said:" in info.value.message
    assert isinstance(info.value.__cause__, CommandFailed)
