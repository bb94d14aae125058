"""`cinder-csi sandbox` as a newcomer runs it: separate processes, real sockets, real devices.

The whole volume flow goes through the controller and node sockets; then SIGTERM must leave no
mount, no loop device and no process behind, and the cloud password must be in no log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from tests.e2e.sandbox_helpers import RunningSandbox, running_sandbox, stop_sandbox
from tests.integration.csi_helpers import create_request, mount_cap
from tests.integration.node_env import loop_devices_backed_by


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[RunningSandbox]:
    with running_sandbox(tmp_path) as running:
        yield running



def test_sandbox_prints_its_endpoints_and_ready(sandbox: RunningSandbox) -> None:
    text = "\n".join(sandbox.output)
    assert f"state directory: {sandbox.state_dir}" in text
    assert re.search(r"controller: unix://.*controller\.sock", text)
    for name in ("cloud.conf", "clouds.yaml", "controller.sock", "node-0.sock", "node-1.sock"):
        assert (sandbox.state_dir / name).exists(), name
    assert (sandbox.state_dir / "logs" / "controller.log").exists()


@pytest.mark.root
def test_volume_flow_through_the_sandbox_then_clean_shutdown(sandbox: RunningSandbox) -> None:
    with sandbox.channel("controller.sock") as cc, sandbox.channel("node-0.sock") as nc:
        controller = csi_pb2_grpc.ControllerStub(cc)
        node = csi_pb2_grpc.NodeStub(nc)
        node_id = node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10).node_id
        volume = controller.CreateVolume(create_request("pvc-sandbox"), timeout=60).volume
        controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume.volume_id, node_id=node_id, volume_capability=mount_cap()),
            timeout=60)
        kubelet = sandbox.state_dir / "kubelet"
        staging = kubelet / "plugins" / "x" / "globalmount"
        target = kubelet / "pods" / "p1" / "mount"
        node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging),
            volume_capability=mount_cap()), timeout=60)
        node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
            volume_id=volume.volume_id, staging_target_path=str(staging),
            target_path=str(target), volume_capability=mount_cap()), timeout=60)
        (target / "data").write_text("hello")
        # Leave it mounted and attached: shutdown must clean up after a crash-like stop too.
    assert stop_sandbox(sandbox) == 0
    assert "stopping" in sandbox.output
    assert loop_devices_backed_by(sandbox.state_dir) == []


def test_cloud_password_is_in_no_log(sandbox: RunningSandbox) -> None:
    conf = (sandbox.state_dir / "cloud.conf").read_text()
    password = re.search(r"^password = (.+)$", conf, re.M)
    assert password is not None
    secret = password.group(1)
    with sandbox.channel("controller.sock") as channel:
        controller = csi_pb2_grpc.ControllerStub(channel)
        volume = controller.CreateVolume(
            create_request("pvc-secret", secrets={"password": secret}), timeout=60).volume
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(
            volume_id=volume.volume_id, secrets={"token": secret}), timeout=60)
        with pytest.raises(grpc.RpcError):
            controller.CreateVolume(create_request("", secrets={"password": secret}), timeout=10)
    stop_sandbox(sandbox)
    logs = list((sandbox.state_dir / "logs").iterdir())
    assert logs
    for log in logs:
        assert secret not in log.read_text(errors="replace"), f"password leaked into {log.name}"
    assert secret not in "\n".join(sandbox.output)
    assert os.path.getsize(sandbox.state_dir / "logs" / "controller.log") > 0
