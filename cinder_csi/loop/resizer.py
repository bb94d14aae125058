"""The resize controller: the external-resizer's protocol on claims bound to our volumes.

A Bound PVC whose ``spec.resources.requests.storage`` exceeds ``status.capacity.storage``, on a
PV of our driver and a class with ``allowVolumeExpansion``, goes through:

1. PVC status: condition ``Resizing``, ``allocatedResources.storage`` = the request and
   ``allocatedResourceStatuses.storage`` = ``ControllerResizeInProgress``;
2. ControllerExpandVolume (a driver without EXPAND_VOLUME is left to the node, as the
   external-resizer's trivial resizer does);
3. PV ``spec.capacity.storage`` = the new size;
4. if the node must grow the filesystem: condition ``FileSystemResizePending`` and
   ``NodeResizePending`` for the kubelet; else ``status.capacity`` = the new size and the
   resize conditions cleared.

Events as the external-resizer's: Normal ``Resizing``, ``FileSystemResizeRequired`` and
``VolumeResizeSuccessful``; Warning ``VolumeResizeFailed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.caches import claim_class_name
from cinder_csi.loop.capabilities import RPC, volume_capability
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.errors import (
    AttemptFailed,
    CapabilityError,
    DoNotRetrySoon,
    QuantityError,
    rpc_code,
    rpc_error_text,
)
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import API_ERRORS, MERGE_PATCH, api_error_text
from cinder_csi.loop.kube.informer import Handlers
from cinder_csi.loop.kube.objects import (
    Obj,
    claim_path,
    name_of,
    namespace_of,
    object_key,
    pv_path,
    resource_version,
    split_key,
    timestamp,
)
from cinder_csi.loop.kube.quantity import format_bytes, parse_bytes
from cinder_csi.loop.kube.workqueue import WorkQueue
from cinder_csi.loop.protocol import (
    PVC_CONDITION_FS_RESIZE_PENDING,
    PVC_CONDITION_RESIZING,
)
from cinder_csi.loop.secrets import call_secrets
from cinder_csi.metrics import OPERATION_BUCKETS

log = logging.getLogger(__name__)

REASON_RESIZING = "Resizing"
REASON_FS_RESIZE_REQUIRED = "FileSystemResizeRequired"
REASON_RESIZE_SUCCESS = "VolumeResizeSuccessful"
REASON_RESIZE_FAILED = "VolumeResizeFailed"
FS_RESIZE_MESSAGE = ("Waiting for user to (re-)start a pod to finish file system resize of "
                     "volume on node.")
# Set on the PV when the node must still grow the filesystem: the claim's capacity before,
# which the PV controller reports if the claim is bound again meanwhile.
ANN_PRE_RESIZE_CAPACITY = "volume.alpha.kubernetes.io/pre-resize-capacity"
RESIZE_CONDITIONS = frozenset({PVC_CONDITION_RESIZING, PVC_CONDITION_FS_RESIZE_PENDING,
                               "ControllerResizeError", "NodeResizeError"})
# status.allocatedResourceStatuses values (RecoverVolumeExpansionFailure).
CONTROLLER_RESIZE_IN_PROGRESS = "ControllerResizeInProgress"
CONTROLLER_RESIZE_INFEASIBLE = "ControllerResizeInfeasible"
NODE_RESIZE_PENDING = "NodeResizePending"
# Codes after which the same request cannot succeed (external-resizer's "infeasible").
INFEASIBLE_CODES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE,
                              grpc.StatusCode.NOT_FOUND})


@dataclass(frozen=True)
class ResizeOptions:
    workers: int | None = None  # None: the context's worker count
    in_progress_retry_cap: float = 5.0
    shutdown_timeout: float = 30.0


class ResizeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter("cinder_csi_resize_total", "Volume expansions by result.",
                             ["result"], registry=registry)
        self.duration = Histogram("cinder_csi_resize_duration_seconds",
                                  "Time to expand a volume (controller part), by result.",
                                  ["result"], buckets=OPERATION_BUCKETS, registry=registry)

    def observe(self, ok: bool, seconds: float) -> None:
        result = "success" if ok else "failure"
        self.total.labels(result).inc()
        self.duration.labels(result).observe(seconds)


def _storage(resources: Mapping[str, Any] | None) -> int | None:
    value = (resources or {}).get("storage")
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except QuantityError:
        return None


def requested_bytes(pvc: Mapping[str, Any]) -> int | None:
    return _storage(((pvc.get("spec") or {}).get("resources") or {}).get("requests"))


def needs_resize(pvc: Mapping[str, Any]) -> bool:
    """Bound, and asking for more than it has (external-resizer's ``pvcNeedResize``)."""
    status = pvc.get("status") or {}
    if status.get("phase") != "Bound" or not (pvc.get("spec") or {}).get("volumeName"):
        return False
    wanted = requested_bytes(pvc)
    return wanted is not None and wanted > (_storage(status.get("capacity")) or 0)


def merge_resize_conditions(old: Iterable[Mapping[str, Any]],
                            new: Iterable[Obj]) -> list[Obj]:
    """Other conditions stay; resize conditions become exactly ``new``."""
    kept = [dict(c) for c in old if c.get("type") not in RESIZE_CONDITIONS]
    return kept + list(new)


def _condition(kind: str, message: str = "") -> Obj:
    cond: Obj = {"type": kind, "status": "True", "lastProbeTime": None,
                 "lastTransitionTime": timestamp()}
    if message:
        cond["message"] = message
    return cond


class ResizeController:
    name = "resizer"

    def __init__(self, ctx: LoopContext, options: ResizeOptions | None = None) -> None:
        self.ctx = ctx
        self.options = options or ResizeOptions()
        self.metrics = ResizeMetrics(ctx.registry)
        self.queue = WorkQueue("pvc-resize", metrics=ctx.queue_metrics)

    # ---- informers

    def register(self) -> None:
        self.ctx.informers.claims.add_handler(Handlers(
            self._claim_added, self._claim_updated, self._claim_deleted))

    def _claim_added(self, pvc: Obj) -> None:
        if needs_resize(pvc):
            self.queue.add(object_key(pvc))

    def _claim_updated(self, old: Obj, new: Obj) -> None:
        # Only a grown request or a resync: our own status writes must not bring the claim
        # back before the cache shows them.
        grew = (requested_bytes(new) or 0) > (requested_bytes(old) or 0)
        resync = resource_version(old) == resource_version(new)
        if (grew or resync) and needs_resize(new):
            self.queue.add(object_key(new))

    def _claim_deleted(self, pvc: Obj) -> None:
        self.queue.forget(object_key(pvc))

    # ---- running

    def run(self) -> None:
        informers = self.ctx.informers
        needed = (informers.claims, informers.volumes, informers.classes)
        while not self.ctx.stop.is_set():
            if all(informer.wait_for_sync(0.2) for informer in needed):
                break
        else:
            return
        self.queue.run_until(self.ctx.stop, self.options.workers or self.ctx.workers, self.sync,
                             timeout=self.options.shutdown_timeout)

    # ---- one claim

    def sync(self, key: str) -> None:
        namespace, name = split_key(key)
        pvc = self.ctx.informers.claims.cache.get(key)
        if pvc is None or not needs_resize(pvc):
            return
        pv = self.ctx.informers.volumes.cache.get(str(pvc["spec"]["volumeName"]))
        if pv is None or not self._ours(pv, pvc):
            return
        wanted = requested_bytes(pvc) or 0
        pv_size = _storage((pv.get("spec") or {}).get("capacity")) or 0
        if pv_size >= wanted and _has_condition(pvc, PVC_CONDITION_FS_RESIZE_PENDING):
            return  # the controller part is done; the kubelet finishes it
        self._check_class(pvc)
        started = time.monotonic()
        try:
            self._resize(pvc, pv, wanted)
        except AttemptFailed as exc:
            self.metrics.observe(False, time.monotonic() - started)
            message = self.ctx.recorder.redact(exc.message)
            if exc.quiet:
                log.info("PVC %s/%s: %s; retrying", namespace, name, message)
            else:
                log.warning("PVC %s/%s: resize failed: %s", namespace, name, message)
                self.ctx.recorder.warning(pvc, REASON_RESIZE_FAILED, message)
            raise exc.retry(lambda: self.queue.backoff.when(key),
                            soon=self.options.in_progress_retry_cap) from None
        self.metrics.observe(True, time.monotonic() - started)

    def _ours(self, pv: Obj, pvc: Obj) -> bool:
        spec = pv.get("spec") or {}
        if (spec.get("csi") or {}).get("driver") != self.ctx.driver:
            return False
        ref = spec.get("claimRef") or {}
        meta = pvc.get("metadata") or {}
        # The PV must be bound to this very claim (not a deleted namesake).
        return bool(ref.get("namespace") == meta.get("namespace")
                    and ref.get("uid") == meta.get("uid"))

    def _check_class(self, pvc: Obj) -> None:
        class_name = claim_class_name(pvc)
        sc = self.ctx.informers.classes.cache.get(class_name) if class_name else None
        if sc is not None and sc.get("allowVolumeExpansion") is True:
            return
        if sc is None:
            message = (f"storage class {class_name or '(none)'} not found; only claims of a "
                       "class that allows expansion can be resized")
        else:
            message = (f"storage class {class_name} does not allow expansion; set "
                       "allowVolumeExpansion: true on the class to resize this claim")
        self.ctx.recorder.warning(pvc, REASON_RESIZE_FAILED, message)
        # Retried rarely: the class may be changed (or created) later.
        raise DoNotRetrySoon(message)

    def _resize(self, pvc: Obj, pv: Obj, wanted: int) -> None:
        pv_name = name_of(pv)
        pvc = self._patch_claim(pvc, {
            "conditions": merge_resize_conditions(
                (pvc.get("status") or {}).get("conditions") or [],
                [_condition(PVC_CONDITION_RESIZING)]),
            "allocatedResources": {"storage": format_bytes(wanted)},
            "allocatedResourceStatuses": {"storage": CONTROLLER_RESIZE_IN_PROGRESS},
        }, "mark resize in progress")
        self.ctx.recorder.normal(pvc, REASON_RESIZING,
                                 f"External resizer is resizing volume {pv_name}")
        try:
            new_size, node_needed = self._expand(pv, wanted)
        except AttemptFailed as exc:
            if exc.code in INFEASIBLE_CODES:
                self._try_patch_claim(
                    pvc, {"allocatedResourceStatuses": {"storage": CONTROLLER_RESIZE_INFEASIBLE}})
            raise
        self._update_pv(pv, new_size, pvc if node_needed else None)
        status = pvc.get("status") or {}
        if node_needed:
            self._patch_claim(pvc, {
                "conditions": merge_resize_conditions(
                    status.get("conditions") or [],
                    [_condition(PVC_CONDITION_FS_RESIZE_PENDING, FS_RESIZE_MESSAGE)]),
                "allocatedResourceStatuses": {"storage": NODE_RESIZE_PENDING},
            }, "mark file system resize required")
            self.ctx.recorder.normal(pvc, REASON_FS_RESIZE_REQUIRED,
                                     "Require file system resize of volume on node")
            log.info("PVC %s: volume %s expanded to %s; the node grows the filesystem",
                     object_key(pvc), pv_name, format_bytes(new_size))
            return
        self._patch_claim(pvc, {
            "capacity": {"storage": format_bytes(new_size)},
            "conditions": merge_resize_conditions(status.get("conditions") or [], []) or None,
            "allocatedResourceStatuses": {"storage": None},
        }, "mark resize finished")
        self.ctx.recorder.normal(pvc, REASON_RESIZE_SUCCESS, "Resize volume succeeded")
        log.info("PVC %s: volume %s expanded to %s", object_key(pvc), pv_name,
                 format_bytes(new_size))

    def _expand(self, pv: Obj, wanted: int) -> tuple[int, bool]:
        """ControllerExpandVolume; (new size in bytes, node expansion required)."""
        pv_name = name_of(pv)
        try:
            caps = self.ctx.capabilities.get()
        except grpc.RpcError as exc:
            raise AttemptFailed(f"resize volume {pv_name} failed: {rpc_error_text(exc)}",
                                code=rpc_code(exc)) from None
        if RPC.EXPAND_VOLUME not in caps:
            return wanted, True  # node-only expansion: the kubelet does it all
        try:
            capability = volume_capability(
                pv, single_node_multi_writer=RPC.SINGLE_NODE_MULTI_WRITER in caps)
        except CapabilityError as exc:
            raise AttemptFailed(f"failed to get capabilities of volume {pv_name}: {exc}",
                                final=True) from None
        secrets = self._secrets(pv)
        csi = pv["spec"]["csi"]
        request = csi_pb2.ControllerExpandVolumeRequest(
            volume_id=str(csi.get("volumeHandle", "")),
            capacity_range=csi_pb2.CapacityRange(required_bytes=wanted),
            volume_capability=capability, secrets=secrets)
        try:
            response = self.ctx.csi.expand(request)
        except grpc.RpcError as exc:
            code = rpc_code(exc)
            raise AttemptFailed(self.ctx.recorder.redact(
                f"resize volume {pv_name} failed: {rpc_error_text(exc)}", secrets.values()),
                code=code, final=code in INFEASIBLE_CODES) from None
        # capacity_bytes is required by the spec; a driver that sends 0 got what was asked.
        new_size = int(response.capacity_bytes) or wanted
        return new_size, bool(response.node_expansion_required)

    def _secrets(self, pv: Obj) -> dict[str, str]:
        return call_secrets(self.ctx, pv, "controllerExpandSecretRef",
                            lambda ns, name: f"error getting secret {name} in namespace {ns}")

    def _update_pv(self, pv: Obj, new_size: int, fs_pending_claim: Obj | None) -> None:
        body: Obj = {"spec": {"capacity": {"storage": format_bytes(new_size)}}}
        if fs_pending_claim is not None:
            before = ((fs_pending_claim.get("status") or {}).get("capacity") or {}).get(
                "storage")
            if before:
                body["metadata"] = {"annotations": {ANN_PRE_RESIZE_CAPACITY: str(before)}}
        try:
            self.ctx.rest.patch(pv_path(name_of(pv)), body, content_type=MERGE_PATCH)
        except API_ERRORS as exc:
            raise AttemptFailed(f"update capacity of PV {name_of(pv)} to "
                                f"{format_bytes(new_size)} failed: {api_error_text(exc)}"
                                ) from None

    @staticmethod
    def _claim_status_path(pvc: Obj) -> str:
        return f"{claim_path(namespace_of(pvc), name_of(pvc))}/status"

    def _patch_claim(self, pvc: Obj, status: Obj, what: str) -> Obj:
        # The resourceVersion makes a stale cache copy fail (409) instead of overwriting
        # conditions someone else (the kubelet) set meanwhile.
        body = {"metadata": {"resourceVersion": pvc["metadata"].get("resourceVersion")},
                "status": status}
        try:
            return self.ctx.rest.patch(self._claim_status_path(pvc), body,
                                       content_type=MERGE_PATCH)
        except API_ERRORS as exc:
            conflict = isinstance(exc, ApiException) and exc.status == 409
            raise AttemptFailed(f"{what} on PVC {object_key(pvc)} failed: {api_error_text(exc)}",
                                quiet=conflict) from None

    def _try_patch_claim(self, pvc: Obj, status: Obj) -> None:
        try:
            self.ctx.rest.patch(self._claim_status_path(pvc), {"status": status},
                                content_type=MERGE_PATCH)
        except API_ERRORS as exc:
            log.info("PVC %s: could not record the failed resize: %s", object_key(pvc),
                     api_error_text(exc))


def _has_condition(pvc: Mapping[str, Any], kind: str) -> bool:
    return any(c.get("type") == kind and c.get("status") == "True"
               for c in (pvc.get("status") or {}).get("conditions") or [])
