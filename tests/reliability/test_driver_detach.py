"""Detach that completes: a server deleted from Nova while Cinder still lists its attachment
(Nova's clean-up failed) must not leave ControllerUnpublish waiting for its deadline on every
retry (upstream cloud-provider-openstack #1003, #2553)."""

from __future__ import annotations

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.csi_helpers import create_request, mount_cap
from tests.reliability.driver_env import (
    PluginProcess,
    audit,
    empty_cloud_after_each,
    module_controller,
    module_standin,
    outcome,
    specific,
)

C = grpc.StatusCode

standin = module_standin("detach")
plugin = module_controller("detach")
empty_cloud = empty_cloud_after_each()


def published(plugin: PluginProcess, standin: OpenStackStandIn, name: str) -> tuple[str, str]:
    server = standin.add_server(f"{name}-node", "az-a")
    volume = plugin.controller.CreateVolume(create_request(name), timeout=20).volume.volume_id
    plugin.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume, node_id=server, volume_capability=mount_cap()), timeout=20)
    return volume, server


@pytest.mark.parametrize("with_node_id", [True, False])
def test_unpublish_from_a_deleted_server_removes_cinders_attachment(
    standin: OpenStackStandIn, plugin: PluginProcess, with_node_id: bool
) -> None:
    volume, server = published(plugin, standin, f"pvc-gone-{with_node_id}")
    standin.delete_server(server, orphan_attachments=True)
    assert [a["server_id"] for a in standin.attachments()] == [server]
    request = csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume, node_id=server if with_node_id else "")
    result = specific(outcome(lambda: plugin.controller.ControllerUnpublishVolume(
        request, timeout=8)))
    assert result.ok, result
    volumes = audit(standin, {f"pvc-gone-{with_node_id}": 1})
    assert [v["status"] for v in volumes] == ["available"]
    # Idempotent, and the volume can be deleted now.
    assert outcome(lambda: plugin.controller.ControllerUnpublishVolume(request, timeout=8)).ok


def test_volume_of_a_deleted_server_can_move_to_another_node(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    volume, server = published(plugin, standin, "pvc-move")
    standin.delete_server(server, orphan_attachments=True)
    other = standin.add_server("node-other", "az-a")
    publish = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume, node_id=other, volume_capability=mount_cap())
    refused = specific(outcome(lambda: plugin.controller.ControllerPublishVolume(
        publish, timeout=8)))
    assert refused.code == C.FAILED_PRECONDITION and server in refused.details, refused
    # The attach/detach controller detaches from the dead node first (its VolumeAttachment).
    assert outcome(lambda: plugin.controller.ControllerUnpublishVolume(
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume, node_id=server),
        timeout=8)).ok
    moved = specific(outcome(lambda: plugin.controller.ControllerPublishVolume(
        publish, timeout=20)))
    assert moved.ok, moved
    audit(standin, {"pvc-move": 1}, attachments=[("pvc-move", other)])


def test_a_server_nova_still_has_is_detached_through_nova(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    volume, server = published(plugin, standin, "pvc-normal")
    before = len([r for r in standin.requests() if "/attachments/" in r.path])
    assert outcome(lambda: plugin.controller.ControllerUnpublishVolume(
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume, node_id=server),
        timeout=20)).ok
    after = len([r for r in standin.requests() if "/attachments/" in r.path])
    assert after == before, "Cinder's attachment was removed behind a live server's back"
    audit(standin, {"pvc-normal": 1})
