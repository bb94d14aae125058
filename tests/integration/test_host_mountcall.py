"""mount(2) against the mount program on loop devices this test creates (root only): the same
mount table entry for the same options, the same refusals, the program where the system call
cannot do what it does; and the identity proof that runs beside the blank check stops mkfs."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition
from cinder_csi.host.filesystems import Filesystems
from cinder_csi.host.mountcall import MountCall, try_mount
from cinder_csi.host.mounter import Mounter
from cinder_csi.host.mountinfo import MountInfo, MountTable
from tests.integration.loop_devices import MIB, LoopDevices, run, sha256
from tests.tools import LOOP, fs_params

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP)]

SIZES = {"ext4": 64 * MIB, "xfs": 320 * MIB}
OPTIONS = {
    "ext4": [[], ["ro"], ["noatime", "nosuid", "nodev", "noexec"], ["relatime", "nodiratime"],
             ["strictatime", "sync"], ["errors=remount-ro", "data=ordered", "defaults"],
             ["ro", "rw", "lazytime"]],
    "xfs": [[], ["nouuid"], ["ro", "nouuid", "noatime"], ["nosuid", "nodev", "inode64"],
            ["dirsync", "logbufs=4"]],
}
# A filesystem whose superblock fails its checksum but which blkid still recognises.
DAMAGE = {"ext4": (1024, b"\0\0\0\0"), "xfs": (224, b"\xff\xff\xff\xff")}


def shown(mount: MountInfo) -> tuple[object, ...]:
    """What mount table readers see, without the ids that differ between two mounts."""
    return (mount.source, mount.root, mount.fstype, mount.options, mount.super_options)


def formatted(loops: LoopDevices, fstype: str) -> Path:
    device = loops.create(SIZES[fstype])
    run(f"mkfs.{fstype}", "-q", str(device))
    return device


def only_mount_at(target: Path) -> MountInfo:
    mounts = MountTable().mounts_at(target)
    assert len(mounts) == 1, mounts
    return mounts[0]


@pytest.mark.parametrize("fstype", fs_params("ext4", "xfs"))
def test_the_system_call_mounts_what_the_program_mounts(loops: LoopDevices, fstype: str) -> None:
    device = formatted(loops, fstype)
    target = loops.directory("stage")
    call = MountCall.load()
    program = Mounter(syscall=False)
    for options in OPTIONS[fstype]:
        assert try_mount(call, device, target, fstype, options), options
        by_call = shown(only_mount_at(target))
        program.unmount(target)
        program.mount(device, target, fstype, options)
        by_program = shown(only_mount_at(target))
        program.unmount(target)
        assert by_call == by_program, options


@pytest.mark.parametrize("fstype", fs_params("ext4", "xfs"))
def test_a_damaged_filesystem_is_refused_in_the_same_words(loops: LoopDevices,
                                                           fstype: str) -> None:
    device = formatted(loops, fstype)
    offset, garbage = DAMAGE[fstype]
    with device.open("r+b") as handle:
        handle.seek(offset)
        handle.write(garbage)
    before = sha256(device)
    target = loops.directory("stage")
    assert not try_mount(MountCall.load(), device, target, fstype, [])  # the kernel refused
    errors = []
    for mounter in (Mounter(), Mounter(syscall=False)):
        with pytest.raises(FailedPrecondition) as caught:
            mounter.mount(device, target, fstype)
        errors.append(str(caught.value))
    assert "may be damaged" in errors[0] and "mount said: mount:" in errors[0], errors[0]
    assert errors[0] == errors[1]
    assert sha256(device) == before
    assert not MountTable().is_mounted(target)


@pytest.mark.tools("mkfs.ext4")
def test_a_write_protected_device_is_still_mounted_read_only(loops: LoopDevices) -> None:
    """mount(2) refuses a read-write mount of a read-only device; the program, which the
    refusal falls back to, mounts it read-only as it always did."""
    device = formatted(loops, "ext4")
    # Attached read-only (the loop driver resets that at its next attach; `blockdev --setro`
    # would outlive the device), over a copy of the image so that each has its own file.
    image = loops.workdir / "read-only.img"
    shutil.copyfile(loops.devices[device], image)
    device = Path(run("losetup", "--find", "--show", "--read-only", str(image)).strip())
    loops.devices[device] = image  # detached with the others
    target = loops.directory("stage")
    assert not try_mount(MountCall.load(), device, target, "ext4", ["noatime"])
    Mounter().mount(device, target, "ext4", ["noatime"])
    mount = only_mount_at(target)
    assert mount.readonly and "noatime" in mount.options


@pytest.mark.tools("mkfs.ext4")
def test_options_only_the_program_knows_still_work(loops: LoopDevices) -> None:
    device = formatted(loops, "ext4")
    target = loops.directory("stage")
    assert not try_mount(MountCall.load(), device, target, "ext4", ["nofail", "noatime"])
    Mounter().mount(device, target, "ext4", ["nofail", "noatime"])  # through the program
    assert "noatime" in only_mount_at(target).options


@pytest.mark.parametrize("fstype", fs_params("ext4", "xfs"))
def test_a_failed_proof_leaves_a_blank_device_blank(loops: LoopDevices, fstype: str) -> None:
    """The proof finishes after the blank check found the device blank, and fails: mkfs must
    not have started, nor the mount."""
    device = loops.create(SIZES[fstype])
    before = sha256(device)
    target = loops.directory("stage")

    def slow_failing_proof() -> None:
        time.sleep(0.3)
        raise FailedPrecondition(f"device {device} is not volume v-1")

    with pytest.raises(FailedPrecondition, match="not volume v-1"):
        Mounter().format_and_mount(device, target, fstype, [], Deadline.after(30),
                                   proof=slow_failing_proof)
    assert sha256(device) == before
    assert Filesystems().probe(device).blank
    assert not MountTable().is_mounted(target)


@pytest.mark.parametrize("fstype", fs_params("ext4", "xfs"))
def test_format_and_mount_with_a_passing_proof(loops: LoopDevices, fstype: str) -> None:
    device = loops.create(SIZES[fstype])
    target = loops.directory("stage")
    proved: list[bool] = []
    Mounter().format_and_mount(device, target, fstype, [], Deadline.after(30),
                               proof=lambda: proved.append(True))
    assert proved == [True]
    assert only_mount_at(target).fstype == fstype
