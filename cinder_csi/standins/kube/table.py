"""Server-side printing (``Accept: ...;as=Table``), which ``kubectl get`` asks for.

The columns are the ones the real server prints for these types, so that what a developer sees
in ``kubectl get`` against the stand-in reads like a real cluster.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable
from typing import Any

from cinder_csi.standins.kube.resources import ResourceType

Obj = dict[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell

_MODES = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}


def _age(obj: Obj) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    seconds = int(time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))
    seconds = max(seconds, 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3600 * 3:
        return f"{seconds // 60}m"
    if seconds < 86400 * 2:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _get(obj: Obj, path: str, default: Any = "") -> Any:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict):
            return default
        node = node.get(part)
    return default if node is None else node


def _modes(modes: Any) -> str:
    return ",".join(_MODES.get(m, m) for m in modes or [])


def _pod_status(pod: Obj) -> str:
    if _get(pod, "metadata.deletionTimestamp"):
        return "Terminating"
    return str(_get(pod, "status.phase", "Pending"))


def _pod_ready(pod: Obj) -> str:
    total = len(_get(pod, "spec.containers", []))
    ready = sum(1 for c in _get(pod, "status.containerStatuses", []) if c.get("ready"))
    return f"{ready}/{total}"


def _claim(pv: Obj) -> str:
    ref = _get(pv, "spec.claimRef", {})
    return f"{ref.get('namespace')}/{ref.get('name')}" if ref else ""


def _name(obj: Obj) -> str:
    return str(_get(obj, "metadata.name"))


_COLUMNS: dict[str, list[Column]] = {
    "PersistentVolumeClaim": [
        ("Status", "string", 0, lambda o: _get(o, "status.phase")),
        ("Volume", "string", 0, lambda o: _get(o, "spec.volumeName")),
        ("Capacity", "string", 0, lambda o: _get(o, "status.capacity.storage")),
        ("Access Modes", "string", 0, lambda o: _modes(_get(o, "status.accessModes", []))),
        ("StorageClass", "string", 0, lambda o: _get(o, "spec.storageClassName")),
        (
            "VolumeAttributesClass",
            "string",
            0,
            lambda o: _get(o, "spec.volumeAttributesClassName", "<unset>"),
        ),
        ("Age", "string", 0, _age),
        ("VolumeMode", "string", 1, lambda o: _get(o, "spec.volumeMode")),
    ],
    "PersistentVolume": [
        ("Capacity", "string", 0, lambda o: _get(o, "spec.capacity.storage")),
        ("Access Modes", "string", 0, lambda o: _modes(_get(o, "spec.accessModes", []))),
        ("Reclaim Policy", "string", 0, lambda o: _get(o, "spec.persistentVolumeReclaimPolicy")),
        ("Status", "string", 0, lambda o: _get(o, "status.phase")),
        ("Claim", "string", 0, _claim),
        ("StorageClass", "string", 0, lambda o: _get(o, "spec.storageClassName")),
        (
            "VolumeAttributesClass",
            "string",
            0,
            lambda o: _get(o, "spec.volumeAttributesClassName", "<unset>"),
        ),
        ("Reason", "string", 0, lambda o: _get(o, "status.reason")),
        ("Age", "string", 0, _age),
        ("VolumeMode", "string", 1, lambda o: _get(o, "spec.volumeMode")),
    ],
    "Pod": [
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, lambda o: "0"),
        ("Age", "string", 0, _age),
        ("IP", "string", 1, lambda o: _get(o, "status.podIP", "<none>")),
        ("Node", "string", 1, lambda o: _get(o, "spec.nodeName", "<none>")),
    ],
    "StorageClass": [
        ("Provisioner", "string", 0, lambda o: _get(o, "provisioner")),
        ("ReclaimPolicy", "string", 0, lambda o: _get(o, "reclaimPolicy")),
        ("VolumeBindingMode", "string", 0, lambda o: _get(o, "volumeBindingMode")),
        (
            "AllowVolumeExpansion",
            "string",
            0,
            lambda o: str(bool(_get(o, "allowVolumeExpansion", False))).lower(),
        ),
        ("Age", "string", 0, _age),
    ],
    "VolumeAttachment": [
        ("Attacher", "string", 0, lambda o: _get(o, "spec.attacher")),
        ("PV", "string", 0, lambda o: _get(o, "spec.source.persistentVolumeName")),
        ("Node", "string", 0, lambda o: _get(o, "spec.nodeName")),
        ("Attached", "boolean", 0, lambda o: bool(_get(o, "status.attached", False))),
        ("Age", "string", 0, _age),
    ],
    "Node": [
        (
            "Status",
            "string",
            0,
            lambda o: (
                "Ready"
                if any(
                    c.get("type") == "Ready" and c.get("status") == "True"
                    for c in _get(o, "status.conditions", [])
                )
                else "NotReady"
            ),
        ),
        ("Age", "string", 0, _age),
    ],
    "Namespace": [
        ("Status", "string", 0, lambda o: _get(o, "status.phase")),
        ("Age", "string", 0, _age),
    ],
}
_DEFAULT: list[Column] = [("Age", "string", 0, _age)]


def _partial(obj: Obj) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def table(rt: ResourceType, objs: list[Obj], list_meta: Obj) -> Obj:
    columns = [("Name", "string", 0, _name), *_COLUMNS.get(rt.kind, _DEFAULT)]
    definitions = [
        {
            "name": name,
            "type": kind,
            "format": "name" if name == "Name" else "",
            "description": "",
            "priority": priority,
        }
        for name, kind, priority, _ in columns
    ]
    rows = [
        {"cells": [cell(obj) for _, _, _, cell in columns], "object": _partial(obj)} for obj in objs
    ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": definitions,
        "rows": rows,
    }


def wants_table(accept: str) -> bool:
    """The client's first choice is a Table (kubectl lists Table first, plain JSON last)."""
    first = accept.split(",")[0]
    return "as=Table" in first and "g=meta.k8s.io" in first
