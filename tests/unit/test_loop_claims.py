"""The claim controller's decisions, with fakes for the API server and the CSI driver."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from typing import Any, cast

import grpc
import pytest
from prometheus_client import CollectorRegistry

from cinder_csi import FEATURE_LISTED_NAMES, FEATURE_RECLAIM_POLICY, RECLAIM_POLICY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop import caches as inf
from cinder_csi.loop import protocol as p
from cinder_csi.loop.claims import HOLDOFF_CAP, PROVISIONING_EVENT_DELAY, ClaimController
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.errors import (
    IN_PROGRESS_CODES,
    DoNotRetrySoon,
    ProvisionFailed,
    RetryAfter,
)
from cinder_csi.loop.intent import Intent
from cinder_csi.loop.journal import IntentJournal, JournalEntry, configmap_name
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import STRATEGIC_MERGE_PATCH
from cinder_csi.loop.kube.events import Deferred
from cinder_csi.loop.kube.informer import Cache
from cinder_csi.loop.kube.workqueue import WorkQueueMetrics
from tests.unit.loop_fakes import RpcError

DRIVER = "cinder.csi.openstack.org"
KEY = "topology.cinder.csi.openstack.org/zone"
Cap = csi_pb2.ControllerServiceCapability.RPC.Type
Obj = dict[str, Any]


# ---------------------------------------------------------------- fakes


def merge(target: Obj, patch: Obj) -> Obj:
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeRest:
    """Objects by API path; merge patches honour metadata.resourceVersion."""

    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.calls: list[tuple[str, str]] = []
        self.rv = 100

    def _bump(self, obj: Obj) -> Obj:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    def put(self, path: str, obj: Obj) -> Obj:
        self.objects[path] = copy.deepcopy(obj)
        return self._bump(self.objects[path])

    def get(self, path: str, **kw: Any) -> Obj:
        self.calls.append(("GET", path))
        if path not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.objects[path])

    def create(self, path: str, body: Obj, **kw: Any) -> Obj:
        self.calls.append(("POST", path))
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise ApiException(status=409, reason="AlreadyExists")
        self.objects[full] = copy.deepcopy(body)
        return self._bump(self.objects[full])

    def patch(self, path: str, body: Obj, **kw: Any) -> Obj:
        self.calls.append(("PATCH", path))
        if path not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        current = self.objects[path]
        if kw.get("content_type") == STRATEGIC_MERGE_PATCH:
            return self._strategic(path, current, copy.deepcopy(body))
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        body = copy.deepcopy(body)
        body.get("metadata", {}).pop("resourceVersion", None)
        self.objects[path] = merge(current, body)
        return self._bump(self.objects[path])

    def _strategic(self, path: str, current: Obj, body: Obj) -> Obj:
        """Only what merge_metadata sends: finalizers merged as a set, a uid precondition."""
        meta = body.get("metadata") or {}
        uid = meta.pop("uid", None)
        if uid and uid != current["metadata"].get("uid"):
            raise ApiException(status=422, reason="Invalid")
        finalizers = list(current["metadata"].get("finalizers") or [])
        added = [f for f in meta.pop("finalizers", []) if f not in finalizers]
        if added and current["metadata"].get("deletionTimestamp"):
            raise ApiException(status=422, reason="Invalid")
        removed = meta.pop("$deleteFromPrimitiveList/finalizers", [])
        finalizers = [f for f in finalizers if f not in removed] + added
        self.objects[path] = merge(current, body)
        self.objects[path]["metadata"]["finalizers"] = finalizers
        return self._bump(self.objects[path])

    def delete(self, path: str, **kw: Any) -> Obj:
        self.calls.append(("DELETE", path))
        return self.objects.pop(path)


class FakeCSI:
    """Our controller as the loop sees it: creates ``vol-1``, lists volumes by name."""

    timeout = 60.0

    def __init__(self) -> None:
        self.requests: list[csi_pb2.CreateVolumeRequest] = []
        self.errors: list[RpcError] = []
        self.zone = "az-a"
        self.on_create: Any = None
        self.volumes: dict[str, str] = {}  # id -> Cinder name, as ListVolumes reports them
        self.deleted: list[csi_pb2.DeleteVolumeRequest] = []
        self.delete_errors: list[RpcError] = []
        self.manifest = {FEATURE_LISTED_NAMES, FEATURE_RECLAIM_POLICY}

    def features(self) -> frozenset[str]:
        return frozenset(self.manifest)

    def controller_capabilities(self) -> set[int]:
        return {Cap.CREATE_DELETE_VOLUME, Cap.LIST_VOLUMES}

    def create_volume(self, request: csi_pb2.CreateVolumeRequest) -> Any:
        self.requests.append(request)
        if self.on_create is not None:
            self.on_create()
        if self.errors:
            raise self.errors.pop(0)
        self.volumes["vol-1"] = request.name
        return csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(
            volume_id="vol-1", capacity_bytes=request.capacity_range.required_bytes,
            accessible_topology=[csi_pb2.Topology(segments={KEY: self.zone})]))

    def list_volumes(self, request: csi_pb2.ListVolumesRequest) -> Any:
        return csi_pb2.ListVolumesResponse(entries=[
            csi_pb2.ListVolumesResponse.Entry(volume=csi_pb2.Volume(
                volume_id=vid, volume_context={"name": name}))
            for vid, name in sorted(self.volumes.items())])

    def delete_volume(self, request: csi_pb2.DeleteVolumeRequest) -> Any:
        self.deleted.append(request)
        if self.delete_errors:
            raise self.delete_errors.pop(0)
        self.volumes.pop(request.volume_id, None)
        return csi_pb2.DeleteVolumeResponse()


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.deferrals: list[tuple[str, float, Deferred]] = []
        self.secrets: set[str] = set()

    def add_secrets(self, values: Any) -> None:
        self.secrets.update(values)

    def normal(self, obj: Obj, reason: str, message: str) -> None:
        self.events.append(("Normal", reason, message))

    def deferred(self, obj: Obj, type_: str, reason: str, message: str, *, after: float
                 ) -> Deferred:
        """Kept, with what was cancelled: the controller decides what may be dropped."""
        handle = Deferred()
        self.events.append((type_, reason, message))
        self.deferrals.append((reason, after, handle))
        return handle

    def warning(self, obj: Obj, reason: str, message: str) -> None:
        self.events.append(("Warning", reason, message))

    def reasons(self) -> list[str]:
        return [r for _, r, _ in self.events]


class FakeInformer:
    def __init__(self, indexers: Any = None) -> None:
        self.cache = Cache(indexers)

    def add_handler(self, handler: Any) -> None:
        pass


class World:
    def __init__(self) -> None:
        self.rest = FakeRest()
        self.csi = FakeCSI()
        self.recorder = FakeRecorder()
        self.informers = inf.Informers(
            claims=cast(Any, FakeInformer()),
            volumes=cast(Any, FakeInformer({inf.BY_VOLUME_HANDLE: inf.volume_handle})),
            classes=cast(Any, FakeInformer()), attachments=cast(Any, FakeInformer()),
            csi_nodes=cast(Any, FakeInformer()), nodes=cast(Any, FakeInformer()),
        )
        registry = CollectorRegistry()
        self.now = 1000.0  # the controller's clock, moved by the tests
        self.ctx = LoopContext(
            driver=DRIVER, csi=cast(Any, self.csi), rest=cast(Any, self.rest),
            informers=self.informers, recorder=cast(Any, self.recorder), registry=registry,
            queue_metrics=WorkQueueMetrics(registry), workers=1, provisioner_identity="me",
            stop=threading.Event(),
        )
        self.controller = ClaimController(self.ctx, clock=lambda: self.now)
        for i, zone in enumerate(("az-a", "az-b")):
            name = f"node-{i}"
            self.informers.nodes.cache.put(name, {"metadata": {"name": name,
                                                               "labels": {KEY: zone}}})
            self.informers.csi_nodes.cache.put(name, {
                "metadata": {"name": name},
                "spec": {"drivers": [{"name": DRIVER, "nodeID": f"srv-{i}",
                                      "topologyKeys": [KEY]}]}})
        self.add_class("standard")

    def add_class(self, name: str, **extra: Any) -> None:
        self.informers.classes.cache.put(name, {
            "metadata": {"name": name}, "provisioner": DRIVER, "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate", **extra})

    def add_claim(self, name: str = "data", *, annotations: dict[str, str] | None = None,
                  finalizers: list[str] | None = None, deleting: bool = False,
                  **spec: Any) -> Obj:
        claim: Obj = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": name, "namespace": "default", "uid": f"uid-{name}",
                "annotations": {p.ANN_STORAGE_PROVISIONER: DRIVER, **(annotations or {})},
                "finalizers": ["kubernetes.io/pvc-protection", *(finalizers or [])],
            },
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                     "resources": {"requests": {"storage": "1Gi"}}, **spec},
        }
        if deleting:
            claim["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
        stored = self.rest.put(claim_path(name), claim)
        self.informers.claims.cache.put(f"default/{name}", stored)
        return stored

    def refresh(self, name: str = "data") -> Obj:
        """Copy the API server's claim into the informer cache (what a watch event does)."""
        obj = self.rest.objects[claim_path(name)]
        self.informers.claims.cache.put(f"default/{name}", copy.deepcopy(obj))
        return obj

    def claim(self, name: str = "data") -> Obj:
        return self.rest.objects[claim_path(name)]

    def sync(self, name: str = "data") -> None:
        self.controller.sync(f"default/{name}")

    def wait_out_holdoff(self) -> None:
        """Let the longest hold-off of a failed claim pass."""
        self.now += HOLDOFF_CAP + 1

    def pv(self, name: str = "pvc-uid-data") -> Obj | None:
        return self.rest.objects.get(f"/api/v1/persistentvolumes/{name}")


