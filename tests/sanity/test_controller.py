"""csi-sanity "Controller Service", "ListSnapshots", "DeleteSnapshot", "CreateSnapshot",
"ExpandVolume" and "ModifyVolume" groups, one test per spec (class = Describe, test = It).

Each group first checks the capability csi-sanity gates it on and skips without it, as
csi-sanity does. Requests carry csi-sanity's defaults (tests/sanity/helpers.py).
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.sanity.helpers import (
    IDEMPOTENT_COUNT,
    INVALID_SNAPSHOT_ID,
    INVALID_VOLUME_ID,
    MAX_NAME_LENGTH,
    TEST_VOLUME_EXPAND_SIZE,
    TEST_VOLUME_MUTABLE_PARAMETERS,
    TEST_VOLUME_PARAMETERS,
    TEST_VOLUME_SIZE,
    ControllerCap,
    Resources,
    SanityContext,
    capability,
    controller_supports,
    expect_error,
    make_controller_publish_req,
    make_create_snapshot_req,
    make_create_volume_req,
    make_expand_volume_req,
    make_modify_volume_req,
    unique,
    unique_with_length,
    valid_node_id,
    valid_volume_id,
    verify_snapshot_info,
    verify_volume_info,
)

Code = grpc.StatusCode
KNOWN_CONTROLLER_CAPS = frozenset({
    ControllerCap.CREATE_DELETE_VOLUME, ControllerCap.PUBLISH_UNPUBLISH_VOLUME,
    ControllerCap.LIST_VOLUMES, ControllerCap.GET_CAPACITY, ControllerCap.CREATE_DELETE_SNAPSHOT,
    ControllerCap.LIST_SNAPSHOTS, ControllerCap.PUBLISH_READONLY, ControllerCap.CLONE_VOLUME,
    ControllerCap.EXPAND_VOLUME, ControllerCap.MODIFY_VOLUME,
    ControllerCap.LIST_VOLUMES_PUBLISHED_NODES, ControllerCap.GET_VOLUME,
    ControllerCap.VOLUME_CONDITION, ControllerCap.SINGLE_NODE_MULTI_WRITER,
})


def require(sc: SanityContext, cap: int, what: str) -> None:
    if not controller_supports(sc.controller, cap):
        pytest.skip(f"{what} not supported")


def create_req(name: str, *, size: int | None = TEST_VOLUME_SIZE, limit: int = 0
               ) -> csi_pb2.CreateVolumeRequest:
    request = csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=[capability()], parameters=TEST_VOLUME_PARAMETERS
    )
    if size is not None:
        request.capacity_range.CopyFrom(
            csi_pb2.CapacityRange(required_bytes=size, limit_bytes=limit)
        )
    return request


def list_volumes(sc: SanityContext, **kwargs: Any) -> csi_pb2.ListVolumesResponse:
    response = sc.controller.ListVolumes(csi_pb2.ListVolumesRequest(**kwargs))
    assert response is not None
    return response


def list_snapshots(sc: SanityContext, **kwargs: Any) -> csi_pb2.ListSnapshotsResponse:
    response = sc.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(**kwargs))
    assert response is not None
    return response


# === Controller Service [Controller Server] ==================================================


class TestControllerGetCapabilities:
    def test_should_return_appropriate_capabilities(self, sc: SanityContext) -> None:
        response = sc.controller.ControllerGetCapabilities(
            csi_pb2.ControllerGetCapabilitiesRequest()
        )
        assert response is not None
        for cap in response.capabilities:
            assert cap.HasField("rpc")
            assert cap.rpc.type in KNOWN_CONTROLLER_CAPS, f"Unknown capability: {cap.rpc.type}"


class TestGetCapacity:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.GET_CAPACITY, "GetCapacity")

    def test_should_return_capacity_no_optional_values_added(self, sc: SanityContext) -> None:
        sc.controller.GetCapacity(csi_pb2.GetCapacityRequest())  # any capacity, even 0


class TestListVolumes:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.LIST_VOLUMES, "ListVolumes")

    def test_should_return_appropriate_values_no_optional_values_added(
        self, sc: SanityContext
    ) -> None:
        for entry in list_volumes(sc).entries:
            verify_volume_info(entry.volume)

    def test_should_fail_when_an_invalid_starting_token_is_passed(self, sc: SanityContext) -> None:
        expect_error(Code.ABORTED, lambda: list_volumes(sc, starting_token="invalid-token"))

    def test_check_the_presence_of_new_volumes_and_absence_of_deleted_ones_in_the_volume_list(
        self, sc: SanityContext, r: Resources
    ) -> None:
        total = len(list_volumes(sc).entries)
        volume = r.must_create_volume(create_req(unique("sanity"), size=None))
        assert len(list_volumes(sc).entries) == total + 1
        r.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume.volume_id))
        assert len(list_volumes(sc).entries) == total
    def test_pagination_should_detect_volumes_added_between_pages_and_accept_tokens_when_the_last_volume_from_a_page_is_deleted(  # noqa: E501
        self, sc: SanityContext, r: Resources
    ) -> None:
        min_vol_count, max_entries = 3, 2
        existing = {e.volume.volume_id: True for e in list_volumes(sc).entries}
        if len(existing) >= min_vol_count:
            min_vol_count = len(existing)
        else:
            for _ in range(len(existing), min_vol_count):
                volume = r.create_volume(create_req(unique("sanity"), size=None))
                existing[volume.volume.volume_id] = True

        first = list_volumes(sc, max_entries=max_entries)
        assert len(first.entries) == max_entries
        next_token = first.next_token

        for entry in first.entries:  # remove every listed volume
            assert existing.get(entry.volume.volume_id), entry.volume.volume_id
            r.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=entry.volume.volume_id))
            existing[entry.volume.volume_id] = False

        added = r.must_create_volume(create_req(unique("new-addition"), size=None))
        existing[added.volume.volume_id] = True

        rest = list_volumes(sc, starting_token=next_token)
        # Volumes may be missing, but there must be no duplicates and no deleted ones.
        assert len(rest.entries) <= min_vol_count - max_entries + 1
        for entry in rest.entries:
            assert existing.get(entry.volume.volume_id), entry.volume.volume_id
            existing[entry.volume.volume_id] = False


class TestCreateVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.CREATE_DELETE_VOLUME, "CreateVolume")

    def test_should_fail_when_no_name_is_provided(self, sc: SanityContext, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: r.create_volume(
            csi_pb2.CreateVolumeRequest(parameters=TEST_VOLUME_PARAMETERS)))

    def test_should_fail_when_no_volume_capabilities_are_provided(
        self, sc: SanityContext, r: Resources
    ) -> None:
        name = unique("sanity-controller-create-no-volume-capabilities")
        expect_error(Code.INVALID_ARGUMENT, lambda: r.create_volume(
            csi_pb2.CreateVolumeRequest(name=name, parameters=TEST_VOLUME_PARAMETERS)))

    def test_should_return_appropriate_values_singlenodewriter_nocapacity(
        self, r: Resources
    ) -> None:
        r.must_create_volume(create_req(unique("sanity-controller-create-single-no-capacity")))

    def test_should_return_appropriate_values_singlenodewriter_withcapacity_1gi(
        self, r: Resources
    ) -> None:
        name = unique("sanity-controller-create-single-with-capacity")
        try:
            response = r.create_volume(create_req(name))
        except grpc.RpcError as exc:
            if exc.code() in (Code.OUT_OF_RANGE, Code.UNIMPLEMENTED):
                pytest.skip("Required bytes not supported")
            raise
        assert response.HasField("volume")
        assert response.volume.volume_id
        capacity = response.volume.capacity_bytes
        assert capacity == 0 or capacity >= TEST_VOLUME_SIZE

    def test_should_not_fail_when_requesting_to_create_a_volume_with_already_existing_name_and_same_capacity(  # noqa: E501
        self, r: Resources
    ) -> None:
        name = unique("sanity-controller-create-twice")
        first = r.must_create_volume(create_req(name))
        assert first.volume.capacity_bytes == 0 or first.volume.capacity_bytes >= TEST_VOLUME_SIZE
        second = r.must_create_volume(create_req(name))
        assert (second.volume.capacity_bytes == 0
                or second.volume.capacity_bytes >= TEST_VOLUME_SIZE)
        assert first.volume.volume_id == second.volume.volume_id

    def test_should_fail_when_requesting_to_create_a_volume_with_already_existing_name_and_different_capacity(  # noqa: E501
        self, r: Resources
    ) -> None:
        name = unique("sanity-controller-create-twice-different")
        r.must_create_volume(create_req(name, limit=TEST_VOLUME_SIZE))
        size2 = 2 * TEST_VOLUME_SIZE
        expect_error(Code.ALREADY_EXISTS, lambda: r.create_volume(
            create_req(name, size=size2, limit=size2)))

    def test_should_not_fail_when_creating_volume_with_maximum_length_name(
        self, r: Resources
    ) -> None:
        name = unique_with_length("sanity-controller-create-maxlen", MAX_NAME_LENGTH)
        assert len(name) == MAX_NAME_LENGTH
        response = r.must_create_volume(create_req(name))
        assert (response.volume.capacity_bytes == 0
                or response.volume.capacity_bytes >= TEST_VOLUME_SIZE)

    def test_should_create_volume_from_an_existing_source_snapshot(
        self, sc: SanityContext, r: Resources
    ) -> None:
        require(sc, ControllerCap.CREATE_DELETE_SNAPSHOT, "Snapshot")
        source = r.must_create_volume(
            make_create_volume_req(unique("sanity-controller-source-vol")))
        snapshot_req = make_create_snapshot_req(
            unique("sanity-controller-snap-from-vol"), source.volume.volume_id
        )
        for _ in range(120):  # csi-sanity repeats the (idempotent) create until ready
            snapshot = r.must_create_snapshot(snapshot_req)
            if snapshot.snapshot.ready_to_use:
                break
            time.sleep(1)
        else:
            pytest.fail(f"snapshot never became ready: {snapshot.snapshot}")

        request = make_create_volume_req(unique("sanity-controller-vol-from-snap"))
        request.volume_content_source.snapshot.snapshot_id = snapshot.snapshot.snapshot_id
        response = r.create_volume(request)
        assert response.volume.HasField("content_source")

    def test_should_fail_when_the_volume_source_snapshot_is_not_found(
        self, sc: SanityContext, r: Resources
    ) -> None:
        require(sc, ControllerCap.CREATE_DELETE_SNAPSHOT, "Snapshot")
        request = make_create_volume_req(unique("sanity-controller-vol-from-snap"))
        request.volume_content_source.snapshot.snapshot_id = "non-existing-snapshot-id"
        expect_error(Code.NOT_FOUND, lambda: r.create_volume(request))

    def test_should_create_volume_from_an_existing_source_volume(
        self, sc: SanityContext, r: Resources
    ) -> None:
        require(sc, ControllerCap.CLONE_VOLUME, "Volume Cloning")
        source = r.must_create_volume(
            make_create_volume_req(unique("sanity-controller-source-vol")))
        request = make_create_volume_req(unique("sanity-controller-vol-from-vol"))
        request.volume_content_source.volume.volume_id = source.volume.volume_id
        r.create_volume(request)

    def test_should_fail_when_the_volume_source_volume_is_not_found(
        self, sc: SanityContext, r: Resources
    ) -> None:
        require(sc, ControllerCap.CLONE_VOLUME, "Volume Cloning")
        request = make_create_volume_req(unique("sanity-controller-vol-from-snap"))
        request.volume_content_source.volume.volume_id = valid_volume_id()
        expect_error(Code.NOT_FOUND, lambda: r.create_volume(request))

    def test_should_create_volume_with_a_volume_attribute_class(
        self, sc: SanityContext, r: Resources
    ) -> None:
        require(sc, ControllerCap.MODIFY_VOLUME, "Modify volume")
        request = make_create_volume_req(unique("sanity-controller-vol-with-mutable-parameters"))
        request.mutable_parameters.update(TEST_VOLUME_MUTABLE_PARAMETERS)
        r.create_volume(request)
    def test_should_not_create_volume_with_an_invalid_volume_attribute_class(
        self, sc: SanityContext, r: Resources
    ) -> None:
        require(sc, ControllerCap.MODIFY_VOLUME, "Modify Volume")
        request = make_create_volume_req(unique("sanity-controller-vol-with-mutable-parameters"))
        request.mutable_parameters["XXX_FakeKey"] = "XXX_FakeValue"
        expect_error(Code.INVALID_ARGUMENT, lambda: r.create_volume(request))


class TestDeleteVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.CREATE_DELETE_VOLUME, "DeleteVolume")

    def test_should_fail_when_no_volume_id_is_provided(self, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT,
                     lambda: r.delete_volume(csi_pb2.DeleteVolumeRequest()))

    def test_should_succeed_when_an_invalid_volume_id_is_used(self, r: Resources) -> None:
        r.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=INVALID_VOLUME_ID))

    def test_should_return_appropriate_values_no_optional_values_added(
        self, r: Resources
    ) -> None:
        volume = r.must_create_volume(create_req(unique("sanity-controller-create-appropriate")))
        r.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume.volume_id))


class TestValidateVolumeCapabilities:
    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest()))

    def test_should_fail_when_no_volume_capabilities_are_provided(
        self, sc: SanityContext, r: Resources
    ) -> None:
        volume = r.must_create_volume(create_req(unique("sanity-controller-validate-nocaps")))
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=volume.volume.volume_id)))

    def test_should_return_appropriate_values_no_optional_values_added(
        self, sc: SanityContext, r: Resources
    ) -> None:
        volume = r.must_create_volume(create_req(unique("sanity-controller-validate")))
        response = sc.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id=volume.volume.volume_id, volume_capabilities=[capability()]
            )
        )
        assert response is not None
        if response.HasField("confirmed"):  # a confirmation must name the capabilities
            assert len(response.confirmed.volume_capabilities) > 0

    def test_should_fail_when_the_requested_volume_does_not_exist(
        self, sc: SanityContext
    ) -> None:
        expect_error(Code.NOT_FOUND, lambda: sc.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id=valid_volume_id(), volume_capabilities=[capability()])))


class TestControllerPublishVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.PUBLISH_UNPUBLISH_VOLUME, "ControllerPublishVolume")

    def test_should_fail_when_no_volume_id_is_provided(self, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: r.controller_publish_volume(
            csi_pb2.ControllerPublishVolumeRequest()))

    def test_should_fail_when_no_node_id_is_provided(self, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: r.controller_publish_volume(
            csi_pb2.ControllerPublishVolumeRequest(volume_id=valid_volume_id())))

    def test_should_fail_when_no_volume_capability_is_provided(self, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: r.controller_publish_volume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=valid_volume_id(), node_id=valid_node_id())))

    def test_should_fail_when_publishing_more_volumes_than_the_node_max_attach_limit(
        self, sc: SanityContext, r: Resources
    ) -> None:
        # csi-sanity runs this only with --csi.testnodevolumeattachlimit.
        info = sc.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        if info.max_volumes_per_node <= 0:
            pytest.skip("No MaxVolumesPerNode")
        node_id = info.node_id
        assert node_id
        for i in range(info.max_volumes_per_node):
            volume = r.must_create_volume(
                make_create_volume_req(unique(f"sanity-max-attach-limit-vol-{i}")))
            r.must_controller_publish_volume(
                make_controller_publish_req(volume.volume.volume_id, node_id))
        extra = r.must_create_volume(
            make_create_volume_req(unique("sanity-max-attach-limit-vol+1")))
        with pytest.raises(grpc.RpcError):
            r.controller_publish_volume(
                make_controller_publish_req(extra.volume.volume_id, node_id))

    def test_should_fail_when_the_volume_does_not_exist(self, r: Resources) -> None:
        expect_error(Code.NOT_FOUND, lambda: r.controller_publish_volume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=valid_volume_id(), node_id=valid_node_id(),
                volume_capability=capability(), readonly=False)))

    def test_should_fail_when_the_node_does_not_exist(self, r: Resources) -> None:
        volume = r.must_create_volume(create_req(unique("sanity-controller-wrong-node"), size=None))
        expect_error(Code.NOT_FOUND, lambda: r.controller_publish_volume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume.volume.volume_id, node_id=valid_node_id(),
                volume_capability=capability(), readonly=False)))

    def test_should_fail_when_the_volume_is_already_published_but_is_incompatible(
        self, sc: SanityContext, r: Resources
    ) -> None:
        require(sc, ControllerCap.PUBLISH_READONLY, "ControllerPublishVolume.readonly field")
        volume = r.must_create_volume(
            create_req(unique("sanity-controller-published-incompatible"), size=None))
        node_id = r.node_id()
        request = csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume.volume.volume_id, node_id=node_id,
            volume_capability=capability(), readonly=False,
        )
        r.must_controller_publish_volume(request)
        request.readonly = True  # publish again with different attributes
        expect_error(Code.ALREADY_EXISTS, lambda: r.controller_publish_volume(request))


def volume_lifecycle(r: Resources, count: int) -> None:
    """csi-sanity's VolumeLifecycle: create, ControllerPublish `count` times, and back."""
    info = r.sc.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert info.node_id
    request = create_req(unique(f"sanity-controller-publish-{count}"), size=None)
    if info.HasField("accessible_topology"):  # honour the driver's topology, as csi-sanity
        request.accessibility_requirements.requisite.append(info.accessible_topology)
    volume = r.must_create_volume(request)
    publish = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume.volume_id, node_id=info.node_id,
        volume_capability=capability(), volume_context=volume.volume.volume_context,
        readonly=False,
    )
    for _ in range(count):
        r.must_controller_publish_volume(publish)
    for _ in range(count):
        r.sc.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume.volume.volume_id, node_id=info.node_id))
    r.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume.volume_id))


