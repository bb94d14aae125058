"""Real mount, bind mount, read-only remount and unmount on loop devices (root only)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition
from cinder_csi.host.mounter import Mounter
from cinder_csi.host.mountinfo import MountTable
from tests.integration.loop_devices import MIB, LoopDevices, run
from tests.tools import LOOP

# Every device here is formatted ext4 (by the test or by format_and_mount).
pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP, "mkfs.ext4")]


@pytest.fixture
def staged(loops: LoopDevices) -> tuple[Path, Path]:
    """An ext4 loop device mounted at a staging directory."""
    device = loops.create(64 * MIB)
    stage = loops.directory("stage")
    Mounter().format_and_mount(device, stage, "ext4", [], Deadline.after(30))
    return device, stage


def test_mount_with_options_is_idempotent(loops: LoopDevices) -> None:
    device = loops.create(64 * MIB)
    run("mkfs.ext4", "-q", str(device))
    target = loops.directory("t")
    mounter = Mounter()
    for _ in range(2):
        mounter.mount(device, target, "ext4", ["noatime", "nodev"])
    [m] = MountTable().mounts_at(target)
    assert "noatime" in m.options and "nodev" in m.options and not m.readonly
    with pytest.raises(FailedPrecondition, match="read-write"):
        mounter.mount(device, target, "ext4", ["ro"])
    with pytest.raises(FailedPrecondition, match="xfs"):
        mounter.mount(device, target, "xfs")


def test_other_device_at_target_is_refused(loops: LoopDevices, staged: tuple[Path, Path]) -> None:
    _, stage = staged
    other = loops.create(64 * MIB)
    run("mkfs.ext4", "-q", str(other))
    with pytest.raises(FailedPrecondition, match="already has"):
        Mounter().mount(other, stage, "ext4")
    assert len(MountTable().mounts_at(stage)) == 1


def test_bind_mount_read_write(loops: LoopDevices, staged: tuple[Path, Path]) -> None:
    _, stage = staged
    publish = loops.directory("pod/mount")
    mounter = Mounter()
    mounter.bind_mount(stage, publish)
    mounter.bind_mount(stage, publish)  # idempotent
    assert len(MountTable().mounts_at(publish)) == 1
    (publish / "f").write_text("via bind")
    assert (stage / "f").read_text() == "via bind"
    with pytest.raises(FailedPrecondition, match="already has"):
        mounter.bind_mount(loops.directory("elsewhere"), publish)
    mounter.unmount(publish)
    mounter.unmount(publish)
    assert not MountTable().is_mounted(publish)
    assert MountTable().is_mounted(stage)


def test_bind_mount_read_only(loops: LoopDevices, staged: tuple[Path, Path]) -> None:
    _, stage = staged
    (stage / "f").write_text("data")
    publish = loops.directory("pod/mount")
    mounter = Mounter()
    mounter.bind_mount(stage, publish, readonly=True)
    mounter.bind_mount(stage, publish, readonly=True)
    [m] = MountTable().mounts_at(publish)
    assert m.readonly
    assert (publish / "f").read_text() == "data"
    with pytest.raises(OSError) as info:
        (publish / "g").write_text("nope")
    assert info.value.errno == errno.EROFS
    (stage / "g").write_text("staging stays writable")
    with pytest.raises(FailedPrecondition, match="read-only"):
        mounter.bind_mount(stage, publish, readonly=False)


def test_read_only_bind_finishes_an_interrupted_call(
    loops: LoopDevices, staged: tuple[Path, Path]
) -> None:
    _, stage = staged
    publish = loops.directory("pod/mount")
    run("mount", "--bind", str(stage), str(publish))  # died before the remount
    Mounter().bind_mount(stage, publish, readonly=True)
    [m] = MountTable().mounts_at(publish)
    assert m.readonly


def test_bind_subdirectory(loops: LoopDevices, staged: tuple[Path, Path]) -> None:
    _, stage = staged
    (stage / "sub").mkdir()
    publish = loops.directory("pod/mount")
    mounter = Mounter()
    mounter.bind_mount(stage / "sub", publish)
    mounter.bind_mount(stage / "sub", publish)
    with pytest.raises(FailedPrecondition):
        mounter.bind_mount(stage, publish)  # same filesystem, different directory


def test_bind_raw_block_device(loops: LoopDevices) -> None:
    device = loops.create(64 * MIB)
    target = loops.directory("pod") / "block"
    target.touch()
    mounter = Mounter()
    mounter.bind_mount(device, target)
    mounter.bind_mount(device, target)
    assert target.is_block_device()
    mounter.unmount(target)
    assert not target.is_block_device()


def test_remount_read_only(staged: tuple[Path, Path]) -> None:
    _, stage = staged
    mounter = Mounter()
    mounter.remount_readonly(stage)
    mounter.remount_readonly(stage)
    assert MountTable().mounts_at(stage)[-1].readonly
    with pytest.raises(OSError):
        (stage / "x").write_text("no")


def test_unmount_stacked_mounts(loops: LoopDevices, staged: tuple[Path, Path]) -> None:
    _, stage = staged
    run("mount", "-t", "tmpfs", "-o", "size=1m", "stacked", str(stage))  # hides the volume
    assert len(MountTable().mounts_at(stage)) == 2
    Mounter().unmount(stage)
    assert not MountTable().is_mounted(stage)


def test_busy_mount_is_not_detached_lazily(staged: tuple[Path, Path]) -> None:
    _, stage = staged
    mounter = Mounter()
    with (stage / "open").open("w") as busy:  # an open file keeps the mount busy
        busy.write("x")
        with pytest.raises(FailedPrecondition, match="in use"):
            mounter.unmount(stage)
        assert MountTable().is_mounted(stage)  # no lazy unmount hid it
    mounter.unmount(stage)
    assert not MountTable().is_mounted(stage)
