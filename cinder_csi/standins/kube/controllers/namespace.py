"""The namespace controller: empties a namespace being deleted, then lets it go."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from cinder_csi.standins.kube.controllers.base import Controller
from cinder_csi.standins.kube.resources import RESOURCES
from cinder_csi.standins.kube.store import DELETED, Change, Obj


class NamespaceController(Controller):
    name = "namespace"

    def keys_for(self, change: Change) -> Iterable[Hashable]:
        if change.resource.kind == "Namespace":
            yield change.key[1]
        elif change.resource.namespaced and change.type == DELETED:
            yield change.key[0]

    def initial_keys(self) -> Iterable[Hashable]:
        for ns in self.store.view("namespaces"):
            yield ns["metadata"]["name"]

    def reconcile(self, key: Hashable) -> float | None:
        name = str(key)
        ns = self.store.peek("namespaces", name)
        if ns is None or not ns["metadata"].get("deletionTimestamp"):
            return None
        remaining = 0
        for rt in RESOURCES:
            if not rt.namespaced:
                continue
            for obj in self.store.view(rt, namespace=name):
                remaining += 1
                if not obj["metadata"].get("deletionTimestamp"):
                    self.store.delete(rt, obj["metadata"]["name"], namespace=name)
        if remaining:
            return None  # each deletion comes back here as a change

        def finalize(obj: Obj) -> None:
            obj.setdefault("spec", {})["finalizers"] = []

        self.store.mutate("namespaces", name, finalize, subresource="finalize")
        return None
