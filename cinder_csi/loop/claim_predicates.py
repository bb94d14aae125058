"""What a PersistentVolumeClaim says, for the claim controller: pure predicates, no I/O.

Whether a claim is for our driver and ready to provision (external-provisioner's
``shouldProvision``), whether it carries our crash-safe intent, whether it is being deleted,
and the claim as it is without what only we write while provisioning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.loop import protocol as p
from cinder_csi.loop.deletion import annotations_of, finalizers_of

WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"


def strip_own(claim: Mapping[str, Any]) -> dict[str, Any]:
    """The claim without what only we (or the API server) write during provisioning."""
    meta = dict(claim.get("metadata") or {})
    for field in ("resourceVersion", "managedFields", "generation"):
        meta.pop(field, None)
    meta["annotations"] = {k: v for k, v in annotations_of(claim).items()
                           if k != p.ANN_PROVISIONING}
    meta["finalizers"] = [f for f in finalizers_of(claim) if f != p.FINALIZER_PROVISIONING]
    return {**claim, "metadata": meta}


def provisioner_of(claim: Mapping[str, Any]) -> str | None:
    ann = annotations_of(claim)
    return ann.get(p.ANN_STORAGE_PROVISIONER) or ann.get(p.ANN_BETA_STORAGE_PROVISIONER)


def in_flight(claim: Mapping[str, Any]) -> bool:
    """The claim carries our intent: provisioning started and is not yet cleaned up."""
    return (p.ANN_PROVISIONING in annotations_of(claim)
            or p.FINALIZER_PROVISIONING in finalizers_of(claim))


def terminating(obj: Mapping[str, Any]) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def wants(claim: Mapping[str, Any], driver: str,
          storage_class: Mapping[str, Any] | None) -> bool:
    """external-provisioner's shouldProvision, for a claim without our intent."""
    if terminating(claim) or (claim.get("spec") or {}).get("volumeName"):
        return False
    if provisioner_of(claim) != driver:
        return False
    delayed = (storage_class is not None
               and storage_class.get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER)
    return not delayed or bool(annotations_of(claim).get(p.ANN_SELECTED_NODE))
