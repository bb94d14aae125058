"""Admission plugins that are on by default in a real cluster and that volume code depends on."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cinder_csi.standins.kube.errors import forbidden
from cinder_csi.standins.kube.quantity import is_quantity, parse_quantity
from cinder_csi.standins.kube.resources import ResourceType

DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
BETA_CLASS_ANNOTATION = "volume.beta.kubernetes.io/storage-class"


@dataclass
class AdmissionRequest:
    operation: str  # CREATE or UPDATE
    resource: ResourceType
    object: dict[str, Any]  # mutable: mutating plugins change it in place
    old: dict[str, Any] | None
    subresource: str | None
    # Read-only view of the store's objects of a kind, for plugins that look at other objects.
    objects: Callable[[str], Iterable[dict[str, Any]]]


Admission = Callable[[AdmissionRequest], None]


def default_storage_class(req: AdmissionRequest) -> None:
    """DefaultStorageClass: a claim without a class gets the default one at create."""
    if req.operation != "CREATE" or req.resource.kind != "PersistentVolumeClaim":
        return
    spec = req.object.get("spec")
    annotations = req.object["metadata"].get("annotations") or {}
    if (
        not isinstance(spec, dict)
        or "storageClassName" in spec
        or BETA_CLASS_ANNOTATION in annotations
    ):
        return
    defaults = [
        sc
        for sc in req.objects("StorageClass")
        if ((sc["metadata"].get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION) == "true")
    ]
    if defaults:
        # Several defaults: the newest wins, as in the real plugin since 1.26.
        newest = max(
            defaults, key=lambda sc: (sc["metadata"]["creationTimestamp"], sc["metadata"]["name"])
        )
        spec["storageClassName"] = newest["metadata"]["name"]


def claim_resize(req: AdmissionRequest) -> None:
    """PersistentVolumeClaimResize: growing a claim needs a class with allowVolumeExpansion."""
    if (
        req.operation != "UPDATE"
        or req.resource.kind != "PersistentVolumeClaim"
        or req.old is None
        or req.subresource
    ):
        return
    new_size = _request(req.object)
    old_size = _request(req.old)
    if new_size is None or old_size is None or not new_size > old_size:
        return
    class_name = (req.object.get("spec") or {}).get("storageClassName") or (
        (req.object["metadata"].get("annotations") or {}).get(BETA_CLASS_ANNOTATION)
    )
    allowed = any(
        sc["metadata"]["name"] == class_name and sc.get("allowVolumeExpansion") is True
        for sc in req.objects("StorageClass")
    )
    if not allowed:
        raise forbidden(
            req.resource,
            req.object["metadata"]["name"],
            "only dynamically provisioned pvc can be resized and the storageclass "
            "that provisions the pvc must support resize",
        )


def _request(claim: dict[str, Any]) -> Any:
    value = (((claim.get("spec") or {}).get("resources") or {}).get("requests") or {}).get(
        "storage"
    )
    return parse_quantity(value) if is_quantity(value) else None


MUTATING: tuple[Admission, ...] = (default_storage_class,)
VALIDATING: tuple[Admission, ...] = (claim_resize,)