def claim_path(name: str) -> str:
    return f"/api/v1/namespaces/default/persistentvolumeclaims/{name}"


def intent(claim: Obj) -> bool:
    return (p.ANN_PROVISIONING in (claim["metadata"].get("annotations") or {})
            or p.FINALIZER_PROVISIONING in (claim["metadata"].get("finalizers") or []))


@pytest.fixture
def world() -> Iterator[World]:
    yield World()


# ---------------------------------------------------------------- happy path


def test_intent_is_recorded_before_create_and_cleared_after_the_pv(world: World) -> None:
    world.add_claim()
    seen: list[Obj] = []
    world.csi.on_create = lambda: seen.append(copy.deepcopy(world.claim()))
    world.sync()
    # During CreateVolume the claim carried the intent, and no PV existed.
    assert seen and seen[0]["metadata"]["annotations"][p.ANN_PROVISIONING] == "pvc-uid-data"
    assert p.FINALIZER_PROVISIONING in seen[0]["metadata"]["finalizers"]
    pv = world.pv()
    assert pv is not None and pv["spec"]["csi"]["volumeHandle"] == "vol-1"
    assert not intent(world.claim())
    assert world.claim()["metadata"]["finalizers"] == ["kubernetes.io/pvc-protection"]
    assert world.recorder.reasons() == ["Provisioning", "ProvisioningSucceeded"]
    assert world.recorder.events[0][2] == ('External provisioner is provisioning volume for '
                                           'claim "default/data"')
    # "Provisioning" waits a moment and was dropped once the volume was there.
    [(reason, after, handle)] = world.recorder.deferrals
    assert (reason, after, handle.cancelled) == ("Provisioning", PROVISIONING_EVENT_DELAY, True)
    assert world.recorder.events[1][2] == "Successfully provisioned volume pvc-uid-data"
    value = world.ctx.registry.get_sample_value(
        "controller_persistentvolumeclaim_provision_total",
        {"class": "standard", "source": ""})
    assert value == 1


