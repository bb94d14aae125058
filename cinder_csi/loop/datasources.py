"""A claim's data source, for the claim controller: clones and snapshot restores.

``DataSources.content_source`` turns a claim's ``dataSource``/``dataSourceRef`` into the CSI
``VolumeContentSource``: a clone of a Bound claim of the same class and namespace (no larger
than the new claim), or a VolumeSnapshot's bound content handle (when the snapshot API is
installed). Any other kind belongs to a volume populator and is skipped.

A clone's source claim carries a protection finalizer while a clone of it is being made;
``sync_clone_source`` removes it once no clone in the making names it. Its work-queue keys are
``clone_source_key(namespace, name)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.csi import csi_pb2
from cinder_csi.loop import caches as inf
from cinder_csi.loop import protocol as p
from cinder_csi.loop import pvspec
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.errors import NotOurs, ParameterError, SourceError
from cinder_csi.loop.kube.objects import (
    Obj,
    claim_path,
    deleting,
    edit_metadata,
    finalizers_of,
    get_or_none,
)
from cinder_csi.loop.protocol import in_flight

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_API = f"/apis/{SNAPSHOT_GROUP}/v1"
# Work-queue keys for a clone source's protection check; "|" never occurs in a name.
SOURCE_PREFIX = "clone-source|"


def clone_source_key(namespace: str, name: str) -> str:
    return SOURCE_PREFIX + f"{namespace}/{name}"


def data_source(claim: Mapping[str, Any]) -> dict[str, str] | None:
    spec = claim.get("spec") or {}
    source = spec.get("dataSource") or spec.get("dataSourceRef")
    if not source:
        return None
    return {k: str(source.get(k) or "") for k in ("apiGroup", "kind", "name", "namespace")}


def clone_source_name(claim: Mapping[str, Any]) -> str | None:
    source = data_source(claim)
    if source and source["kind"] == "PersistentVolumeClaim" and not source["apiGroup"]:
        return source["name"]
    return None


class DataSources:
    """Resolves data sources; remembers once the snapshot API has been found."""

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        self._snapshot_api = False

    def content_source(self, claim: Obj, storage_class: Mapping[str, Any]
                       ) -> tuple[csi_pb2.VolumeContentSource | None, Obj | None]:
        """The content source, and the source claim of a clone (to protect it)."""
        source = data_source(claim)
        if source is None:
            return None, None
        if source["kind"] == "PersistentVolumeClaim" and not source["apiGroup"]:
            return self._clone_source(claim, storage_class, source)
        if source["kind"] == "VolumeSnapshot" and source["apiGroup"] == SNAPSHOT_GROUP:
            return self._snapshot_source(claim, source), None
        raise NotOurs()  # a volume populator's kind: it provisions, not us

    def _clone_source(self, claim: Obj, storage_class: Mapping[str, Any],
                      source: Mapping[str, str]) -> tuple[csi_pb2.VolumeContentSource, Obj]:
        ns = str(claim["metadata"]["namespace"])
        if source["namespace"] and source["namespace"] != ns:
            raise ParameterError("cloning from a claim in another namespace is not "
                                        "supported")
        src = self.ctx.informers.claims.cache.get(f"{ns}/{source['name']}")
        if src is None:
            raise SourceError(f'source claim "{ns}/{source["name"]}" not found')
        if deleting(src):
            raise SourceError(f'source claim "{ns}/{source["name"]}" is being deleted')
        src_spec = src.get("spec") or {}
        volume_name = src_spec.get("volumeName")
        if (src.get("status") or {}).get("phase") != "Bound" or not volume_name:
            raise SourceError(f'source claim "{ns}/{source["name"]}" is not Bound yet')
        class_name = str((storage_class.get("metadata") or {}).get("name", ""))
        if inf.claim_class_name(src) != class_name:
            raise ParameterError(
                f'source claim "{source["name"]}" has StorageClass '
                f'"{inf.claim_class_name(src)}"; a clone must use the same class '
                f'("{class_name}")')
        src_size = ((src.get("status") or {}).get("capacity") or {}).get("storage") or (
            (src_spec.get("resources") or {}).get("requests") or {}).get("storage")
        wanted = pvspec.capacity_range(claim).required_bytes
        if src_size is not None and wanted < pvspec.parse_quantity(src_size):
            raise ParameterError(
                f"requested size {wanted} bytes is smaller than the source claim "
                f'"{source["name"]}" ({src_size}); ask for at least {src_size}')
        pv = self.ctx.informers.volumes.cache.get(str(volume_name))
        csi = (pv or {}).get("spec", {}).get("csi") or {}
        if pv is None or csi.get("driver") != self.ctx.driver or not csi.get("volumeHandle"):
            raise SourceError(f'the volume of source claim "{source["name"]}" is not a '
                              f"{self.ctx.driver} volume")
        content = csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=str(csi["volumeHandle"])))
        return content, src

    def _snapshot_source(self, claim: Obj, source: Mapping[str, str]
                         ) -> csi_pb2.VolumeContentSource:
        if not self._has_snapshot_api():
            raise SourceError(f"the claim restores VolumeSnapshot {source['name']!r}, but the "
                              f"{SNAPSHOT_GROUP}/v1 API is not installed in this cluster "
                              "(install the snapshot CRDs and snapshot-controller)")
        ns = str(claim["metadata"]["namespace"])
        snapshot = get_or_none(self.ctx.rest,
                               f"{SNAPSHOT_API}/namespaces/{ns}/volumesnapshots/{source['name']}")
        if snapshot is None:
            raise SourceError(f'VolumeSnapshot "{ns}/{source["name"]}" not found')
        status = snapshot.get("status") or {}
        content_name = status.get("boundVolumeSnapshotContentName")
        if not content_name or status.get("readyToUse") is False:
            raise SourceError(f'VolumeSnapshot "{ns}/{source["name"]}" is not ready to use yet')
        content = get_or_none(self.ctx.rest,
                              f"{SNAPSHOT_API}/volumesnapshotcontents/{content_name}")
        handle = ((content or {}).get("status") or {}).get("snapshotHandle")
        if not handle:
            raise SourceError(f'VolumeSnapshotContent "{content_name}" has no snapshotHandle '
                              "yet")
        return csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=str(handle)))

    def _has_snapshot_api(self) -> bool:
        if not self._snapshot_api:  # only a positive answer is kept: CRDs may appear later
            self._snapshot_api = get_or_none(self.ctx.rest, SNAPSHOT_API) is not None
        return self._snapshot_api

    def sync_clone_source(self, key: str) -> None:
        """Drop the protection finalizer of source claim ``key`` once no clone needs it."""
        source = self.ctx.informers.claims.cache.get(key)
        if source is None or p.FINALIZER_CLONE_SOURCE not in finalizers_of(source):
            return
        ns, name = str(source["metadata"]["namespace"]), str(source["metadata"]["name"])
        for claim in self.ctx.informers.claims.cache.objects():
            if (claim["metadata"].get("namespace") == ns and clone_source_name(claim) == name
                    and not (claim.get("spec") or {}).get("volumeName")
                    and (in_flight(claim) or not deleting(claim))):
                return  # a clone of it may still be in the making
        # No retry on conflict: a clone may have just started; re-check from the cache.
        edit_metadata(self.ctx.rest, source, remove_finalizers=[p.FINALIZER_CLONE_SOURCE],
                      path=claim_path(ns, name), retry_conflicts=False)
