"""What the node answers when the OS refuses (root only, real loop devices through the stand-in
Nova, real gRPC): a damaged filesystem at stage, a grow the kernel or xfs refuses at expand.
Each is FAILED_PRECONDITION naming the device, the filesystem and the command's own words, and
the device is left as it was. node_env unmounts and detaches everything, also on failure."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.host import MountTable
from tests.integration.csi_helpers import expect_code, mount_cap
from tests.integration.node_env import GIB, NodeEnv, node_env
from tests.integration.test_node import sha256
from tests.tools import LOOP, XFS, fs_params

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP)]
C = grpc.StatusCode

# A field each filesystem's checksum covers but blkid does not check: blkid still says
# "ext4" / "xfs", and the kernel refuses the superblock (s_inodes_count of ext4 at 1024;
# sb_crc of a v5 xfs at 224).
DAMAGE = {"ext4": (1024, b"\0\0\0\0"), "xfs": (224, b"\xff\xff\xff\xff")}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[NodeEnv]:
    with node_env(tmp_path) as environment:
        yield environment


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def write_at(device: Path, offset: int, data: bytes) -> None:
    with device.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def attached_with(env: NodeEnv, name: str, *mkfs: str) -> tuple[str, Path]:
    volume = env.create(name, 1)
    env.attach(volume)
    device = env.device_of(volume)
    run(*mkfs, str(device))
    return volume, device


@pytest.mark.parametrize("fstype", fs_params("ext4", "xfs"))
def test_stage_of_a_damaged_filesystem_says_so(env: NodeEnv, fstype: str) -> None:
    volume, device = attached_with(env, f"pvc-damaged-{fstype}", f"mkfs.{fstype}", "-q")
    write_at(device, *DAMAGE[fstype])
    before = sha256(device)
    staging = env.staging(volume)
    error = expect_code(C.FAILED_PRECONDITION,
                        lambda: env.stage(volume, staging, mount_cap(fs_type=fstype)))
    details = error.details()
    assert f"cannot mount {device} ({fstype})" in details, details
    assert "may be damaged" in details and "repair" in details, details
    assert "mount said: mount:" in details, details  # mount's own words
    assert f"Nothing on {device} was changed" in details
    assert sha256(device) == before  # not formatted, not repaired
    assert not MountTable().is_mounted(staging)


@pytest.mark.tools("mkfs.ext4", "resize2fs", "debugfs")
def test_expand_refused_by_an_ext4_with_recorded_errors_says_so(env: NodeEnv) -> None:
    """The kernel refuses to grow online an ext4 with recorded errors with EPERM; so it does
    for a plugin without CAP_SYS_RESOURCE (this sandbox), and the message names both causes."""
    volume, device = attached_with(env, "pvc-errors", "mkfs.ext4", "-q")
    run("debugfs", "-w", "-R", "ssv state 3", str(device))  # valid, but errors recorded
    staging = env.staging(volume)
    env.stage(volume, staging, mount_cap(fs_type="ext4"))
    expand_volume(env, volume)
    error = expect_code(C.FAILED_PRECONDITION, lambda: node_expand(env, volume, staging))
    details = error.details()
    assert f"cannot grow the ext4 filesystem on {device}" in details, details
    assert f"e2fsck -f {device}" in details and "resize2fs said:" in details, details
    assert "Permission denied" in details, details


@pytest.mark.tools(*XFS)
def test_expand_refused_by_a_read_only_xfs_says_so(env: NodeEnv) -> None:
    volume, device = attached_with(env, "pvc-ro-xfs", "mkfs.xfs", "-q")
    staging = env.staging(volume)
    cap = mount_cap(fs_type="xfs")
    cap.mount.mount_flags.append("ro")
    env.stage(volume, staging, cap)
    expand_volume(env, volume)
    error = expect_code(C.FAILED_PRECONDITION, lambda: node_expand(env, volume, staging))
    details = error.details()
    assert f"cannot grow the xfs filesystem on {device}" in details, details
    assert "read-only" in details and "xfs_growfs said:" in details, details


@pytest.mark.tools(*XFS, "xfs_io")
def test_expand_and_stats_of_an_xfs_that_shut_down_say_so(env: NodeEnv) -> None:
    volume, _ = attached_with(env, "pvc-shutdown", "mkfs.xfs", "-q")
    staging = env.staging(volume)
    env.stage(volume, staging, mount_cap(fs_type="xfs"))
    run("xfs_io", "-x", "-c", "shutdown", str(staging))  # as after a metadata I/O error
    expand_volume(env, volume)
    error = expect_code(C.FAILED_PRECONDITION, lambda: node_expand(env, volume, staging))
    assert str(staging) in error.details() and "Input/output error" in error.details()
    stats = env.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume, volume_path=str(staging)), timeout=30)
    assert stats.volume_condition.abnormal and not stats.usage
    assert str(staging) in stats.volume_condition.message
    assert "shut down" in stats.volume_condition.message


def expand_volume(env: NodeEnv, volume: str) -> None:
    env.csi.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GIB),
            volume_capability=mount_cap()), timeout=30)


def node_expand(env: NodeEnv, volume: str, path: Path) -> None:
    env.node.NodeExpandVolume(
        csi_pb2.NodeExpandVolumeRequest(volume_id=volume, volume_path=str(path)), timeout=60)

