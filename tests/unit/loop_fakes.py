"""Fakes shared by the watch loop's unit tests: an in-memory API, a CSI client, informers.

The fake API applies merge patches and the strategic-merge finalizer directives the
controllers send, honours ``metadata.resourceVersion`` (409 on a stale one), splits
``/status`` from the main resource, and lets an object with a deletionTimestamp vanish once its
last finalizer goes, so tests check end states rather than call lists.

The informers are real ones that never list: tests fill their caches (``World.sync``) and
deliver events to the handlers a controller registered (``FakeInformer.added`` and friends).
"""

from __future__ import annotations

import base64
import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.caches import (
    BY_CLAIM,
    BY_CLASS,
    BY_NODE,
    BY_PV,
    BY_VOLUME_HANDLE,
    Informers,
    attachment_node,
    attachment_pv,
    claim_class,
    claim_ref_key,
    volume_handle,
)
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import MERGE_PATCH, STRATEGIC_MERGE_PATCH
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.kube.informer import EventHandler, Informer
from cinder_csi.loop.kube.objects import Obj, object_key
from cinder_csi.loop.kube.workqueue import WorkQueueMetrics

DRIVER = "cinder.csi.openstack.org"
VOLUME_ID = "3f1c1b9e-0000-4000-8000-000000000001"
NODE_ID = "9a9a9a9a-0000-4000-8000-00000000000a"
RPC = csi_pb2.ControllerServiceCapability.RPC


class RpcError(grpc.RpcError, grpc.Call):
    """A gRPC error as the real channel raises it: ``code()`` and ``details()``."""

    def __init__(self, code: grpc.StatusCode, details: str = "boom") -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key == "$deleteFromPrimitiveList/finalizers":
            out["finalizers"] = [f for f in out.get("finalizers") or [] if f not in value]
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _strategic(obj: Obj, patch: Obj) -> Obj:
    patch = copy.deepcopy(patch)
    adding = (patch.get("metadata") or {}).pop("finalizers", None)
    out: Obj = _merge(obj, patch)
    if adding:
        have = out["metadata"].setdefault("finalizers", [])
        have.extend(f for f in adding if f not in have)
    return out


class FakeRest:
    def __init__(self) -> None:
        self.objects: dict[str, Obj] = {}
        self.calls: list[tuple[str, str, Any]] = []
        self.fail: dict[str, list[BaseException]] = {}  # path -> errors for the next calls
        self.events: list[Obj] = []
        self._rv = 100
        self._lock = threading.Lock()

    def put(self, path: str, obj: Obj) -> Obj:
        self._rv += 1
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        self.objects[path] = obj
        return copy.deepcopy(obj)

    def _failure(self, path: str) -> None:
        pending = self.fail.get(path)
        if pending:
            raise pending.pop(0)

    def get(self, path: str, **kw: Any) -> Obj:
        with self._lock:
            self.calls.append(("get", path, None))
            self._failure(path)
            if path not in self.objects:
                raise ApiException(status=404, reason="Not Found")
            return copy.deepcopy(self.objects[path])

    def create(self, path: str, body: Obj, **kw: Any) -> Obj:
        with self._lock:
            self.calls.append(("create", path, body))
            if path.endswith("/events"):
                self.events.append(copy.deepcopy(body))
            return copy.deepcopy(body)

    def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH,
              **kw: Any) -> Obj:
        with self._lock:
            self.calls.append(("patch", path, copy.deepcopy(body)))
            self._failure(path)
            base, status = (path[: -len("/status")], True) if path.endswith("/status") \
                else (path, False)
            old = self.objects.get(base)
            if old is None:
                raise ApiException(status=404, reason="Not Found")
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise ApiException(status=409, reason="Conflict")
            new = _strategic(old, body) if content_type == STRATEGIC_MERGE_PATCH \
                else _merge(old, body)
            if status:  # only the status moves through /status
                new = {**copy.deepcopy(old), "status": new.get("status") or {}}
            else:
                new["status"] = copy.deepcopy(old.get("status") or {})
            self._rv += 1
            new["metadata"]["resourceVersion"] = str(self._rv)
            if new["metadata"].get("deletionTimestamp") and not new["metadata"].get(
                    "finalizers"):
                del self.objects[base]
            else:
                self.objects[base] = new
            return copy.deepcopy(new)

    def patches(self, path: str) -> list[Any]:
        return [body for verb, p, body in self.calls if verb == "patch" and p == path]

    def event_reasons(self) -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.events]


