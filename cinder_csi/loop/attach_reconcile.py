"""The attachment controller's periodic reconcile with the driver.

Every ``period`` seconds, one paged ListVolumes (when the driver has LIST_VOLUMES and
LIST_VOLUMES_PUBLISHED_NODES) finds attached VolumeAttachments whose volume the driver no
longer reports published on their node. Each is counted in ``cinder_csi_attach_lost_total``,
forced to be attached again, marked ``attached: false`` and queued for attach.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.attach_common import (
    AttachMetrics,
    AttemptFailed,
    attached_by,
    deleting,
    meta_of,
    name_of,
    rpc_message,
)
from cinder_csi.loop.attach_targets import AttachTargets
from cinder_csi.loop.attach_writes import AttachWrites
from cinder_csi.loop.capabilities import RPC
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.kube.workqueue import WorkQueue

# The attachment controller's logger, as before these lines moved here: operators filter on it.
log = logging.getLogger("cinder_csi.loop.attacher")


class AttachReconciler:
    """Finds attachments lost behind our back; ``force`` makes the next attach redo them."""

    def __init__(self, ctx: LoopContext, *, period: float, page_size: int,
                 targets: AttachTargets, writes: AttachWrites, metrics: AttachMetrics,
                 force: Callable[[str], None], attach_queue: WorkQueue) -> None:
        self.ctx = ctx
        self.period = period
        self.page_size = page_size
        self.targets = targets
        self.writes = writes
        self.metrics = metrics
        self.force = force
        self.attach_queue = attach_queue

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="va-reconcile", daemon=True)
        thread.start()
        return thread

    def _loop(self) -> None:
        while not self.ctx.stop.wait(self.period):
            try:
                self.reconcile()
            except grpc.RpcError as exc:
                log.warning("attachment reconcile: ListVolumes failed: %s", rpc_message(exc))

    def reconcile(self) -> int:
        """One pass; returns how many attached VAs were found detached behind our back."""
        caps = self.targets.capabilities.get()
        if RPC.LIST_VOLUMES not in caps or RPC.LIST_VOLUMES_PUBLISHED_NODES not in caps:
            return 0
        vas = self.ctx.informers.attachments
        # The snapshot comes first: a VA attached while ListVolumes runs may be missing from
        # its answer, and is skipped below because its resourceVersion moved.
        snapshot = [va for va in vas.cache.objects()
                    if attached_by(va, self.ctx.driver) and not deleting(va)
                    and (va.get("status") or {}).get("attached") is True]
        if not snapshot:
            return 0
        published = self._published()
        lost = 0
        for va in snapshot:
            name = name_of(va)
            current = vas.cache.get(name)
            if current is None or meta_of(current).get("resourceVersion") != meta_of(va).get(
                    "resourceVersion"):
                continue
            try:
                handle = self.targets.handle(self.targets.pv(self.targets.source_pv(va)))
                node_id = self.targets.node_id(va, fallback=True)
            except AttemptFailed:
                continue
            if node_id in published.get(handle, ()):
                continue
            lost += 1
            self.metrics.lost.inc()
            log.warning("volume %s is no longer published to node %s according to the driver; "
                        "attaching VolumeAttachment %s again", handle, node_id, name)
            self.force(name)
            try:
                self.writes.patch_va_status(va, {"attached": False}, "mark lost attachment")
            except AttemptFailed as exc:
                log.warning("VolumeAttachment %s: %s", name, exc.message)
            self.attach_queue.add(name)
        return lost

    def _published(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        token = ""
        while True:
            response = self.ctx.csi.list_volumes(csi_pb2.ListVolumesRequest(
                max_entries=self.page_size, starting_token=token))
            for entry in response.entries:
                out.setdefault(entry.volume.volume_id, set()).update(
                    entry.status.published_node_ids)
            token = response.next_token
            if not token or self.ctx.stop.is_set():
                return out