class TestVolumeLifecycle:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.PUBLISH_UNPUBLISH_VOLUME,
                "Controller Publish, UnpublishVolume")

    def test_should_work(self, r: Resources) -> None:
        volume_lifecycle(r, 1)

    def test_should_be_idempotent(self, r: Resources) -> None:
        volume_lifecycle(r, IDEMPOTENT_COUNT)


class TestControllerUnpublishVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.PUBLISH_UNPUBLISH_VOLUME, "ControllerUnpublishVolume")

    def test_should_fail_when_no_volume_id_is_provided(self, sc: SanityContext) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest()))


# === ListSnapshots [Controller Server] =======================================================


class TestListSnapshots:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.LIST_SNAPSHOTS, "ListSnapshots")

    def test_should_return_appropriate_values_no_optional_values_added(
        self, sc: SanityContext, r: Resources
    ) -> None:
        for entry in list_snapshots(sc).entries:
            verify_snapshot_info(entry.snapshot)

    def _three(self, r: Resources, tag: str) -> csi_pb2.CreateSnapshotResponse:
        """An unrelated snapshot, the target, and another unrelated one; returns the target."""
        r.must_create_snapshot_from_volume_request(
            make_create_volume_req(unique(f"listSnapshots-volume-unrelated-{tag}-1")),
            unique(f"listSnapshots-snapshot-unrelated-{tag}-1"))
        target, _ = r.must_create_snapshot_from_volume_request(
            make_create_volume_req(unique(f"listSnapshots-volume-target-{tag}")),
            unique(f"listSnapshots-snapshot-target-{tag}"))
        r.must_create_snapshot_from_volume_request(
            make_create_volume_req(unique(f"listSnapshots-volume-unrelated-{tag}-2")),
            unique(f"listSnapshots-snapshot-unrelated-{tag}-2"))
        return target

    def test_should_return_snapshots_that_match_the_specified_snapshot_id(
        self, sc: SanityContext, r: Resources
    ) -> None:
        target = self._three(r, "s")
        response = list_snapshots(sc, snapshot_id=target.snapshot.snapshot_id)
        assert len(response.entries) == 1
        verify_snapshot_info(response.entries[0].snapshot)
        assert response.entries[0].snapshot.snapshot_id == target.snapshot.snapshot_id

    def test_should_return_empty_when_the_specified_snapshot_id_does_not_exist(
        self, sc: SanityContext
    ) -> None:
        assert list(list_snapshots(sc, snapshot_id="none-exist-id").entries) == []

    def test_should_return_snapshots_that_match_the_specified_source_volume_id(
        self, sc: SanityContext, r: Resources
    ) -> None:
        target = self._three(r, "v")
        response = list_snapshots(sc, source_volume_id=target.snapshot.source_volume_id)
        assert len(response.entries) == 1
        snapshot = response.entries[0].snapshot
        verify_snapshot_info(snapshot)
        assert snapshot.source_volume_id == target.snapshot.source_volume_id

    def test_should_return_empty_when_the_specified_source_volume_id_does_not_exist(
        self, sc: SanityContext
    ) -> None:
        assert list(list_snapshots(sc, source_volume_id=valid_volume_id()).entries) == []

    def test_check_the_presence_of_new_snapshots_in_the_snapshot_list(
        self, sc: SanityContext, r: Resources
    ) -> None:
        total = len(list_snapshots(sc).entries)
        snapshot, _ = r.must_create_snapshot_from_volume_request(
            make_create_volume_req(unique("listSnapshots-volume-3")),
            unique("listSnapshots-snapshot-3"))
        verify_snapshot_info(snapshot.snapshot)
        assert len(list_snapshots(sc).entries) == total + 1
        r.delete_snapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot.snapshot_id))
        assert len(list_snapshots(sc).entries) == total

    def test_should_return_next_token_when_a_limited_number_of_entries_are_requested(
        self, sc: SanityContext, r: Resources
    ) -> None:
        min_snapshot_count, max_entries = 5, 2
        total = len(list_snapshots(sc).entries)
        if total < min_snapshot_count:
            for i in range(1, min_snapshot_count - total + 1):
                snapshot, _ = r.must_create_snapshot_from_volume_request(
                    make_create_volume_req(unique(f"volume{i}")), unique(f"snapshot{i}"))
                verify_snapshot_info(snapshot.snapshot)
            total = min_snapshot_count

        first = list_snapshots(sc, max_entries=max_entries)
        assert len(first.entries) == max_entries
        rest = list_snapshots(sc, starting_token=first.next_token)
        # Without max_entries, everything that is left comes at once.
        assert len(rest.entries) == total - max_entries