class FakeCSI:
    def __init__(self, caps: set[int] | None = None) -> None:
        self.caps = caps if caps is not None else {
            RPC.CREATE_DELETE_VOLUME, RPC.PUBLISH_UNPUBLISH_VOLUME, RPC.LIST_VOLUMES,
            RPC.LIST_VOLUMES_PUBLISHED_NODES, RPC.EXPAND_VOLUME}
        self.requests: list[tuple[str, Any]] = []
        self.errors: dict[str, list[grpc.RpcError]] = {}
        self.publish_context = {"DevicePath": "/dev/vdb"}
        self.expand_response = csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=2 << 30, node_expansion_required=True)
        self.volumes: list[csi_pb2.ListVolumesResponse.Entry] = []
        self.page = 2
        self.hook: Callable[[str], None] | None = None

    def _take(self, method: str, request: Any) -> None:
        self.requests.append((method, request))
        if self.hook is not None:
            self.hook(method)
        pending = self.errors.get(method)
        if pending:
            raise pending.pop(0)

    def controller_capabilities(self) -> set[int]:
        self._take("ControllerGetCapabilities", None)
        return set(self.caps)

    def publish(self, request: csi_pb2.ControllerPublishVolumeRequest) -> Any:
        self._take("ControllerPublishVolume", request)
        return csi_pb2.ControllerPublishVolumeResponse(publish_context=self.publish_context)

    def unpublish(self, request: csi_pb2.ControllerUnpublishVolumeRequest) -> Any:
        self._take("ControllerUnpublishVolume", request)
        return csi_pb2.ControllerUnpublishVolumeResponse()

    def expand(self, request: csi_pb2.ControllerExpandVolumeRequest) -> Any:
        self._take("ControllerExpandVolume", request)
        return self.expand_response

    def list_volumes(self, request: csi_pb2.ListVolumesRequest) -> Any:
        self._take("ListVolumes", request)
        start = int(request.starting_token or 0)
        end = start + self.page
        return csi_pb2.ListVolumesResponse(
            entries=self.volumes[start:end],
            next_token=str(end) if end < len(self.volumes) else "")

    def get_volume(self, request: csi_pb2.ControllerGetVolumeRequest) -> Any:
        self._take("ControllerGetVolume", request)
        for entry in self.volumes:
            if entry.volume.volume_id == request.volume_id:
                status = csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
                    published_node_ids=entry.status.published_node_ids)
                if entry.status.HasField("volume_condition"):
                    status.volume_condition.CopyFrom(entry.status.volume_condition)
                return csi_pb2.ControllerGetVolumeResponse(volume=entry.volume, status=status)
        raise RpcError(grpc.StatusCode.NOT_FOUND, f"volume {request.volume_id} not found")

    def published(self, volume_id: str, *nodes: str) -> None:
        self.volumes.append(csi_pb2.ListVolumesResponse.Entry(
            volume=csi_pb2.Volume(volume_id=volume_id),
            status=csi_pb2.ListVolumesResponse.VolumeStatus(published_node_ids=list(nodes))))

    def calls(self, method: str) -> list[Any]:
        return [r for m, r in self.requests if m == method]


def _never(**kw: Any) -> Any:
    raise AssertionError("unit tests fill the cache by hand")


class FakeInformer(Informer):
    """An informer that never lists; tests deliver its events to the registered handlers."""

    def __init__(self, name: str, **indexers: Callable[[Obj], Any]) -> None:
        super().__init__(name, _never, indexers=indexers)
        self.handlers: list[EventHandler] = []

    def add_handler(self, handler: EventHandler) -> None:
        super().add_handler(handler)
        self.handlers.append(handler)

    def added(self, obj: Obj) -> None:
        for handler in self.handlers:
            handler.on_add(obj)

    def updated(self, old: Obj, new: Obj) -> None:
        for handler in self.handlers:
            handler.on_update(old, new)

    def deleted(self, obj: Obj) -> None:
        for handler in self.handlers:
            handler.on_delete(obj)


@dataclass
class FakeInformers(Informers):
    """``Informers`` whose members are ``FakeInformer``s."""

    claims: FakeInformer
    volumes: FakeInformer
    classes: FakeInformer
    attachments: FakeInformer
    csi_nodes: FakeInformer
    nodes: FakeInformer


