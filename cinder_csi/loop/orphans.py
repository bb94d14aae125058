"""The orphan sweep: Cinder volumes this cluster made that no PV accounts for.

Every ``interval`` (and once at start) one pass lists the driver's volumes (CSI ListVolumes,
every page), then, from the API server and not from a cache, every claim and every PV. A
volume is an orphan when its volume_context says it belongs to this cluster and is named
``pvc-...``, no PV has it as volumeHandle, and no claim is provisioning it
(an entry of the provisioning journal, read from the API server too, or ``ANN_PROVISIONING``).
Orphans seen for ``grace`` are reported: a Warning Event ``OrphanedVolume`` (about the PV that
should exist) and the gauge ``cinder_csi_orphaned_volumes``.

With ``delete_orphans`` an orphan is deleted only when all of these hold, each a lesson of
issue 10 (``--delete-orphans`` could delete data):

- the pass is whole: the ListVolumes listing and both API listings completed (a failed or
  partial one ends the pass and forgets every sighting, so RBAC errors or an overloaded API
  server can never make PVs look missing). The claim and journal listings come after
  ListVolumes and before the PV listing, so a volume made and given a PV meanwhile is seen
  with its claim's intent or with its PV;
- it was an orphan in consecutive whole passes spanning ``grace``, at least two of them;
- it is ``available`` and published to no node (volume_context status, published_node_ids);
- the driver recorded reclaim policy ``Delete`` on it when the loop created it. A volume
  that once had a PV with ``Retain`` is marked ``Retain`` by the volume controller before
  that PV can go (``loop/deletion.py``), and one with no recorded policy (made by another
  provisioner or an older version, or adopted) is never deleted: only reported;
- ``--cluster`` was set explicitly (the default ``kubernetes`` collides across clusters);
- a fresh ControllerGetVolume, just before DeleteVolume, still says all of the above.

Every deletion is a Normal Event ``OrphanedVolumeDeleted`` and a log line naming the volume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import Counter, Gauge

from cinder_csi import (
    CLUSTER_KEY,
    FEATURE_LISTED_NAMES,
    FEATURE_RECLAIM_POLICY,
    LISTED_NAME_KEY,
    LISTED_STATUS_KEY,
    RECLAIM_POLICY_KEY,
)
from cinder_csi.csi import csi_pb2
from cinder_csi.loop import protocol as p
from cinder_csi.loop.capabilities import RPC
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.csi_client import listed_volumes
from cinder_csi.loop.errors import Fenced, rpc_code, rpc_error_text
from cinder_csi.loop.journal import IntentJournal
from cinder_csi.loop.kube.client import API_ERRORS, api_error_text
from cinder_csi.loop.kube.objects import PV_PATH, annotations_of, each_listed

log = logging.getLogger(__name__)

REASON = "OrphanedVolume"
PAGE_SIZE = 500  # ListVolumes entries asked for at a time
# Claims and PVs asked for at a time. A pass keeps one field of each; a page of decoded
# objects is what it holds meanwhile, and what the allocator keeps after: with 10,000
# claims and PVs, pages of 500 left the loop 102 MB, pages of 100 97.6 MB (bench memory).
API_PAGE_SIZE = 100
CLAIMS_PATH = "/api/v1/persistentvolumeclaims"
MIN_SIGHTINGS = 2  # whole passes a volume must be seen orphaned in before it may be deleted


@dataclass(frozen=True)
class Listed:
    """One volume as ListVolumes (or ControllerGetVolume) described it."""

    volume_id: str
    name: str
    cluster: str | None
    status: str
    published: bool
    reclaim_policy: str | None

    @classmethod
    def from_csi(cls, volume: Any, status: Any) -> Listed:
        context: Mapping[str, str] = volume.volume_context
        return cls(
            volume_id=str(volume.volume_id), name=context.get(LISTED_NAME_KEY, ""),
            cluster=context.get(CLUSTER_KEY), status=context.get(LISTED_STATUS_KEY, ""),
            published=bool(status.published_node_ids),
            reclaim_policy=context.get(RECLAIM_POLICY_KEY),
        )

    def why_kept(self) -> str | None:
        """Why deleting this orphan would not be safe; None when it is."""
        if self.status != "available" or self.published:
            return (f"it is {self.status or 'of unknown status'}"
                    + (" and attached" if self.published else ""))
        if self.reclaim_policy != "Delete":
            return (f"its recorded reclaim policy is {self.reclaim_policy}" if self.reclaim_policy
                    else "no reclaim policy was recorded when it was made")
        return None


@dataclass
class _Sighting:
    first: float  # clock time of the first pass of the streak
    passes: int  # consecutive whole passes it was an orphan in
    last_pass: int


class IncompletePass(Exception):
    """A listing of this pass failed or was cut short: nothing may be concluded from it."""


class OrphanSweep:
    name = "orphans"

    def __init__(self, ctx: LoopContext, *, interval: float = 600.0,
                 grace: float = 3600.0, delete_orphans: bool = False,
                 start_delay: float = 0.0, page_size: int = PAGE_SIZE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.interval = interval
        self.grace = grace
        self.delete_orphans = delete_orphans
        self.start_delay = start_delay
        self.page_size = page_size
        self._clock = clock
        self._seen: dict[str, _Sighting] = {}
        self._passes = 0
        self._lock = threading.Lock()
        self._sweeping = threading.Lock()  # passes never overlap
        self.gauge = Gauge("cinder_csi_orphaned_volumes",
                           "Cinder volumes of this cluster that no PV accounts for",
                           registry=ctx.registry)
        self.deleted = Counter("cinder_csi_orphaned_volumes_deleted_total",
                               "Orphaned Cinder volumes deleted by the sweep",
                               registry=ctx.registry)

    @property
    def may_delete(self) -> bool:
        return self.delete_orphans and self.ctx.cluster_explicit

    def register(self) -> None:
        pass  # lists what it needs in each pass

    def run(self) -> None:
        if self.delete_orphans and not self.ctx.cluster_explicit:
            log.warning("orphan deletion is off: --cluster was not set, and the default %r "
                        "may be shared with another cluster; orphans are only reported",
                        self.ctx.cluster)
        if self.ctx.stop.wait(self.start_delay):
            return
        while not self.ctx.stop.is_set():
            self.sweep()
            if self.ctx.stop.wait(self.interval):
                return

    # ---- one pass

    def sweep(self) -> list[tuple[str, str]]:
        """One pass; returns the orphans found as (volume id, name), [] when it was not whole."""
        with self._sweeping:
            try:
                return self._sweep()
            except IncompletePass as exc:
                with self._lock:
                    self._seen.clear()  # the streaks are broken: start over
                log.warning("orphan sweep: pass abandoned, nothing concluded: %s", exc)
                return []
            except Fenced as exc:  # not (provably) the leader: leave the rest to whoever is
                log.warning("orphan sweep: pass stopped: %s", exc)
                return []

    def _sweep(self) -> list[tuple[str, str]]:
        if not self.ctx.informers.volumes.has_synced():
            raise IncompletePass("the loop's caches have not synced yet")
        listed = self._listed()
        in_flight = {annotations_of(claim).get(p.ANN_PROVISIONING)
                     for claim in self._list_api(CLAIMS_PATH, "claims")}
        if self.ctx.journal is not None:
            in_flight |= self._journaled(self.ctx.journal)
        handles = {str(((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle"))
                   for pv in self._list_api(PV_PATH, "PersistentVolumes")}
        candidates = {v.volume_id: v for v in listed
                      if v.name not in in_flight and v.volume_id not in handles}
        now = self._clock()
        with self._lock:
            self._passes += 1
            for vid in list(self._seen):
                if vid not in candidates:
                    del self._seen[vid]  # gone, or accounted for after all
            for vid in candidates:
                seen = self._seen.get(vid)
                if seen is None or seen.last_pass != self._passes - 1:
                    self._seen[vid] = _Sighting(now, 1, self._passes)
                else:
                    seen.passes += 1
                    seen.last_pass = self._passes
            due = sorted((vid, self._seen[vid]) for vid in candidates
                         if now - self._seen[vid].first >= self.grace)
        remaining = 0
        for vid, seen in due:
            if self.ctx.stop.is_set():
                break
            volume = candidates[vid]
            if self.may_delete and seen.passes >= MIN_SIGHTINGS and self._delete(volume):
                continue
            remaining += 1
            self._report(volume)
        self.gauge.set(remaining)
        return [(vid, candidates[vid].name) for vid, _ in due]

    def _listed(self) -> list[Listed]:
        """This cluster's volumes named like a claim's, from a complete ListVolumes listing."""
        if FEATURE_LISTED_NAMES not in self.ctx.csi.features():
            raise IncompletePass("the driver does not report volume names in ListVolumes")
        found = []
        try:
            for entry in listed_volumes(self.ctx.csi, page_size=self.page_size,
                                        stop=self.ctx.stop):
                volume = Listed.from_csi(entry.volume, entry.status)
                if volume.cluster == self.ctx.cluster and volume.name.startswith("pvc-"):
                    found.append(volume)
        except grpc.RpcError as exc:
            raise IncompletePass(f"ListVolumes failed: {rpc_error_text(exc)}") from None
        if self.ctx.stop.is_set():
            raise IncompletePass("stopping")
        return found

    def _list_api(self, path: str, what: str) -> Iterator[dict[str, Any]]:
        try:
            yield from each_listed(self.ctx.rest, path, page_size=API_PAGE_SIZE)
        except API_ERRORS as exc:
            raise IncompletePass(f"listing {what} failed: {api_error_text(exc)}") from None

    @staticmethod
    def _journaled(journal: IntentJournal) -> set[str]:
        try:
            return journal.names_on_server()
        except API_ERRORS as exc:
            raise IncompletePass("reading the provisioning journal failed: "
                                 f"{api_error_text(exc)}") from None

    def _report(self, volume: Listed) -> None:
        why = volume.why_kept()
        if not self.delete_orphans:
            advice = "; delete it by hand, or run the provisioner with orphan deletion on"
        elif not self.ctx.cluster_explicit:
            advice = "; not deleted: --cluster was not set explicitly"
        elif why is not None:
            advice = f"; not deleted: {why}"
        else:
            advice = "; it will be deleted once seen orphaned again"
        self.ctx.recorder.warning(
            self._reference(volume.name), REASON,
            f"Cinder volume {volume.volume_id} ({volume.name}) belongs to cluster "
            f"{self.ctx.cluster!r} but no PersistentVolume uses it and no claim is "
            f"provisioning it{advice}")

    # ---- deletion

    def _delete(self, volume: Listed) -> bool:
        if volume.why_kept() is not None or FEATURE_RECLAIM_POLICY not in self.ctx.csi.features():
            return False
        fresh = self._fresh(volume)
        if fresh is None or fresh.why_kept() is not None or fresh.cluster != self.ctx.cluster:
            return False
        try:
            self.ctx.csi.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                self.ctx.recorder.warning(
                    self._reference(volume.name), REASON,
                    f"could not delete orphaned Cinder volume {volume.volume_id} "
                    f"({volume.name}): {rpc_error_text(exc)}")
                return False
        log.warning("deleted orphaned volume %s (%s): no PV, no claim provisioning it, "
                    "available, reclaim policy Delete", volume.volume_id, volume.name)
        self.ctx.recorder.normal(self._reference(volume.name), "OrphanedVolumeDeleted",
                                 f"deleted orphaned Cinder volume {volume.volume_id} "
                                 f"({volume.name})")
        self.deleted.inc()
        with self._lock:
            self._seen.pop(volume.volume_id, None)
        return True

    def _fresh(self, volume: Listed) -> Listed | None:
        """The volume as the driver describes it now (None: gone, or it cannot say)."""
        if RPC.GET_VOLUME not in self.ctx.capabilities.get():
            return volume  # the listing of this pass is the freshest there is
        try:
            got = self.ctx.csi.get_volume(
                csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id))
        except grpc.RpcError as exc:
            if rpc_code(exc) != grpc.StatusCode.NOT_FOUND:
                log.warning("orphan sweep: ControllerGetVolume %s failed: %s",
                            volume.volume_id, rpc_error_text(exc))
            return None
        return Listed.from_csi(got.volume, got.status)

    @staticmethod
    def _reference(name: str) -> dict[str, Any]:
        # Events need a namespace; a cluster-scoped PV's go to "default" (the recorder's).
        return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": name}}
