"""The three PATCH flavours: JSON merge patch, JSON patch and strategic merge patch.

Strategic merge needs each list's patch strategy, which the real server takes from the Go type
tags. The table below holds them for the fields this project and kubectl touch; every other list
is atomic (replaced whole), which is also what the real server does for lists without a tag.
"""

from __future__ import annotations

import copy
from typing import Any

from cinder_csi.standins.kube.errors import ApiError, bad_request

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_PRIMITIVE = ""  # merge strategy on a list of scalars: set union

_COMMON: dict[str, str] = {
    "metadata.finalizers": _PRIMITIVE,
    "metadata.ownerReferences": "uid",
}
_CONTAINER: dict[str, str] = {
    "ports": "containerPort",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
}
_MERGE_KEYS: dict[str, dict[str, str]] = {
    "Pod": {
        "spec.volumes": "name",
        "spec.imagePullSecrets": "name",
        "spec.hostAliases": "ip",
        "spec.schedulingGates": "name",
        "status.conditions": "type",
        **{
            f"spec.{group}.{field}" if field else f"spec.{group}": key
            for group in ("containers", "initContainers", "ephemeralContainers")
            for field, key in {"": "name", **_CONTAINER}.items()
        },
    },
    "Node": {"status.conditions": "type", "status.addresses": "type"},
    "Namespace": {"status.conditions": "type"},
    "PersistentVolumeClaim": {"status.conditions": "type"},
    "CSINode": {"spec.drivers": "name"},
}


def merge_key(kind: str, path: str) -> str | None:
    """The merge key for the list at ``path``; "" for a primitive set; None when atomic."""
    table = _MERGE_KEYS.get(kind, {})
    if path in table:
        return table[path]
    return _COMMON.get(path)


def apply_patch(
    kind: str, original: dict[str, Any], body: Any, content_type: str, *, custom: bool = False
) -> dict[str, Any]:
    """``custom``: a custom resource, which has no patch strategies, so no strategic merge."""
    if custom and content_type == STRATEGIC_PATCH:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}",
        )
    if content_type == MERGE_PATCH:
        if not isinstance(body, dict):
            raise bad_request("merge patch must be a JSON object")
        result = merge_patch(original, body)
    elif content_type == STRATEGIC_PATCH:
        if not isinstance(body, dict):
            raise bad_request("strategic merge patch must be a JSON object")
        result = strategic_merge(kind, original, body, "")
    elif content_type == JSON_PATCH:
        if not isinstance(body, list):
            raise bad_request("json patch must be a JSON array of operations")
        result = json_patch(original, body)
    else:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_PATCH}",
        )
    if not isinstance(result, dict):
        raise bad_request("patch must produce a JSON object")
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(kind: str, original: Any, patch: dict[str, Any], path: str) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise bad_request(f"unknown patch type: {directive} in map: {patch}")
    result: dict[str, Any] = copy.deepcopy(original) if isinstance(original, dict) else {}
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = list(value or [])
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            deletions[key.split("/", 1)[1]] = list(value or [])
            continue
        sub = f"{path}.{key}" if path else key
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = strategic_merge(kind, result.get(key), value, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _merge_list(kind, result.get(key), value, sub)
        else:
            result[key] = copy.deepcopy(value)
    for field, values in deletions.items():
        if isinstance(result.get(field), list):
            result[field] = [v for v in result[field] if v not in values]
    for field, order in orders.items():
        sub = f"{path}.{field}" if path else field
        if isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, merge_key(kind, sub))
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(kind: str, original: Any, patch: list[Any], path: str) -> list[Any]:
    key = merge_key(kind, path)
    base = list(original) if isinstance(original, list) else []
    if key is None:
        return [copy.deepcopy(v) for v in patch if not _is_directive(v)]
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy(v) for v in patch if not _is_directive(v)]
    if key == _PRIMITIVE:
        merged = copy.deepcopy(base)
        for value in patch:
            if value not in merged:
                merged.append(copy.deepcopy(value))
        return merged
    merged = copy.deepcopy(base)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise bad_request(f"map: {item} does not contain declared merge key: {key}")
        index = next(
            (
                i
                for i, cur in enumerate(merged)
                if isinstance(cur, dict) and cur.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del merged[index]
            continue
        if index is None:
            merged.append(strategic_merge(kind, {}, item, path))
        else:
            merged[index] = strategic_merge(kind, merged[index], item, path)
    return merged


def _is_directive(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"$patch"}


def _reorder(items: list[Any], order: list[Any], key: str | None) -> list[Any]:
    def ident(item: Any) -> Any:
        if key and isinstance(item, dict):
            return item.get(key)
        return item

    wanted = [ident(o) for o in order]
    ranked = [i for i in items if ident(i) in wanted]
    ranked.sort(key=lambda i: wanted.index(ident(i)))
    return ranked + [i for i in items if ident(i) not in wanted]


def json_patch(document: Any, operations: list[Any]) -> Any:
    """RFC 6902; a failed operation is a 422 like the real server's."""
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid json patch operation: {op}")
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(
                422,
                "Invalid",
                f"the server rejected our request due to an error "
                f"in our request: {op['op']} {op['path']}: {exc}",
            ) from exc
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str]) -> Any:
    node = doc
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts)
    last = parts[-1]
    return parent[int(last)] if isinstance(parent, list) else parent[last]


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise ValueError("cannot remove the whole document")
    parent = _parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, list):
        return parent.pop(int(last))
    return parent.pop(last)


def _add(doc: Any, path: str, value: Any, *, replace: bool) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts)
    last = parts[-1]
    if isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        else:
            index = int(last)
            if index < 0 or index > len(parent) or (replace and index == len(parent)):
                raise IndexError(f"index {index} out of range")
            if replace:
                parent[index] = value
            else:
                parent.insert(index, value)
    elif isinstance(parent, dict):
        if replace and last not in parent:
            raise KeyError(f"missing value at {path}")
        parent[last] = value
    else:
        raise TypeError(f"cannot add to {type(parent).__name__} at {path}")
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind = op["op"]
    path = str(op["path"])
    if kind == "add":
        return _add(doc, path, copy.deepcopy(op["value"]), replace=False)
    if kind == "replace":
        return _add(doc, path, copy.deepcopy(op["value"]), replace=True)
    if kind == "remove":
        _remove(doc, path)
        return doc
    if kind == "move":
        value = _remove(doc, str(op["from"]))
        return _add(doc, path, value, replace=False)
    if kind == "copy":
        value = copy.deepcopy(_get(doc, str(op["from"])))
        return _add(doc, path, value, replace=False)
    if kind == "test":
        if _get(doc, path) != op.get("value"):
            raise ValueError("testing value failed")
        return doc
    raise ValueError(f"unknown op {kind!r}")