def test_create_request(world: World) -> None:
    world.add_class("fast", parameters={"type": "ssd", "csi.storage.k8s.io/fstype": "xfs"})
    world.add_claim(storageClassName="fast",
                    resources={"requests": {"storage": "2Gi"}, "limits": {"storage": "3Gi"}})
    world.sync()
    [req] = world.csi.requests
    assert req.name == "pvc-uid-data"
    assert req.capacity_range.required_bytes == 2 * 1024**3
    assert req.capacity_range.limit_bytes == 3 * 1024**3
    assert dict(req.parameters) == {
        "type": "ssd", p.EXTRA_METADATA_PVC_NAME: "data",
        p.EXTRA_METADATA_PVC_NAMESPACE: "default", p.EXTRA_METADATA_PV_NAME: "pvc-uid-data",
        RECLAIM_POLICY_KEY: "Delete"}  # our driver says it records it (manifest)
    assert [c.mount.fs_type for c in req.volume_capabilities] == ["xfs"]
    assert not req.volume_capabilities[0].mount.mount_flags
    requisite = [dict(t.segments) for t in req.accessibility_requirements.requisite]
    assert requisite == [{KEY: "az-a"}, {KEY: "az-b"}]
    assert not req.HasField("volume_content_source")


def test_selected_node_pins_the_zone(world: World) -> None:
    world.add_class("late", volumeBindingMode="WaitForFirstConsumer")
    world.add_claim(storageClassName="late")
    world.sync()
    assert world.csi.requests == []  # waits for the scheduler
    world.add_claim(storageClassName="late", annotations={p.ANN_SELECTED_NODE: "node-1"})
    world.sync()
    req = world.csi.requests[0].accessibility_requirements
    assert [dict(t.segments) for t in req.requisite] == [{KEY: "az-b"}]
    assert [dict(t.segments) for t in req.preferred] == [{KEY: "az-b"}]


