"""csi-sanity "Node Service", one test per spec (class = Describe, test = It).

The flows run on real loop devices: the stand-in Nova attaches a volume as a loop device and
the node plugin finds, formats and mounts it. Each group first checks the capability
csi-sanity gates it on.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.sanity.conftest import NodeCaps
from tests.sanity.helpers import (
    IDEMPOTENT_COUNT,
    TEST_VOLUME_EXPAND_SIZE,
    TEST_VOLUME_PARAMETERS,
    TEST_VOLUME_SIZE,
    Mode,
    NodeCap,
    PluginService,
    Resources,
    SanityContext,
    capability,
    expect_error,
    make_create_volume_req,
    plugin_supports,
    unique,
    valid_volume_id,
)

Code = grpc.StatusCode
KNOWN_NODE_CAPS = frozenset({
    NodeCap.UNKNOWN, NodeCap.STAGE_UNSTAGE_VOLUME, NodeCap.GET_VOLUME_STATS,
    NodeCap.EXPAND_VOLUME, NodeCap.VOLUME_CONDITION, NodeCap.SINGLE_NODE_MULTI_WRITER,
    NodeCap.VOLUME_MOUNT_GROUP,
})
MOCK_DEVICE = {"device": "/dev/mock"}  # csi-sanity's publish context in the stage specs

ROOT = pytest.mark.root  # loop devices, mkfs and mount


# --- csi-sanity's building blocks for the node specs -----------------------------------------


def create_volume(r: Resources, name: str, cap: csi_pb2.VolumeCapability | None = None
                  ) -> csi_pb2.CreateVolumeResponse:
    request = make_create_volume_req(name)
    if cap is not None:
        del request.volume_capabilities[:]
        request.volume_capabilities.append(cap)
    return r.must_create_volume(request)


def controller_publish(r: Resources, caps: NodeCaps, volume: csi_pb2.CreateVolumeResponse,
                       node_id: str, cap: csi_pb2.VolumeCapability | None = None
                       ) -> csi_pb2.ControllerPublishVolumeResponse | None:
    if not caps.controller_publish:
        return None
    return r.must_controller_publish_volume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume.volume_id, node_id=node_id,
        volume_capability=cap or capability(), volume_context=volume.volume.volume_context,
        readonly=False,
    ))


def node_stage(r: Resources, caps: NodeCaps, volume: csi_pb2.CreateVolumeResponse,
               published: csi_pb2.ControllerPublishVolumeResponse | None,
               cap: csi_pb2.VolumeCapability | None = None) -> None:
    if not caps.node_stage:
        return
    r.sc.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id=volume.volume.volume_id, volume_capability=cap or capability(),
        staging_target_path=r.sc.staging_path, volume_context=volume.volume.volume_context,
        publish_context=published.publish_context if published is not None else {},
    ))


def node_publish(r: Resources, caps: NodeCaps, volume: csi_pb2.CreateVolumeResponse,
                 published: csi_pb2.ControllerPublishVolumeResponse | None,
                 cap: csi_pb2.VolumeCapability | None = None,
                 target: str | None = None) -> None:
    r.sc.node.NodePublishVolume(csi_pb2.NodePublishVolumeRequest(
        volume_id=volume.volume.volume_id, target_path=target or r.sc.target,
        staging_target_path=r.sc.staging_path if caps.node_stage else "",
        volume_capability=cap or capability(), volume_context=volume.volume.volume_context,
        publish_context=published.publish_context if published is not None else {},
    ))


def staged_and_published(r: Resources, caps: NodeCaps, name: str,
                         cap: csi_pb2.VolumeCapability | None = None
                         ) -> tuple[csi_pb2.CreateVolumeResponse,
                                    csi_pb2.ControllerPublishVolumeResponse | None]:
    volume = create_volume(r, name, cap)
    node_id = r.node_id()
    published = controller_publish(r, caps, volume, node_id, cap)
    node_stage(r, caps, volume, published, cap)
    node_publish(r, caps, volume, published, cap)
    return volume, published


def node_flow(r: Resources, caps: NodeCaps, count: int) -> None:
    """csi-sanity's runControllerTest, then the way back down (which csi-sanity leaves to
    its cleanup), each node step `count` times:

    CreateVolume -> ControllerPublishVolume (node id from NodeGetInfo) -> NodeStageVolume
    -> NodePublishVolume -> NodeGetVolumeStats -> NodeExpandVolume (publish path)
    -> NodeUnpublishVolume -> NodeUnstageVolume -> ControllerUnpublishVolume -> DeleteVolume
    """
    sc = r.sc
    info = sc.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert info.node_id
    request = csi_pb2.CreateVolumeRequest(
        name=unique(f"sanity-node-full-{count}"), volume_capabilities=[capability()],
        capacity_range=csi_pb2.CapacityRange(required_bytes=TEST_VOLUME_SIZE),
        parameters=TEST_VOLUME_PARAMETERS,
    )
    if info.HasField("accessible_topology"):  # topology is honoured when the driver has one
        request.accessibility_requirements.requisite.append(info.accessible_topology)
    volume = r.must_create_volume(request)
    volume_id = volume.volume.volume_id

    published = None
    if caps.controller_publish:
        published = r.controller_publish_volume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=info.node_id, volume_capability=capability(),
            volume_context=volume.volume.volume_context, readonly=False,
        ))
        assert published is not None
    for _ in range(count):
        node_stage(r, caps, volume, published)
    for _ in range(count):
        node_publish(r, caps, volume, published)

    if caps.node_volume_stats:
        stats = sc.node.NodeGetVolumeStats(csi_pb2.NodeGetVolumeStatsRequest(
            volume_id=volume_id, volume_path=sc.target))
        assert len(stats.usage) > 0, f"no usage in {stats}"
    if caps.node_expansion:
        for _ in range(count):
            sc.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
                volume_id=volume_id, volume_path=sc.target, volume_capability=capability()))

    for _ in range(count):
        sc.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume_id, target_path=sc.target))
    if caps.node_stage:
        for _ in range(count):
            sc.node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                volume_id=volume_id, staging_target_path=sc.staging_path))
    if caps.controller_publish:
        for _ in range(count):
            sc.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
                volume_id=volume_id, node_id=info.node_id))
    r.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id))


# --- the node endpoint's Identity, as csi-sanity's Node Service BeforeEach reads it -----------
def test_node_identity_provides_controller_service(sc: SanityContext) -> None:
    assert plugin_supports(sc.identity, PluginService.CONTROLLER_SERVICE)


# === Node Service ============================================================================


class TestNodeGetCapabilities:
    def test_should_return_appropriate_capabilities(self, sc: SanityContext) -> None:
        response = sc.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
        assert response is not None
        for cap in response.capabilities:
            assert cap.HasField("rpc")
            assert cap.rpc.type in KNOWN_NODE_CAPS, f"Unknown capability: {cap.rpc.type}"


class TestNodeGetInfo:
    def test_should_return_appropriate_values(self, sc: SanityContext) -> None:
        accessibility = plugin_supports(
            sc.identity, PluginService.VOLUME_ACCESSIBILITY_CONSTRAINTS)
        info = sc.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        assert info is not None
        assert info.node_id
        assert info.max_volumes_per_node >= 0
        if accessibility:
            assert info.HasField("accessible_topology")


class TestNodePublishVolume:
    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest()))

    def test_should_fail_when_no_target_path_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(volume_id=valid_volume_id())))

    def test_should_fail_when_no_volume_capability_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(volume_id=valid_volume_id(), target_path=sc.target)))

    # Describe "with single node multi writer capability"
    @ROOT
    def test_should_fail_when_volume_with_single_node_single_writer_access_mode_is_already_mounted_at_a_different_target_path(  # noqa: E501
        self, r: Resources, node_caps: NodeCaps
    ) -> None:
        if not node_caps.single_node_multi_writer:
            pytest.skip("Service does not have single node multi writer capability")
        cap = capability(Mode.SINGLE_NODE_SINGLE_WRITER)
        volume, published = staged_and_published(
            r, node_caps, unique("sanity-node-publish-single-node-single-writer"), cap)
        other = r.sc.target_path + "/other_target"
        try:
            expect_error(Code.FAILED_PRECONDITION,
                         lambda: node_publish(r, node_caps, volume, published, cap, other))
        finally:
            # csi-sanity's cleanup knows only <mount>/target: undo a wrong success here.
            if os.path.exists(other):
                r.sc.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
                    volume_id=volume.volume.volume_id, target_path=other))


class TestNodeUnpublishVolume:
    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest()))

    def test_should_fail_when_no_target_path_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=valid_volume_id())))

    @ROOT
    def test_should_remove_target_path(self, r: Resources, node_caps: NodeCaps) -> None:
        volume, _ = staged_and_published(r, node_caps, unique("sanity-node-unpublish-volume"))
        target = Path(r.sc.target)
        assert target.exists(), f"{target} should have been created by the CSI driver"
        r.sc.node.NodeUnpublishVolume(csi_pb2.NodeUnpublishVolumeRequest(
            volume_id=volume.volume.volume_id, target_path=str(target)))
        assert not target.exists(), (
            f"{target} should have been removed by the CSI driver during NodeUnpublishVolume")


class TestNodeStageVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, node_caps: NodeCaps) -> None:
        if not node_caps.node_stage:
            pytest.skip("NodeStageVolume not supported")

    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                staging_target_path=sc.staging_path, volume_capability=capability(),
                publish_context=MOCK_DEVICE)))

    def test_should_fail_when_no_staging_target_path_is_provided(
        self, sc: SanityContext
    ) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=valid_volume_id(), volume_capability=capability(),
                publish_context=MOCK_DEVICE)))

    def test_should_fail_when_no_volume_capability_is_provided(self, r: Resources) -> None:
        volume = r.must_create_volume(make_create_volume_req(unique("sanity-node-stage-nocaps")))
        expect_error(Code.INVALID_ARGUMENT, lambda: r.sc.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume.volume.volume_id, staging_target_path=r.sc.staging_path,
                publish_context=MOCK_DEVICE)))


class TestNodeUnstageVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, node_caps: NodeCaps) -> None:
        if not node_caps.node_stage:
            pytest.skip("NodeUnstageVolume not supported")

    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(staging_target_path=sc.staging_path)))

    def test_should_fail_when_no_staging_target_path_is_provided(
        self, sc: SanityContext
    ) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id=valid_volume_id())))


RELATIVE_PATH_BUG = (
    "bug: {rpc} answers INVALID_ARGUMENT ('must be an absolute path') for csi-sanity's "
    "volume_path 'some/path'; csi-sanity expects NOT_FOUND"
)


class TestNodeGetVolumeStats:
    @pytest.fixture(autouse=True)
    def _gate(self, node_caps: NodeCaps) -> None:
        if not node_caps.node_volume_stats:
            pytest.skip("NodeGetVolume not supported")

    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_path="some/path")))

    def test_should_fail_when_no_volume_path_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=valid_volume_id())))
    def test_should_fail_when_volume_is_not_found(self, sc: SanityContext) -> None:
        expect_error(Code.NOT_FOUND, lambda: sc.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=valid_volume_id(),
                                              volume_path="some/path")))

    @ROOT
    def test_should_fail_when_volume_does_not_exist_on_the_specified_path(
        self, r: Resources, node_caps: NodeCaps
    ) -> None:
        volume, _ = staged_and_published(r, node_caps, unique("sanity-node-get-volume-stats"))
        expect_error(Code.NOT_FOUND, lambda: r.sc.node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume.volume.volume_id,
                                              volume_path="some/path")))


class TestNodeExpandVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, node_caps: NodeCaps) -> None:
        if not node_caps.node_expansion:
            pytest.skip("NodeExpandVolume not supported")

    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.node.NodeExpandVolume(
            csi_pb2.NodeExpandVolumeRequest(volume_path=sc.target_path,
                                            volume_capability=capability())))

    def test_should_fail_when_no_volume_path_is_provided(self, r: Resources) -> None:
        volume = create_volume(r, unique("sanity-node-expand-volume-valid-id"))
        expect_error(Code.INVALID_ARGUMENT, lambda: r.sc.node.NodeExpandVolume(
            csi_pb2.NodeExpandVolumeRequest(volume_id=volume.volume.volume_id,
                                            volume_capability=capability())))
    def test_should_fail_when_volume_is_not_found(self, sc: SanityContext) -> None:
        expect_error(Code.NOT_FOUND, lambda: sc.node.NodeExpandVolume(
            csi_pb2.NodeExpandVolumeRequest(volume_id=valid_volume_id(),
                                            volume_path="some/path")))

    @ROOT
    def test_should_work_if_node_expand_is_called_after_node_publish(
        self, r: Resources, node_caps: NodeCaps
    ) -> None:
        name = unique("sanity-node-expand-volume")
        volume = create_volume(r, name)
        if node_caps.controller_expansion:
            response = r.sc.controller.ControllerExpandVolume(
                csi_pb2.ControllerExpandVolumeRequest(
                    volume_id=volume.volume.volume_id,
                    capacity_range=csi_pb2.CapacityRange(required_bytes=TEST_VOLUME_EXPAND_SIZE)))
            assert response.capacity_bytes == TEST_VOLUME_EXPAND_SIZE
        published = controller_publish(r, node_caps, volume, r.node_id())
        node_stage(r, node_caps, volume, published)
        node_publish(r, node_caps, volume, published)
        r.sc.node.NodeExpandVolume(csi_pb2.NodeExpandVolumeRequest(
            volume_id=volume.volume.volume_id, volume_path=r.sc.target,
            capacity_range=csi_pb2.CapacityRange(required_bytes=TEST_VOLUME_EXPAND_SIZE)))


# The two flows sit directly in csi-sanity's "Node Service" Describe.


@ROOT
def test_should_work(r: Resources, node_caps: NodeCaps) -> None:
    if not node_caps.provides_controller_service:
        pytest.skip("Controller Service not provided: CreateVolume not supported")
    node_flow(r, node_caps, 1)


@ROOT
def test_should_be_idempotent(r: Resources, node_caps: NodeCaps) -> None:
    if not node_caps.provides_controller_service:
        pytest.skip("Controller Service not provided: CreateVolume not supported")
    node_flow(r, node_caps, IDEMPOTENT_COUNT)
