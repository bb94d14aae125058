"""Names, annotations and small predicates about volumes that several controllers share."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from cinder_csi.standins.kube.quantity import is_quantity, parse_quantity
from cinder_csi.standins.kube.selectors import (
    match_label_selector_object,
    node_selector_terms_match,
)

Obj = dict[str, Any]

ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_STORAGE_PROVISIONER_BETA = "volume.beta.kubernetes.io/storage-provisioner"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"
ANN_BOUND_BY_CONTROLLER = "pv.kubernetes.io/bound-by-controller"
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_BETA_CLASS = "volume.beta.kubernetes.io/storage-class"
NO_PROVISIONER = "kubernetes.io/no-provisioner"
PVC_PROTECTION = "kubernetes.io/pvc-protection"
PV_PROTECTION = "kubernetes.io/pv-protection"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"


def annotations_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def claim_ref(pv: Obj) -> Obj:
    """The claim a PV is bound (or promised) to; empty when none."""
    ref: Obj = (pv.get("spec") or {}).get("claimRef") or {}
    return ref


def claim_class(claim: Obj) -> str:
    """The class a claim asks for: the beta annotation wins over spec.storageClassName."""
    beta = annotations_of(claim).get(ANN_BETA_CLASS)
    if beta is not None:
        return beta
    return str((claim.get("spec") or {}).get("storageClassName") or "")


def volume_class(pv: Obj) -> str:
    beta = annotations_of(pv).get(ANN_BETA_CLASS)
    if beta is not None:
        return beta
    return str((pv.get("spec") or {}).get("storageClassName") or "")


def attachment_name(volume_handle: str, driver: str, node: str) -> str:
    """The VolumeAttachment name the real CSI attacher uses: csi-<sha256(handle+driver+node)>."""
    return "csi-" + hashlib.sha256(f"{volume_handle}{driver}{node}".encode()).hexdigest()


def unique_volume_name(driver: str, volume_handle: str) -> str:
    """How kubelet and the attach/detach controller name a CSI volume in node status."""
    return f"kubernetes.io/csi/{driver}^{volume_handle}"


def pod_claim_names(pod: Obj) -> list[str]:
    names = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        claim = (volume or {}).get("persistentVolumeClaim")
        if isinstance(claim, dict) and claim.get("claimName"):
            names.append(str(claim["claimName"]))
    return names


def pod_volumes(pod: Obj) -> list[tuple[str, str, bool]]:
    """(volume name in the pod, claim name, readOnly) for each PVC volume of a pod."""
    out = []
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        claim = (volume or {}).get("persistentVolumeClaim")
        if isinstance(claim, dict) and claim.get("claimName"):
            out.append(
                (
                    str(volume.get("name")),
                    str(claim["claimName"]),
                    bool(claim.get("readOnly", False)),
                )
            )
    return out


def pod_phase_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def pod_terminated(pod: Obj) -> bool:
    """No container runs any more: terminal phase, or being deleted with nothing running."""
    if pod_phase_terminal(pod):
        return True
    if not (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return not any("running" in (s.get("state") or {}) for s in statuses)


def node_ready(node: Obj) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


def best_matching_volume(claim: Obj, volumes: Iterable[Obj], node: Obj | None = None) -> Obj | None:
    """The smallest Available, unclaimed PV that satisfies the claim (static provisioning).

    With ``node``, the PV's required node affinity must also admit that node, as in the
    scheduler's volume binding for WaitForFirstConsumer claims.
    """
    spec = claim.get("spec") or {}
    wanted = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if not is_quantity(wanted):
        return None
    need = parse_quantity(wanted)
    modes = set(spec.get("accessModes") or [])
    best: tuple[Any, str, Obj] | None = None
    for pv in volumes:
        pv_spec = pv.get("spec") or {}
        if pv_spec.get("claimRef") or pv["metadata"].get("deletionTimestamp"):
            continue
        if (pv.get("status") or {}).get("phase") not in (None, "Pending", "Available"):
            continue
        if volume_class(pv) != claim_class(claim):
            continue
        if pv_spec.get("volumeMode", "Filesystem") != spec.get("volumeMode", "Filesystem"):
            continue
        if not modes <= set(pv_spec.get("accessModes") or []):
            continue
        if not match_label_selector_object(
            spec.get("selector"), pv["metadata"].get("labels") or {}
        ):
            continue
        terms = ((pv_spec.get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms")
        if node is not None and terms and not node_selector_terms_match(terms, node):
            continue
        size = (pv_spec.get("capacity") or {}).get("storage")
        if not is_quantity(size) or parse_quantity(size) < need:
            continue
        candidate = (parse_quantity(size), str(pv["metadata"]["name"]), pv)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return best[2] if best else None