@pytest.mark.parametrize("change", [
    {"annotations": {p.ANN_STORAGE_PROVISIONER: "other.driver"}},
    {"volumeName": "somebody"},
    {"deleting": True},
])
def test_claims_that_are_not_ours_to_provision(world: World, change: Obj) -> None:
    world.add_claim(**change)
    world.sync()
    assert world.csi.requests == []
    assert world.rest.calls == []


def test_beta_provisioner_annotation_is_honoured(world: World) -> None:
    claim = world.add_claim()
    del claim["metadata"]["annotations"][p.ANN_STORAGE_PROVISIONER]
    claim["metadata"]["annotations"][p.ANN_BETA_STORAGE_PROVISIONER] = DRIVER
    world.informers.claims.cache.put("default/data", claim)
    world.sync()
    assert len(world.csi.requests) == 1


def test_selector_is_refused(world: World) -> None:
    world.add_claim(selector={"matchLabels": {"a": "b"}})
    with pytest.raises(DoNotRetrySoon):
        world.sync()
    assert world.recorder.events[-1][:2] == ("Warning", "ProvisioningFailed")
    assert "claim Selector is not supported" in world.recorder.events[-1][2]
    assert world.csi.requests == [] and not intent(world.claim())


def test_unknown_reserved_parameter_stops_before_any_write(world: World) -> None:
    world.add_class("typo", parameters={"csi.storage.k8s.io/fs-type": "xfs"})
    world.add_claim(storageClassName="typo")
    with pytest.raises(DoNotRetrySoon):
        world.sync()
    assert world.csi.requests == [] and not intent(world.claim())
    assert "csi.storage.k8s.io/fs-type" in world.recorder.events[-1][2]
    assert "pvc-uid-data" in world.recorder.events[-1][2]


def test_missing_class_is_reported(world: World) -> None:
    world.add_claim(storageClassName="ghost")
    with pytest.raises(DoNotRetrySoon):
        world.sync()
    assert 'storageclass.storage.k8s.io "ghost" not found' in world.recorder.events[-1][2]


# ---------------------------------------------------------------- errors


