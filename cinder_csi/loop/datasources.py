"""A claim's data source, for the claim controller: clones and snapshot restores.

``DataSources.content_source`` turns a claim's ``dataSource``/``dataSourceRef`` into the CSI
``VolumeContentSource``: a clone of a Bound claim of the same class and namespace (no larger
than the new claim), or a VolumeSnapshot's bound content handle (when the snapshot API is
installed). Any other kind belongs to a volume populator and is skipped.

The source object is protected by a finalizer for as long as a provisioning from it is in
flight, as external-provisioner protects it: ``cloning-protection`` on a source claim,
``volumesnapshot-as-source-protection`` on a VolumeSnapshot. ``protect`` adds it before the
claim's intent is recorded (so whenever the intent exists, so does the protection);
``sync_source`` removes it once no claim in the making names the source. Work-queue keys for
that check are ``source_key(ref)``.
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
from cinder_csi.loop.intent import SourceRef
from cinder_csi.loop.journal import in_the_making
from cinder_csi.loop.kube.objects import (
    Obj,
    claim_path,
    deleting,
    edit_metadata,
    finalizers_of,
    get_or_none,
    namespace_of,
)

SNAPSHOT_GROUP = "snapshot.storage.k8s.io"
SNAPSHOT_API = f"/apis/{SNAPSHOT_GROUP}/v1"
CLAIM_KIND, SNAPSHOT_KIND = "PersistentVolumeClaim", "VolumeSnapshot"
# Work-queue keys for a source's protection check; "|" never occurs in a name.
SOURCE_PREFIXES = {CLAIM_KIND: "clone-source|", SNAPSHOT_KIND: "snapshot-source|"}
FINALIZERS = {CLAIM_KIND: p.FINALIZER_CLONE_SOURCE, SNAPSHOT_KIND: p.FINALIZER_SNAPSHOT_SOURCE}


def snapshot_path(namespace: str, name: str) -> str:
    return f"{SNAPSHOT_API}/namespaces/{namespace}/volumesnapshots/{name}"


def data_source(claim: Mapping[str, Any]) -> dict[str, str] | None:
    spec = claim.get("spec") or {}
    source = spec.get("dataSource") or spec.get("dataSourceRef")
    if not source:
        return None
    return {k: str(source.get(k) or "") for k in ("apiGroup", "kind", "name", "namespace")}


def source_ref(claim: Mapping[str, Any]) -> SourceRef | None:
    """The clone source claim or the VolumeSnapshot this claim is made from, if any."""
    source = data_source(claim)
    if source is None:
        return None
    namespace = namespace_of(claim)
    if source["kind"] == CLAIM_KIND and not source["apiGroup"]:
        return SourceRef(CLAIM_KIND, namespace, source["name"])
    if source["kind"] == SNAPSHOT_KIND and source["apiGroup"] == SNAPSHOT_GROUP:
        return SourceRef(SNAPSHOT_KIND, namespace, source["name"])
    return None


def source_key(ref: SourceRef) -> str:
    return SOURCE_PREFIXES[ref.kind] + ref.key


def parse_source_key(key: str) -> SourceRef | None:
    """The source a work-queue key names, or None for a claim's own key."""
    for kind, prefix in SOURCE_PREFIXES.items():
        if key.startswith(prefix):
            namespace, _, name = key[len(prefix):].partition("/")
            return SourceRef(kind, namespace, name)
    return None


def source_path(ref: SourceRef) -> str:
    if ref.kind == CLAIM_KIND:
        return claim_path(ref.namespace, ref.name)
    return snapshot_path(ref.namespace, ref.name)


def usable_source(obj: Obj | None, what: str) -> Obj:
    """``obj`` if a volume can be made from it now; SourceError naming ``what`` if it is
    missing or being deleted."""
    if obj is None:
        raise SourceError(f"{what} not found")
    if deleting(obj):
        raise SourceError(f"{what} is being deleted")
    return obj

