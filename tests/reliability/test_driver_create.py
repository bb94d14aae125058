"""CreateVolume under retries: the name decides, failed volumes never leak, data is never
deleted. Each scenario runs against the real `cinder-csi controller` process and ends with an
audit of every Cinder volume in the stand-in."""

from __future__ import annotations

import threading
import time

import grpc

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.csi_helpers import GIB, create_request
from tests.reliability.driver_env import (
    PluginProcess,
    audit,
    empty_cloud_after_each,
    module_controller,
    module_standin,
    outcome,
    specific,
    wait_until,
)

C = grpc.StatusCode
NO_VALID_BACKEND = "No valid backend was found. Not enough capacity on any backend."

standin = module_standin("create", volume_types=["fast"])
plugin = module_controller("create")
empty_cloud = empty_cloud_after_each()


def create(plugin: PluginProcess, name: str, timeout: float = 20, **kwargs: object) -> str:
    response = plugin.controller.CreateVolume(create_request(name, **kwargs), timeout=timeout)
    return str(response.volume.volume_id)


def snapshot_source(snapshot_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))


def test_retry_gets_its_volume_after_the_snapshot_was_deleted(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    source = create(plugin, "pvc-src")
    snap = plugin.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
        name="snap-1", source_volume_id=source), timeout=20).snapshot.snapshot_id
    request = create_request("pvc-restored", volume_content_source=snapshot_source(snap))
    first = plugin.controller.CreateVolume(request, timeout=20).volume.volume_id
    plugin.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap), timeout=20)
    # The answer to the first call was lost; the retry comes after the snapshot is gone.
    again = specific(outcome(lambda: plugin.controller.CreateVolume(request, timeout=20)))
    assert again.ok, again.details
    assert again.response.volume.volume_id == first
    audit(standin, {"pvc-src": 1, "pvc-restored": 1})


def test_retry_gets_its_volume_after_the_source_volume_was_deleted(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    source = create(plugin, "pvc-origin")
    request = create_request("pvc-clone", volume_content_source=csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source)))
    first = plugin.controller.CreateVolume(request, timeout=20).volume.volume_id
    plugin.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=source), timeout=20)
    again = specific(outcome(lambda: plugin.controller.CreateVolume(request, timeout=20)))
    assert again.ok, again.details
    assert again.response.volume.volume_id == first
    audit(standin, {"pvc-clone": 1})


def test_retry_gets_its_volume_while_volume_types_cannot_be_read(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    first = create(plugin, "pvc-typed", parameters={"type": "fast"})
    with standin.faults.error(503, count=None, method="GET", path="/types"):
        again = specific(outcome(lambda: create(plugin, "pvc-typed", parameters={"type": "fast"})))
    assert again.ok, again.details
    assert again.response == first
    audit(standin, {"pvc-typed": 1})


def test_failed_volume_whose_deletion_fails_is_left_to_the_retry_not_leaked(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    standin.faults.fail_create(volume="pvc-nospace", message=NO_VALID_BACKEND)
    with standin.faults.error(500, count=None, method="DELETE", path="/volumes/"):
        failed = specific(outcome(lambda: create(plugin, "pvc-nospace")))
    # RESOURCE_EXHAUSTED is final to external-provisioner: a deleted claim would never be
    # retried, and the error volume would stay forever. "Still in progress" it must be.
    assert failed.code == C.UNAVAILABLE, failed
    assert "has not finished" in failed.details
    assert [v["status"] for v in standin.volumes()] == ["error"]
    again = specific(outcome(lambda: create(plugin, "pvc-nospace")))
    assert again.ok, again.details
    volumes = audit(standin, {"pvc-nospace": 1})
    assert [v["status"] for v in volumes] == ["available"]


def test_capacity_failure_is_resource_exhausted_once_the_volume_is_gone(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    standin.faults.fail_create(volume="pvc-full", message=NO_VALID_BACKEND)
    failed = specific(outcome(lambda: create(plugin, "pvc-full")))
    assert failed.code == C.RESOURCE_EXHAUSTED, failed
    assert "No valid backend" in failed.details and "was deleted" in failed.details
    audit(standin, {"pvc-full": 0})


def test_retry_while_the_failed_volume_is_still_being_deleted(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    standin.faults.fail_create(volume="pvc-slowdel")
    stuck = standin.faults.stick("deleting", volume="pvc-slowdel")
    first = specific(outcome(lambda: create(plugin, "pvc-slowdel", timeout=3)))
    assert first.code in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED), first
    assert [v["status"] for v in standin.volumes()] == ["deleting"]
    results: list[object] = []
    retry = threading.Thread(
        target=lambda: results.append(outcome(lambda: create(plugin, "pvc-slowdel"))))
    retry.start()
    time.sleep(1.0)
    stuck.cancel()  # the deletion finishes while the retry waits
    retry.join(30)
    (again,) = results
    assert again.ok, again  # type: ignore[attr-defined]
    volumes = audit(standin, {"pvc-slowdel": 1})
    assert [v["status"] for v in volumes] == ["available"]


def test_retry_that_joined_a_create_which_made_nothing_creates_the_volume(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    # The first POST is held past its caller's deadline, then dropped unanswered and not
    # carried out, while the retry waits for it: the retry posts itself and succeeds.
    standin.faults.hang(4.0, count=1, method="POST", path="/volumes$")
    first = specific(outcome(lambda: create(plugin, "pvc-dropped", timeout=2)))
    assert first.code == C.DEADLINE_EXCEEDED, first
    assert standin.volumes() == []
    again = specific(outcome(lambda: create(plugin, "pvc-dropped", timeout=20)))
    assert again.ok, again.details
    audit(standin, {"pvc-dropped": 1})


def test_volume_in_error_extending_is_never_deleted_by_create(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    volume_id = create(plugin, "pvc-data")
    standin.faults.fail_extend(volume="pvc-data")
    expand = specific(outcome(lambda: plugin.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GIB)),
        timeout=20)))
    assert expand.code == C.FAILED_PRECONDITION, expand
    # A CreateVolume retried for the same name (a restarted provisioner) meets the volume.
    again = specific(outcome(lambda: create(plugin, "pvc-data")))
    assert again.code == C.FAILED_PRECONDITION, again
    assert "error_extending" in again.details
    volumes = audit(standin, {"pvc-data": 1})
    assert [(v["id"], v["status"]) for v in volumes] == [(volume_id, "error_extending")]


def test_failed_snapshot_is_deleted_and_the_retry_starts_clean(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    source = create(plugin, "pvc-snapped")
    standin.faults.fail_snapshot(snapshot="snap-fail")
    request = csi_pb2.CreateSnapshotRequest(name="snap-fail", source_volume_id=source)
    failed = specific(outcome(lambda: plugin.controller.CreateSnapshot(request, timeout=20)))
    assert failed.code == C.UNAVAILABLE, failed
    wait_until(lambda: not standin.snapshots(), 10, "the failed snapshot to be deleted")
    again = specific(outcome(lambda: plugin.controller.CreateSnapshot(request, timeout=20)))
    assert again.ok, again.details
    assert [s["status"] for s in standin.snapshots()] == ["available"]
    audit(standin, {"pvc-snapped": 1})


def test_the_controller_kept_serving(plugin: PluginProcess) -> None:
    assert plugin.alive()
    assert plugin.identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value
