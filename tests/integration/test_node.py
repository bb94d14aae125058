"""The whole node flow on real loop devices: the stand-in Nova attaches, we stage and publish."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.host import MountTable
from tests.integration.csi_helpers import block_cap, expect_code, mount_cap
from tests.integration.node_env import GIB, NodeEnv, node_env
from tests.tools import LOOP, XFS, fs_params, require_tools

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP, "mkfs.ext4")]
C = grpc.StatusCode


@pytest.fixture
def env(tmp_path: Path) -> Iterator[NodeEnv]:
    with node_env(tmp_path) as environment:
        yield environment


def sha256(device: Path) -> str:
    digest = hashlib.sha256()
    with device.open("rb") as handle:
        while chunk := handle.read(8 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def fs_size(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


FS_TYPES = fs_params("ext4", "xfs")
CAP_SYS_RESOURCE = 24


def has_capability(bit: int) -> bool:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


@pytest.mark.parametrize("fstype", FS_TYPES)
def test_full_flow_keeps_data_and_grows(env: NodeEnv, fstype: str) -> None:
    volume = env.create(f"pvc-flow-{fstype}", 1)
    env.attach(volume)
    device = env.device_of(volume)
    assert device.is_block_device() and str(device).startswith("/dev/loop")

    cap = mount_cap(fs_type=fstype)
    staging, target = env.staging(volume), env.target("pod-a")
    env.stage(volume, staging, cap)
    env.stage(volume, staging, cap)  # idempotent
    assert MountTable().mounts_at(staging)[-1].fstype == fstype
    env.publish(volume, staging, target, cap)
    env.publish(volume, staging, target, cap)  # idempotent
    (target / "hello.txt").write_text("survives restage")
    env.unpublish(volume, target)
    env.unpublish(volume, target)  # idempotent
    assert not target.exists()
    env.unstage(volume, staging)
    env.unstage(volume, staging)  # idempotent
    assert not MountTable().is_mounted(staging)

    env.stage(volume, staging, cap)  # no reformat: the file is still there
    env.publish(volume, staging, target, cap)
    assert (target / "hello.txt").read_text() == "survives restage"

    env.unpublish(volume, target)
    env.unstage(volume, staging)
    env.detach(volume)
    assert not device.exists() or not (env.by_id / f"virtio-{volume[:20]}").exists()


@pytest.mark.parametrize("fstype", FS_TYPES)
def test_expand_grows_the_mounted_filesystem(env: NodeEnv, fstype: str) -> None:
    if fstype.startswith("ext") and not has_capability(CAP_SYS_RESOURCE):
        pytest.skip("online ext4 resize needs CAP_SYS_RESOURCE, which this sandbox lacks "
                    "(a privileged node plugin has it)")
    volume = env.create(f"pvc-grow-{fstype}", 1)
    env.attach(volume)
    cap = mount_cap(fs_type=fstype)
    staging, target = env.staging(volume), env.target("pod-g")
    env.stage(volume, staging, cap)
    env.publish(volume, staging, target, cap)
    before = fs_size(target)
    env.csi.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GIB),
            volume_capability=cap), timeout=30)
    expanded = env.node.NodeExpandVolume(
        csi_pb2.NodeExpandVolumeRequest(volume_id=volume, volume_path=str(target),
                                        staging_target_path=str(staging)), timeout=60)
    assert expanded.capacity_bytes == 2 * GIB
    assert fs_size(target) > before * 1.7

    stats = env.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume, volume_path=str(target)), timeout=30)
    by_unit = {u.unit: u for u in stats.usage}
    assert by_unit[csi_pb2.VolumeUsage.BYTES].total > GIB
    assert by_unit[csi_pb2.VolumeUsage.INODES].total > 0
    assert not stats.volume_condition.abnormal



def test_block_volume_is_published_as_a_device_file(env: NodeEnv) -> None:
    volume = env.create("pvc-block", 1)
    cap = block_cap()
    env.attach(volume, cap)
    staging, target = env.staging(volume), env.kubelet / "pods" / "pod-b" / "dev" / volume
    env.stage(volume, staging, cap)
    env.publish(volume, staging, target, cap)
    payload = os.urandom(4096)
    with target.open("r+b") as handle:
        handle.write(payload)
        handle.flush()
        os.fsync(handle.fileno())
    with env.device_of(volume).open("rb") as handle:
        assert handle.read(4096) == payload
    env.unpublish(volume, target)
    assert not target.exists()
    env.unstage(volume, staging)


def test_readonly_publish_refuses_writes(env: NodeEnv) -> None:
    volume = env.create("pvc-ro", 1)
    env.attach(volume)
    staging, target = env.staging(volume), env.target("pod-ro")
    env.stage(volume, staging)
    env.publish(volume, staging, target, readonly=True)
    with pytest.raises(OSError):
        (target / "x").write_text("no")


def test_device_with_other_filesystem_is_refused_unchanged(env: NodeEnv) -> None:
    require_tools(*XFS)
    volume = env.create("pvc-other-fs", 1)
    env.attach(volume)
    device = env.device_of(volume)
    subprocess.run(["mkfs.xfs", "-q", "-K", str(device)], check=True, timeout=60)
    before = sha256(device)
    error = expect_code(C.FAILED_PRECONDITION,
                        lambda: env.stage(volume, env.staging(volume), mount_cap(fs_type="ext4")))
    assert "xfs" in error.details()
    assert sha256(device) == before


def test_device_of_another_volume_is_refused_unchanged(env: NodeEnv) -> None:
    mine = env.create("pvc-mine", 1)
    other = env.create("pvc-other", 1)
    env.attach(mine)
    env.attach(other)
    other_device = env.device_of(other)
    before = sha256(other_device)
    # A by-id link naming `mine` that points at the other volume's device: a mix-up.
    link = env.by_id / f"virtio-{mine[:20]}"
    link.unlink()
    link.symlink_to(other_device)
    expect_code(C.FAILED_PRECONDITION, lambda: env.stage(mine, env.staging(mine)))
    assert sha256(other_device) == before


def test_missing_device_is_a_clear_error_within_the_deadline(env: NodeEnv) -> None:
    volume = env.create("pvc-unattached", 1)  # never attached: no device
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        env.stage(volume, env.staging(volume), timeout=5)
    assert time.monotonic() - started < 6
    assert info.value.code() in (C.NOT_FOUND, C.DEADLINE_EXCEEDED)
    if info.value.code() == C.NOT_FOUND:
        assert "virtio-" in info.value.details()


@pytest.mark.parametrize(
    "path", ["/etc/cinder-csi-should-never-mount-here", "relative/path", "../../../etc"]
)
def test_paths_outside_kubelet_root_are_invalid(env: NodeEnv, path: str) -> None:
    volume = env.create("pvc-path", 1)
    expect_code(C.INVALID_ARGUMENT, lambda: env.node.NodeStageVolume(
        csi_pb2.NodeStageVolumeRequest(volume_id=volume, staging_target_path=path,
                                       volume_capability=mount_cap()), timeout=10))
    expect_code(C.INVALID_ARGUMENT, lambda: env.node.NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=volume, staging_target_path=str(env.staging(volume)), target_path=path,
            volume_capability=mount_cap()), timeout=10))


def test_concurrent_stage_calls_abort_all_but_one(env: NodeEnv) -> None:
    volume = env.create("pvc-concurrent", 1)
    env.attach(volume)
    staging = env.staging(volume)
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def stage() -> None:
        barrier.wait()
        try:
            env.stage(volume, staging)
            code = C.OK
        except grpc.RpcError as exc:
            code = exc.code()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=stage) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert codes.count(C.OK) >= 1
    assert set(codes) <= {C.OK, C.ABORTED}
    assert C.ABORTED in codes
    assert len(MountTable().mounts_at(staging)) == 1


def test_node_info_reports_id_zone_and_a_real_limit(env: NodeEnv) -> None:
    info = env.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10)
    assert info.node_id == env.server_id
    assert info.max_volumes_per_node > 0
    assert info.accessible_topology.segments["topology.cinder.csi.openstack.org/zone"] == "az-a"


def test_stats_report_a_vanished_device_as_abnormal_or_missing(env: NodeEnv) -> None:
    volume = env.create("pvc-stats", 1)
    env.attach(volume)
    staging, target = env.staging(volume), env.target("pod-s")
    env.stage(volume, staging)
    env.publish(volume, staging, target)
    expect_code(C.NOT_FOUND, lambda: env.node.NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume,
                                          volume_path=str(env.target("nowhere"))), timeout=10))
