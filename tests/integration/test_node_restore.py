"""Volumes made from a snapshot, a backup or another volume, on real loop devices: the node
grows their filesystem to the volume at stage (upstream's ``resizeRequired``), and an xfs copy
mounts on the same node as its source (``nouuid``)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.host import MountTable
from tests.integration.csi_helpers import create_request, mount_cap
from tests.integration.node_env import GIB, NodeEnv, node_env
from tests.integration.test_node import CAP_SYS_RESOURCE, has_capability
from tests.tools import LOOP, XFS, fs_params

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP, "mkfs.ext4")]

FS_TYPES = fs_params("ext4", "xfs")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[NodeEnv]:
    with node_env(tmp_path) as environment:
        yield environment


def fs_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


def skip_without_online_ext_resize(fstype: str) -> None:
    if fstype.startswith("ext") and not has_capability(CAP_SYS_RESOURCE):
        pytest.skip("online ext4 resize needs CAP_SYS_RESOURCE, which this sandbox lacks "
                    "(a privileged node plugin has it)")


def stage(env: NodeEnv, volume: Any, fstype: str) -> Path:
    """NodeStage with the volume_context CreateVolume returned, as kubelet passes it on."""
    staging = env.staging(volume.volume_id)
    env.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=volume.volume_id, staging_target_path=str(staging),
        volume_capability=mount_cap(fs_type=fstype),
        volume_context=dict(volume.volume_context)), timeout=60)
    return staging


def written_source(env: NodeEnv, fstype: str) -> tuple[Any, Path]:
    """A 1 GiB volume, attached and staged, holding a file; its data is on the device."""
    source = env.csi.controller.CreateVolume(create_request(f"src-{fstype}", 1),
                                             timeout=30).volume
    env.attach(source.volume_id)
    staging = stage(env, source, fstype)
    (staging / "data.txt").write_text("from the source")
    os.sync()
    return source, staging


def snapshot(env: NodeEnv, source_id: str, name: str, kind: str) -> str:
    params = {"type": kind} if kind == "backup" else {}
    made = env.csi.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=name, source_volume_id=source_id, parameters=params), timeout=120).snapshot
    assert made.ready_to_use
    return str(made.snapshot_id)


@pytest.mark.parametrize("kind", ["snapshot", "backup", "volume"])
@pytest.mark.parametrize("fstype", FS_TYPES)
def test_copy_into_a_bigger_volume_gets_a_bigger_filesystem(
    env: NodeEnv, fstype: str, kind: str
) -> None:
    skip_without_online_ext_resize(fstype)
    source, staging = written_source(env, fstype)
    if kind == "volume":
        content = csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.volume_id))
    else:
        content = csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.
                                              SnapshotSource(snapshot_id=snapshot(
                                                  env, source.volume_id, f"s-{kind}", kind)))
    env.unstage(source.volume_id, staging)
    copy = env.csi.controller.CreateVolume(
        create_request(f"copy-{kind}-{fstype}", 2, volume_content_source=content),
        timeout=60).volume
    assert copy.capacity_bytes == 2 * GIB
    assert copy.volume_context["resizeRequired"] == "true"
    env.attach(copy.volume_id)
    copied = stage(env, copy, fstype)
    assert (copied / "data.txt").read_text() == "from the source"
    assert fs_bytes(copied) > 1.7 * GIB
    # Staging again (kubelet retries) finds nothing more to grow.
    stage(env, copy, fstype)
    assert fs_bytes(copied) > 1.7 * GIB


@pytest.mark.tools(*XFS)
def test_xfs_clone_is_staged_beside_its_source(env: NodeEnv) -> None:
    source, staging = written_source(env, "xfs")
    content = csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.volume_id))
    clone = env.csi.controller.CreateVolume(
        create_request("clone-xfs", 1, volume_content_source=content), timeout=60).volume
    env.attach(clone.volume_id)
    cloned = stage(env, clone, "xfs")  # same filesystem UUID as the mounted source
    assert (cloned / "data.txt").read_text() == "from the source"
    assert MountTable().is_mounted(staging) and MountTable().is_mounted(cloned)
    (cloned / "data.txt").write_text("changed in the clone")
    assert (staging / "data.txt").read_text() == "from the source"
    # And the other way round: the source staged again while its clone is mounted.
    env.unstage(source.volume_id, staging)
    stage(env, source, "xfs")
    assert (staging / "data.txt").read_text() == "from the source"
