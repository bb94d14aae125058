"""The informers the watch loop shares, with the indexes its controllers look things up by.

One list+watch per resource type for the whole process: every controller reads the same cache
and registers its own handlers before ``start()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cinder_csi.loop.kube.client import KubeRest
from cinder_csi.loop.kube.informer import IndexFunc, Informer
from cinder_csi.loop.kube.objects import (
    CSI_NODES_PATH,
    NODES_PATH,
    PV_PATH,
    STORAGE_CLASSES_PATH,
    VA_PATH,
    Obj,
    annotations_of,
)
from cinder_csi.loop.protocol import ANN_BETA_STORAGE_CLASS

# Index names.
BY_CLAIM = "claim"  # PV -> "namespace/name" of its claimRef
BY_VOLUME_HANDLE = "volumeHandle"  # PV -> csi.volumeHandle
BY_PV = "pv"  # VolumeAttachment -> spec.source.persistentVolumeName
BY_CLASS = "class"  # PVC -> storage class name
BY_NODE = "node"  # VolumeAttachment -> spec.nodeName


def claim_ref_key(pv: Obj) -> Iterable[str]:
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    if ref.get("name"):
        yield f"{ref.get('namespace', '')}/{ref['name']}"


def volume_handle(pv: Obj) -> Iterable[str]:
    handle = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle")
    if handle:
        yield str(handle)


def attachment_pv(va: Obj) -> Iterable[str]:
    name = ((va.get("spec") or {}).get("source") or {}).get("persistentVolumeName")
    if name:
        yield str(name)


def attachment_node(va: Obj) -> Iterable[str]:
    node = (va.get("spec") or {}).get("nodeName")
    if node:
        yield str(node)


def claim_class(pvc: Obj) -> Iterable[str]:
    yield claim_class_name(pvc)


def claim_class_name(pvc: Obj) -> str:
    """The beta annotation wins over spec.storageClassName, as the sidecars read it."""
    legacy = annotations_of(pvc).get(ANN_BETA_STORAGE_CLASS)
    if legacy is not None:
        return str(legacy)
    return str((pvc.get("spec") or {}).get("storageClassName") or "")


@dataclass
class Informers:
    claims: Informer
    volumes: Informer
    classes: Informer
    attachments: Informer
    csi_nodes: Informer
    nodes: Informer

    def all(self) -> tuple[Informer, ...]:
        return (self.claims, self.volumes, self.classes, self.attachments, self.csi_nodes,
                self.nodes)

    def start(self) -> None:
        for informer in self.all():
            informer.start()

    def wait_for_sync(self, timeout: float) -> bool:
        return all(informer.wait_for_sync(timeout) for informer in self.all())

    def stop(self) -> None:
        for informer in self.all():
            informer.stop()


def build_informers(rest: KubeRest, *, resync_period: float = 600.0) -> Informers:
    def informer(name: str, path: str, indexers: Mapping[str, IndexFunc] | None = None
                 ) -> Informer:
        return Informer(name, rest.lister(path), indexers=indexers, resync_period=resync_period)

    return Informers(
        claims=informer("persistentvolumeclaims", "/api/v1/persistentvolumeclaims",
                        {BY_CLASS: claim_class}),
        volumes=informer("persistentvolumes", PV_PATH,
                         {BY_CLAIM: claim_ref_key, BY_VOLUME_HANDLE: volume_handle}),
        classes=informer("storageclasses", STORAGE_CLASSES_PATH),
        attachments=informer("volumeattachments", VA_PATH,
                             {BY_PV: attachment_pv, BY_NODE: attachment_node}),
        csi_nodes=informer("csinodes", CSI_NODES_PATH),
        nodes=informer("nodes", NODES_PATH),
    )
