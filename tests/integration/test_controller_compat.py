"""Drop-in compatibility with the upstream Go driver, through our controller's socket against
the OpenStack stand-in: several clouds chosen by the ``cloud`` secret, volumes upstream made
(or was making) adopted, upstream's volume_context, and VolumeSnapshotClass ``type: backup``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import openstack
import openstack.connection
import pytest

from cinder_csi import TOPOLOGY_KEY
from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import CLUSTER, ControllerHandle, start_controller
from tests.integration.csi_helpers import GIB, create_request, expect_code, mount_cap

C = grpc.StatusCode
EAST = {"cloud": "east"}


def sdk(openstack_standin: OpenStackStandIn, user: str = "admin", password: str = "secret",
        project: str = "demo") -> openstack.connection.Connection:
    return openstack.connect(
        auth_url=openstack_standin.auth_url, username=user, password=password,
        project_name=project, user_domain_name="Default", project_domain_name="Default",
        region_name=openstack_standin.region)


def wait_available(conn: openstack.connection.Connection, volume_id: str) -> None:
    conn.block_storage.wait_for_status(conn.block_storage.get_volume(volume_id), "available",
                                       interval=0.05, wait=10)


@pytest.fixture
def two_clouds(openstack: OpenStackStandIn, tmp_path: Path) -> Iterator[ControllerHandle]:
    """Our controller with [Global] (project demo) and [Global "east"] (project east), each
    with a member (not an admin, who would see every project's volumes)."""
    sections = []
    for section, project in (("[Global]", "demo"), ('[Global "east"]', "east")):
        openstack.add_user(f"{project}-user", f"{project}-pa55", project)
        sections.append(
            f"{section}\nauth-url = {openstack.auth_url}\nusername = {project}-user\n"
            f"password = {project}-pa55\ntenant-name = {project}\ndomain-name = Default\n"
            f"region = {openstack.region}\n")
    conf = tmp_path / "multi.conf"
    conf.write_text("\n".join(sections))
    server, handle = start_controller(conf, tmp_path / "multi.sock")
    try:
        yield handle
    finally:
        handle.channel.close()
        server.stop(0)


def project_of(openstack: OpenStackStandIn, volume_id: str) -> str | None:
    found = [v for v in openstack.volumes() if v["id"] == volume_id]
    return str(found[0]["project_id"]) if found else None


# -- several clouds ------------------------------------------------------------------------------


def test_cloud_secret_selects_the_cloud_of_every_call(
    two_clouds: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    ctl = two_clouds.controller
    east = ctl.CreateVolume(create_request("pvc-east", secrets=EAST), timeout=30).volume
    assert project_of(openstack, east.volume_id) == openstack.project_id("east")
    default = ctl.CreateVolume(create_request("pvc-default"), timeout=30).volume
    assert project_of(openstack, default.volume_id) == openstack.project_id("demo")

    # Calls without secrets that name a volume find it in whichever cloud has it.
    got = ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(
        volume_id=east.volume_id), timeout=30)
    assert got.volume.volume_id == east.volume_id
    listed = ctl.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30)
    assert {e.volume.volume_id for e in listed.entries} == {east.volume_id, default.volume_id}

    node = openstack.add_server("east-node", "az-a", project="east")
    ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=east.volume_id, node_id=node, volume_capability=mount_cap(),
        secrets=EAST), timeout=30)
    ctl.ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
        volume_id=east.volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GIB),
        secrets=EAST), timeout=30)
    ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=east.volume_id, node_id=node, secrets=EAST), timeout=30)
    ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=east.volume_id, secrets=EAST),
                     timeout=30)
    assert project_of(openstack, east.volume_id) is None