class DataSources:
    """Resolves data sources; remembers once the snapshot API has been found."""

    def __init__(self, ctx: LoopContext) -> None:
        self.ctx = ctx
        self._snapshot_api = False

    def content_source(self, claim: Obj, storage_class: Mapping[str, Any]
                       ) -> tuple[csi_pb2.VolumeContentSource | None, SourceRef | None]:
        """The content source, and the object to protect while provisioning from it."""
        source = data_source(claim)
        if source is None:
            return None, None
        ref = source_ref(claim)
        if ref is None:
            raise NotOurs()  # a volume populator's kind: it provisions, not us
        if ref.kind == CLAIM_KIND:
            return self._clone_source(claim, storage_class, source), ref
        return self._snapshot_source(claim, source), ref

    def _clone_source(self, claim: Obj, storage_class: Mapping[str, Any],
                      source: Mapping[str, str]) -> csi_pb2.VolumeContentSource:
        ns = str(claim["metadata"]["namespace"])
        if source["namespace"] and source["namespace"] != ns:
            raise ParameterError("cloning from a claim in another namespace is not "
                                        "supported")
        src = usable_source(self.ctx.informers.claims.cache.get(f"{ns}/{source['name']}"),
                            f'source claim "{ns}/{source["name"]}"')
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
        return csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=str(csi["volumeHandle"])))

    def _snapshot_source(self, claim: Obj, source: Mapping[str, str]
                         ) -> csi_pb2.VolumeContentSource:
        if not self._has_snapshot_api():
            raise SourceError(f"the claim restores VolumeSnapshot {source['name']!r}, but the "
                              f"{SNAPSHOT_GROUP}/v1 API is not installed in this cluster "
                              "(install the snapshot CRDs and snapshot-controller)")
        ns = str(claim["metadata"]["namespace"])
        snapshot = usable_source(get_or_none(self.ctx.rest, snapshot_path(ns, source["name"])),
                                 f'VolumeSnapshot "{ns}/{source["name"]}"')
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

    # ---- protection

    def protect(self, ref: SourceRef) -> None:
        """Put the protection finalizer on the source; SourceError when it is gone."""
        current = (self.ctx.informers.claims.cache.get(ref.key) if ref.kind == CLAIM_KIND
                   else None) or get_or_none(self.ctx.rest, source_path(ref))
        if current is None or edit_metadata(
                self.ctx.rest, current, add_finalizers=[FINALIZERS[ref.kind]],
                path=source_path(ref)) is None:
            raise SourceError(f"{ref.kind} {ref.key}, the claim's data source, vanished")

    def protected_snapshots(self) -> list[SourceRef]:
        """VolumeSnapshots that carry the protection finalizer (no informer watches them, so
        a start looks once for protection a crash may have left behind)."""
        if not self._has_snapshot_api():
            return []
        listing = get_or_none(self.ctx.rest, f"{SNAPSHOT_API}/volumesnapshots") or {}
        return [SourceRef(SNAPSHOT_KIND, namespace_of(s), str(s["metadata"]["name"]))
                for s in listing.get("items") or []
                if p.FINALIZER_SNAPSHOT_SOURCE in finalizers_of(s)]

    def sync_source(self, ref: SourceRef) -> None:
        """Drop the source's protection finalizer once no claim in the making names it."""
        finalizer = FINALIZERS[ref.kind]
        if ref.kind == CLAIM_KIND:
            source = self.ctx.informers.claims.cache.get(ref.key)
        else:
            source = get_or_none(self.ctx.rest, source_path(ref))
        if source is None or finalizer not in finalizers_of(source):
            return
        for claim in self.ctx.informers.claims.cache.objects():
            if (source_ref(claim) == ref
                    and not (claim.get("spec") or {}).get("volumeName")
                    and (in_the_making(claim, self.ctx.journal) or not deleting(claim))):
                return  # a volume from it may still be in the making
        # No retry on conflict: a provisioning may have just started; re-check from scratch.
        edit_metadata(self.ctx.rest, source, remove_finalizers=[finalizer],
                      path=source_path(ref), retry_conflicts=False)
