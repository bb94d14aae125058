"""The volume controller: deletion of Released PVs and the deletion finalizer, as
external-provisioner does it.

A PV is ours when ``pv.kubernetes.io/provisioned-by`` names the driver, or when it is a
static PV whose ``spec.csi.driver`` is the driver. For ours:

- ``external-provisioner.volume.kubernetes.io/finalizer`` is added while the PV is Bound with
  reclaim policy Delete, and removed once the policy is Retain (nothing to do on release);
- a PV that is (or became) Retain first has that policy recorded on its volume through CSI
  (ControllerModifyVolume, mutable parameter ``cinder.csi.openstack.org/reclaim-policy``,
  when the driver says it records it), then ``ANN_RECLAIM_RECORDED`` set and the finalizer
  removed in one patch. The finalizer holds a PV deleted right after its switch to Retain
  until then, so the orphan sweep can never mistake its volume for a lost one;
- Released + Delete: never while a VolumeAttachment names the PV (it may still be attached
  somewhere); DeleteVolume with the deletion secret (without, and a Warning Event, once that
  Secret is gone: ``secrets.deletion_secrets``), then the PV object, then the finalizer;
- Released + Retain: left Released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc

from cinder_csi import FEATURE_RECLAIM_POLICY, RECLAIM_POLICY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop import caches as inf
from cinder_csi.loop import protocol as p
from cinder_csi.loop.capabilities import RPC
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.errors import RetryAfter, rpc_code, rpc_error_text
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import api_error_text
from cinder_csi.loop.kube.informer import Handlers
from cinder_csi.loop.kube.objects import (
    Obj,
    annotations_of,
    deleting,
    finalizers_of,
    get_or_none,
    merge_metadata,
    name_of,
    pv_path,
)
from cinder_csi.loop.kube.workqueue import WorkQueue
from cinder_csi.loop.pvspec import SecretRef
from cinder_csi.loop.secrets import deletion_secrets
from cinder_csi.metrics import OperationMetrics

log = logging.getLogger(__name__)

_ATTACHED_RECHECK = 30.0  # VolumeAttachment deletions requeue the PV; this is a safety net


def is_ours(pv: Mapping[str, Any], driver: str) -> bool:
    provisioned_by = annotations_of(pv).get(p.ANN_PROVISIONED_BY)
    if provisioned_by is not None:
        return provisioned_by == driver
    return ((pv.get("spec") or {}).get("csi") or {}).get("driver") == driver


def delete_metrics(ctx: LoopContext) -> OperationMetrics:
    return OperationMetrics(
        "controller_persistentvolume_delete", ["class"],
        done="Volumes deleted by the watch loop", failed="Volume deletions that failed",
        duration="Duration of volume deletions", registry=ctx.registry)


# ---------------------------------------------------------------- the controller


class VolumeController:
    name = "volumes"

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        self.queue = WorkQueue("volumes", metrics=ctx.queue_metrics)
        self.metrics = delete_metrics(ctx)

    def register(self) -> None:
        self.ctx.informers.volumes.add_handler(Handlers(
            on_add_func=self._enqueue_pv,
            on_update_func=lambda old, new: self._enqueue_pv(new),
        ))
        # A detach finishing may unblock a deletion that waited for it.
        self.ctx.informers.attachments.add_handler(Handlers(
            on_delete_func=self._enqueue_attachment_pv,
        ))

    def run(self) -> None:
        self.queue.run_until(self.ctx.stop, max(1, self.ctx.workers), self.sync, timeout=60)

    def _enqueue_pv(self, pv: Obj) -> None:
        if is_ours(pv, self.ctx.driver):
            self.queue.add(name_of(pv))

    def _enqueue_attachment_pv(self, va: Obj) -> None:
        for name in inf.attachment_pv(va):
            self.queue.add(name)

    # ---- reconcile

    def sync(self, name: str) -> None:
        pv = self.ctx.informers.volumes.cache.get(name)
        if pv is None or not is_ours(pv, self.ctx.driver):
            return
        spec = pv.get("spec") or {}
        policy = spec.get("persistentVolumeReclaimPolicy") or "Retain"
        phase = (pv.get("status") or {}).get("phase")
        has_finalizer = p.FINALIZER_PV_DELETION in finalizers_of(pv)
        if policy != "Delete":
            recorded = self._record_retain(pv)
            if has_finalizer or recorded:
                merge_metadata(self.ctx.rest, pv, remove_finalizers=[p.FINALIZER_PV_DELETION],
                               annotations=recorded)
            return
        # A PV deleted by hand is deletable once pv-protection lets go (no claim uses it).
        protected = "kubernetes.io/pv-protection" in finalizers_of(pv)
        released = phase == "Released" or (deleting(pv) and phase != "Bound" and not protected)
        if released:
            self._delete(pv)
        elif phase == "Bound" and not has_finalizer and not deleting(pv):
            merge_metadata(self.ctx.rest, pv, add_finalizers=[p.FINALIZER_PV_DELETION])

    def _record_retain(self, pv: Obj) -> dict[str, str | None]:
        """Mark the PV's volume Retain through CSI, once; the annotation to set (or none).

        Raises (keeping the finalizer) while the driver cannot record it: a volume that had a
        Retain PV must never look like a lost one to the orphan sweep."""
        handle = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle")
        if (not handle or annotations_of(pv).get(p.ANN_RECLAIM_RECORDED) == "Retain"
                or FEATURE_RECLAIM_POLICY not in self.ctx.csi.features()
                or RPC.MODIFY_VOLUME not in self.ctx.capabilities.get()):
            return {}
        try:
            self.ctx.csi.modify(csi_pb2.ControllerModifyVolumeRequest(
                volume_id=str(handle), mutable_parameters={RECLAIM_POLICY_KEY: "Retain"}))
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                raise
        log.info("PV %s is Retain: recorded on its volume %s", name_of(pv), handle)
        return {p.ANN_RECLAIM_RECORDED: "Retain"}

    def _delete(self, pv: Obj) -> None:
        name = name_of(pv)
        attachments = self.ctx.informers.attachments.cache.by_index(inf.BY_PV, name)
        if attachments:
            # Deleting an attached volume would fail in Cinder or, worse, pull it from a node.
            raise RetryAfter(_ATTACHED_RECHECK, f"PV {name} is still named by VolumeAttachment "
                             f"{name_of(attachments[0])}")
        spec = pv.get("spec") or {}
        storage_class = str(spec.get("storageClassName") or "")
        handle = str((spec.get("csi") or {}).get("volumeHandle") or "")
        started = time.monotonic()
        if handle:
            try:
                self._delete_volume(pv, handle)
            except grpc.RpcError as exc:
                self.metrics.failed.labels(storage_class).inc()
                self.ctx.recorder.warning(
                    pv, "VolumeFailedDelete",
                    f"failed to delete volume {handle} of PV {name}: {rpc_error_text(exc)}")
                raise
            except ApiException as exc:
                self.metrics.failed.labels(storage_class).inc()
                self.ctx.recorder.warning(
                    pv, "VolumeFailedDelete",
                    f"failed to delete volume {handle} of PV {name}: cannot read the deletion "
                    f"secret named by its {p.ANN_DELETION_SECRET_NAME} annotations: "
                    f"{api_error_text(exc)}")
                raise
        log.info("deleted volume %s of PV %s", handle, name)
        try:
            answer = self.ctx.rest.delete(pv_path(name))
        except ApiException as exc:
            if exc.status != 404:
                raise
            return
        # The API answers a deletion that finalizers hold up with the object itself; only an
        # answer without it (a Status) needs a read.
        fresh = answer if answer.get("kind") == "PersistentVolume" else get_or_none(
            self.ctx.rest, pv_path(name))
        if fresh is not None:
            merge_metadata(self.ctx.rest, fresh, remove_finalizers=[p.FINALIZER_PV_DELETION])
        self.metrics.total.labels(storage_class).inc()
        self.metrics.duration.labels(storage_class).observe(time.monotonic() - started)

    def _delete_volume(self, pv: Obj, handle: str) -> None:
        ann = annotations_of(pv)
        secret_name = ann.get(p.ANN_DELETION_SECRET_NAME) or ""
        secret_ns = ann.get(p.ANN_DELETION_SECRET_NAMESPACE) or ""
        ref = SecretRef(secret_name, secret_ns) if secret_name and secret_ns else None
        secrets = deletion_secrets(self.ctx, pv, ref, handle)
        try:
            self.ctx.csi.delete_volume(
                csi_pb2.DeleteVolumeRequest(volume_id=handle, secrets=secrets))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