def test_a_cloud_we_do_not_serve_is_invalid_argument_never_ok(
    two_clouds: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    """Upstream PVs of a secondary cloud must not be 'deleted' by looking in the wrong one."""
    ctl = two_clouds.controller
    east = ctl.CreateVolume(create_request("pvc-kept", secrets=EAST), timeout=30).volume
    west = {"cloud": "west"}
    calls = [
        lambda: ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(
            volume_id=east.volume_id, secrets=west), timeout=30),
        lambda: ctl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=east.volume_id, node_id=east.volume_id, secrets=west), timeout=30),
        lambda: ctl.CreateVolume(create_request("pvc-west", secrets=west), timeout=30),
        lambda: ctl.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
            name="s", source_volume_id=east.volume_id, secrets=west), timeout=30),
        lambda: ctl.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(
            snapshot_id=east.volume_id, secrets=west), timeout=30),
    ]
    for call in calls:
        error = expect_code(C.INVALID_ARGUMENT, call)
        assert "'west'" in (error.details() or "")
    assert project_of(openstack, east.volume_id) == openstack.project_id("east")
    # Without the secret the default cloud is asked, where the volume is not: that OK is
    # upstream's answer too, which is why the secret must name the cloud.
    ctl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=east.volume_id), timeout=30)
    assert project_of(openstack, east.volume_id) is not None


def test_list_volumes_pages_across_clouds(two_clouds: ControllerHandle) -> None:
    ctl = two_clouds.controller
    made = {ctl.CreateVolume(create_request(f"pvc-l{i}", secrets=EAST if i % 2 else {}),
                             timeout=30).volume.volume_id for i in range(5)}
    seen: list[str] = []
    token = ""
    while True:
        page = ctl.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token),
                               timeout=30)
        assert len(page.entries) <= 2
        seen += [e.volume.volume_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert sorted(seen) == sorted(made)


# -- volumes upstream made ---------------------------------------------------------------------


@pytest.mark.parametrize("tag", [None, ""])
def test_volume_upstream_made_for_the_name_is_adopted(
    csi: ControllerHandle, openstack: OpenStackStandIn, tag: str | None
) -> None:
    """Upstream's CreateVolume returns before the volume is available; if the drivers are
    switched then, the external-provisioner retries the same name with us."""
    conn = sdk(openstack)
    metadata = {"csi.storage.k8s.io/pvc/name": "data"}
    if tag is not None:
        metadata[CLUSTER_METADATA_KEY] = tag  # upstream without --cluster writes ""
    made = conn.block_storage.create_volume(name="pvc-upstream", size=1, metadata=metadata)
    volume = csi.controller.CreateVolume(create_request("pvc-upstream"), timeout=30).volume
    assert volume.volume_id == made.id
    assert len([v for v in openstack.volumes() if v["name"] == "pvc-upstream"]) == 1


def test_volume_of_another_cluster_is_not_adopted(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    conn = sdk(openstack)
    conn.block_storage.create_volume(name="pvc-theirs", size=1,
                                     metadata={CLUSTER_METADATA_KEY: "other-cluster"})
    error = expect_code(C.ALREADY_EXISTS, lambda: csi.controller.CreateVolume(
        create_request("pvc-theirs"), timeout=30))
    assert "other-cluster" in (error.details() or "")


def test_upstream_pv_is_published_expanded_and_deleted_by_id(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    """A PV upstream provisioned: its volumeHandle is the Cinder ID, its volumeAttributes are
    upstream's volume_context; every later call works from those alone."""
    conn = sdk(openstack)
    made = conn.block_storage.create_volume(
        name="pvc-old", size=1, metadata={CLUSTER_METADATA_KEY: "kubernetes"})
    wait_available(conn, made.id)
    node = openstack.add_server("n1", "az-a")
    upstream_context = {"resizeRequired": "true",
                        "storage.kubernetes.io/csiProvisionerIdentity": "1-2-cinder"}
    published = csi.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=made.id, node_id=node, volume_capability=mount_cap(),
        volume_context=upstream_context), timeout=30)
    assert published.publish_context["DevicePath"].startswith("/dev/vd")  # upstream's key
    valid = csi.controller.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=made.id, volume_capabilities=[mount_cap()],
            volume_context=upstream_context), timeout=30)
    assert valid.HasField("confirmed")
    csi.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=made.id, node_id=node), timeout=30)
    csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=made.id), timeout=30)
    assert not [v for v in openstack.volumes() if v["id"] == made.id]


