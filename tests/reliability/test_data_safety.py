"""Data safety on real loop devices, through the real `cinder-csi node` process (root only):
a device that holds anything, or that belongs to another volume, is never formatted (sha256
of the whole device before and after); unstage while a publication is mounted is refused; a
node plugin killed between mkfs and mount mounts the same filesystem on the retry."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.reliability.driver_env import audit, outcome, specific, wait_until
from tests.reliability.node_world import MIB, NodeWorld, blkid, node_world, run, sha256
from tests.tools import LOOP, require_tools

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP, "mkfs.ext4")]
C = grpc.StatusCode


@pytest.fixture
def world(tmp_path: Path) -> Iterator[NodeWorld]:
    with node_world(tmp_path) as running:
        running.start_node()
        yield running


def write_xfs(device: Path) -> None:
    require_tools("mkfs.xfs")
    run("mkfs.xfs", "-q", str(device))


def write_mbr(device: Path) -> None:
    require_tools("sfdisk")
    run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(device),
        input_text="label: dos\n,32M,L\n")


def write_gpt(device: Path) -> None:
    require_tools("sfdisk")
    run("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(device),
        input_text="label: gpt\n,32M\n")


def write_luks(device: Path) -> None:
    require_tools("cryptsetup")
    run("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2",
        "--pbkdf-force-iterations", "1000", "--key-file", "-", str(device), input_text="pw")


def write_lvm(device: Path) -> None:
    require_tools("pvcreate")
    run("pvcreate", "--config", "devices { use_devicesfile = 0 }", "-y", str(device))


def write_unknown(device: Path) -> None:
    # Data no probe knows: say a database's raw file, or encryption without a header.
    with device.open("r+b") as handle:
        handle.write(os.urandom(MIB))


SIGNATURES: dict[str, Callable[[Path], None]] = {
    "xfs filesystem": write_xfs,
    "MBR partition table": write_mbr,
    "GPT partition table": write_gpt,
    "LUKS header": write_luks,
    "LVM physical volume": write_lvm,
    "unknown data": write_unknown,
}


@pytest.mark.parametrize("kind", sorted(SIGNATURES))
def test_a_device_that_holds_anything_is_never_formatted(world: NodeWorld, kind: str) -> None:
    volume = world.create("pvc-held")
    device = world.attach(volume)
    SIGNATURES[kind](device)
    before = sha256(device)
    assert world.node is not None
    result = specific(outcome(lambda: world.node.node.NodeStageVolume(  # type: ignore[union-attr]
        world.stage_request(volume, world.staging("held")), timeout=60)), kind)
    assert result.code == C.FAILED_PRECONDITION, result
    assert "will not be reformatted" in result.details or "refusing" in result.details
    assert sha256(device) == before, f"the {kind} was changed"
    audit(world.openstack, {"pvc-held": 1}, attachments=[("pvc-held", world.server_id)])


def test_a_filesystem_of_the_requested_type_is_mounted_not_reformatted(
    world: NodeWorld,
) -> None:
    volume = world.create("pvc-kept")
    device = world.attach(volume)
    run("mkfs.ext4", "-q", "-L", "kept", str(device))
    uuid = blkid(device)["UUID"]
    staging = world.staging("kept")
    assert world.node is not None
    world.node.node.NodeStageVolume(world.stage_request(volume, staging), timeout=60)
    assert blkid(device)["UUID"] == uuid


def test_stale_link_to_another_volumes_device_is_never_staged(world: NodeWorld) -> None:
    mine, theirs = world.create("pvc-mine"), world.create("pvc-theirs")
    world.attach(mine)
    their_device = world.attach(theirs)
    before = sha256(their_device)  # blank: it would be formatted
    # udev missed an event: our volume's link now leads to their disk.
    link = world.link_of(mine)
    link.unlink()
    link.symlink_to(their_device)
    assert world.node is not None
    result = specific(outcome(lambda: world.node.node.NodeStageVolume(  # type: ignore[union-attr]
        world.stage_request(mine, world.staging("mine")), timeout=60)))
    assert result.code == C.FAILED_PRECONDITION, result
    assert str(their_device) in result.details
    assert sha256(their_device) == before
    assert blkid(their_device) == {}  # still blank: nothing was formatted


def test_link_left_by_a_detached_volume_is_never_staged(world: NodeWorld) -> None:
    gone = world.create("pvc-gone")
    old_device = world.attach(gone)
    world.detach(gone)
    newcomer = world.create("pvc-new")
    new_device = world.attach(newcomer)
    before = sha256(new_device)
    # The remove event of the first volume never reached udev: its link is back, and the
    # kernel may have handed its device name to the newcomer.
    world.link_of(gone).symlink_to(new_device)
    assert world.node is not None
    result = specific(outcome(lambda: world.node.node.NodeStageVolume(  # type: ignore[union-attr]
        world.stage_request(gone, world.staging("gone")), timeout=60)))
    assert result.code == C.FAILED_PRECONDITION, result
    assert sha256(new_device) == before
    del old_device


def test_unstage_while_still_published_is_refused(world: NodeWorld) -> None:
    volume = world.create("pvc-busy")
    world.attach(volume)
    staging, target = world.staging("busy"), world.target("busy")
    assert world.node is not None
    node = world.node.node
    node.NodeStageVolume(world.stage_request(volume, staging), timeout=60)
    node.NodePublishVolume(world.publish_request(volume, staging, target), timeout=60)
    (target / "data").write_text("precious")
    unstage = csi_pb2.NodeUnstageVolumeRequest(volume_id=volume,
                                               staging_target_path=str(staging))
    refused = specific(outcome(lambda: node.NodeUnstageVolume(unstage, timeout=30)))
    assert refused.code == C.FAILED_PRECONDITION, refused
    assert str(target) in refused.details
    assert (target / "data").read_text() == "precious"
    node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
        volume_id=volume, target_path=str(target)), timeout=30)
    assert outcome(lambda: node.NodeUnstageVolume(unstage, timeout=30)).ok


MKFS_THEN_HANG = """#!/bin/sh
# Test wrapper: the real mkfs, then report and wait to be killed with the node plugin.
{real} "$@" || exit $?
echo $$ > {marker}
exec sleep 600
"""

MKFS_MUST_NOT_RUN = """#!/bin/sh
echo "$@" >> {called}
exit 1
"""


def test_node_killed_between_mkfs_and_mount_mounts_the_same_filesystem(
    world: NodeWorld, tmp_path: Path
) -> None:
    real = shutil.which("mkfs.ext4")  # not resolved: mke2fs picks the type by its name
    assert real is not None
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    marker, called = tmp_path / "mkfs-done", tmp_path / "mkfs-called"
    wrapper = wrappers / "mkfs.ext4"
    wrapper.write_text(MKFS_THEN_HANG.format(real=real, marker=marker))
    wrapper.chmod(0o755)
    node = world.start_node(env=world.path_env(wrappers))
    volume = world.create("pvc-crash")
    device = world.attach(volume)
    staging = world.staging("crash")
    request = world.stage_request(volume, staging)
    pending = node.node.NodeStageVolume.future(request, timeout=120)
    wait_until(lambda: marker.exists() and marker.read_text().strip(), 60, "mkfs to finish")
    node.kill()  # SIGKILL right after mkfs returned, before the mount
    os.kill(int(marker.read_text()), signal.SIGKILL)  # the wrapper's sleep
    with pytest.raises(grpc.RpcError):
        pending.result()
    uuid = blkid(device).get("UUID")
    assert uuid and blkid(device)["TYPE"] == "ext4"
    assert not world.node.alive() if world.node else True

    # The DaemonSet restarts the plugin; kubelet retries the stage. mkfs must not run again.
    wrapper.write_text(MKFS_MUST_NOT_RUN.format(called=called))
    restarted = world.start_node(env=world.path_env(wrappers))
    time.sleep(0.1)
    result = specific(outcome(lambda: restarted.node.NodeStageVolume(request, timeout=60)))
    assert result.ok, result
    assert not called.exists(), f"mkfs ran again: {called.read_text()}"
    assert blkid(device)["UUID"] == uuid
