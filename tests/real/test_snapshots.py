"""Snapshots, restores and clones through the real controller, checked in real Cinder."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import GIB, block_cap, create_request, expect_code
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger
from tests.real.controller_process import ControllerProcess

pytestmark = pytest.mark.real

CALL_S = 180
MISSING = "6a0e9b45-0000-4000-8000-0000000000aa"


def create_volume(controller: ControllerProcess, ledger: Ledger, label: str, gib: int = 1,
                  **kwargs: Any) -> Any:
    volume = controller.controller.CreateVolume(
        create_request(ledger.name(label), gib, **kwargs), timeout=CALL_S).volume
    ledger.track(volume.volume_id)
    return volume


def snapshot(controller: ControllerProcess, name: str, source: str, **params: str) -> Any:
    return controller.controller.CreateSnapshot(
        csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=source, parameters=params),
        timeout=CALL_S).snapshot


def delete_snapshot(controller: ControllerProcess, snapshot_id: str) -> None:
    controller.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id),
                                         timeout=CALL_S)


def from_snapshot(snapshot_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))


def from_volume(volume_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id))


def test_snapshot_lifecycle_is_idempotent(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    source = create_volume(controller, ledger, "snap-src", 2)
    name = ledger.name("snap")
    params = {"csi.storage.k8s.io/volumesnapshot/name": "nightly",
              "csi.storage.k8s.io/volumesnapshot/namespace": "apps"}
    first = snapshot(controller, name, source.volume_id, **params)
    ledger.track(first.snapshot_id)
    again = snapshot(controller, name, source.volume_id, **params)
    assert again.snapshot_id == first.snapshot_id
    assert first.ready_to_use and first.size_bytes == 2 * GIB
    assert first.source_volume_id == source.volume_id
    assert first.creation_time.seconds > 0

    found = cloud.snapshot(first.snapshot_id)
    assert found is not None
    assert (found.name, found.volume_id, found.size, found.status) == (
        name, source.volume_id, 2, "available")
    assert {k: found.metadata.get(k) for k in params} == params
    assert [s.id for s in cloud.snapshots() if s.name == name] == [first.snapshot_id]

    other = create_volume(controller, ledger, "snap-other")
    expect_code(grpc.StatusCode.ALREADY_EXISTS,
                lambda: snapshot(controller, name, other.volume_id))

    # Cinder refuses to delete a volume that has snapshots; we say so with the right code.
    error = expect_code(grpc.StatusCode.FAILED_PRECONDITION, lambda: controller.controller
                        .DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=source.volume_id),
                                      timeout=CALL_S))
    assert source.volume_id in error.details()
    assert cloud.volume(source.volume_id) is not None

    delete_snapshot(controller, first.snapshot_id)
    assert cloud.snapshot(first.snapshot_id) is None
    delete_snapshot(controller, first.snapshot_id)
    expect_code(grpc.StatusCode.NOT_FOUND, lambda: snapshot(controller, ledger.name("nosrc"),
                                                            MISSING))


def test_snapshot_of_an_attached_volume(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: Any) -> None:
    source = create_volume(controller, ledger, "live")
    server = real.server_id("node-0")
    controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=source.volume_id, node_id=server, volume_capability=block_cap()),
        timeout=CALL_S)
    taken = snapshot(controller, ledger.name("live-snap"), source.volume_id)
    ledger.track(taken.snapshot_id)
    assert taken.ready_to_use
    found = cloud.snapshot(taken.snapshot_id)
    assert found is not None and found.status == "available"
    controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=source.volume_id, node_id=server), timeout=CALL_S)


def test_list_snapshots_by_id_by_source_and_in_pages(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    source = create_volume(controller, ledger, "list-src")
    made = [ledger.track(snapshot(controller, ledger.name(f"list-{i}"),
                                  source.volume_id).snapshot_id) for i in range(3)]

    def listing(**kwargs: Any) -> Any:
        return controller.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(**kwargs),
                                                   timeout=CALL_S)

    (entry,) = listing(snapshot_id=made[1]).entries
    assert entry.snapshot.snapshot_id == made[1]
    assert entry.snapshot.source_volume_id == source.volume_id
    assert listing(snapshot_id=MISSING).entries == []

    by_source = listing(source_volume_id=source.volume_id)
    assert sorted(e.snapshot.snapshot_id for e in by_source.entries) == sorted(made)

    paged: list[str] = []
    token = ""
    while True:
        page = listing(source_volume_id=source.volume_id, max_entries=1, starting_token=token)
        assert len(page.entries) <= 1
        paged += [e.snapshot.snapshot_id for e in page.entries]
        token = page.next_token
        if not token:
            break
    assert sorted(paged) == sorted(made)
    everything = {e.snapshot.snapshot_id for e in listing().entries}
    assert set(made) <= everything
    assert everything <= {s.id for s in cloud.snapshots()}


def test_restore_from_snapshot_and_clone(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    source = create_volume(controller, ledger, "origin", 2)
    taken = snapshot(controller, ledger.name("origin-snap"), source.volume_id)
    ledger.track(taken.snapshot_id)

    # Asking for less than the snapshot holds gets the snapshot's size, as Cinder requires.
    restored = create_volume(controller, ledger, "restored", 1,
                             volume_content_source=from_snapshot(taken.snapshot_id))
    assert restored.content_source.snapshot.snapshot_id == taken.snapshot_id
    assert restored.capacity_bytes == 2 * GIB
    volume = cloud.volume(restored.volume_id)
    assert volume is not None
    assert (volume.snapshot_id, volume.size, volume.status) == (taken.snapshot_id, 2, "available")
    again = create_volume(controller, ledger, "restored", 1,
                          volume_content_source=from_snapshot(taken.snapshot_id))
    assert again.volume_id == restored.volume_id

    clone = create_volume(controller, ledger, "clone", 3,
                          volume_content_source=from_volume(source.volume_id))
    volume = cloud.volume(clone.volume_id)
    assert volume is not None
    assert (volume.source_volume_id, volume.size, volume.status) == (
        source.volume_id, 3, "available")

    for source_of, label in ((from_snapshot(MISSING), "ghost-restore"),
                             (from_volume(MISSING), "ghost-clone")):
        name = ledger.name(label)
        expect_code(grpc.StatusCode.NOT_FOUND, lambda s=source_of, n=name: controller.controller
                    .CreateVolume(create_request(n, 1, volume_content_source=s), timeout=CALL_S))
        assert [v for v in cloud.volumes() if v.name == name] == []
