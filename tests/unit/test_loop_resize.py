"""cinder_csi.loop.resizer: the external-resizer protocol against fakes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.errors import DoNotRetrySoon, RetryAfter
from cinder_csi.loop.resizer import (
    ANN_PRE_RESIZE_CAPACITY,
    FS_RESIZE_MESSAGE,
    ResizeController,
    merge_resize_conditions,
    needs_resize,
)
from tests.unit.loop_fakes import (
    DRIVER,
    RPC,
    VOLUME_ID,
    RpcError,
    World,
    pv,
    secret,
)

GI = 1 << 30
KEY = "apps/data"


def claim(request: str = "2Gi", capacity: str = "1Gi", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "namespace": "apps", "uid": "claim-uid"},
        "spec": {"storageClassName": "standard", "volumeName": "pv-1",
                 "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": request}}},
        "status": {"phase": "Bound", "capacity": {"storage": capacity}, **status},
    }


def storage_class(expand: bool = True) -> dict[str, Any]:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "standard"}, "provisioner": DRIVER,
            "allowVolumeExpansion": expand}


@pytest.fixture
def world() -> World:
    w = World()
    w.add("storageclasses", storage_class())
    w.add("persistentvolumes", pv())
    w.add("persistentvolumeclaims", claim())
    return w


def resizer(world: World) -> ResizeController:
    ctl = ResizeController(world.ctx)
    ctl.register()
    return ctl


def stored_claim(world: World) -> dict[str, Any]:
    obj = world.get("persistentvolumeclaims", "data", "apps")
    assert obj is not None
    return obj


def condition_types(obj: dict[str, Any]) -> list[str]:
    return [c["type"] for c in obj["status"].get("conditions") or []]


def test_grow_with_node_expansion(world: World) -> None:
    resizer(world).sync(KEY)

    (request,) = world.csi.calls("ControllerExpandVolume")
    assert request.volume_id == VOLUME_ID
    assert request.capacity_range.required_bytes == 2 * GI
    assert request.volume_capability.mount.fs_type == "ext4"
    volume = world.get("persistentvolumes", "pv-1")
    assert volume is not None
    assert volume["spec"]["capacity"]["storage"] == "2Gi"
    assert volume["metadata"]["annotations"][ANN_PRE_RESIZE_CAPACITY] == "1Gi"
    obj = stored_claim(world)
    assert condition_types(obj) == ["FileSystemResizePending"]
    (pending,) = obj["status"]["conditions"]
    assert pending["status"] == "True" and pending["message"] == FS_RESIZE_MESSAGE
    assert obj["status"]["capacity"] == {"storage": "1Gi"}  # the kubelet moves it
    assert obj["status"]["allocatedResources"] == {"storage": "2Gi"}
    assert obj["status"]["allocatedResourceStatuses"] == {"storage": "NodeResizePending"}
    # Resizing was set before the cloud call.
    first = world.rest.patches("/api/v1/namespaces/apps/persistentvolumeclaims/data/status")[0]
    assert [c["type"] for c in first["status"]["conditions"]] == ["Resizing"]
    assert first["status"]["allocatedResourceStatuses"] == {
        "storage": "ControllerResizeInProgress"}
    assert world.rest.event_reasons() == [("Normal", "Resizing"),
                                          ("Normal", "FileSystemResizeRequired")]
    assert world.sample("cinder_csi_resize_total", result="success") == 1


def test_grow_without_node_expansion_finishes_the_claim(world: World) -> None:
    world.add("persistentvolumes", pv(volumeMode="Block"))
    world.add("persistentvolumeclaims", claim(conditions=[
        {"type": "Other", "status": "True"}]))
    world.csi.expand_response = csi_pb2.ControllerExpandVolumeResponse(
        capacity_bytes=3 * GI, node_expansion_required=False)

    resizer(world).sync(KEY)

    (request,) = world.csi.calls("ControllerExpandVolume")
    assert request.volume_capability.WhichOneof("access_type") == "block"
    volume = world.get("persistentvolumes", "pv-1")
    assert volume is not None and volume["spec"]["capacity"]["storage"] == "3Gi"
    assert ANN_PRE_RESIZE_CAPACITY not in (volume["metadata"].get("annotations") or {})
    obj = stored_claim(world)
    assert obj["status"]["capacity"] == {"storage": "3Gi"}
    assert condition_types(obj) == ["Other"]
    assert "storage" not in (obj["status"].get("allocatedResourceStatuses") or {})
    assert world.rest.event_reasons() == [("Normal", "Resizing"),
                                          ("Normal", "VolumeResizeSuccessful")]


def test_class_without_expansion_is_refused_with_a_warning(world: World) -> None:
    world.add("storageclasses", storage_class(expand=False))
    with pytest.raises(DoNotRetrySoon, match="does not allow expansion"):
        resizer(world).sync(KEY)
    assert world.csi.calls("ControllerExpandVolume") == []
    assert world.rest.event_reasons() == [("Warning", "VolumeResizeFailed")]
    assert "allowVolumeExpansion" in world.rest.events[0]["message"]


def test_expand_failure_warns_and_backs_off(world: World) -> None:
    world.csi.errors["ControllerExpandVolume"] = [
        RpcError(grpc.StatusCode.INTERNAL, "cinder said no")]
    with pytest.raises(RetryAfter):
        resizer(world).sync(KEY)
    assert world.rest.event_reasons() == [("Normal", "Resizing"),
                                          ("Warning", "VolumeResizeFailed")]
    assert "cinder said no" in world.rest.events[1]["message"]
    volume = world.get("persistentvolumes", "pv-1")
    assert volume is not None and volume["spec"]["capacity"]["storage"] == "1Gi"
    assert condition_types(stored_claim(world)) == ["Resizing"]
    assert world.sample("cinder_csi_resize_total", result="failure") == 1


def test_infeasible_expand_is_final_and_marked_on_the_claim(world: World) -> None:
    world.csi.errors["ControllerExpandVolume"] = [
        RpcError(grpc.StatusCode.OUT_OF_RANGE, "too big")]
    with pytest.raises(DoNotRetrySoon):
        resizer(world).sync(KEY)
    assert stored_claim(world)["status"]["allocatedResourceStatuses"] == {
        "storage": "ControllerResizeInfeasible"}


def test_expand_secrets_come_from_the_pv(world: World) -> None:
    world.add("persistentvolumes", pv(csi={"controllerExpandSecretRef": {
        "name": "creds", "namespace": "kube-system"}}))
    world.rest.put("/api/v1/namespaces/kube-system/secrets/creds",
                   secret("creds", "kube-system", token="s3cr3t-token-value"))
    world.csi.errors["ControllerExpandVolume"] = [
        RpcError(grpc.StatusCode.INTERNAL, "bad token s3cr3t-token-value")]
    with pytest.raises(RetryAfter):
        resizer(world).sync(KEY)
    (request,) = world.csi.calls("ControllerExpandVolume")
    assert dict(request.secrets) == {"token": "s3cr3t-token-value"}
    assert all("s3cr3t" not in e["message"] for e in world.rest.events)


def test_node_only_driver_is_resized_by_the_kubelet(world: World) -> None:
    only_node = World(caps={RPC.CREATE_DELETE_VOLUME})
    only_node.add("storageclasses", storage_class())
    only_node.add("persistentvolumes", pv())
    only_node.add("persistentvolumeclaims", claim())
    resizer(only_node).sync(KEY)
    assert only_node.csi.calls("ControllerExpandVolume") == []
    volume = only_node.get("persistentvolumes", "pv-1")
    assert volume is not None and volume["spec"]["capacity"]["storage"] == "2Gi"
    assert condition_types(stored_claim(only_node)) == ["FileSystemResizePending"]


@pytest.mark.parametrize(
    "change",
    [
        lambda w: w.add("persistentvolumeclaims", claim(request="1Gi")),  # nothing to grow
        lambda w: w.add("persistentvolumeclaims", claim() | {"status": {"phase": "Pending"}}),
        lambda w: w.add("persistentvolumes", pv(csi={"driver": "other.csi"})),
        lambda w: w.add("persistentvolumes", pv(claimRef={"namespace": "apps", "name": "data",
                                                          "uid": "someone-else"})),
        lambda w: (w.add("persistentvolumes", pv(capacity={"storage": "2Gi"})),
                   w.add("persistentvolumeclaims", claim(conditions=[
                       {"type": "FileSystemResizePending", "status": "True"}]))),
    ],
    ids=["not-grown", "not-bound", "other-driver", "other-claim", "waiting-for-kubelet"],
)
def test_claims_that_need_nothing(world: World, change: Any) -> None:
    change(world)
    resizer(world).sync(KEY)
    assert world.csi.calls("ControllerExpandVolume") == []
    assert world.rest.events == []


def test_a_crash_after_the_pv_update_is_finished_on_retry(world: World) -> None:
    world.add("persistentvolumes", pv(capacity={"storage": "2Gi"}))
    world.add("persistentvolumeclaims", claim(conditions=[{"type": "Resizing",
                                                           "status": "True"}]))
    resizer(world).sync(KEY)
    assert len(world.csi.calls("ControllerExpandVolume")) == 1  # idempotent in the driver
    assert condition_types(stored_claim(world)) == ["FileSystemResizePending"]


def test_stale_claim_conflict_retries_quietly(world: World) -> None:
    ctl = resizer(world)
    world.rest.put("/api/v1/namespaces/apps/persistentvolumeclaims/data", claim())
    with pytest.raises(RetryAfter):
        ctl.sync(KEY)
    assert world.csi.calls("ControllerExpandVolume") == []
    assert world.rest.events == []


def test_only_grown_requests_and_resyncs_are_queued(world: World) -> None:
    ctl = resizer(world)
    old = claim(request="1Gi") | {"metadata": {"name": "data", "namespace": "apps",
                                               "resourceVersion": "1"}}
    grown = claim(request="2Gi") | {"metadata": {"name": "data", "namespace": "apps",
                                                 "resourceVersion": "2"}}
    status_only = claim(request="2Gi") | {"metadata": {"name": "data", "namespace": "apps",
                                                       "resourceVersion": "3"}}
    world.informers.claims.updated(grown, status_only)
    assert len(ctl.queue) == 0
    world.informers.claims.updated(old, grown)
    assert ctl.queue.get(timeout=0) == KEY
    ctl.queue.done(KEY)
    world.informers.claims.updated(grown, grown)  # resync
    assert len(ctl.queue) == 1


def test_helpers() -> None:
    assert needs_resize(claim())
    assert not needs_resize(claim(request="1024Mi"))
    assert not needs_resize(claim() | {"spec": {"resources": {}}})
    merged = merge_resize_conditions(
        [{"type": "Resizing"}, {"type": "Ready"}, {"type": "NodeResizeError"}],
        [{"type": "FileSystemResizePending"}])
    assert [c["type"] for c in merged] == ["Ready", "FileSystemResizePending"]
