"""The orphan sweep: Cinder volumes this cluster made that no PV accounts for.

Every ``interval`` (and once at start) the driver's volumes are listed through CSI
ListVolumes, page by page. A volume is an orphan when its volume_context says it belongs to
this cluster and is named ``pvc-...``, no PV has it as volumeHandle, no claim is in the middle
of provisioning it (ANN_PROVISIONING), and all that has held for ``grace`` since the sweep
first saw it (a volume being provisioned right now is never reported). Orphans are reported as
Warning Events (``OrphanedVolume``, about the PV that should exist) and in the gauge
``cinder_csi_orphaned_volumes``; they are deleted only with ``delete_orphans=True``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from cinder_csi.csi import csi_pb2
from cinder_csi.loop import caches as inf
from cinder_csi.loop import protocol as p
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.csi_client import listed_volumes
from cinder_csi.loop.errors import rpc_code, rpc_error_text
from cinder_csi.loop.kube.objects import annotations_of

log = logging.getLogger(__name__)

CLUSTER_KEY = "cinder.csi.openstack.org/cluster"  # volume_context key of ListVolumes entries
NAME_KEY = "name"
REASON = "OrphanedVolume"
PAGE_SIZE = 500  # ListVolumes entries asked for at a time


class OrphanSweep:
    name = "orphans"

    def __init__(self, ctx: LoopContext, *, cluster: str, interval: float = 600.0,
                 grace: float = 3600.0, delete_orphans: bool = False,
                 start_delay: float = 0.0, page_size: int = PAGE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.cluster = cluster
        self.interval = interval
        self.grace = grace
        self.delete_orphans = delete_orphans
        self.start_delay = start_delay
        self.page_size = page_size
        self._clock = clock
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()  # passes never overlap
        self.gauge = Gauge("cinder_csi_orphaned_volumes",
                           "Cinder volumes of this cluster that no PV accounts for",
                           registry=ctx.registry)
        self.deleted = Counter("cinder_csi_orphaned_volumes_deleted_total",
                               "Orphaned Cinder volumes deleted by the sweep",
                               registry=ctx.registry)

    def register(self) -> None:
        pass  # reads the shared caches only

    def run(self) -> None:
        if self.ctx.stop.wait(self.start_delay):
            return
        while not self.ctx.stop.is_set():
            try:
                self.sweep()
            except grpc.RpcError as exc:
                log.warning("orphan sweep: ListVolumes failed: %s", rpc_error_text(exc))
            if self.ctx.stop.wait(self.interval):
                return

    # ---- one pass

    def sweep(self) -> list[tuple[str, str]]:
        """One pass; returns the orphans found as (volume id, name)."""
        with self._sweeping:
            return self._sweep()

    def _sweep(self) -> list[tuple[str, str]]:
        now = self._clock()
        in_flight = {annotations_of(claim).get(p.ANN_PROVISIONING)
                     for claim in self.ctx.informers.claims.cache.objects()}
        candidates = {vid: name for vid, name in self._listed()
                      if name not in in_flight and not self._has_pv(vid)}
        with self._lock:
            for vid in list(self._first_seen):
                if vid not in candidates:
                    del self._first_seen[vid]  # gone, or accounted for after all
            for vid in candidates:
                self._first_seen.setdefault(vid, now)
            orphans = sorted((vid, name) for vid, name in candidates.items()
                             if now - self._first_seen[vid] >= self.grace)
        remaining = 0
        for vid, name in orphans:
            if self.ctx.stop.is_set():
                break
            if self.delete_orphans and self._delete(vid, name):
                continue
            remaining += 1
            self.ctx.recorder.warning(
                self._reference(name), REASON,
                f"Cinder volume {vid} ({name}) belongs to cluster {self.cluster!r} but no "
                "PersistentVolume uses it and no claim is provisioning it"
                + ("" if self.delete_orphans else
                   "; delete it by hand, or run the provisioner with orphan deletion on"))
        self.gauge.set(remaining)
        return orphans

    def _listed(self) -> Iterator[tuple[str, str]]:
        for entry in listed_volumes(self.ctx.csi, page_size=self.page_size, stop=self.ctx.stop):
            context = dict(entry.volume.volume_context)
            name = context.get(NAME_KEY, "")
            if context.get(CLUSTER_KEY) == self.cluster and name.startswith("pvc-"):
                yield str(entry.volume.volume_id), name

    def _has_pv(self, volume_id: str) -> bool:
        # By handle only: a second volume with a PV's name (a duplicate) is an orphan too.
        return bool(self.ctx.informers.volumes.cache.by_index(inf.BY_VOLUME_HANDLE, volume_id))

    def _delete(self, volume_id: str, name: str) -> bool:
        try:
            self.ctx.csi.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id))
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                self.ctx.recorder.warning(
                    self._reference(name), REASON,
                    f"could not delete orphaned Cinder volume {volume_id} ({name}): "
                    f"{rpc_error_text(exc)}")
                return False
        log.warning("deleted orphaned volume %s (%s)", volume_id, name)
        self.ctx.recorder.normal(self._reference(name), "OrphanedVolumeDeleted",
                                 f"deleted orphaned Cinder volume {volume_id} ({name})")
        self.deleted.inc()
        with self._lock:
            self._first_seen.pop(volume_id, None)
        return True

    @staticmethod
    def _reference(name: str) -> dict[str, Any]:
        # Events need a namespace; a cluster-scoped PV's go to "default" (the recorder's).
        return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}}
