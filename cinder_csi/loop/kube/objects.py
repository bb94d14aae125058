"""Kubernetes objects as raw JSON dicts: where they live, what their metadata says, and edits.

- API paths of the kinds the loop reads and writes;
- readers: metadata, name, namespace, key (``namespace/name``), resourceVersion, finalizers,
  annotations, ``deleting`` (a deletionTimestamp is set);
- ``get_or_none`` (a 404 is an answer, not an error), ``each_listed`` (a whole collection,
  a page at a time),
  ``read_secret`` (a Secret's data as text), ``timestamp`` (a time as the API writes it);
- ``edit_metadata``: add/remove finalizers and set/remove annotations with optimistic
  concurrency; ``merge_metadata``: the same in one request that cannot conflict.

Every reader takes what the API sent and never fails on a missing field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import MERGE_PATCH, STRATEGIC_MERGE_PATCH

if TYPE_CHECKING:
    from cinder_csi.loop.kube.client import KubeRest

Obj = dict[str, Any]

CONFLICT_RETRIES = 5  # edit_metadata: re-reads after a 409 before giving up

# ---------------------------------------------------------------- paths

PV_PATH = "/api/v1/persistentvolumes"
NODES_PATH = "/api/v1/nodes"
STORAGE_CLASSES_PATH = "/apis/storage.k8s.io/v1/storageclasses"
VA_PATH = "/apis/storage.k8s.io/v1/volumeattachments"
CSI_NODES_PATH = "/apis/storage.k8s.io/v1/csinodes"


def pv_path(name: str) -> str:
    return f"{PV_PATH}/{name}"


def va_path(name: str) -> str:
    return f"{VA_PATH}/{name}"


def node_path(name: str) -> str:
    return f"{NODES_PATH}/{name}"


def namespace_path(name: str) -> str:
    return f"/api/v1/namespaces/{name}"


def claims_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/persistentvolumeclaims"


def claim_path(namespace: str, name: str) -> str:
    return f"{claims_path(namespace)}/{name}"


def secret_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{namespace}/secrets/{name}"


def object_path(obj: Mapping[str, Any]) -> str:
    """The path of a PersistentVolume (any cluster-scoped object) or of a claim."""
    meta = meta_of(obj)
    if obj.get("kind") == "PersistentVolume" or not meta.get("namespace"):
        return pv_path(str(meta["name"]))
    return claim_path(str(meta["namespace"]), str(meta["name"]))


# ---------------------------------------------------------------- readers


def meta_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def name_of(obj: Mapping[str, Any]) -> str:
    return str(meta_of(obj).get("name", ""))


def namespace_of(obj: Mapping[str, Any]) -> str:
    return str(meta_of(obj).get("namespace") or "")


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects (client-go's key format)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


def split_key(key: str) -> tuple[str | None, str]:
    ns, sep, name = key.partition("/")
    return (ns, name) if sep else (None, key)


def resource_version(obj: Mapping[str, Any]) -> str:
    return str(meta_of(obj).get("resourceVersion") or "")


def finalizers_of(obj: Mapping[str, Any]) -> list[str]:
    return [str(f) for f in meta_of(obj).get("finalizers") or []]


def annotations_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict(meta_of(obj).get("annotations") or {})


def deleting(obj: Mapping[str, Any]) -> bool:
    """The object has a deletionTimestamp: it goes once its finalizers are gone."""
    return bool(meta_of(obj).get("deletionTimestamp"))


def timestamp(when: datetime | None = None) -> str:
    """``when`` (default: now) as the API writes times: RFC 3339 in UTC, whole seconds."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- reads and edits


def get_or_none(rest: KubeRest, path: str) -> Obj | None:
    """The object at ``path``, or None when the API says 404."""
    try:
        return rest.get(path)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def each_listed(rest: KubeRest, path: str, *, page_size: int = 500) -> Iterator[Obj]:
    """Every object of a collection, one page at a time (one consistent snapshot of the
    server's, or an ApiException: a 410 when the snapshot expired between pages). Only a page
    is held at once: a caller that keeps a field of each object never holds the whole
    collection (10,000 claims decoded at once cost the loop ~25 MB it kept)."""
    token = ""
    while True:
        query: dict[str, Any] = {"limit": page_size}
        if token:
            query["continue"] = token
        page = rest.get(path, query=query)
        yield from page.get("items") or []
        token = str((page.get("metadata") or {}).get("continue") or "")
        if not token:
            return