def test_in_progress_error_keeps_intent_and_retries_same_name(world: World) -> None:
    world.add_claim()
    world.csi.errors.append(RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow cloud"))
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert intent(world.claim())
    assert world.pv() is None
    assert "code = DeadlineExceeded desc = slow cloud" in world.recorder.events[-1][2]
    world.refresh()
    with pytest.raises(RetryAfter):  # held off, even if the claim changes meanwhile
        world.sync()
    world.wait_out_holdoff()
    world.sync()
    assert [r.name for r in world.csi.requests] == ["pvc-uid-data", "pvc-uid-data"]
    assert world.pv() is not None and not intent(world.claim())


def test_invalid_argument_is_permanent(world: World) -> None:
    world.add_claim()
    world.csi.errors.append(RpcError(grpc.StatusCode.INVALID_ARGUMENT,
                                     "set the StorageClass parameter 'type'"))
    with pytest.raises(DoNotRetrySoon):
        world.sync()
    kind, reason, message = world.recorder.events[-1]
    assert (kind, reason) == ("Warning", "ProvisioningFailed")
    assert "pvc-uid-data" in message and "set the StorageClass parameter 'type'" in message
    # A failed attempt still says that it started: its "Provisioning" is not withdrawn.
    assert [(r, h.cancelled) for r, _, h in world.recorder.deferrals] == [("Provisioning", False)]
    assert world.ctx.registry.get_sample_value(
        "controller_persistentvolumeclaim_provision_failed_total",
        {"class": "standard", "source": ""}) == 1


def test_resource_exhausted_on_selected_node_reschedules(world: World) -> None:
    world.add_claim(annotations={p.ANN_SELECTED_NODE: "node-0"})
    world.csi.errors.append(RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"))
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert p.ANN_SELECTED_NODE not in world.claim()["metadata"]["annotations"]
    assert "scheduler" in world.recorder.events[-1][2]


def test_resource_exhausted_without_selected_node_is_final(world: World) -> None:
    world.add_claim()
    world.csi.errors.append(RpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "quota"))
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert "quota" in world.recorder.events[-1][2]


def test_selected_node_that_vanished_reschedules(world: World) -> None:
    world.add_claim(annotations={p.ANN_SELECTED_NODE: "node-9"})
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert world.csi.requests == []
    assert p.ANN_SELECTED_NODE not in world.claim()["metadata"]["annotations"]


# ---------------------------------------------------------------- crash safety


def started_then_deleted(world: World, *,
                         code: grpc.StatusCode = grpc.StatusCode.DEADLINE_EXCEEDED,
                         **class_extra: Any) -> None:
    """A claim whose intent was recorded and whose CreateVolume failed with ``code``, then
    deleted. A call cut short (DEADLINE_EXCEEDED) made the volume anyway, and has surely
    ended by now in the driver."""
    if class_extra:
        world.add_class("standard", **class_extra)
    world.add_claim()
    world.csi.errors.append(RpcError(code, "slow cloud"))
    with pytest.raises(ProvisionFailed):
        world.sync()
    claim = world.refresh()
    claim["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    world.refresh()
    if code in IN_PROGRESS_CODES:
        world.csi.volumes["vol-1"] = "pvc-uid-data"
        world.now += world.csi.timeout + 60


def test_recorded_intent_is_one_patch_with_the_finalizer(world: World) -> None:
    world.add_claim()
    seen: list[tuple[Obj, int]] = []
    world.csi.on_create = lambda: seen.append((
        copy.deepcopy(world.claim()), sum(c[0] == "PATCH" for c in world.rest.calls)))
    world.sync()
    at_create, patches = seen[0]
    assert patches == 1  # finalizer, name and request: one write, before CreateVolume
    assert p.FINALIZER_PROVISIONING in at_create["metadata"]["finalizers"]
    recorded = Intent.from_json(at_create["metadata"]["annotations"][
        p.ANN_PROVISIONING_REQUEST])
    assert recorded.request == world.csi.requests[0]
    assert recorded.storage_class == "standard" and recorded.reclaim_policy == "Delete"
    assert not recorded.request.secrets


def test_deleted_mid_provisioning_deletes_its_volume_by_name(world: World) -> None:
    started_then_deleted(world)
    world.informers.classes.cache.pop("standard")  # the class is gone: nothing is resolved
    world.sync()
    assert len(world.csi.requests) == 1  # never created again
    assert [d.volume_id for d in world.csi.deleted] == ["vol-1"]
    assert world.pv() is None and not intent(world.claim())
    assert world.recorder.events[-1][1] == "ProvisioningCancelled"
    assert "deleted volume vol-1" in world.recorder.events[-1][2]


def test_deleted_claim_with_no_volume_goes_once_proven(world: World) -> None:
    started_then_deleted(world)
    world.csi.volumes.clear()  # Cinder never made it
    world.sync()
    assert world.csi.deleted == [] and not intent(world.claim())
    assert "no volume was made" in world.recorder.events[-1][2]


def test_absence_proves_nothing_while_a_create_may_still_run(world: World) -> None:
    started_then_deleted(world)
    world.csi.volumes.clear()
    world.now -= world.csi.timeout + 60  # our CreateVolume may still be running in the driver
    with pytest.raises(RetryAfter):
        world.sync()
    assert intent(world.claim())
    world.now += world.csi.timeout + 60
    world.ctx.earlier_calls_end = world.now + 5  # ... or one an earlier run of the loop sent
    with pytest.raises(RetryAfter):
        world.sync()
    assert intent(world.claim())
    world.ctx.earlier_calls_end = 0
    world.sync()
    assert not intent(world.claim())


def test_a_create_the_driver_answered_is_not_waited_for(world: World) -> None:
    started_then_deleted(world, code=grpc.StatusCode.RESOURCE_EXHAUSTED)
    world.sync()  # the call ended with the driver's answer: absence proves it at once
    assert not intent(world.claim()) and world.csi.deleted == []


def test_failed_delete_keeps_the_intent(world: World) -> None:
    started_then_deleted(world)
    world.csi.delete_errors.append(RpcError(grpc.StatusCode.FAILED_PRECONDITION, "in use"))
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert intent(world.claim())
    assert world.recorder.events[-1][1] == "VolumeFailedDelete"


def test_deleted_claim_whose_secret_is_gone_deletes_without_and_says_so(world: World) -> None:
    world.rest.put("/api/v1/namespaces/default/secrets/creds",
                   {"metadata": {"name": "creds"}, "data": {"token": "czNjcjN0"}})
    started_then_deleted(world, parameters={
        "csi.storage.k8s.io/provisioner-secret-name": "creds",
        "csi.storage.k8s.io/provisioner-secret-namespace": "default"})
    assert dict(world.csi.requests[0].secrets) == {"token": "s3cr3t"}
    del world.rest.objects["/api/v1/namespaces/default/secrets/creds"]
    world.sync()
    assert [dict(d.secrets) for d in world.csi.deleted] == [{}]
    assert any("provisioner secret" in m and "is gone" in m for _, _, m in world.recorder.events)
    assert not intent(world.claim())


def test_driver_without_names_is_asked_again_by_create(world: World) -> None:
    started_then_deleted(world)
    world.csi.manifest.clear()  # another CSI driver: ListVolumes says nothing of names
    world.sync()
    assert [r.name for r in world.csi.requests] == ["pvc-uid-data", "pvc-uid-data"]
    assert world.csi.requests[1].parameters == world.csi.requests[0].parameters
    assert [d.volume_id for d in world.csi.deleted] == ["vol-1"]
    assert not intent(world.claim())


def test_live_claim_resumes_from_its_recording_without_its_class(world: World) -> None:
    world.add_claim()
    world.csi.errors.append(RpcError(grpc.StatusCode.UNAVAILABLE, "down"))
    with pytest.raises(ProvisionFailed):
        world.sync()
    world.informers.classes.cache.pop("standard")
    world.refresh()
    world.wait_out_holdoff()
    world.sync()
    assert world.csi.requests[1] == world.csi.requests[0]
    pv = world.pv()
    assert pv is not None and pv["spec"]["storageClassName"] == "standard"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"


def test_restart_with_pv_present_only_cleans_up(world: World) -> None:
    world.add_claim(annotations={p.ANN_PROVISIONING: "pvc-uid-data"},
                    finalizers=[p.FINALIZER_PROVISIONING])
    world.informers.volumes.cache.put("pvc-uid-data", {
        "metadata": {"name": "pvc-uid-data"},
        "spec": {"claimRef": {"uid": "uid-data"}, "csi": {"volumeHandle": "vol-1"}}})
    world.sync()
    assert world.csi.requests == []
    assert not intent(world.claim())


def test_pv_already_created_by_an_earlier_attempt_is_accepted(world: World) -> None:
    world.add_claim(annotations={p.ANN_PROVISIONING: "pvc-uid-data"},
                    finalizers=[p.FINALIZER_PROVISIONING])
    world.rest.put("/api/v1/persistentvolumes/pvc-uid-data", {
        "metadata": {"name": "pvc-uid-data"},
        "spec": {"claimRef": {"uid": "uid-data"}, "csi": {"volumeHandle": "vol-1"}}})
    world.sync()
    assert not intent(world.claim())
    assert world.recorder.reasons()[-1] == "ProvisioningSucceeded"


def test_pv_name_taken_by_another_claim_fails(world: World) -> None:
    world.add_claim()
    world.rest.put("/api/v1/persistentvolumes/pvc-uid-data", {
        "metadata": {"name": "pvc-uid-data"},
        "spec": {"claimRef": {"uid": "someone-else"}, "csi": {"volumeHandle": "vol-9"}}})
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert intent(world.claim())  # kept: the volume exists and must not be forgotten


def test_no_second_provisioning_while_binding_is_pending(world: World) -> None:
    world.add_claim()
    world.sync()
    world.refresh()  # the intent is gone, but the PV informer has not seen the PV yet
    world.sync()
    assert len(world.csi.requests) == 1


# ---------------------------------------------------------------- secrets and sources


def test_loop_secret_is_read_and_registered(world: World) -> None:
    world.rest.put("/api/v1/namespaces/default/secrets/creds-data",
                   {"metadata": {"name": "creds-data"}, "data": {"token": "c2VjcmV0"}})
    world.add_class("sec", parameters={
        "csi.storage.k8s.io/provisioner-secret-name": "creds-${pvc.name}",
        "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}"})
    world.add_claim(storageClassName="sec")
    world.sync()
    assert dict(world.csi.requests[0].secrets) == {"token": "secret"}
    assert "secret" in world.recorder.secrets
    pv = world.pv()
    assert pv is not None
    assert pv["metadata"]["annotations"][p.ANN_DELETION_SECRET_NAME] == "creds-data"


def test_missing_provisioner_secret_is_reported(world: World) -> None:
    world.add_class("sec", parameters={
        "csi.storage.k8s.io/provisioner-secret-name": "nope",
        "csi.storage.k8s.io/provisioner-secret-namespace": "default"})
    world.add_claim(storageClassName="sec")
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert '"default/nope"' in world.recorder.events[-1][2]
    assert world.csi.requests == []


def bound_source(world: World, **spec: Any) -> None:
    source = world.add_claim("origin", volumeName="pvc-uid-origin", **spec)
    source["status"] = {"phase": "Bound", "capacity": {"storage": "1Gi"}}
    world.informers.claims.cache.put("default/origin", source)
    world.informers.volumes.cache.put("pvc-uid-origin", {
        "metadata": {"name": "pvc-uid-origin"},
        "spec": {"csi": {"driver": DRIVER, "volumeHandle": "vol-origin"}}})


def test_clone_protects_the_source_then_releases_it(world: World) -> None:
    bound_source(world)
    world.add_claim(dataSource={"kind": "PersistentVolumeClaim", "name": "origin"})
    protected: list[bool] = []
    world.csi.on_create = lambda: protected.append(
        p.FINALIZER_CLONE_SOURCE in world.claim("origin")["metadata"]["finalizers"])
    world.sync()
    assert protected == [True]
    req = world.csi.requests[0]
    assert req.volume_content_source.volume.volume_id == "vol-origin"
    world.refresh("origin")
    clone = world.refresh()
    clone["spec"]["volumeName"] = "pvc-uid-data"  # bound by the PV controller
    world.informers.claims.cache.put("default/data", clone)
    world.controller.sync("clone-source|default/origin")
    assert p.FINALIZER_CLONE_SOURCE not in world.claim("origin")["metadata"]["finalizers"]


def test_clone_source_must_share_class_and_fit(world: World) -> None:
    bound_source(world, storageClassName="other")
    world.add_claim(dataSource={"kind": "PersistentVolumeClaim", "name": "origin"})
    with pytest.raises(DoNotRetrySoon):
        world.sync()
    assert "same class" in world.recorder.events[-1][2]
    bound_source(world)
    world.add_claim(dataSource={"kind": "PersistentVolumeClaim", "name": "origin"},
                    resources={"requests": {"storage": "512Mi"}})
    world.wait_out_holdoff()
    with pytest.raises(DoNotRetrySoon):
        world.sync()
    assert "at least 1Gi" in world.recorder.events[-1][2]


def test_snapshot_source_without_the_api_is_reported(world: World) -> None:
    world.add_claim(dataSource={"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                "name": "snap"})
    with pytest.raises(ProvisionFailed):
        world.sync()
    assert "snapshot.storage.k8s.io/v1 API is not installed" in world.recorder.events[-1][2]
    assert world.csi.requests == []


def test_snapshot_source_resolves_the_handle(world: World) -> None:
    world.rest.put("/apis/snapshot.storage.k8s.io/v1", {"kind": "APIResourceList"})
    world.rest.put("/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots/snap",
                   {"metadata": {"name": "snap"},
                    "status": {"boundVolumeSnapshotContentName": "content-1",
                               "readyToUse": True}})
    world.rest.put("/apis/snapshot.storage.k8s.io/v1/volumesnapshotcontents/content-1",
                   {"metadata": {"name": "content-1"}, "status": {"snapshotHandle": "snap-id"}})
    world.add_claim(dataSource={"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                                "name": "snap"})
    world.sync()
    assert world.csi.requests[0].volume_content_source.snapshot.snapshot_id == "snap-id"


def test_populator_data_sources_are_left_alone(world: World) -> None:
    world.add_claim(dataSourceRef={"apiGroup": "example.com", "kind": "Widget", "name": "w"})
    world.sync()
    assert world.csi.requests == [] and world.recorder.events == []


# ---------------------------------------------------------------- the provisioning journal

JOURNAL_PATH = f"/api/v1/namespaces/default/configmaps/{configmap_name(DRIVER)}"


def with_journal(world: World, data: dict[str, str] | None = None) -> IntentJournal:
    """The loop as the runner builds it: intents go to the journal (loaded, as at a start)."""
    if data is not None:
        world.rest.put(JOURNAL_PATH, {"metadata": {"name": configmap_name(DRIVER)},
                                      "data": data})
    journal = IntentJournal(cast(Any, world.rest), "default", configmap_name(DRIVER),
                            linger=0.0, flush_after=3600)
    journal.load()
    world.ctx.journal = journal
    return journal


def journal_data(world: World) -> dict[str, str]:
    return dict(world.rest.objects.get(JOURNAL_PATH, {}).get("data") or {})


def test_journal_holds_the_intent_before_create_and_the_claim_is_never_written(
        world: World) -> None:
    journal = with_journal(world)
    world.add_claim()
    seen: list[dict[str, str]] = []
    world.csi.on_create = lambda: seen.append(journal_data(world))
    world.sync()
    [at_create] = seen
    recorded = JournalEntry.decode("pvc-uid-data", at_create["pvc-uid-data"])
    assert (recorded.namespace, recorded.name, recorded.uid) == ("default", "data", "uid-data")
    assert recorded.intent.request == world.csi.requests[0]
    assert not recorded.intent.request.secrets
    assert [c for c in world.rest.calls if c[1] == claim_path("data")] == []
    assert world.pv() is not None and not intent(world.claim())
    assert not journal.has("pvc-uid-data")  # done with at once...
    assert "pvc-uid-data" in journal_data(world)  # ...off the server with the next write
    journal.stop()
    assert journal_data(world) == {}


def test_forbidden_journal_records_on_the_claim(world: World) -> None:
    journal = with_journal(world)
    world.add_claim()
    original = world.rest.create

    def refuse(path: str, body: Obj, **kw: Any) -> Obj:
        if "/configmaps" in path:
            raise ApiException(status=403, reason="Forbidden")
        return original(path, body, **kw)

    world.rest.create = refuse  # type: ignore[method-assign]
    seen: list[Obj] = []
    world.csi.on_create = lambda: seen.append(copy.deepcopy(world.claim()))
    world.sync()
    assert p.FINALIZER_PROVISIONING in seen[0]["metadata"]["finalizers"]  # on the claim
    assert world.pv() is not None and not intent(world.claim())
    journal.stop()


def test_claim_deleted_while_down_is_finished_from_the_journal(world: World) -> None:
    """The claim and its class went while the loop was down; the journal entry alone deletes
    the volume a CreateVolume made, and then goes."""
    request = csi_pb2.CreateVolumeRequest(name="pvc-uid-data")
    entry = JournalEntry("default", "data", "uid-data", Intent(
        request=request, storage_class="standard", reclaim_policy="Delete", fs_type="ext4"))
    journal = with_journal(world, {"pvc-uid-data": entry.encode()})
    world.informers.classes.cache.pop("standard")
    world.csi.volumes["vol-1"] = "pvc-uid-data"
    world.sync()  # no claim under that key any more
    assert [d.volume_id for d in world.csi.deleted] == ["vol-1"]
    assert world.csi.requests == []  # never created again
    assert not journal.has("pvc-uid-data")
    assert world.recorder.events[-1][1] == "ProvisioningCancelled"
    journal.stop()
    assert journal_data(world) == {}


def test_claim_deleted_with_its_pv_made_leaves_it_to_the_pv(world: World) -> None:
    """A crash after the PV and before the entry's removal: the PV's reclaim policy decides."""
    request = csi_pb2.CreateVolumeRequest(name="pvc-uid-data")
    entry = JournalEntry("default", "data", "uid-data", Intent(
        request=request, storage_class="standard", reclaim_policy="Retain", fs_type="ext4"))
    journal = with_journal(world, {"pvc-uid-data": entry.encode()})
    world.rest.put("/api/v1/persistentvolumes/pvc-uid-data", {
        "metadata": {"name": "pvc-uid-data"},
        "spec": {"claimRef": {"uid": "uid-data"}, "csi": {"volumeHandle": "vol-1"}}})
    world.csi.volumes["vol-1"] = "pvc-uid-data"
    world.sync()
    assert world.csi.deleted == [] and not journal.has("pvc-uid-data")
    journal.stop()
