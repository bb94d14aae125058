"""Identity and ControllerGetCapabilities of the real controller process on the real cloud."""

from __future__ import annotations

import pytest

from cinder_csi import DEFAULT_DRIVER_NAME, version
from cinder_csi.csi import csi_pb2
from tests.real.controller_process import ControllerProcess

pytestmark = pytest.mark.real

Cap = csi_pb2.ControllerServiceCapability.RPC.Type
Service = csi_pb2.PluginCapability.Service.Type


def test_plugin_info_names_the_upstream_driver(controller: ControllerProcess) -> None:
    info = controller.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
    assert info.name == DEFAULT_DRIVER_NAME == "cinder.csi.openstack.org"
    assert info.vendor_version == version()


def test_plugin_capabilities_offer_the_controller_service(controller: ControllerProcess) -> None:
    caps = controller.identity.GetPluginCapabilities(
        csi_pb2.GetPluginCapabilitiesRequest(), timeout=10).capabilities
    services = {c.service.type for c in caps if c.HasField("service")}
    assert services == {Service.CONTROLLER_SERVICE, Service.VOLUME_ACCESSIBILITY_CONSTRAINTS}


def test_probe_is_ready_when_real_cinder_accepts_the_credentials(
        controller: ControllerProcess) -> None:
    response = controller.identity.Probe(csi_pb2.ProbeRequest(), timeout=30)
    assert response.HasField("ready") and response.ready.value is True


def test_controller_capabilities_are_the_ones_this_tier_covers(
        controller: ControllerProcess) -> None:
    response = controller.controller.ControllerGetCapabilities(
        csi_pb2.ControllerGetCapabilitiesRequest(), timeout=10)
    offered = {c.rpc.type for c in response.capabilities}
    assert offered == {
        Cap.CREATE_DELETE_VOLUME, Cap.PUBLISH_UNPUBLISH_VOLUME, Cap.LIST_VOLUMES, Cap.GET_VOLUME,
        Cap.LIST_VOLUMES_PUBLISHED_NODES, Cap.CREATE_DELETE_SNAPSHOT, Cap.LIST_SNAPSHOTS,
        Cap.CLONE_VOLUME, Cap.EXPAND_VOLUME, Cap.GET_CAPACITY, Cap.PUBLISH_READONLY,
        Cap.SINGLE_NODE_MULTI_WRITER, Cap.VOLUME_CONDITION, Cap.MODIFY_VOLUME,
    }
