"""ControllerPublish/Unpublish through real Nova to the rig's servers; Cinder and Nova must both
agree afterwards. (The fake virt driver attaches without a host device, so no node plugin.)"""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import Mode, create_request, expect_code, mount_cap
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger
from tests.real.controller_process import ControllerProcess
from tests.real.env import RealEnv

pytestmark = pytest.mark.real

CALL_S = 180
MISSING = "6a0e9b45-0000-4000-8000-0000000000bb"


def publish(controller: ControllerProcess, volume_id: str, node_id: str, *,
            readonly: bool = False, cap: Any = None) -> Any:
    return controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=node_id, volume_capability=cap or mount_cap(),
        readonly=readonly), timeout=CALL_S)


def unpublish(controller: ControllerProcess, volume_id: str, node_id: str = "") -> None:
    controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume_id, node_id=node_id), timeout=CALL_S)


def new_volume(controller: ControllerProcess, ledger: Ledger, label: str) -> str:
    volume = controller.controller.CreateVolume(create_request(ledger.name(label), 1),
                                                timeout=CALL_S).volume
    return ledger.track(volume.volume_id)


def test_publish_and_unpublish_through_nova(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: RealEnv) -> None:
    volume_id = new_volume(controller, ledger, "attach")
    node0, node1 = real.server_id("node-0"), real.server_id("node-1")

    answer = publish(controller, volume_id, node0)
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.status == "in-use"
    assert cloud.attached_servers(volume) == {node0}
    assert volume_id in cloud.server_volume_ids(node0)
    (attachment,) = volume.attachments
    assert answer.publish_context["DevicePath"] == attachment["device"]
    assert publish(controller, volume_id, node0).publish_context == answer.publish_context

    listed = {e.volume.volume_id: list(e.status.published_node_ids) for e in
              controller.controller.ListVolumes(csi_pb2.ListVolumesRequest(),
                                                timeout=CALL_S).entries}
    assert listed[volume_id] == [node0]
    got = controller.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id), timeout=CALL_S)
    assert list(got.status.published_node_ids) == [node0]

    # Not multiattach: a second node is refused, and nothing changes in Nova.
    error = expect_code(grpc.StatusCode.FAILED_PRECONDITION,
                        lambda: publish(controller, volume_id, node1))
    assert node0 in error.details()
    assert volume_id not in cloud.server_volume_ids(node1)
    expect_code(grpc.StatusCode.FAILED_PRECONDITION, lambda: publish(
        controller, volume_id, node0, cap=mount_cap(Mode.MULTI_NODE_MULTI_WRITER)))

    unpublish(controller, volume_id, node0)
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.status == "available" and not volume.attachments
    assert volume_id not in cloud.server_volume_ids(node0)
    unpublish(controller, volume_id, node0)  # already detached: still OK
    unpublish(controller, volume_id, node1)  # never attached there: OK


def test_unpublish_without_a_node_detaches_everywhere(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: RealEnv) -> None:
    volume_id = new_volume(controller, ledger, "anynode")
    node1 = real.server_id("node-1")
    publish(controller, volume_id, node1)
    assert volume_id in cloud.server_volume_ids(node1)
    unpublish(controller, volume_id)
    assert volume_id not in cloud.server_volume_ids(node1)
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.status == "available"


def test_readonly_publication_is_remembered_until_unpublished(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: RealEnv) -> None:
    volume_id = new_volume(controller, ledger, "readonly")
    node0 = real.server_id("node-0")
    publish(controller, volume_id, node0, readonly=True)
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.status == "in-use"
    assert any(node0 in key for key in volume.metadata)
    expect_code(grpc.StatusCode.ALREADY_EXISTS,
                lambda: publish(controller, volume_id, node0, readonly=False))
    unpublish(controller, volume_id, node0)
    volume = cloud.volume(volume_id)
    assert volume is not None and not any(node0 in key for key in volume.metadata)
    publish(controller, volume_id, node0, readonly=False)
    unpublish(controller, volume_id, node0)


def test_publish_to_what_does_not_exist_is_not_found(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: RealEnv) -> None:
    volume_id = new_volume(controller, ledger, "ghost-node")
    error = expect_code(grpc.StatusCode.NOT_FOUND, lambda: publish(controller, volume_id, MISSING))
    assert MISSING in error.details()
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.status == "available"
    error = expect_code(grpc.StatusCode.NOT_FOUND,
                        lambda: publish(controller, MISSING, real.server_id("node-0")))
    assert MISSING in error.details()
