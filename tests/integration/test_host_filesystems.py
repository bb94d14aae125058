"""Real mkfs, probe, grow and stats on loop devices this test creates (root only)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition
from cinder_csi.host.devices import DeviceFinder
from cinder_csi.host.filesystems import Filesystems, stats
from cinder_csi.host.mounter import Mounter
from cinder_csi.host.mountinfo import MountTable
from tests.integration.loop_devices import MIB, LoopDevices, run, sha256
from tests.tools import LOOP, XFS, fs_params

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP)]

# Recent xfsprogs refuse filesystems below 300 MiB.
SIZES = {"ext4": 64 * MIB, "ext3": 64 * MIB, "xfs": 320 * MIB}


def deadline() -> Deadline:
    return Deadline.after(30)


@pytest.mark.parametrize("fstype", fs_params("ext4", "ext3", "xfs"))
def test_format_mount_and_never_reformat(loops: LoopDevices, fstype: str) -> None:
    device = loops.create(SIZES[fstype])
    target = loops.directory("stage")
    mounter = Mounter()
    mounter.format_and_mount(device, target, fstype, [], deadline())
    assert Filesystems().probe(device).fstype == fstype
    (target / "data").write_text("keep me")

    mounter.format_and_mount(device, target, fstype, [], deadline())  # retried call: no-op
    assert len(MountTable().mounts_at(target)) == 1

    mounter.unmount(target)
    mounter.unmount(target)  # idempotent
    assert not MountTable().is_mounted(target)
    mounter.format_and_mount(device, target, fstype, [], deadline())
    assert (target / "data").read_text() == "keep me"  # mounted, not reformatted

    s = stats(target)
    assert SIZES[fstype] * 0.7 < s.total_bytes <= SIZES[fstype]
    assert 0 < s.used_bytes < s.total_bytes
    assert 0 < s.available_bytes <= s.total_bytes - s.used_bytes
    assert s.total_inodes > 0 and 0 < s.used_inodes < s.total_inodes
    assert s.free_inodes == s.total_inodes - s.used_inodes


@pytest.mark.tools("mkfs.ext4")
def test_refuses_xfs_over_ext4_leaving_every_byte(loops: LoopDevices) -> None:
    device = loops.create(64 * MIB)  # refused before mkfs.xfs could complain about the size
    run("mkfs.ext4", "-q", str(device))
    before = sha256(device)
    target = loops.directory("stage")
    with pytest.raises(FailedPrecondition, match="ext4 filesystem, but xfs was requested"):
        Mounter().format_and_mount(device, target, "xfs", [], deadline())
    assert sha256(device) == before
    assert not MountTable().is_mounted(target)


def write_mbr(device: Path) -> None:
    # One Linux partition from sector 2048: a minimal, valid DOS partition table.
    entry = bytes([0x00, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 32768)
    sector = bytearray(512)
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    with device.open("r+b") as f:
        f.write(sector)


@pytest.mark.parametrize("fstype", fs_params("ext4", "xfs"))
def test_refuses_a_partition_table(loops: LoopDevices, fstype: str) -> None:
    device = loops.create(64 * MIB)
    write_mbr(device)
    probe = Filesystems().probe(device)
    assert probe.has_partition_table and probe.fstype is None
    before = sha256(device)
    with pytest.raises(FailedPrecondition, match="dos partition table"):
        Mounter().format_and_mount(device, loops.directory("stage"), fstype, [], deadline())
    assert sha256(device) == before


@pytest.mark.parametrize("offset", [8192, 64 * MIB - 4096])
def test_refuses_unknown_data(loops: LoopDevices, offset: int) -> None:
    device = loops.create(64 * MIB)
    with device.open("r+b") as f:
        f.seek(offset)
        f.write(b"precious bytes of an unknown format")
    probe = Filesystems().probe(device)
    assert probe.signatures == {} and probe.unknown_data
    before = sha256(device)
    with pytest.raises(FailedPrecondition, match="unknown format"):
        Mounter().format_and_mount(device, loops.directory("stage"), "ext4", [], deadline())
    assert sha256(device) == before


def can_resize_ext4_online() -> bool:
    # The ext4 resize ioctl needs CAP_SYS_RESOURCE (bit 24), which some sandboxes drop.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


@pytest.mark.parametrize("fstype", fs_params("ext4", "xfs"))
def test_grow_after_the_volume_grew(loops: LoopDevices, fstype: str) -> None:
    size = SIZES[fstype]
    device = loops.create(size)
    target = loops.directory("stage")
    Mounter().format_and_mount(device, target, fstype, [], deadline())
    before = stats(target).total_bytes

    loops.resize(device, 2 * size)
    finder = DeviceFinder()
    assert finder.device_size(device) == size  # the kernel has not noticed yet
    finder.rescan(device)
    assert finder.device_size(device) == 2 * size
    offline = fstype == "ext4" and not can_resize_ext4_online()
    if offline:  # same command, run on the unmounted filesystem
        Mounter().unmount(target)
    Filesystems().grow(device, target, fstype, deadline())
    if offline:
        Mounter().mount(device, target, fstype)
    assert stats(target).total_bytes > 1.8 * before


def test_stats_of_a_block_device(loops: LoopDevices) -> None:
    device = loops.create(64 * MIB)
    s = stats(device)
    assert s.total_bytes == 64 * MIB
    assert (s.available_bytes, s.used_bytes, s.total_inodes) == (0, 0, 0)


@pytest.mark.tools(*XFS, "mkfs.ext4")
def test_mkfs_xfs_itself_refuses_a_signature_we_might_miss(loops: LoopDevices) -> None:
    # Defence in depth: even if probe were bypassed, mkfs.xfs without -f will not overwrite.
    device = loops.create(SIZES["xfs"])
    run("mkfs.ext4", "-q", str(device))
    before = sha256(device)
    result = subprocess.run(
        ["mkfs.xfs", "-K", "-q", str(device)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert b"existing filesystem" in result.stderr
    assert sha256(device) == before