def make_informers() -> FakeInformers:
    return FakeInformers(
        claims=FakeInformer("claims", **{BY_CLASS: claim_class}),
        volumes=FakeInformer("volumes", **{BY_CLAIM: claim_ref_key,
                                           BY_VOLUME_HANDLE: volume_handle}),
        classes=FakeInformer("classes"),
        attachments=FakeInformer("attachments", **{BY_PV: attachment_pv,
                                                   BY_NODE: attachment_node}),
        csi_nodes=FakeInformer("csinodes"),
        nodes=FakeInformer("nodes"),
    )


class World:
    """The fake API plus informer caches that mirror it on demand (``sync``)."""

    PATHS = {
        "volumeattachments": "/apis/storage.k8s.io/v1/volumeattachments/{name}",
        "persistentvolumes": "/api/v1/persistentvolumes/{name}",
        "persistentvolumeclaims": "/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}",
        "storageclasses": "/apis/storage.k8s.io/v1/storageclasses/{name}",
        "csinodes": "/apis/storage.k8s.io/v1/csinodes/{name}",
        "secrets": "/api/v1/namespaces/{ns}/secrets/{name}",
    }
    INFORMER = {"volumeattachments": "attachments", "persistentvolumes": "volumes",
                "persistentvolumeclaims": "claims", "storageclasses": "classes",
                "csinodes": "csi_nodes"}

    def __init__(self, caps: set[int] | None = None) -> None:
        self.rest = FakeRest()
        self.csi = FakeCSI(caps)
        self.registry = CollectorRegistry()
        self.informers = make_informers()
        self.recorder = EventRecorder(self.rest, DRIVER, host="test",  # type: ignore[arg-type]
                                      retry_pauses=())
        self.ctx = LoopContext(
            driver=DRIVER, csi=self.csi, rest=self.rest,  # type: ignore[arg-type]
            informers=self.informers, recorder=self.recorder, registry=self.registry,
            queue_metrics=WorkQueueMetrics(self.registry), workers=2)

    def path(self, plural: str, name: str, ns: str | None = None) -> str:
        return self.PATHS[plural].format(name=name, ns=ns)

    def add(self, plural: str, obj: Obj) -> Obj:
        meta = obj["metadata"]
        stored = self.rest.put(self.path(plural, meta["name"], meta.get("namespace")), obj)
        self.sync()
        return stored

    def get(self, plural: str, name: str, ns: str | None = None) -> Obj | None:
        obj = self.rest.objects.get(self.path(plural, name, ns))
        return copy.deepcopy(obj) if obj is not None else None

    def sync(self) -> None:
        """Make every cache match the fake API (what the informers would do)."""
        for plural, attr in self.INFORMER.items():
            cache = getattr(self.informers, attr).cache
            prefix = self.PATHS[plural].split("{")[0]
            fresh = {object_key(o): o for p, o in self.rest.objects.items()
                     if p.startswith(prefix) and (plural != "persistentvolumeclaims"
                                                  or "/persistentvolumeclaims/" in p)}
            for key in set(cache.keys()) - fresh.keys():
                cache.pop(key)
            for key, obj in fresh.items():
                cache.put(key, copy.deepcopy(obj))

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def pv(name: str = "pv-1", *, handle: str = VOLUME_ID, **spec: Any) -> Obj:
    csi = {"driver": DRIVER, "volumeHandle": handle, "fsType": "ext4",
           "volumeAttributes": {"type": "ssd"}}
    csi.update(spec.pop("csi", {}))
    body = {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"}, "csi": csi,
            "claimRef": {"namespace": "apps", "name": "data", "uid": "claim-uid"}}
    body.update(spec)
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name},
            "spec": body}


def va(name: str = "va-1", *, pv_name: str = "pv-1", node: str = "node-1",
       attacher: str = DRIVER, **meta: Any) -> Obj:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
            "metadata": {"name": name, **meta},
            "spec": {"attacher": attacher, "nodeName": node,
                     "source": {"persistentVolumeName": pv_name}},
            "status": {"attached": False}}


def csinode(node: str = "node-1", node_id: str = NODE_ID) -> Obj:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "CSINode", "metadata": {"name": node},
            "spec": {"drivers": [{"name": "other.csi", "nodeID": "x"},
                                 {"name": DRIVER, "nodeID": node_id}]}}


def secret(name: str, ns: str, **values: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}
