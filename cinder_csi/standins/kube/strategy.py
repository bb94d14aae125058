"""Per-type create/update strategies: defaults, status resets and the status-subresource split.

These are what the real registry's ``PrepareForCreate`` / ``PrepareForUpdate`` do for the types
served here: a client cannot set status on create, a PUT to the main resource keeps the old
status, a PUT to ``/status`` keeps everything but the status.
"""

from __future__ import annotations

import copy
from typing import Any

from cinder_csi.standins.kube.resources import ResourceType

# What a claim or volume status is reset to on create (the defaulted phase).
_CREATE_STATUS: dict[str, dict[str, Any]] = {
    "PersistentVolumeClaim": {"phase": "Pending"},
    "PersistentVolume": {"phase": "Pending"},
    "Pod": {"phase": "Pending", "qosClass": "BestEffort"},
    "VolumeAttachment": {"attached": False},
    "Namespace": {"phase": "Active"},
}


def prepare_for_create(rt: ResourceType, obj: dict[str, Any], now: str) -> None:
    if rt.kind in _CREATE_STATUS:
        obj["status"] = copy.deepcopy(_CREATE_STATUS[rt.kind])
    if rt.kind == "PersistentVolume":
        obj["status"]["lastPhaseTransitionTime"] = now
    apply_defaults(rt, obj)


def apply_defaults(rt: ResourceType, obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    if rt.kind == "PersistentVolumeClaim" and isinstance(spec, dict):
        spec.setdefault("volumeMode", "Filesystem")
    elif rt.kind == "PersistentVolume" and isinstance(spec, dict):
        spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
        spec.setdefault("volumeMode", "Filesystem")
    elif rt.kind == "StorageClass":
        obj.setdefault("reclaimPolicy", "Delete")
        obj.setdefault("volumeBindingMode", "Immediate")
    elif rt.kind == "Pod" and isinstance(spec, dict):
        _pod_defaults(spec)
    elif rt.kind == "CSIDriver":
        spec = obj.setdefault("spec", {})
        spec.setdefault("attachRequired", True)
        spec.setdefault("podInfoOnMount", False)
        spec.setdefault("requiresRepublish", False)
        spec.setdefault("storageCapacity", False)
        spec.setdefault("fsGroupPolicy", "ReadWriteOnceWithFSType")
        spec.setdefault("volumeLifecycleModes", ["Persistent"])
        spec.setdefault("seLinuxMount", False)
    elif rt.kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif rt.kind == "Secret":
        obj.setdefault("type", "Opaque")


def _pod_defaults(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if not isinstance(container, dict):
            continue
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
        image = str(container.get("image", ""))
        tag = image.rsplit("/", 1)[-1]
        latest = ":" not in tag or tag.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")


def prepare_for_update(rt: ResourceType, new: dict[str, Any], old: dict[str, Any]) -> None:
    """A PUT/PATCH on the main resource cannot change status."""
    if rt.has_status:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    apply_defaults(rt, new)


def prepare_for_status_update(
    rt: ResourceType, new: dict[str, Any], old: dict[str, Any], now: str
) -> dict[str, Any]:
    """A PUT/PATCH on /status changes only the status (metadata and spec come from ``old``)."""
    result = copy.deepcopy(old)
    result["metadata"]["resourceVersion"] = (new.get("metadata") or {}).get("resourceVersion")
    if "status" in new:
        result["status"] = copy.deepcopy(new["status"])
    else:
        result.pop("status", None)
    if rt.kind == "PersistentVolume":
        old_phase = (old.get("status") or {}).get("phase")
        status = result.setdefault("status", {})
        if status.get("phase") != old_phase:
            status["lastPhaseTransitionTime"] = now
    return result
