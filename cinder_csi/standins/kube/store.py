"""The object store: what etcd plus the generic registry do for the real apiserver.

One lock guards everything; every write bumps one global resourceVersion and appends one
``Change`` to a bounded log. The log serves watches (a resourceVersion older than the log is 410
Gone, as after an etcd compaction) and consistent paged lists (a page is computed as of the first
page's resourceVersion by rolling the log back). In-process controllers subscribe to the same
changes through unbounded queues, so they never miss one however slow they are.

Objects are plain JSON dicts. Stored dicts are never mutated in place, so a ``Change`` can share
them; everything handed out is a deep copy.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import copy
import itertools
import json
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from cinder_csi.standins.kube import admission, errors, strategy, validation
from cinder_csi.standins.kube.errors import ApiError, FieldError
from cinder_csi.standins.kube.patch import MERGE_PATCH, apply_patch
from cinder_csi.standins.kube.resources import RESOURCES, ResourceType
from cinder_csi.standins.kube.selectors import (
    matcher,
    parse_field_selector,
    parse_label_selector,
)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace or "", name)
ResourceRef = ResourceType | str
IndexFunc = Callable[[Obj], Iterable[Hashable]]

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"

_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # what the real generateName suffix draws from
_SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def resolve(resource: ResourceRef) -> ResourceType:
    """A resource type from itself, its plural, kind or short name."""
    if isinstance(resource, ResourceType):
        return resource
    for rt in RESOURCES:
        if resource in (rt.plural, rt.kind, rt.singular) or resource in rt.short_names:
            return rt
    raise KeyError(f"unknown resource {resource!r}")


@dataclass(frozen=True)
class Change:
    type: str
    resource: ResourceType
    object: Obj  # the new state; for DELETED the last state, carrying the deletion's version
    previous: Obj | None
    rv: int

    @property
    def key(self) -> Key:
        meta = self.object["metadata"]
        return meta.get("namespace", ""), meta["name"]


@dataclass(frozen=True)
class ListResult:
    items: list[Obj]
    resource_version: int
    continue_token: str | None = None
    remaining: int | None = None


class Subscription:
    """Every change committed after ``Store.subscribe()``, in order, until closed."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._queue: queue.SimpleQueue[Change | None] = queue.SimpleQueue()
        self.closed = False

    def _put(self, change: Change | None) -> None:
        self._queue.put(change)

    def get(self, timeout: float | None = None) -> Change | None:
        """The next change, or None on timeout or once closed."""
        if self.closed or (timeout == 0 and self._queue.empty()):
            return None  # a drained queue is the common case: no exception raised for it
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.closed = True
        self._store._unsubscribe(self)
        self._queue.put(None)  # wake a consumer blocked in get()


