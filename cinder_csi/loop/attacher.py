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
- every ``reconcile_period`` one paged ListVolumes (``attach_reconcile``) finds attached VAs
  whose volume the driver no longer reports published on that node; they are marked detached
  and attached again.

Attach and detach have their own queues and worker pools, so a burst of detaches cannot
delay attaches (kubernetes-csi/external-attacher#761). A failed attempt is counted, written to
the VA's ``attachError``/``detachError`` and reported as a Warning Event (only when its message
changed since the last one), all redacted; it comes back after the queue's backoff, sooner
when the call may still be running in the driver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.attach_reconcile import LostAttachments, Publication
from cinder_csi.loop.caches import BY_NODE, BY_PV
from cinder_csi.loop.capabilities import (
    RPC,
    publish_readonly,
    volume_capability,
)
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.errors import AttemptFailed, CapabilityError, rpc_code, rpc_error_text
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import (
    API_ERRORS,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    api_error_text,
)
from cinder_csi.loop.kube.informer import Handlers, Informer
from cinder_csi.loop.kube.objects import (
    Obj,
    annotations_of,
    deleting,
    finalizers_of,
    meta_of,
    name_of,
    pv_path,
    resource_version,
    timestamp,
    va_path,
)
from cinder_csi.loop.kube.workqueue import WorkQueue
from cinder_csi.loop.protocol import ANN_VA_NODE_ID, attacher_finalizer
from cinder_csi.loop.secrets import call_secrets
from cinder_csi.metrics import OPERATION_BUCKETS

log = logging.getLogger(__name__)

ATTACH, DETACH = "attach", "detach"
REASON_FAILED_ATTACH = "FailedAttachVolume"
REASON_FAILED_DETACH = "FailedDetachVolume"


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


class AttachMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = {
            op: Counter(f"cinder_csi_{op}_total", f"VolumeAttachment {op} operations by result.",
                        ["result"], registry=registry)
            for op in (ATTACH, DETACH)
        }
        self.duration = {
            op: Histogram(f"cinder_csi_{op}_duration_seconds",
                          f"Time to {op} a volume for a VolumeAttachment, by result.",
                          ["result"], buckets=OPERATION_BUCKETS, registry=registry)
            for op in (ATTACH, DETACH)
        }
        self.lost = Counter(
            "cinder_csi_attach_lost_total",
            "Attached VolumeAttachments the driver no longer reported published (reconcile).",
            registry=registry)

    def observe(self, op: str, ok: bool, seconds: float) -> None:
        result = "success" if ok else "failure"
        self.total[op].labels(result).inc()
        self.duration[op].labels(result).observe(seconds)


def attached_by(va: Obj, driver: str) -> bool:
    """The VolumeAttachment names ``driver`` as its attacher."""
    return (va.get("spec") or {}).get("attacher") == driver


def source_pv_name(va: Obj) -> str:
    """The PV a VolumeAttachment names ("" for an inline volume)."""
    source = (va.get("spec") or {}).get("source") or {}
    return str(source.get("persistentVolumeName") or "")


def _comparable(va: Obj) -> Obj:
    """A VA without the fields our own error writes change, to skip reacting to them."""
    meta = {k: v for k, v in meta_of(va).items() if k not in ("resourceVersion", "managedFields")}
    status = {k: v for k, v in (va.get("status") or {}).items()
              if k not in ("attachError", "detachError")}
    return {**va, "metadata": meta, "status": status}