def read_secret(rest: KubeRest, namespace: str, name: str) -> dict[str, str]:
    """A Secret's ``data`` decoded to text. Raises ApiException / urllib3 errors from the API.

    Values that are not UTF-8 text cannot travel in a CSI ``map<string,string>`` and are
    skipped, as the sidecars' ``string(bytes)`` would garble them anyway.
    """
    secret = rest.get(secret_path(namespace, name))
    out: dict[str, str] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            continue
    return out


def annotation_changes(obj: Mapping[str, Any], wanted: Mapping[str, str | None]
                       ) -> dict[str, str | None]:
    """The part of ``wanted`` (None: remove) that ``obj``'s annotations do not already say."""
    existing = annotations_of(obj)
    return {k: v for k, v in wanted.items()
            if existing.get(k) != v and not (v is None and k not in existing)}


class MetadataChange(TypedDict, total=False):
    """What ``edit_metadata`` and ``merge_metadata`` change: finalizers to add and to remove,
    annotations to set (None: remove)."""

    add_finalizers: Iterable[str]
    remove_finalizers: Iterable[str]
    annotations: Mapping[str, str | None] | None


def edit_metadata(rest: KubeRest, obj: Obj, *, path: str | None = None,
                  retry_conflicts: bool = True, **change: Unpack[MetadataChange]) -> Obj | None:
    """Add/remove finalizers and set/remove (None) annotations on ``obj``.

    A merge patch carrying the object's resourceVersion: the finalizer list is replaced as a
    whole, so a concurrent writer must make us re-read (409) rather than be overwritten. Returns
    the updated object (``obj`` itself when nothing needed changing), None when it is gone.
    """
    adds, removes = list(change.get("add_finalizers", ())), set(change.get("remove_finalizers", ()))
    wanted = dict(change.get("annotations") or {})
    target = path or object_path(obj)
    current = obj
    for _ in range(CONFLICT_RETRIES):
        finalizers = finalizers_of(current)
        new_finalizers = [f for f in finalizers if f not in removes]
        new_finalizers += [f for f in adds if f not in new_finalizers]
        ann_patch = annotation_changes(current, wanted)
        if new_finalizers == finalizers and not ann_patch:
            return current
        meta: Obj = {"resourceVersion": meta_of(current).get("resourceVersion")}
        if new_finalizers != finalizers:
            meta["finalizers"] = new_finalizers or None
        if ann_patch:
            meta["annotations"] = ann_patch
        try:
            return rest.patch(target, {"metadata": meta}, content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status != 409 or not retry_conflicts:
                raise
        fresh = get_or_none(rest, target)
        if fresh is None:
            return None
        current = fresh
    raise RuntimeError(f"{target}: still conflicting after {CONFLICT_RETRIES} attempts")


def merge_metadata(rest: KubeRest, obj: Obj, *, path: str | None = None,
                   **change: Unpack[MetadataChange]) -> Obj | None:
    """``edit_metadata`` in one strategic merge patch, for built-in kinds (PV, PVC, VA).

    ObjectMeta merges finalizers item by item (``patchStrategy: merge``), so the patch names
    only our own finalizers and annotations and carries no resourceVersion: a concurrent writer
    (the PV controller binding the claim) neither makes it fail with 409 nor loses its own
    change. The object's uid goes along as a precondition, so an object deleted and re-created
    under the same name is refused, never edited. Returns the patched object (``obj`` itself
    when ``obj`` needs no change), or None when it is gone, was replaced, or is being deleted
    and so takes no new finalizer.
    """
    finalizers = finalizers_of(obj)
    adds = [f for f in dict.fromkeys(change.get("add_finalizers", ())) if f not in finalizers]
    removes = [f for f in dict.fromkeys(change.get("remove_finalizers", ())) if f in finalizers]
    changed = annotation_changes(obj, change.get("annotations") or {})
    if not adds and not removes and not changed:
        return obj
    meta: Obj = {}
    uid = meta_of(obj).get("uid")
    if uid:
        meta["uid"] = uid
    if adds:
        meta["finalizers"] = adds
    if removes:
        meta["$deleteFromPrimitiveList/finalizers"] = removes
    if changed:
        meta["annotations"] = changed
    target = path or object_path(obj)
    try:
        return rest.patch(target, {"metadata": meta}, content_type=STRATEGIC_MERGE_PATCH)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status not in (409, 422):
            raise
        # 409/422: another uid (replaced) or, for a new finalizer, an object being deleted.
        fresh = get_or_none(rest, target)
        if fresh is None or (uid and meta_of(fresh).get("uid") != uid) or deleting(fresh):
            return None
        raise