# === DeleteSnapshot [Controller Server] ======================================================


class TestDeleteSnapshot:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.CREATE_DELETE_SNAPSHOT, "DeleteSnapshot")

    def test_should_fail_when_no_snapshot_id_is_provided(self, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT,
                     lambda: r.delete_snapshot(csi_pb2.DeleteSnapshotRequest()))

    def test_should_succeed_when_an_invalid_snapshot_id_is_used(self, r: Resources) -> None:
        r.delete_snapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=INVALID_SNAPSHOT_ID))

    def test_should_return_appropriate_values_no_optional_values_added(
        self, r: Resources
    ) -> None:
        volume = r.create_volume(make_create_volume_req(unique("DeleteSnapshot-volume-1")))
        r.must_create_snapshot(make_create_snapshot_req(
            unique("DeleteSnapshot-snapshot-1"), volume.volume.volume_id))
        # The snapshot is deleted by the cleanup, as in csi-sanity.


# === CreateSnapshot [Controller Server] ======================================================


class TestCreateSnapshot:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.CREATE_DELETE_SNAPSHOT, "CreateSnapshot")

    def test_should_fail_when_no_name_is_provided(self, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: r.create_snapshot(
            csi_pb2.CreateSnapshotRequest(source_volume_id="testId")))

    def test_should_fail_when_no_source_volume_id_is_provided(self, r: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: r.create_snapshot(
            csi_pb2.CreateSnapshotRequest(name="name")))

    def test_should_succeed_when_requesting_to_create_a_snapshot_with_already_existing_name_and_same_source_volume_id(  # noqa: E501
        self, r: Resources
    ) -> None:
        volume = r.must_create_volume(make_create_volume_req(unique("CreateSnapshot-volume-1")))
        request = make_create_snapshot_req(
            unique("CreateSnapshot-snapshot-1"), volume.volume.volume_id)
        r.must_create_snapshot(request)
        r.must_create_snapshot(request)

    def test_should_fail_when_requesting_to_create_a_snapshot_with_already_existing_name_and_different_source_volume_id(  # noqa: E501
        self, r: Resources
    ) -> None:
        name = unique("CreateSnapshot-snapshot-2")
        r.must_create_snapshot_from_volume_request(
            make_create_volume_req(unique("CreateSnapshot-volume-2")), name)
        other = r.must_create_volume(make_create_volume_req(unique("CreateSnapshot-volume-3")))
        expect_error(Code.ALREADY_EXISTS, lambda: r.create_snapshot(
            make_create_snapshot_req(name, other.volume.volume_id)))

    def test_should_succeed_when_creating_snapshot_with_maximum_length_name(
        self, r: Resources
    ) -> None:
        volume = r.must_create_volume(
            make_create_volume_req(unique("CreateSnapshot-volume-maxlen-name")))
        name = unique_with_length("CreateSnapshot-snapshot-maxlen", MAX_NAME_LENGTH)
        request = make_create_snapshot_req(name, volume.volume.volume_id)
        r.must_create_snapshot(request)
        r.must_create_snapshot(request)


