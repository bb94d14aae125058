"""The attachment controller: the external-attacher's protocol on VolumeAttachments.

For each VolumeAttachment whose ``spec.attacher`` is our driver:

- attach (no deletionTimestamp, not attached yet): refuse a PV being deleted; put the
  ``external-attacher/<driver>`` finalizer on the PV, then on the VA with the node-id
  annotation; ControllerPublishVolume; then ``status.attached`` + ``attachmentMetadata``, or
  ``status.attachError``;
- detach (deletionTimestamp and our finalizer): ControllerUnpublishVolume to the node ID of the
  CSINode, else of the VA annotation (so a node that is gone still gets its volumes detached);
  then clear the status, then drop our finalizer; or ``status.detachError``;
- the PV finalizer goes once no VolumeAttachment names the PV any more;
- every ``reconcile_period`` one paged ListVolumes finds attached VAs whose volume the driver no
  longer reports published on that node, and marks them detached so they are attached again.

Attach and detach have their own queues and worker pools, so a burst of detaches cannot
delay attaches (kubernetes-csi/external-attacher#761).

This module holds the informer handlers, the queues and the attach/detach/PV-finalizer steps.
What a VA resolves to is in ``attach_targets``, our patches in ``attach_writes``, how an attempt
is reported and retried in ``attach_outcomes``, the ListVolumes pass in ``attach_reconcile``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from kubernetes.client.exceptions import ApiException

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.attach_common import (
    ATTACH,
    DETACH,
    PV_PATH,
    VA_PATH,
    AttachMetrics,
    AttemptFailed,
    attached_by,
    deleting,
    finalizers_of,
    meta_of,
    name_of,
    rpc_code,
    rpc_message,
)
from cinder_csi.loop.attach_outcomes import AttachOutcomes
from cinder_csi.loop.attach_reconcile import AttachReconciler
from cinder_csi.loop.attach_targets import AttachTargets
from cinder_csi.loop.attach_writes import AttachWrites
from cinder_csi.loop.caches import BY_NODE, BY_PV
from cinder_csi.loop.capabilities import (
    RPC,
    CapabilityError,
    DriverCapabilities,
    publish_readonly,
    volume_capability,
)
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.kube.client import STRATEGIC_MERGE_PATCH
from cinder_csi.loop.kube.informer import Handlers, Informer, Obj
from cinder_csi.loop.kube.workqueue import WorkQueue
from cinder_csi.loop.protocol import attacher_finalizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttachOptions:
    attach_workers: int | None = None  # None: the context's worker count
    detach_workers: int | None = None
    pv_workers: int = 4
    reconcile_period: float = 60.0  # 0 turns the ListVolumes reconcile off
    list_page_size: int = 500
    default_fs_type: str = ""  # external-attacher's --default-fstype
    in_progress_retry_cap: float = 5.0  # longest wait after a maybe-still-running call
    shutdown_timeout: float = 30.0


def _comparable(va: Obj) -> Obj:
    """A VA without the fields our own error writes change, to skip reacting to them."""
    meta = {k: v for k, v in meta_of(va).items() if k not in ("resourceVersion", "managedFields")}
    status = {k: v for k, v in (va.get("status") or {}).items()
              if k not in ("attachError", "detachError")}
    return {**va, "metadata": meta, "status": status}


class AttachmentController:
    name = "attachments"

    def __init__(self, ctx: LoopContext, options: AttachOptions | None = None) -> None:
        self.ctx = ctx
        self.options = options or AttachOptions()
        self.finalizer = attacher_finalizer(ctx.driver)
        self.metrics = AttachMetrics(ctx.registry)
        self.capabilities = DriverCapabilities(ctx.csi)
        self.attach_queue = WorkQueue("va-attach", metrics=ctx.queue_metrics)
        self.detach_queue = WorkQueue("va-detach", metrics=ctx.queue_metrics)
        self.pv_queue = WorkQueue("va-pv", metrics=ctx.queue_metrics)
        self.targets = AttachTargets(ctx, self.capabilities)
        self.writes = AttachWrites(ctx, self.finalizer)
        self.outcomes = AttachOutcomes(
            ctx, self.metrics, in_progress_retry_cap=self.options.in_progress_retry_cap)
        self.reconciler = AttachReconciler(
            ctx, period=self.options.reconcile_period, page_size=self.options.list_page_size,
            targets=self.targets, writes=self.writes, metrics=self.metrics,
            force=self._force_attach, attach_queue=self.attach_queue)
        self._lock = threading.Lock()
        self._force: set[str] = set()  # VAs the reconcile wants attached again
        # VA -> resourceVersions we saw before our own last write to it. The informer lags
        # behind our writes: a cache copy at one of these versions is older than what we
        # wrote, so acting on it would repeat the operation (its watch event brings us back).
        self._superseded: dict[str, set[str]] = {}
        self._reconcile_thread: threading.Thread | None = None

    # ---- informers

    @property
    def _vas(self) -> Informer:
        return self.ctx.informers.attachments

    def register(self) -> None:
        informers = self.ctx.informers
        informers.attachments.add_handler(Handlers(
            self._va_added, self._va_updated, self._va_deleted))
        informers.volumes.add_handler(Handlers(
            self._pv_changed, lambda old, new: self._pv_changed(new)))
        informers.csi_nodes.add_handler(Handlers(
            self._csinode_changed, lambda old, new: self._csinode_changed(new)))

    def _ours(self, va: Obj) -> bool:
        return attached_by(va, self.ctx.driver)

    def _route(self, va: Obj) -> None:
        name = name_of(va)
        if deleting(va):
            self.detach_queue.add(name)
        else:
            self.attach_queue.add(name)

    def _va_added(self, va: Obj) -> None:
        if self._ours(va):
            self._route(va)

    def _va_updated(self, old: Obj, new: Obj) -> None:
        if not self._ours(new):
            return
        resync = meta_of(old).get("resourceVersion") == meta_of(new).get("resourceVersion")
        if resync or _comparable(old) != _comparable(new):
            self._route(new)

    def _va_deleted(self, va: Obj) -> None:
        name = name_of(va)
        with self._lock:
            self._force.discard(name)
            self._superseded.pop(name, None)
        self.outcomes.forget(name)
        pv_name = self.targets.pv_name(va)
        if pv_name:
            self.pv_queue.add(pv_name)

    def _pv_changed(self, pv: Obj) -> None:
        name = name_of(pv)
        vas = self._vas.cache.by_index(BY_PV, name)
        if self.finalizer in finalizers_of(pv):
            if not vas:
                self.pv_queue.add(name)
            return
        # A PV of ours without the finalizer while we attach it: put it back (the finalizer
        # may have been removed just as a new attachment appeared).
        for va in vas:
            if self._ours(va) and not deleting(va):
                self.attach_queue.add(name_of(va))

    def _csinode_changed(self, csinode: Obj) -> None:
        # A node plugin (re)registered: attachments waiting for its node ID can go on.
        for va in self._vas.cache.by_index(BY_NODE, name_of(csinode)):
            if not self._ours(va):
                continue
            if deleting(va):
                if self.finalizer in finalizers_of(va):
                    self.detach_queue.add(name_of(va))
            elif (va.get("status") or {}).get("attached") is not True:
                self.attach_queue.add(name_of(va))

    # ---- running

    def run(self) -> None:
        if not self._wait_for_sync():
            return
        opts = self.options
        self.attach_queue.start(opts.attach_workers or self.ctx.workers, self.sync_attach)
        self.detach_queue.start(opts.detach_workers or self.ctx.workers, self.sync_detach)
        self.pv_queue.start(max(1, opts.pv_workers), self.sync_pv)
        if opts.reconcile_period > 0:
            self._reconcile_thread = self.reconciler.start()
        self.ctx.stop.wait()
        queues = (self.attach_queue, self.detach_queue, self.pv_queue)
        for queue in queues:
            queue.shutdown()
        deadline = time.monotonic() + opts.shutdown_timeout
        for queue in queues:
            queue.join(max(0.0, deadline - time.monotonic()))
        if self._reconcile_thread is not None:
            self._reconcile_thread.join(max(0.0, deadline - time.monotonic()))

    def _wait_for_sync(self) -> bool:
        # Workers must see every VA before deciding a PV needs no finalizer.
        needed = (self.ctx.informers.attachments, self.ctx.informers.volumes,
                  self.ctx.informers.csi_nodes)
        while not self.ctx.stop.is_set():
            if all(informer.wait_for_sync(0.2) for informer in needed):
                return True
        return False

    def reconcile(self) -> int:
        """One ListVolumes pass (see ``attach_reconcile``); how many VAs were found lost."""
        return self.reconciler.reconcile()

    def _force_attach(self, name: str) -> None:
        with self._lock:
            self._force.add(name)

    # ---- attach

    def sync_attach(self, name: str) -> None:
        va = self._vas.cache.get(name)
        if va is None or not self._ours(va) or self._stale(va):
            return
        if deleting(va):
            self.detach_queue.add(name)
            return
        started = time.monotonic()
        try:
            if not self._attach(va):
                return
        except AttemptFailed as exc:
            self.outcomes.failed(ATTACH, va, exc, started)
            raise self.outcomes.retry(self.attach_queue, name, exc) from None
        self.outcomes.succeeded(ATTACH, name, started)

    def _stale(self, va: Obj) -> bool:
        name, rv = name_of(va), str(meta_of(va).get("resourceVersion") or "")
        with self._lock:
            seen = self._superseded.get(name)
            if seen is None:
                return False
            if rv in seen:
                return True
            del self._superseded[name]  # the cache caught up with (or passed) our write
            return False

    def _wrote(self, *versions: Obj) -> None:
        """Remember the versions of a VA that our last write to it superseded."""
        rvs = {str(meta_of(v).get("resourceVersion") or "") for v in versions}
        with self._lock:
            self._superseded[name_of(versions[0])] = rvs - {""}

    def _attach(self, va: Obj) -> bool:
        """Attach; False when there was nothing to do."""
        name = name_of(va)
        with self._lock:
            forced = name in self._force
            self._force.discard(name)
        pv_name = self.targets.source_pv(va)
        if (va.get("status") or {}).get("attached") is True and not forced:
            current = self.ctx.informers.volumes.cache.get(pv_name)
            if current is not None and not deleting(current):
                self.writes.ensure_pv_finalizer(current)  # heals a finalizer lost to a race
            return False
        pv = self.targets.pv(pv_name)
        if deleting(pv):
            raise AttemptFailed(f'PersistentVolume "{pv_name}" is marked for deletion')
        pv = self.writes.ensure_pv_finalizer(pv)
        caps = self.targets.driver_capabilities()
        try:
            capability = volume_capability(
                pv, single_node_multi_writer=RPC.SINGLE_NODE_MULTI_WRITER in caps,
                default_fs_type=self.options.default_fs_type)
        except CapabilityError as exc:
            raise AttemptFailed(str(exc), final=True) from None
        handle = self.targets.handle(pv)
        secrets = self.targets.secrets(pv)
        node_id = self.targets.node_id(va, fallback=False)
        before = va
        va = self.writes.ensure_va_marks(va, node_id)
        csi = (pv.get("spec") or {}).get("csi") or {}
        request = csi_pb2.ControllerPublishVolumeRequest(
            volume_id=handle, node_id=node_id, volume_capability=capability,
            readonly=publish_readonly(pv, supports_publish_readonly=RPC.PUBLISH_READONLY in caps),
            secrets=secrets,
            volume_context={str(k): str(v) for k, v in
                            (csi.get("volumeAttributes") or {}).items()},
        )
        log.info("attaching volume %s to node %s (%s) for VolumeAttachment %s", handle,
                 (va.get("spec") or {}).get("nodeName"), node_id, name)
        try:
            response = self.ctx.csi.publish(request)
        except grpc.RpcError as exc:
            raise AttemptFailed(self._redact(rpc_message(exc), secrets.values()),
                                code=rpc_code(exc)) from None
        self.writes.mark_attached(
            va, {str(k): str(v) for k, v in response.publish_context.items()})
        self._wrote(before, va)
        log.info("attached volume %s to node %s for VolumeAttachment %s", handle, node_id, name)
        return True

    # ---- detach

    def sync_detach(self, name: str) -> None:
        va = self._vas.cache.get(name)
        if va is None or not self._ours(va) or self._stale(va):
            return
        if not deleting(va):
            self.attach_queue.add(name)
            return
        with self._lock:
            forced = name in self._force
            self._force.discard(name)
        if self.finalizer not in finalizers_of(va) and not forced:
            return  # never attached by us, or already detached
        started = time.monotonic()
        try:
            self._detach(va)
        except AttemptFailed as exc:
            self.outcomes.failed(DETACH, va, exc, started)
            raise self.outcomes.retry(self.detach_queue, name, exc) from None
        self.outcomes.succeeded(DETACH, name, started)
        pv_name = self.targets.pv_name(va)
        if pv_name:
            self.pv_queue.add(pv_name)

    def _detach(self, va: Obj) -> None:
        name = name_of(va)
        before = va
        if self.targets.pv_name(va):
            pv = self.targets.pv(self.targets.source_pv(va))
            handle = self.targets.handle(pv)
            secrets = self.targets.secrets(pv)
            node_id = self.targets.node_id(va, fallback=True)
            log.info("detaching volume %s from node %s (%s) for VolumeAttachment %s", handle,
                     (va.get("spec") or {}).get("nodeName"), node_id, name)
            request = csi_pb2.ControllerUnpublishVolumeRequest(
                volume_id=handle, node_id=node_id, secrets=secrets)
            try:
                self.ctx.csi.unpublish(request)
            except grpc.RpcError as exc:
                if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: nothing attached
                    raise AttemptFailed(self._redact(rpc_message(exc), secrets.values()),
                                        code=rpc_code(exc)) from None
            log.info("detached volume %s from node %s for VolumeAttachment %s", handle,
                     node_id, name)
        # else: an inline volume, which we never attached: just let the VA go.
        status = va.get("status") or {}
        if status.get("attached") or status.get("attachmentMetadata") or status.get(
                "detachError"):
            va = self.writes.patch_va_status(
                va, {"attached": False, "attachmentMetadata": None, "detachError": None},
                "mark detached")
        # The status first, the finalizer last: the VA must not vanish before it says detached.
        self.writes.patch(f"{VA_PATH}/{name}",
                          {"metadata": {"$deleteFromPrimitiveList/finalizers": [self.finalizer]}},
                          "remove the VolumeAttachment finalizer", missing_ok=True)
        self._wrote(before, va)

    # ---- PV finalizer

    def sync_pv(self, name: str) -> None:
        pv = self.ctx.informers.volumes.cache.get(name)
        if pv is None or self.finalizer not in finalizers_of(pv):
            return
        if self._vas.cache.by_index(BY_PV, name):
            return  # still attached somewhere (or being detached)
        rv = meta_of(pv).get("resourceVersion")
        try:
            # The resourceVersion guards against a VA that appeared since our cache looked:
            # a 409 brings us back to look again.
            self.ctx.rest.patch(
                f"{PV_PATH}/{name}",
                {"metadata": {"$deleteFromPrimitiveList/finalizers": [self.finalizer],
                              "resourceVersion": rv}},
                content_type=STRATEGIC_MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        log.info("removed finalizer %s from PersistentVolume %s", self.finalizer, name)

    def _redact(self, message: str, extra: Iterable[str] = ()) -> str:
        return self.ctx.recorder.redact(message, extra)