class Store:
    def __init__(self, *, event_window: int = 1000, clock: Callable[[], float] = time.time) -> None:
        if event_window < 1:
            raise ValueError("event_window must be at least 1")
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._clock = clock
        self._data: dict[ResourceType, dict[Key, Obj]] = {rt: {} for rt in RESOURCES}
        self._rv = 0
        self._log: deque[Change] = deque(maxlen=event_window)
        self._compacted = 0  # changes with rv <= this are no longer in the log
        self._subscriptions: list[Subscription] = []
        # Secondary indexes: resource -> index name -> (keys of an object, value -> keys).
        self._indexes: dict[ResourceType, dict[str, tuple[IndexFunc, dict[Hashable, set[Key]]]]]
        self._indexes = {}
        # Mutating plugins run before validation, validating ones after, as in the real chain.
        self._mutating: list[admission.Admission] = list(admission.MUTATING)
        self._validating: list[admission.Admission] = list(admission.VALIDATING)
        self._closed = False
        for ns in _SYSTEM_NAMESPACES:
            self.create("namespaces", {"metadata": {"name": ns}})

    # ----------------------------------------------------------------- plumbing

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def now(self) -> str:
        return rfc3339(self._clock())

    def add_admission(self, plugin: admission.Admission, *, validating: bool = False) -> None:
        with self._lock:
            (self._validating if validating else self._mutating).append(plugin)

    def remove_admission(self, plugin: admission.Admission) -> None:
        with self._lock:
            for chain in (self._mutating, self._validating):
                if plugin in chain:
                    chain.remove(plugin)

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        with self._lock:
            self._subscriptions.append(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscriptions:
                self._subscriptions.remove(sub)

    def close(self) -> None:
        """Wake every waiting watch so that it can end."""
        with self._lock:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def compact(self) -> None:
        """Drop the whole change log, as an etcd compaction does: older watches get 410."""
        with self._lock:
            self._log.clear()
            self._compacted = self._rv

    def add_index(self, resource: ResourceRef, name: str, keys: IndexFunc) -> None:
        """Keep objects of ``resource`` findable by ``keys(obj)`` (see ``indexed``), so an
        in-process controller looks up instead of scanning; existing objects are indexed now."""
        rt = resolve(resource)
        with self._lock:
            values: dict[Hashable, set[Key]] = {}
            for key, obj in self._data[rt].items():
                for value in keys(obj):
                    values.setdefault(value, set()).add(key)
            self._indexes.setdefault(rt, {})[name] = (keys, values)

    def indexed(self, resource: ResourceRef, name: str, value: Hashable) -> builtins.list[Obj]:
        """The stored objects (read-only, as ``view``) whose index ``name`` holds ``value``."""
        rt = resolve(resource)
        with self._lock:
            data = self._data[rt]
            return [data[key] for key in sorted(self._indexes[rt][name][1].get(value, ()))]

    def _reindex(self, rt: ResourceType, key: Key, old: Obj | None, new: Obj | None) -> None:
        for keys, values in self._indexes.get(rt, {}).values():
            for value in keys(old) if old is not None else ():
                found = values.get(value)
                if found is not None:
                    found.discard(key)
                    if not found:
                        del values[value]
            for value in keys(new) if new is not None else ():
                values.setdefault(value, set()).add(key)

    def _commit(self, rt: ResourceType, kind: str, obj: Obj, previous: Obj | None) -> Obj:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = _key(obj)
        stored = self._data[rt].get(key)
        if kind == DELETED:
            self._data[rt].pop(key, None)
        else:
            self._data[rt][key] = obj
        if rt in self._indexes:
            self._reindex(rt, key, stored, None if kind == DELETED else obj)
        change = Change(kind, rt, obj, previous, self._rv)
        if self._log.maxlen is not None and len(self._log) == self._log.maxlen:
            self._compacted = self._log[0].rv
        self._log.append(change)
        for sub in self._subscriptions:
            sub._put(change)
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def _objects_of(self, kind: str) -> Iterable[Obj]:
        return list(self._data[resolve(kind)].values())

    def view(self, resource: ResourceRef, *, namespace: str | None = None) -> list[Obj]:
        """The stored objects themselves, without copying: read-only, for in-process controllers.

        Safe because stored dicts are replaced on every write, never changed in place.
        """
        rt = resolve(resource)
        with self._lock:
            return [
                obj
                for key, obj in self._data[rt].items()
                if namespace is None or key[0] == namespace
            ]

    def peek(self, resource: ResourceRef, name: str, *, namespace: str | None = None) -> Obj | None:
        """One stored object without copying (read-only), or None."""
        rt = resolve(resource)
        with self._lock:
            return self._data[rt].get(_scope(rt, namespace, name))

    # ----------------------------------------------------------------- reads

    def get(self, resource: ResourceRef, name: str, *, namespace: str | None = None) -> Obj:
        rt = resolve(resource)
        with self._lock:
            obj = self._data[rt].get(_scope(rt, namespace, name))
            if obj is None:
                raise errors.not_found(rt, name)
            return copy.deepcopy(obj)

    def try_get(
        self, resource: ResourceRef, name: str, *, namespace: str | None = None
    ) -> Obj | None:
        try:
            return self.get(resource, name, namespace=namespace)
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def items(self, resource: ResourceRef, *, namespace: str | None = None) -> list[Obj]:
        """Every object of a type (in one namespace when given), as copies, name order."""
        rt = resolve(resource)
        with self._lock:
            return [
                copy.deepcopy(obj)
                for key, obj in sorted(self._data[rt].items())
                if namespace is None or key[0] == namespace
            ]

    def list(
        self,
        resource: ResourceRef,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = 0,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> ListResult:
        rt = resolve(resource)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, rt)
        match = matcher(labels, fields)
        if limit < 0:
            raise errors.bad_request("limit must be a non-negative integer")
        with self._lock:
            start = ""
            if continue_token:
                if resource_version not in (None, ""):
                    raise errors.bad_request(
                        "specifying resource version is not allowed when using continue"
                    )
                at, start = _decode_continue(continue_token)
                if at < self._compacted:
                    raise errors.expired(
                        "The provided continue parameter is too old to display a consistent list "
                        "result. You can start a new list without the continue parameter."
                    )
            else:
                at = self._list_version(resource_version, resource_version_match)
            snapshot = self._snapshot(rt, at)
            keys = sorted(k for k in snapshot if namespace is None or k[0] == namespace)
            if start:
                keys = [k for k in keys if _key_str(k) > start]
            selected: list[Obj] = []
            token = None
            remaining = None
            for i, key in enumerate(keys):
                obj = snapshot[key]
                if not match(obj):
                    continue
                if limit and len(selected) == limit:
                    token = _encode_continue(at, _key_str(keys[i - 1]))
                    if not labels and not fields:
                        remaining = len(keys) - i
                    break
                selected.append(copy.deepcopy(obj))
            return ListResult(selected, at, token, remaining)

    def _list_version(self, resource_version: str | None, match: str | None) -> int:
        if resource_version in (None, "", "0"):
            if match == "Exact":
                raise errors.bad_request(
                    'resourceVersionMatch "Exact" is forbidden for resourceVersion "0"'
                )
            return self._rv
        rv = parse_resource_version(resource_version)
        if match == "Exact":
            if rv > self._rv:
                raise ApiError(
                    504,
                    "Timeout",
                    f"Too large resource version: {rv}, current: {self._rv}",
                    details={"retryAfterSeconds": 1},
                )
            if rv < self._compacted:
                raise errors.expired(f"too old resource version: {rv} ({self._compacted + 1})")
            return rv
        return self._rv

    def _snapshot(self, rt: ResourceType, rv: int) -> dict[Key, Obj]:
        """The objects of ``rt`` as of ``rv``, rebuilt by undoing later changes."""
        current = dict(self._data[rt])
        for change in reversed(self._log):
            if change.rv <= rv:
                break
            if change.resource is not rt:
                continue
            if change.type == ADDED:
                current.pop(change.key, None)
            elif change.previous is not None:
                current[change.key] = change.previous
        return current

    def changes_after(self, rv: int, timeout: float) -> builtins.list[Change]:
        """Changes newer than ``rv``, waiting up to ``timeout`` for one; 410 if ``rv`` is gone."""
        with self._cond:
            if rv < self._compacted:
                raise errors.expired(f"too old resource version: {rv} ({self._compacted + 1})")
            if rv >= self._rv and not self._closed:
                self._cond.wait(timeout)
            if rv < self._compacted:
                raise errors.expired(f"too old resource version: {rv} ({self._compacted + 1})")
            if not self._log or rv >= self._rv:
                return []
            # The newest ones, read from the end: a watch that keeps up wants a few changes,
            # and copying a window of tens of thousands for each would cost more than they do.
            wanted = min(len(self._log), self._rv - rv)
            newest = list(itertools.islice(reversed(self._log), wanted))
            newest.reverse()
            return newest

    # ----------------------------------------------------------------- writes

    def create(
        self,
        resource: ResourceRef,
        obj: Obj,
        *,
        namespace: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        rt = resolve(resource)
        new = _checked_body(rt, obj)
        meta = new["metadata"]
        with self._lock:
            ns = self._namespace_for(rt, meta, namespace)
            if rt.namespaced:
                self._check_namespace_open(rt, ns, meta)
            if not meta.get("name"):
                if not meta.get("generateName"):
                    raise errors.invalid(
                        rt,
                        "",
                        [
                            FieldError(
                                "Required", "metadata.name", "name or generateName is required"
                            )
                        ],
                    )
                meta["name"] = self._generate_name(rt, ns, str(meta["generateName"]))
            now = self.now()
            for field in (
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "resourceVersion",
                "selfLink",
                "managedFields",
            ):
                meta.pop(field, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now
            strategy.prepare_for_create(rt, new, now)
            self._admit(self._mutating, "CREATE", rt, new, None, None)
            problems = validation.validate(rt, new)
            if problems:
                raise errors.invalid(rt, str(meta["name"]), problems)
            self._admit(self._validating, "CREATE", rt, new, None, None)
            if _key(new) in self._data[rt]:
                raise errors.already_exists(rt, str(meta["name"]))
            if dry_run:
                return copy.deepcopy(new)
            return self._commit(rt, ADDED, new, None)

    def update(
        self,
        resource: ResourceRef,
        obj: Obj,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        """PUT semantics: a stale resourceVersion is 409, status goes through ``/status`` only."""
        rt = resolve(resource)
        new = _checked_body(rt, obj)
        meta = new["metadata"]
        name = str(meta.get("name") or "")
        with self._lock:
            ns = self._namespace_for(rt, meta, namespace)
            old = self._data[rt].get((ns, name))
            if old is None:
                if rt.create_on_update and not subresource:
                    return self.create(rt, new, namespace=ns or None, dry_run=dry_run)
                raise errors.not_found(rt, name)
            return self._update_locked(rt, new, old, subresource, dry_run)

    def patch(
        self,
        resource: ResourceRef,
        name: str,
        body: Any,
        content_type: str = MERGE_PATCH,
        *,
        namespace: str | None = None,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        rt = resolve(resource)
        with self._lock:
            old = self._data[rt].get(_scope(rt, namespace, name))
            if old is None:
                raise errors.not_found(rt, name)
            patched = apply_patch(rt.kind, old, body, content_type, custom=rt.custom)
            meta = patched.get("metadata")
            if not isinstance(meta, dict):
                raise errors.bad_request("metadata must be an object")
            meta.setdefault("resourceVersion", old["metadata"]["resourceVersion"])
            if meta.get("name") != name:
                raise errors.invalid(
                    rt,
                    name,
                    [
                        FieldError(
                            "Invalid", "metadata.name", "field is immutable", meta.get("name")
                        )
                    ],
                )
            return self._update_locked(rt, patched, old, subresource, dry_run)

    def mutate(
        self,
        resource: ResourceRef,
        name: str,
        change: Callable[[Obj], bool | None],
        *,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> Obj | None:
        """Read-modify-write under the lock (no conflicts): for in-process controllers.

        ``change`` edits the object in place and may return False to skip the write. Returns the
        stored result, or None when the object does not exist.
        """
        rt = resolve(resource)
        with self._lock:
            old = self._data[rt].get(_scope(rt, namespace, name))
            if old is None:
                return None
            new = copy.deepcopy(old)
            if change(new) is False:
                return copy.deepcopy(old)
            return self._update_locked(rt, new, old, subresource, False)

    def _update_locked(
        self, rt: ResourceType, new: Obj, old: Obj, subresource: str | None, dry_run: bool
    ) -> Obj:
        name = old["metadata"]["name"]
        if (
            subresource not in (None, "status", "finalize")
            or (subresource == "status" and not rt.has_status)
            or (subresource == "finalize" and rt.kind != "Namespace")
        ):
            raise errors.path_not_found()
        meta = new["metadata"]
        if meta.get("name") != name:
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        wanted = meta.get("resourceVersion")
        if wanted not in (None, "") and str(wanted) != old["metadata"]["resourceVersion"]:
            raise errors.conflict(rt, name, errors.STALE)
        now = self.now()
        if subresource == "status":
            new = strategy.prepare_for_status_update(rt, new, old, now)
        elif subresource == "finalize":
            finalizers = (new.get("spec") or {}).get("finalizers")
            new = copy.deepcopy(old)
            new.setdefault("spec", {})["finalizers"] = finalizers or []
        else:
            strategy.prepare_for_update(rt, new, old)
        meta = new["metadata"]
        problems = _system_fields(meta, old["metadata"])
        if problems:
            raise errors.invalid(rt, name, problems)
        self._admit(self._mutating, "UPDATE", rt, new, old, subresource)
        problems = validation.validate_update(rt, new, old)
        if problems:
            raise errors.invalid(rt, name, problems)
        self._admit(self._validating, "UPDATE", rt, new, old, subresource)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:
            return copy.deepcopy(old)  # a no-op write makes no new version and no event
        if dry_run:
            return copy.deepcopy(new)
        if _should_vanish(rt, new):
            return self._commit(rt, DELETED, copy.deepcopy(old), old)
        return self._commit(rt, MODIFIED, new, old)

    def delete(
        self,
        resource: ResourceRef,
        name: str,
        *,
        namespace: str | None = None,
        grace_period: int | None = None,
        preconditions: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Delete or mark for deletion; returns (object, deleted now)."""
        rt = resolve(resource)
        with self._lock:
            old = self._data[rt].get(_scope(rt, namespace, name))
            if old is None:
                raise errors.not_found(rt, name)
            return self._delete_locked(rt, old, grace_period, preconditions or {}, dry_run)

    def _delete_locked(
        self,
        rt: ResourceType,
        old: Obj,
        grace_period: int | None,
        preconditions: dict[str, Any],
        dry_run: bool,
    ) -> tuple[Obj, bool]:
        meta = old["metadata"]
        name = meta["name"]
        uid = preconditions.get("uid")
        if uid and uid != meta["uid"]:
            raise errors.conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {uid}, "
                f"UID in object meta: {meta['uid']}",
            )
        rv = preconditions.get("resourceVersion")
        if rv and rv != meta["resourceVersion"]:
            raise errors.conflict(
                rt,
                name,
                "Precondition failed: ResourceVersion in "
                f"precondition: {rv}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}",
            )
        if grace_period is not None and grace_period < 0:
            grace_period = 0
        grace = self._grace_period(rt, old, grace_period)
        pending = bool(meta.get("finalizers")) or (
            rt.kind == "Namespace" and bool((old.get("spec") or {}).get("finalizers"))
        )
        if meta.get("deletionTimestamp"):
            current = int(meta.get("deletionGracePeriodSeconds") or 0)
            if grace >= current:
                return copy.deepcopy(old), False
        elif not pending and grace == 0:
            if dry_run:
                return copy.deepcopy(old), True
            return self._commit(rt, DELETED, copy.deepcopy(old), old), True
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = rfc3339(self._clock() + grace)
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        if rt.kind == "Namespace":
            new.setdefault("status", {})["phase"] = "Terminating"
        if dry_run:
            return new, False
        if _should_vanish(rt, new):
            return self._commit(rt, DELETED, copy.deepcopy(old), old), True
        return self._commit(rt, MODIFIED, new, old), False

    def _grace_period(self, rt: ResourceType, obj: Obj, asked: int | None) -> int:
        """Only pods that a kubelet may be running get a grace period, as in the pod strategy."""
        if rt.kind != "Pod":
            return 0
        spec = obj.get("spec") or {}
        phase = (obj.get("status") or {}).get("phase")
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
            return 0
        if asked is not None:
            return asked
        return int(spec.get("terminationGracePeriodSeconds", 30))

    def delete_collection(
        self,
        resource: ResourceRef,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        grace_period: int | None = None,
        dry_run: bool = False,
    ) -> builtins.list[Obj]:
        rt = resolve(resource)
        match = matcher(
            parse_label_selector(label_selector), parse_field_selector(field_selector, rt)
        )
        out: builtins.list[Obj] = []
        with self._lock:
            for key, obj in sorted(self._data[rt].items()):
                if (namespace is None or key[0] == namespace) and match(obj):
                    out.append(self._delete_locked(rt, obj, grace_period, {}, dry_run)[0])
        return out

    def bind_pod(self, namespace: str, name: str, node: str) -> Obj:
        """What POST pods/<name>/binding does: set spec.nodeName once, mark PodScheduled."""
        rt = resolve("pods")
        with self._lock:
            old = self._data[rt].get((namespace, name))
            if old is None:
                raise errors.not_found(rt, name)
            if old["spec"].get("nodeName"):
                raise ApiError(
                    409,
                    "Conflict",
                    f"Operation cannot be fulfilled on pods/binding "
                    f'"{name}": pod {name} is already assigned to node '
                    f'"{old["spec"]["nodeName"]}"',
                    details={"name": name, "kind": "pods/binding"},
                )
            if old["metadata"].get("deletionTimestamp"):
                raise errors.conflict(
                    rt, name, "pod is being deleted, cannot be assigned to a host"
                )
            new = copy.deepcopy(old)
            new["spec"]["nodeName"] = node
            set_condition(new.setdefault("status", {}), "PodScheduled", "True", self.now())
            return self._commit(rt, MODIFIED, new, old)

    # ----------------------------------------------------------------- helpers

    def _admit(
        self,
        chain: builtins.list[admission.Admission],
        op: str,
        rt: ResourceType,
        new: Obj,
        old: Obj | None,
        sub: str | None,
    ) -> None:
        req = admission.AdmissionRequest(op, rt, new, old, sub, self._objects_of)
        for plugin in builtins.list(chain):
            plugin(req)

    def _namespace_for(self, rt: ResourceType, meta: Obj, namespace: str | None) -> str:
        if not rt.namespaced:
            meta.pop("namespace", None)
            return ""
        given = meta.get("namespace")
        if namespace is None:
            namespace = str(given or "default")
        elif given not in (None, "") and given != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        meta["namespace"] = namespace
        return namespace

    def _check_namespace_open(self, rt: ResourceType, ns: str, meta: Obj) -> None:
        found = self._data[resolve("namespaces")].get(("", ns))
        if found is None:
            raise errors.namespace_not_found(ns)
        if found["metadata"].get("deletionTimestamp"):
            raise ApiError(
                403,
                "Forbidden",
                f'{rt.qualified} "{meta.get("name") or meta.get("generateName", "")}" is '
                f"forbidden: unable to create new content in namespace {ns} because it is being "
                "terminated",
                details={
                    "name": meta.get("name", ""),
                    "kind": rt.plural,
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {ns} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def _generate_name(self, rt: ResourceType, ns: str, prefix: str) -> str:
        prefix = prefix[: 253 - 5] if rt.kind != "Namespace" else prefix[: 63 - 5]
        for _ in range(8):
            name = prefix + "".join(random.choice(_NAME_CHARS) for _ in range(5))
            if (ns, name) not in self._data[rt]:
                return name
        raise errors.already_exists(rt, prefix)


def set_condition(
    status: Obj, kind: str, value: str, now: str, reason: str = "", message: str = ""
) -> bool:
    """Set a condition in ``status.conditions``; True when something changed."""
    conditions = status.setdefault("conditions", [])
    for cond in conditions:
        if cond.get("type") == kind:
            if (
                cond.get("status") == value
                and cond.get("reason", "") == reason
                and cond.get("message", "") == message
            ):
                return False
            cond.update({"status": value, "lastTransitionTime": now})
            _reason(cond, reason, message)
            return True
    cond = {"type": kind, "status": value, "lastProbeTime": None, "lastTransitionTime": now}
    _reason(cond, reason, message)
    conditions.append(cond)
    return True


def _reason(cond: Obj, reason: str, message: str) -> None:
    for field, value in (("reason", reason), ("message", message)):
        if value:
            cond[field] = value
        else:
            cond.pop(field, None)


def parse_resource_version(text: Any) -> int:
    try:
        value = int(str(text))
    except ValueError as exc:
        raise errors.bad_request(f"invalid resource version: {text!r}") from exc
    if value < 0:
        raise errors.bad_request(f"invalid resource version: {text!r}")
    return value


def _checked_body(rt: ResourceType, obj: Any) -> Obj:
    if not isinstance(obj, dict):
        raise errors.bad_request("the body of the request must be a JSON object")
    new = copy.deepcopy(obj)
    api_version = new.get("apiVersion")
    if api_version not in (None, "") and api_version != rt.api_version:
        raise errors.bad_request(
            f"the API version in the data ({api_version}) does not match the expected API "
            f"version ({rt.api_version})"
        )
    kind = new.get("kind")
    if kind not in (None, "") and kind != rt.kind:
        raise errors.bad_request(
            f"the object provided is unrecognized (must be of type {rt.kind}): kind {kind}"
        )
    new["apiVersion"] = rt.api_version
    new["kind"] = rt.kind
    meta = new.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise errors.bad_request("metadata must be an object")
    return new


def _system_fields(meta: Obj, old: Obj) -> list[FieldError]:
    """rest.BeforeUpdate: system fields come from the stored object, some are immutable."""
    problems: list[FieldError] = []
    if meta.get("uid") in (None, ""):
        meta["uid"] = old["uid"]
    elif meta["uid"] != old["uid"]:
        problems.append(FieldError("Invalid", "metadata.uid", "field is immutable", meta["uid"]))
    meta["creationTimestamp"] = old["creationTimestamp"]
    for field in ("generateName",):
        if field in old:
            meta.setdefault(field, old[field])
    if old.get("deletionTimestamp"):
        meta["deletionTimestamp"] = old["deletionTimestamp"]
        meta["deletionGracePeriodSeconds"] = old.get("deletionGracePeriodSeconds", 0)
        added = [f for f in meta.get("finalizers") or [] if f not in (old.get("finalizers") or [])]
        if added:
            quoted = ", ".join(f'"{f}"' for f in added)
            problems.append(
                FieldError(
                    "Forbidden",
                    "metadata.finalizers",
                    f"no new finalizers can be added if the object is being deleted, found new "
                    f"finalizers []string{{{quoted}}}",
                )
            )
    elif meta.get("deletionTimestamp"):
        problems.append(
            FieldError(
                "Invalid",
                "metadata.deletionTimestamp",
                "field is immutable; may only be changed via deletion",
                meta["deletionTimestamp"],
            )
        )
    else:
        meta.pop("deletionGracePeriodSeconds", None)
    meta.pop("selfLink", None)
    meta.pop("managedFields", None)
    if meta.get("namespace", "") != old.get("namespace", ""):
        problems.append(
            FieldError("Invalid", "metadata.namespace", "field is immutable", meta.get("namespace"))
        )
    return problems


def _should_vanish(rt: ResourceType, obj: Obj) -> bool:
    """A marked object goes once nothing holds it: no finalizers left and no grace pending."""
    meta = obj["metadata"]
    if not meta.get("deletionTimestamp") or meta.get("finalizers"):
        return False
    if int(meta.get("deletionGracePeriodSeconds") or 0) != 0:
        return False
    return not (rt.kind == "Namespace" and (obj.get("spec") or {}).get("finalizers"))


def _key(obj: Obj) -> Key:
    meta = obj["metadata"]
    return str(meta.get("namespace", "") or ""), str(meta["name"])


def _scope(rt: ResourceType, namespace: str | None, name: str) -> Key:
    return ((namespace or "default") if rt.namespaced else ""), name


def _key_str(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        rv = int(data["rv"])
        start = str(data["start"]).rstrip("\x00")
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise errors.bad_request(f"continue key is not valid: {exc}") from exc
    if data.get("v") != "meta.k8s.io/v1" or rv <= 0:
        raise errors.bad_request(
            "continue key is not valid: incorrect encoded start "
            "resourceVersion (version meta.k8s.io/v1)"
        )
    return rv, start