class OwnWrites:
    """VolumeAttachment versions that our own last write to each VA superseded.

    The informer lags behind our writes: a cache copy at one of these versions is older than
    what we wrote, so acting on it would repeat the operation (its watch event brings us back).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._superseded: dict[str, set[str]] = {}  # VA name -> versions

    def wrote(self, *versions: Obj) -> None:
        """Remember the versions of a VA that our last write to it superseded."""
        rvs = {resource_version(v) for v in versions} - {""}
        with self._lock:
            self._superseded[name_of(versions[0])] = rvs

    def superseded(self, va: Obj) -> bool:
        """``va`` is a copy older than our last write; a newer one forgets the write."""
        name = name_of(va)
        with self._lock:
            seen = self._superseded.get(name)
            if seen is None:
                return False
            if resource_version(va) in seen:
                return True
            del self._superseded[name]  # the cache caught up with (or passed) our write
            return False

    def forget(self, name: str) -> None:
        with self._lock:
            self._superseded.pop(name, None)

    def __len__(self) -> int:
        """How many VAs the cache has not yet shown our last write of."""
        with self._lock:
            return len(self._superseded)


class AttachmentController:
    name = "attachments"

    def __init__(self, ctx: LoopContext, options: AttachOptions | None = None) -> None:
        self.ctx = ctx
        self.options = options or AttachOptions()
        self.finalizer = attacher_finalizer(ctx.driver)
        self.metrics = AttachMetrics(ctx.registry)
        self.attach_queue = WorkQueue("va-attach", metrics=ctx.queue_metrics)
        self.detach_queue = WorkQueue("va-detach", metrics=ctx.queue_metrics)
        self.pv_queue = WorkQueue("va-pv", metrics=ctx.queue_metrics)
        self.lost_attachments = LostAttachments(ctx, page_size=self.options.list_page_size)
        self.own_writes = OwnWrites()
        self._lock = threading.Lock()
        self._force: set[str] = set()  # VAs the reconcile wants attached again
        self._last_error: dict[tuple[str, str], str] = {}  # (op, VA) -> last Event message
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
        resync = resource_version(old) == resource_version(new)
        if resync or _comparable(old) != _comparable(new):
            self._route(new)

    def _va_deleted(self, va: Obj) -> None:
        name = name_of(va)
        with self._lock:
            self._force.discard(name)
            self._last_error.pop((ATTACH, name), None)
            self._last_error.pop((DETACH, name), None)
        self.own_writes.forget(name)
        pv_name = source_pv_name(va)
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
            self._reconcile_thread = threading.Thread(
                target=self._reconcile_periodically, name="va-reconcile", daemon=True)
            self._reconcile_thread.start()
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

    def _reconcile_periodically(self) -> None:
        while not self.ctx.stop.wait(self.options.reconcile_period):
            try:
                self.reconcile()
            except grpc.RpcError as exc:
                log.warning("attachment reconcile: ListVolumes failed: %s", rpc_error_text(exc))

    def reconcile(self) -> int:
        """One pass against the driver's ListVolumes; how many attached VAs it no longer
        reported published. Each is marked detached and queued to be attached again."""
        attached = []
        for va in self._vas.cache.objects():
            if (not self._ours(va) or deleting(va)
                    or (va.get("status") or {}).get("attached") is not True):
                continue
            try:
                volume_id = self._handle(self._pv(self._source_pv(va)))
                node_id = self._node_id(va, fallback=True)
            except AttemptFailed:
                continue
            attached.append(Publication(name_of(va), resource_version(va), volume_id, node_id))
        lost = self.lost_attachments.find(attached)
        for publication in lost:
            name = publication.attachment
            self.metrics.lost.inc()
            log.warning("volume %s is no longer published to node %s according to the driver; "
                        "attaching VolumeAttachment %s again", publication.volume_id,
                        publication.node_id, name)
            with self._lock:
                self._force.add(name)
            try:
                self._patch(f"{va_path(name)}/status", {"status": {"attached": False}},
                            "mark lost attachment", content_type=MERGE_PATCH)
            except AttemptFailed as exc:
                log.warning("VolumeAttachment %s: %s", name, exc.message)
            self.attach_queue.add(name)
        return len(lost)

    # ---- attach

    def sync_attach(self, name: str) -> None:
        va = self._vas.cache.get(name)
        if va is None or not self._ours(va) or self.own_writes.superseded(va):
            return
        if deleting(va):
            self.detach_queue.add(name)
            return
        started = time.monotonic()
        try:
            if not self._attach(va):
                return
        except AttemptFailed as exc:
            self._failed(ATTACH, va, exc, started)
            raise exc.retry(lambda: self.attach_queue.backoff.when(name),
                            soon=self.options.in_progress_retry_cap) from None
        self._succeeded(ATTACH, name, started)

    def _attach(self, va: Obj) -> bool:
        """Attach; False when there was nothing to do."""
        name = name_of(va)
        with self._lock:
            forced = name in self._force
            self._force.discard(name)
        pv_name = self._source_pv(va)
        if (va.get("status") or {}).get("attached") is True and not forced:
            current = self.ctx.informers.volumes.cache.get(pv_name)
            if current is not None and not deleting(current):
                self._ensure_pv_finalizer(current)  # heals a finalizer lost to a race
            return False
        pv = self._pv(pv_name)
        if deleting(pv):
            raise AttemptFailed(f'PersistentVolume "{pv_name}" is marked for deletion')
        pv = self._ensure_pv_finalizer(pv)
        caps = self._driver_capabilities()
        try:
            capability = volume_capability(
                pv, single_node_multi_writer=RPC.SINGLE_NODE_MULTI_WRITER in caps,
                default_fs_type=self.options.default_fs_type)
        except CapabilityError as exc:
            raise AttemptFailed(str(exc), final=True) from None
        handle = self._handle(pv)
        secrets = self._secrets(pv)
        node_id = self._node_id(va, fallback=False)
        before = va
        va = self._ensure_va_marks(va, node_id)
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
            raise AttemptFailed(self._redact(rpc_error_text(exc), secrets.values()),
                                code=rpc_code(exc)) from None
        self._mark_attached(va, {str(k): str(v) for k, v in response.publish_context.items()})
        self.own_writes.wrote(before, va)
        log.info("attached volume %s to node %s for VolumeAttachment %s", handle, node_id, name)
        return True

    # ---- detach

    def sync_detach(self, name: str) -> None:
        va = self._vas.cache.get(name)
        if va is None or not self._ours(va) or self.own_writes.superseded(va):
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
            self._failed(DETACH, va, exc, started)
            raise exc.retry(lambda: self.detach_queue.backoff.when(name),
                            soon=self.options.in_progress_retry_cap) from None
        self._succeeded(DETACH, name, started)
        pv_name = source_pv_name(va)
        if pv_name:
            self.pv_queue.add(pv_name)

    def _detach(self, va: Obj) -> None:
        name = name_of(va)
        before = va
        if source_pv_name(va):
            pv = self._pv(self._source_pv(va))
            handle = self._handle(pv)
            secrets = self._secrets(pv)
            node_id = self._node_id(va, fallback=True)
            log.info("detaching volume %s from node %s (%s) for VolumeAttachment %s", handle,
                     (va.get("spec") or {}).get("nodeName"), node_id, name)
            request = csi_pb2.ControllerUnpublishVolumeRequest(
                volume_id=handle, node_id=node_id, secrets=secrets)
            try:
                self.ctx.csi.unpublish(request)
            except grpc.RpcError as exc:
                if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: nothing attached
                    raise AttemptFailed(self._redact(rpc_error_text(exc), secrets.values()),
                                        code=rpc_code(exc)) from None
            log.info("detached volume %s from node %s for VolumeAttachment %s", handle,
                     node_id, name)
        # else: an inline volume, which we never attached: just let the VA go.
        status = va.get("status") or {}
        if status.get("attached") or status.get("attachmentMetadata") or status.get(
                "detachError"):
            va = self._patch_va_status(
                va, {"attached": False, "attachmentMetadata": None, "detachError": None},
                "mark detached")
        # The status first, the finalizer last: the VA must not vanish before it says detached.
        self._patch(va_path(name),
                    {"metadata": {"$deleteFromPrimitiveList/finalizers": [self.finalizer]}},
                    "remove the VolumeAttachment finalizer", missing_ok=True)
        self.own_writes.wrote(before, va)

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
                pv_path(name),
                {"metadata": {"$deleteFromPrimitiveList/finalizers": [self.finalizer],
                              "resourceVersion": rv}},
                content_type=STRATEGIC_MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return
            raise
        log.info("removed finalizer %s from PersistentVolume %s", self.finalizer, name)

    # ---- what a VolumeAttachment resolves to (read, never written)

    @staticmethod
    def _source_pv(va: Obj) -> str:
        source = (va.get("spec") or {}).get("source") or {}
        pv_name = source.get("persistentVolumeName")
        inline = source.get("inlineVolumeSpec")
        if pv_name and inline is not None:
            raise AttemptFailed("both inlineVolumeSpec and persistentVolumeName are set in the "
                                "VolumeAttachment source", final=True)
        if inline is not None:
            raise AttemptFailed("inline volumes are not supported", final=True)
        if not pv_name:
            raise AttemptFailed("neither inlineVolumeSpec nor persistentVolumeName is set in "
                                "the VolumeAttachment source", final=True)
        return str(pv_name)

    def _pv(self, pv_name: str) -> Obj:
        pv = self.ctx.informers.volumes.cache.get(pv_name)
        if pv is None:
            raise AttemptFailed(f'PersistentVolume "{pv_name}" not found')
        return pv

    def _handle(self, pv: Obj) -> str:
        csi = (pv.get("spec") or {}).get("csi") or {}
        if csi.get("driver") != self.ctx.driver or not csi.get("volumeHandle"):
            raise AttemptFailed(f"PersistentVolume {name_of(pv)} is not a CSI volume of driver "
                                f"{self.ctx.driver}", final=True)
        return str(csi["volumeHandle"])

    def _driver_capabilities(self) -> frozenset[int]:
        try:
            return self.ctx.capabilities.get()
        except grpc.RpcError as exc:
            raise AttemptFailed(rpc_error_text(exc), code=rpc_code(exc)) from None

    def _secrets(self, pv: Obj) -> dict[str, str]:
        return call_secrets(self.ctx, pv, "controllerPublishSecretRef",
                            lambda ns, name: f'failed to load secret "{ns}/{name}"')

    def _node_id(self, va: Obj, *, fallback: bool) -> str:
        """The driver's node ID from the CSINode; for detach, else from the VA annotation.

        Attach does not fall back, as the external-attacher: a node recreated under the same
        name but on another server must not get the old server's ID.
        """
        node = str((va.get("spec") or {}).get("nodeName") or "")
        csinode = self.ctx.informers.csi_nodes.cache.get(node)
        if csinode is not None:
            for driver in (csinode.get("spec") or {}).get("drivers") or []:
                if driver.get("name") == self.ctx.driver and driver.get("nodeID"):
                    return str(driver["nodeID"])
            why = f"CSINode {node} does not contain driver {self.ctx.driver}"
        else:
            why = f"CSINode {node} not found"
        if fallback:
            annotated = annotations_of(va).get(ANN_VA_NODE_ID)
            if annotated:
                return str(annotated)
        raise AttemptFailed(f"cannot find the node ID of node {node!r}: {why}")

    # ---- our writes: finalizers, the node-ID annotation, the VA status

    def _ensure_pv_finalizer(self, pv: Obj) -> Obj:
        if self.finalizer in finalizers_of(pv):
            return pv
        return self._patch(pv_path(name_of(pv)), {"metadata": {"finalizers": [self.finalizer]}},
                           "could not add PersistentVolume finalizer") or pv

    def _ensure_va_marks(self, va: Obj, node_id: str) -> Obj:
        meta: dict[str, Any] = {}
        if self.finalizer not in finalizers_of(va):
            meta["finalizers"] = [self.finalizer]
        if annotations_of(va).get(ANN_VA_NODE_ID) != node_id:
            meta["annotations"] = {ANN_VA_NODE_ID: node_id}
        if not meta:
            return va
        return self._patch(va_path(name_of(va)), {"metadata": meta},
                           "could not save VolumeAttachment") or va

    def _mark_attached(self, va: Obj, metadata: dict[str, str]) -> None:
        old = (va.get("status") or {}).get("attachmentMetadata") or {}
        merged: dict[str, Any] = {k: None for k in old if k not in metadata}
        merged.update(metadata)
        status: dict[str, Any] = {"attached": True, "attachError": None}
        if merged:
            status["attachmentMetadata"] = merged
        self._patch_va_status(va, status, "mark attached")

    def _patch_va_status(self, va: Obj, status: Obj, what: str) -> Obj:
        return self._patch(f"{va_path(name_of(va))}/status", {"status": status}, what,
                           content_type=MERGE_PATCH) or va

    def _patch(self, path: str, body: Obj, what: str, *, missing_ok: bool = False,
               content_type: str = STRATEGIC_MERGE_PATCH) -> Obj | None:
        """A patch whose API errors become ``AttemptFailed``; a 409 is a quiet one."""
        try:
            return self.ctx.rest.patch(path, body, content_type=content_type)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise AttemptFailed(f"{what}: {api_error_text(exc)}",
                                quiet=exc.status == 409) from None
        except API_ERRORS as exc:
            raise AttemptFailed(f"{what}: {api_error_text(exc)}") from None

    # ---- how an attempt ends

    def _succeeded(self, op: str, name: str, started: float) -> None:
        self.metrics.observe(op, True, time.monotonic() - started)
        with self._lock:
            self._last_error.pop((op, name), None)

    def _failed(self, op: str, va: Obj, exc: AttemptFailed, started: float) -> None:
        """Count the failure; unless quiet, save it in the VA status and, when its message
        changed since the last one, in a Warning Event."""
        name = name_of(va)
        self.metrics.observe(op, False, time.monotonic() - started)
        message = self._redact(exc.message)
        log.warning("VolumeAttachment %s: %s failed: %s", name, op, message)
        if exc.quiet:
            return
        field = "attachError" if op == ATTACH else "detachError"
        try:
            self.ctx.rest.patch(f"{va_path(name)}/status",
                                {"status": {field: {"message": message, "time": timestamp()}}},
                                content_type=MERGE_PATCH)
        except API_ERRORS as err:
            log.info("VolumeAttachment %s: could not save %s: %s", name, field,
                     api_error_text(err))
        with self._lock:
            repeated = self._last_error.get((op, name)) == message
            self._last_error[(op, name)] = message
        if not repeated:
            reason = REASON_FAILED_ATTACH if op == ATTACH else REASON_FAILED_DETACH
            self.ctx.recorder.warning(va, reason, message)

    def _redact(self, message: str, extra: Iterable[str] = ()) -> str:
        return self.ctx.recorder.redact(message, extra)