def test_our_volume_is_what_upstream_expects(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    """The other direction: the volumes we make carry upstream's metadata keys and a
    volume_context upstream's node plugin understands."""
    params = {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "apps",
              "csi.storage.k8s.io/pv/name": "pvc-ours"}
    volume = csi.controller.CreateVolume(create_request("pvc-ours", parameters=params),
                                         timeout=30).volume
    stored = next(v for v in openstack.volumes() if v["id"] == volume.volume_id)
    assert stored["name"] == "pvc-ours"
    assert stored["metadata"] == {CLUSTER_METADATA_KEY: CLUSTER, **params}
    assert dict(volume.volume_context) == {}
    assert [t.segments[TOPOLOGY_KEY] for t in volume.accessible_topology] == [
        stored["availability_zone"]]
    snap = csi.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name="snap-ours", source_volume_id=volume.volume_id), timeout=60).snapshot
    content = csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id))
    restored = csi.controller.CreateVolume(
        create_request("pvc-ours-2", 3, volume_content_source=content), timeout=30).volume
    # Only upstream's key, with upstream's value.
    assert dict(restored.volume_context) == {"resizeRequired": "true"}
    assert restored.capacity_bytes == 3 * GIB


# -- VolumeSnapshotClass type: backup ----------------------------------------------------------

BACKUP = {"type": "backup", "csi.storage.k8s.io/volumesnapshot/name": "nightly"}


def backup_of(csi: ControllerHandle, name: str, volume_id: str,
              params: dict[str, str] | None = None) -> Any:
    return csi.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=name, source_volume_id=volume_id, parameters=params or BACKUP), timeout=120).snapshot


def test_backup_snapshot_lifecycle(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    volume = csi.controller.CreateVolume(create_request("pvc-b", 1), timeout=30).volume
    made = backup_of(csi, "snap-b", volume.volume_id)
    assert made.ready_to_use and made.size_bytes == GIB
    assert made.source_volume_id == volume.volume_id
    backups = openstack.backups()
    assert [b["id"] for b in backups] == [made.snapshot_id]
    assert backups[0]["metadata"][CLUSTER_METADATA_KEY] == CLUSTER
    assert backups[0]["metadata"]["csi.storage.k8s.io/volumesnapshot/name"] == "nightly"
    # As upstream: the snapshot the backup was taken from is gone once the backup is done.
    assert openstack.snapshots() == []
    # Idempotent by name; the same name for another volume is ALREADY_EXISTS.
    assert backup_of(csi, "snap-b", volume.volume_id).snapshot_id == made.snapshot_id
    other = csi.controller.CreateVolume(create_request("pvc-b2", 1), timeout=30).volume
    expect_code(C.ALREADY_EXISTS, lambda: backup_of(csi, "snap-b", other.volume_id))

    listed = csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(
        snapshot_id=made.snapshot_id), timeout=30)
    assert [e.snapshot.snapshot_id for e in listed.entries] == [made.snapshot_id]
    by_volume = csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(
        source_volume_id=volume.volume_id), timeout=30)
    assert [e.snapshot.snapshot_id for e in by_volume.entries] == [made.snapshot_id]

    # Restore: a bigger volume, in the other zone (a backup is not bound to one).
    content = csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=made.snapshot_id))
    zone_b = csi_pb2.TopologyRequirement(
        preferred=[csi_pb2.Topology(segments={TOPOLOGY_KEY: "az-b"})])
    restored = csi.controller.CreateVolume(create_request(
        "pvc-restored", 2, volume_content_source=content, accessibility_requirements=zone_b),
        timeout=60).volume
    assert restored.capacity_bytes == 2 * GIB
    assert restored.volume_context["resizeRequired"] == "true"
    assert restored.content_source.snapshot.snapshot_id == made.snapshot_id
    assert [t.segments[TOPOLOGY_KEY] for t in restored.accessible_topology] == ["az-b"]
    again = csi.controller.CreateVolume(create_request(
        "pvc-restored", 2, volume_content_source=content, accessibility_requirements=zone_b),
        timeout=60).volume
    assert again.volume_id == restored.volume_id

    csi.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(
        snapshot_id=made.snapshot_id), timeout=60)
    assert openstack.backups() == []
    csi.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(
        snapshot_id=made.snapshot_id), timeout=60)  # idempotent
    gone = csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(
        snapshot_id=made.snapshot_id), timeout=30)
    assert list(gone.entries) == []
    expect_code(C.NOT_FOUND, lambda: csi.controller.CreateVolume(create_request(
        "pvc-late", 2, volume_content_source=content), timeout=30))


