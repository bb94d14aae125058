"""The Controller service through a real gRPC socket, against the OpenStack stand-in over HTTP."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cinder_csi import (
    FEATURE_LISTED_NAMES,
    FEATURE_RECLAIM_POLICY,
    FEATURES_MANIFEST_KEY,
    RECLAIM_POLICY_KEY,
    TOPOLOGY_KEY,
)
from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import CLUSTER, ControllerHandle
from tests.integration.csi_helpers import (
    GIB,
    Mode,
    block_cap,
    create_request,
    expect_code,
    mount_cap,
)

C = grpc.StatusCode


def volumes_named(openstack: OpenStackStandIn, name: str) -> list[dict[str, Any]]:
    return [v for v in openstack.volumes() if v["name"] == name]


def create(csi: ControllerHandle, name: str, gib: int = 1, **kwargs: Any) -> Any:
    return csi.controller.CreateVolume(create_request(name, gib, **kwargs), timeout=30).volume


def publish(csi: ControllerHandle, volume_id: str, node_id: str, **kwargs: Any) -> Any:
    request = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=node_id,
        volume_capability=kwargs.pop("cap", mount_cap()), **kwargs,
    )
    return csi.controller.ControllerPublishVolume(request, timeout=30)


def unpublish(csi: ControllerHandle, volume_id: str, node_id: str) -> Any:
    return csi.controller.ControllerUnpublishVolume(
        csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=node_id), timeout=30
    )


# -- create / delete ---------------------------------------------------------------------------


def test_create_returns_available_volume_with_metadata_and_topology(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    params = {
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "apps",
        "csi.storage.k8s.io/pv/name": "pvc-1",
    }
    volume = create(csi, "pvc-1", 2, parameters=params)
    assert volume.capacity_bytes == 2 * GIB
    stored = volumes_named(openstack, "pvc-1")
    assert len(stored) == 1
    assert stored[0]["status"] == "available"
    assert stored[0]["metadata"][CLUSTER_METADATA_KEY] == CLUSTER
    assert stored[0]["metadata"]["csi.storage.k8s.io/pvc/name"] == "data"
    assert stored[0]["metadata"]["csi.storage.k8s.io/pv/name"] == "pvc-1"
    zones = [t.segments[TOPOLOGY_KEY] for t in volume.accessible_topology]
    assert zones == [stored[0]["availability_zone"]]


def test_create_is_idempotent_by_name(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    first = create(csi, "pvc-idem")
    second = create(csi, "pvc-idem")
    assert first.volume_id == second.volume_id
    assert len(volumes_named(openstack, "pvc-idem")) == 1


def test_create_same_name_other_size_is_already_exists(csi: ControllerHandle) -> None:
    create(csi, "pvc-size", 1)
    error = expect_code(C.ALREADY_EXISTS, lambda: create(csi, "pvc-size", 3))
    assert "size" in error.details()


def test_size_rounds_up_to_whole_gib_and_respects_limit(csi: ControllerHandle) -> None:
    request = csi_pb2.CreateVolumeRequest(
        name="pvc-round", volume_capabilities=[mount_cap()],
        capacity_range=csi_pb2.CapacityRange(required_bytes=GIB + 1),
    )
    assert csi.controller.CreateVolume(request, timeout=30).volume.capacity_bytes == 2 * GIB
    impossible = csi_pb2.CreateVolumeRequest(
        name="pvc-range", volume_capabilities=[mount_cap()],
        capacity_range=csi_pb2.CapacityRange(required_bytes=GIB + 1, limit_bytes=GIB + 10),
    )
    expect_code(C.OUT_OF_RANGE, lambda: csi.controller.CreateVolume(impossible, timeout=30))


def test_zone_from_preferred_topology(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    requirements = csi_pb2.TopologyRequirement(
        requisite=[csi_pb2.Topology(segments={TOPOLOGY_KEY: "az-a"}),
                   csi_pb2.Topology(segments={TOPOLOGY_KEY: "az-b"})],
        preferred=[csi_pb2.Topology(segments={TOPOLOGY_KEY: "az-b"})],
    )
    volume = create(csi, "pvc-topo", accessibility_requirements=requirements)
    assert volume.accessible_topology[0].segments[TOPOLOGY_KEY] == "az-b"
    assert volumes_named(openstack, "pvc-topo")[0]["availability_zone"] == "az-b"


@pytest.mark.parametrize(
    ("request_factory", "needle"),
    [
        (lambda: create_request(""), "name"),
        (lambda: csi_pb2.CreateVolumeRequest(name="x"), "volume_capabilities"),
        (lambda: create_request("x", parameters={"bogus": "1"}), "bogus"),
        (lambda: create_request("x", parameters={"type": "no-such-type"}), "no-such-type"),
        (lambda: create_request("x", caps=[mount_cap(fs_type="ntfs")]), "ntfs"),
        (lambda: create_request("x", caps=[block_cap(Mode.MULTI_NODE_MULTI_WRITER)]),
         "multiattach"),
        (lambda: create_request("x", caps=[mount_cap(Mode.MULTI_NODE_MULTI_WRITER)]), "Block"),
    ],
)
def test_bad_create_input_is_invalid_argument(
    csi: ControllerHandle, request_factory: Callable[[], Any], needle: str
) -> None:
    error = expect_code(
        C.INVALID_ARGUMENT, lambda: csi.controller.CreateVolume(request_factory(), timeout=30)
    )
    assert needle in error.details()


def test_multiattach_block_volume_is_accepted(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.add_volume_type("shared", multiattach=True)
    volume = create(csi, "pvc-rwx", parameters={"type": "shared"},
                    caps=[block_cap(Mode.MULTI_NODE_MULTI_WRITER)])
    assert volume.volume_id


def test_unknown_zone_is_invalid_argument_and_leaves_nothing(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    error = expect_code(
        C.INVALID_ARGUMENT,
        lambda: create(csi, "pvc-badaz", parameters={"availability": "nowhere"}),
    )
    assert "nowhere" in error.details() or "zone" in error.details().lower()
    assert volumes_named(openstack, "pvc-badaz") == []


def test_delete_is_idempotent(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    volume = create(csi, "pvc-del")
    request = csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id)
    csi.controller.DeleteVolume(request, timeout=30)
    csi.controller.DeleteVolume(request, timeout=30)
    assert volumes_named(openstack, "pvc-del") == []
    csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="not-a-uuid"), timeout=30)
    expect_code(C.INVALID_ARGUMENT,
                lambda: csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(), timeout=30))


# -- publish / unpublish -----------------------------------------------------------------------


def test_publish_waits_for_in_use_and_is_idempotent(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume = create(csi, "pvc-pub")
    first = publish(csi, volume.volume_id, server)
    stored = volumes_named(openstack, "pvc-pub")[0]
    assert stored["status"] == "in-use"
    assert first.publish_context["DevicePath"].startswith("/dev/")
    assert publish(csi, volume.volume_id, server).publish_context == first.publish_context
    expect_code(C.FAILED_PRECONDITION, lambda: csi.controller.DeleteVolume(
        csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30))
    unpublish(csi, volume.volume_id, server)
    unpublish(csi, volume.volume_id, server)
    assert volumes_named(openstack, "pvc-pub")[0]["status"] == "available"


def test_publish_to_second_node_is_failed_precondition(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    a = openstack.add_server("node-a", "az-a")
    b = openstack.add_server("node-b", "az-a")
    volume = create(csi, "pvc-two")
    publish(csi, volume.volume_id, a)
    error = expect_code(C.FAILED_PRECONDITION, lambda: publish(csi, volume.volume_id, b))
    assert a in error.details()


def test_multiattach_publish_to_two_nodes(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.add_volume_type("shared", multiattach=True)
    a = openstack.add_server("node-a", "az-a")
    b = openstack.add_server("node-b", "az-a")
    cap = block_cap(Mode.MULTI_NODE_MULTI_WRITER)
    volume = create(csi, "pvc-multi", parameters={"type": "shared"}, caps=[cap])
    publish(csi, volume.volume_id, a, cap=cap)
    publish(csi, volume.volume_id, b, cap=cap)
    listed = csi.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=30
    )
    assert sorted(listed.status.published_node_ids) == sorted([a, b])


def test_publish_unknown_volume_or_node_is_not_found(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume = create(csi, "pvc-nf")
    expect_code(C.NOT_FOUND, lambda: publish(csi, "00000000-0000-0000-0000-000000000000", server))
    expect_code(C.NOT_FOUND,
                lambda: publish(csi, volume.volume_id, "00000000-0000-0000-0000-000000000000"))
    expect_code(C.NOT_FOUND, lambda: publish(csi, volume.volume_id, "some-node"))


def test_publish_readonly_mismatch_is_already_exists(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume = create(csi, "pvc-ro")
    publish(csi, volume.volume_id, server, readonly=True)
    publish(csi, volume.volume_id, server, readonly=True)
    expect_code(C.ALREADY_EXISTS, lambda: publish(csi, volume.volume_id, server, readonly=False))


# -- list / get / validate ---------------------------------------------------------------------


def test_list_volumes_pages_with_tokens(csi: ControllerHandle) -> None:
    created = {create(csi, f"pvc-list-{i}").volume_id for i in range(7)}
    seen: list[str] = []
    token = ""
    while True:
        page = csi.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(max_entries=3, starting_token=token), timeout=30
        )
        assert len(page.entries) <= 3
        seen.extend(e.volume.volume_id for e in page.entries)
        token = page.next_token
        if not token:
            break
    assert created <= set(seen)
    assert len(seen) == len(set(seen))
    first = csi.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=1), timeout=30)
    context = first.entries[0].volume.volume_context
    assert context[CLUSTER_METADATA_KEY] == CLUSTER and context["name"].startswith("pvc-list-")
    assert context["status"] == "available"  # so a sweep can tell an idle volume from a busy one
    expect_code(C.ABORTED, lambda: csi.controller.ListVolumes(
        csi_pb2.ListVolumesRequest(starting_token="garbage"), timeout=30))


def test_validate_volume_capabilities(csi: ControllerHandle) -> None:
    volume = create(csi, "pvc-val")
    ok = csi.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id, volume_capabilities=[mount_cap()]), timeout=30)
    assert ok.HasField("confirmed")
    refused = csi.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id,
            volume_capabilities=[block_cap(Mode.MULTI_NODE_MULTI_WRITER)]), timeout=30)
    assert not refused.HasField("confirmed") and "multiattach" in refused.message
    expect_code(C.NOT_FOUND, lambda: csi.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id="00000000-0000-0000-0000-000000000000",
            volume_capabilities=[mount_cap()]), timeout=30))


# -- expand / modify / capacity ----------------------------------------------------------------


def test_expand_in_use_volume(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume = create(csi, "pvc-grow")
    publish(csi, volume.volume_id, server)
    request = csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume.volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=3 * GIB),
        volume_capability=mount_cap(),
    )
    response = csi.controller.ControllerExpandVolume(request, timeout=30)
    assert response.capacity_bytes == 3 * GIB and response.node_expansion_required
    assert volumes_named(openstack, "pvc-grow")[0]["size"] == 3
    again = csi.controller.ControllerExpandVolume(request, timeout=30)
    assert again.capacity_bytes == 3 * GIB


def test_modify_volume_retypes(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    openstack.add_volume_type("fast")
    volume = create(csi, "pvc-mod")
    request = csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume.volume_id, mutable_parameters={"type": "fast"})
    csi.controller.ControllerModifyVolume(request, timeout=30)
    csi.controller.ControllerModifyVolume(request, timeout=30)
    assert volumes_named(openstack, "pvc-mod")[0]["volume_type"] == "fast"
    expect_code(C.INVALID_ARGUMENT, lambda: csi.controller.ControllerModifyVolume(
        csi_pb2.ControllerModifyVolumeRequest(
            volume_id=volume.volume_id, mutable_parameters={"iops": "5"}), timeout=30))


def test_reclaim_policy_is_recorded_and_reported(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    """A watch loop records the reclaim policy through CSI alone (CreateVolume parameter, then
    a ControllerModifyVolume mutable parameter once the PV is Retain); ListVolumes reports it."""
    volume = create(csi, "pvc-reclaim", parameters={RECLAIM_POLICY_KEY: "Delete"})
    assert volumes_named(openstack, "pvc-reclaim")[0]["metadata"][RECLAIM_POLICY_KEY] == "Delete"
    csi.controller.ControllerModifyVolume(csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume.volume_id, mutable_parameters={RECLAIM_POLICY_KEY: "Retain"}),
        timeout=30)
    listed = csi.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id), timeout=30)
    assert listed.volume.volume_context[RECLAIM_POLICY_KEY] == "Retain"
    expect_code(C.INVALID_ARGUMENT, lambda: create(
        csi, "pvc-reclaim-bad", parameters={RECLAIM_POLICY_KEY: "Recycle"}))
    assert volumes_named(openstack, "pvc-reclaim-bad") == []
    info = csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
    assert set(info.manifest[FEATURES_MANIFEST_KEY].split(",")) == {
        FEATURE_LISTED_NAMES, FEATURE_RECLAIM_POLICY}


def test_get_capacity_follows_quota(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    openstack.set_quota("demo", gigabytes=50)
    before = csi.controller.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=30)
    assert before.available_capacity == 50 * GIB
    create(csi, "pvc-cap", 5)
    after = csi.controller.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=30)
    assert after.available_capacity == 45 * GIB


def test_quota_exhausted_is_resource_exhausted(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.set_quota("demo", gigabytes=2)
    error = expect_code(C.RESOURCE_EXHAUSTED, lambda: create(csi, "pvc-big", 5))
    assert "quota" in error.details().lower()
    assert volumes_named(openstack, "pvc-big") == []


# -- snapshots, clones, restores ---------------------------------------------------------------


def test_snapshot_lifecycle_restore_and_clone(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    source = create(csi, "pvc-src", 2)
    snap_req = csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=source.volume_id)
    snapshot = csi.controller.CreateSnapshot(snap_req, timeout=30).snapshot
    assert snapshot.ready_to_use and snapshot.size_bytes == 2 * GIB
    assert csi.controller.CreateSnapshot(snap_req, timeout=30).snapshot.snapshot_id == (
        snapshot.snapshot_id)
    other = create(csi, "pvc-other")
    expect_code(C.ALREADY_EXISTS, lambda: csi.controller.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=other.volume_id),
        timeout=30))

    listed = csi.controller.ListSnapshots(
        csi_pb2.ListSnapshotsRequest(snapshot_id=snapshot.snapshot_id), timeout=30)
    assert [e.snapshot.snapshot_id for e in listed.entries] == [snapshot.snapshot_id]
    by_source = csi.controller.ListSnapshots(
        csi_pb2.ListSnapshotsRequest(source_volume_id=source.volume_id), timeout=30)
    assert [e.snapshot.snapshot_id for e in by_source.entries] == [snapshot.snapshot_id]

    restore_source = csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id))
    restored = create(csi, "pvc-restored", 1, volume_content_source=restore_source)
    assert restored.capacity_bytes == 2 * GIB  # grown to the snapshot's size
    assert restored.content_source.snapshot.snapshot_id == snapshot.snapshot_id
    clone_source = csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.volume_id))
    clone = create(csi, "pvc-clone", 2, volume_content_source=clone_source)
    assert volumes_named(openstack, "pvc-clone")[0]["source_volid"] == source.volume_id
    assert clone.volume_id != source.volume_id

    delete = csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id)
    csi.controller.DeleteSnapshot(delete, timeout=30)
    csi.controller.DeleteSnapshot(delete, timeout=30)
    assert openstack.snapshots() == []
    expect_code(C.NOT_FOUND, lambda: create(csi, "pvc-gone", 1,
                                            volume_content_source=restore_source))


# -- concurrency -------------------------------------------------------------------------------


def test_concurrent_duplicate_creates_make_one_volume(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.faults.delay(0.5, method="POST", path="/volumes")
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            create(csi, "pvc-race")
            code = C.OK
        except grpc.RpcError as exc:
            code = exc.code()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(codes) <= {C.OK, C.ABORTED}
    assert codes.count(C.OK) >= 1
    create(csi, "pvc-race")
    assert len(volumes_named(openstack, "pvc-race")) == 1


def test_attach_limit_is_enforced(
    openstack: OpenStackStandIn, cloud_conf: Any, tmp_path: Any
) -> None:
    from tests.integration.conftest import start_controller

    limited = tmp_path / "limited.conf"
    limited.write_text(cloud_conf.read_text() + "\n[BlockStorage]\nnode-volume-attach-limit = 2\n")
    server, handle = start_controller(limited, tmp_path / "limited.sock")
    try:
        node = openstack.add_server("node-l", "az-a")
        volumes = [create(handle, f"pvc-limit-{i}") for i in range(3)]
        publish(handle, volumes[0].volume_id, node)
        publish(handle, volumes[1].volume_id, node)
        publish(handle, volumes[1].volume_id, node)  # already attached: not counted again
        error = expect_code(C.RESOURCE_EXHAUSTED,
                            lambda: publish(handle, volumes[2].volume_id, node))
        assert "node-volume-attach-limit" in error.details()
    finally:
        handle.channel.close()
        server.stop(0)
