"""Decoding API objects for a cache of thousands: shared keys, values and whole subtrees.

Objects of one kind repeat most of their content: the same keys everywhere, the same short
values ("Bound", the driver name, the storage class), and whole identical subtrees (the
provisioner's annotations, ``accessModes``, ``capacity``, a zone's ``nodeAffinity``, the
``volumeAttributes`` of one provisioner). A Python dict costs some 200 bytes before its
contents, so a PV decoded naively is ~3 KB of which less than half is what makes it unique.

:class:`Compactor` is a ``json`` ``object_pairs_hook`` that, per informer:

- drops ``metadata.managedFields`` and kubectl's last-applied-configuration annotation,
  which the loop never reads and which often double an object on a real cluster;
- interns keys and short string values, but not the values that are unique per object
  (names, uids, resourceVersions, timestamps), which would only grow the interned table;
- hands out one shared dict (or list) for every subtree that is equal to one decoded before,
  as long as that subtree holds nothing unique to its object.

Objects stay plain dicts and lists, equal to what the server sent; only identity changes.
They were read-only before (the informer's contract) and must stay so: a shared subtree
changed in place would change every object that holds it.
"""

from __future__ import annotations

import sys
from typing import Any

# Never read by the loop, and often the bulk of an object.
DROPPED = frozenset({"managedFields", "kubectl.kubernetes.io/last-applied-configuration"})
# Keys whose string values are unique per object (not worth interning) and whose presence
# makes a dict unique too (never shared): an object's identity and history.
UNIQUE = frozenset({"metadata", "name", "uid", "resourceVersion", "creationTimestamp",
                    "deletionTimestamp", "generation", "volumeName", "volumeHandle",
                    "lastPhaseTransitionTime", "lastTransitionTime", "lastProbeTime",
                    "lastHeartbeatTime", "generateName"})
INTERNED_MAX = 64  # longer strings (messages, certificates) rarely repeat
SHARED_MAX = 4096  # distinct shared subtrees kept per informer before starting afresh


class Compactor:
    """A ``json.JSONDecoder(object_pairs_hook=...)`` hook; see the module docstring."""

    def __init__(self, limit: int = SHARED_MAX) -> None:
        self.limit = limit
        self._shared: dict[tuple[Any, ...], Any] = {}  # canonical form -> the shared copy
        self._ids: set[int] = set()  # id() of every shared copy (kept alive by _shared)

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        intern = sys.intern
        ids = self._ids
        out: dict[str, Any] = {}
        # The canonical form, built while the dict may still be shared: key, token, key, ...
        # where a token is a string itself, a shared container's id(), or (type, value) for
        # other scalars (JSON's 1, 1.0 and true differ, though Python's are equal).
        form: list[Any] | None = ["{"]
        for key, value in pairs:
            if key in DROPPED:
                continue
            key = intern(key)
            cls = value.__class__
            if key in UNIQUE:
                form = None
            elif cls is str:
                if len(value) <= INTERNED_MAX:
                    value = intern(value)
                if form is not None:
                    form += (key, value)
            elif cls is dict or cls is list:
                if cls is list:
                    value = self._list(value)
                if form is not None:
                    if id(value) in ids:
                        form += (key, id(value))
                    else:
                        form = None
            elif form is not None:
                form += (key, (cls, value))
            out[key] = value
        if form is None:
            return out
        shared: dict[str, Any] = self._share(tuple(form), out)
        return shared

    def _list(self, items: list[Any]) -> list[Any]:
        intern = sys.intern
        ids = self._ids
        form: list[Any] | None = ["["]
        for i, value in enumerate(items):
            cls = value.__class__
            if cls is str:
                if len(value) <= INTERNED_MAX:
                    value = items[i] = intern(value)
                if form is not None:
                    form.append(value)
            elif cls is dict or cls is list:
                if cls is list:
                    value = items[i] = self._list(value)
                if form is not None:
                    if id(value) in ids:
                        form.append(id(value))
                    else:
                        form = None
            elif form is not None:
                form.append((cls, value))
        if form is None:
            return items
        shared: list[Any] = self._share(tuple(form), items)
        return shared

    def _share(self, form: tuple[Any, ...], fresh: Any) -> Any:
        shared = self._shared.get(form)
        if shared is not None:
            return shared
        if len(self._shared) >= self.limit:
            # Start afresh: what is shared stays shared; new objects share from now on.
            self._shared.clear()
            self._ids.clear()
        self._shared[form] = fresh
        self._ids.add(id(fresh))
        return fresh