def test_listing_walks_snapshots_then_backups(csi: ControllerHandle) -> None:
    volume = csi.controller.CreateVolume(create_request("pvc-ls", 1), timeout=30).volume
    made = {backup_of(csi, f"b{i}", volume.volume_id).snapshot_id for i in range(2)}
    made |= {csi.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name=f"s{i}", source_volume_id=volume.volume_id), timeout=60).snapshot.snapshot_id
        for i in range(2)}
    seen: list[str] = []
    token = ""
    while True:
        page = csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(
            max_entries=1, starting_token=token), timeout=30)
        seen += [e.snapshot.snapshot_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert sorted(seen) == sorted(made)
    expect_code(C.ABORTED, lambda: csi.controller.ListSnapshots(
        csi_pb2.ListSnapshotsRequest(starting_token="backups:not-a-uuid"), timeout=30))


def test_failed_backup_is_cleaned_up_and_the_retry_starts_clean(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    volume = csi.controller.CreateVolume(create_request("pvc-f", 1), timeout=30).volume
    openstack.faults.fail_backup(backup="snap-f")
    error = expect_code(C.UNAVAILABLE, lambda: backup_of(csi, "snap-f", volume.volume_id))
    assert "retry starts clean" in (error.details() or "")
    assert openstack.backups() == [] and openstack.snapshots() == []
    made = backup_of(csi, "snap-f", volume.volume_id)
    assert made.ready_to_use and [b["id"] for b in openstack.backups()] == [made.snapshot_id]


def test_failed_backup_still_being_deleted_is_not_reported_deleted(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    volume = csi.controller.CreateVolume(create_request("pvc-g", 1), timeout=30).volume
    openstack.faults.fail_backup(backup="snap-g")
    stuck = openstack.faults.stick("deleting", volume="snap-g")
    error = expect_code(C.UNAVAILABLE, lambda: csi.controller.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(name="snap-g", source_volume_id=volume.volume_id,
                                      parameters=BACKUP), timeout=10))
    assert "has not finished" in (error.details() or ""), error.details()
    assert [b["status"] for b in openstack.backups()] == ["deleting"]
    stuck.cancel()
    made = backup_of(csi, "snap-g", volume.volume_id)
    assert made.ready_to_use and [b["id"] for b in openstack.backups()] == [made.snapshot_id]


def test_slow_backup_is_reported_not_ready_until_done(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    """A call waits a bounded time and answers ready_to_use=false; the snapshotter asks again
    with the same name, which finds the backup and reports it ready once it is."""
    volume = csi.controller.CreateVolume(create_request("pvc-s", 1), timeout=30).volume
    request = csi_pb2.CreateSnapshotRequest(name="snap-s", source_volume_id=volume.volume_id,
                                            parameters=BACKUP)
    with openstack.faults.slow("backup", 6.0):
        first = csi.controller.CreateSnapshot(request, timeout=3).snapshot
        assert not first.ready_to_use and first.snapshot_id
        assert openstack.backups()[0]["status"] == "creating"
    second = csi.controller.CreateSnapshot(request, timeout=30).snapshot
    assert second.snapshot_id == first.snapshot_id
    assert second.ready_to_use and openstack.snapshots() == []


@pytest.mark.parametrize(
    ("params", "needle"),
    [({"type": "tape"}, "'snapshot' or 'backup'"),
     ({"type": "backup", "backup-max-duration-seconds-per-gb": "soon"}, "whole number"),
     ({"colour": "red"}, "colour")],
)
def test_bad_snapshot_class_parameters(
    csi: ControllerHandle, params: dict[str, str], needle: str
) -> None:
    volume = csi.controller.CreateVolume(create_request("pvc-p", 1), timeout=30).volume
    error = expect_code(C.INVALID_ARGUMENT, lambda: backup_of(csi, "x", volume.volume_id, params))
    assert needle in (error.details() or "")