# === ExpandVolume [Controller Server] ========================================================


class TestExpandVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.EXPAND_VOLUME, "ControllerExpandVolume")

    def test_should_fail_if_no_volume_id_is_given(self, sc: SanityContext, rc: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT,
                     lambda: sc.controller.ControllerExpandVolume(make_expand_volume_req("")))

    def test_should_fail_if_no_capacity_range_is_given(
        self, sc: SanityContext, rc: Resources
    ) -> None:
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.controller.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(volume_id="")))

    def test_should_work(self, sc: SanityContext, rc: Resources) -> None:
        volume = rc.must_create_volume(create_req(unique("sanity-expand-volume")))
        response = sc.controller.ControllerExpandVolume(
            make_expand_volume_req(volume.volume.volume_id))
        assert response is not None
        assert response.capacity_bytes == TEST_VOLUME_EXPAND_SIZE


# === ModifyVolume [Controller Server] ========================================================

MUTABLE_PARAMETERS_BUG = (
    "bug: ControllerModifyVolume refuses empty mutable_parameters with INVALID_ARGUMENT "
    "before anything else; csi-sanity sends its default (empty) test mutable parameters"
)


class TestModifyVolume:
    @pytest.fixture(autouse=True)
    def _gate(self, sc: SanityContext) -> None:
        require(sc, ControllerCap.MODIFY_VOLUME, "ControllerModifyVolume")

    def test_should_fail_if_no_volume_id_is_given(self, sc: SanityContext, rc: Resources) -> None:
        expect_error(Code.INVALID_ARGUMENT,
                     lambda: sc.controller.ControllerModifyVolume(make_modify_volume_req("")))
    def test_should_fail_if_volume_does_not_exist(self, sc: SanityContext, rc: Resources) -> None:
        expect_error(Code.NOT_FOUND, lambda: sc.controller.ControllerModifyVolume(
            make_modify_volume_req("non-existing-volume-id")))

    def test_should_fail_if_specified_mutable_parameters_are_not_supported_by_the_volume(
        self, sc: SanityContext, rc: Resources
    ) -> None:
        volume = rc.must_create_volume(make_create_volume_req(unique("sanity-modify-volume")))
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.controller.ControllerModifyVolume(
            csi_pb2.ControllerModifyVolumeRequest(
                volume_id=volume.volume.volume_id,
                mutable_parameters={"XXX_FakeKey": "XXX_FakeValue"})))
    def test_should_modify_a_volume_created_without_a_volume_attribute_class(
        self, sc: SanityContext, rc: Resources
    ) -> None:
        volume = rc.must_create_volume(make_create_volume_req(unique("sanity-modify-volume")))
        response = sc.controller.ControllerModifyVolume(
            make_modify_volume_req(volume.volume.volume_id))
        assert response is not None
    def test_should_modify_a_volume_created_with_a_volume_attribute_class(
        self, sc: SanityContext, rc: Resources
    ) -> None:
        request = make_create_volume_req(unique("sanity-modify-volume"))
        request.mutable_parameters.update(TEST_VOLUME_MUTABLE_PARAMETERS)
        volume = rc.must_create_volume(request)
        response = sc.controller.ControllerModifyVolume(
            make_modify_volume_req(volume.volume.volume_id))
        assert response is not None

    def test_should_fail_to_modify_a_volume_created_with_a_volume_attribute_class_if_new_mutable_parameters_are_not_supported_by_volume(  # noqa: E501
        self, sc: SanityContext, rc: Resources
    ) -> None:
        request = make_create_volume_req(unique("sanity-modify-volume"))
        request.mutable_parameters.update(TEST_VOLUME_MUTABLE_PARAMETERS)
        volume = rc.must_create_volume(request)
        expect_error(Code.INVALID_ARGUMENT, lambda: sc.controller.ControllerModifyVolume(
            csi_pb2.ControllerModifyVolumeRequest(
                volume_id=volume.volume.volume_id,
                mutable_parameters={"XXX_FakeKey": "XXX_FakeValue"})))

