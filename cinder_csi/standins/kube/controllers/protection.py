"""Storage object in-use protection: the admission half and the controller half.

Admission puts ``kubernetes.io/pvc-protection`` on every new claim and
``kubernetes.io/pv-protection`` on every new volume; the controller takes them off a claim being
deleted once no running pod uses it, and off a volume being deleted once it is no longer Bound.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from cinder_csi.standins.kube import volumes as v
from cinder_csi.standins.kube.admission import AdmissionRequest
from cinder_csi.standins.kube.controllers.base import Controller
from cinder_csi.standins.kube.store import Change, Obj

_FINALIZERS = {
    "PersistentVolumeClaim": v.PVC_PROTECTION,
    "PersistentVolume": v.PV_PROTECTION,
}


class ProtectionController(Controller):
    name = "protection"

    def install(self) -> None:
        self.store.add_admission(self._admit)

    def uninstall(self) -> None:
        self.store.remove_admission(self._admit)

    @staticmethod
    def _admit(req: AdmissionRequest) -> None:
        finalizer = _FINALIZERS.get(req.resource.kind)
        if req.operation != "CREATE" or finalizer is None:
            return
        finalizers = req.object["metadata"].setdefault("finalizers", [])
        if finalizer not in finalizers:
            finalizers.append(finalizer)

    def keys_for(self, change: Change) -> Iterable[Hashable]:
        kind = change.resource.kind
        if kind == "PersistentVolumeClaim":
            yield ("pvc", *change.key)
        elif kind == "PersistentVolume":
            yield ("pv", change.key[1])
        elif kind == "Pod":
            ns = change.key[0]
            names = set(v.pod_claim_names(change.object))
            if change.previous is not None:
                names |= set(v.pod_claim_names(change.previous))
            for claim in sorted(names):
                yield ("pvc", ns, claim)

    def initial_keys(self) -> Iterable[Hashable]:
        for claim in self.store.view("persistentvolumeclaims"):
            yield ("pvc", claim["metadata"]["namespace"], claim["metadata"]["name"])
        for pv in self.store.view("persistentvolumes"):
            yield ("pv", pv["metadata"]["name"])

    def reconcile(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        if key[0] == "pvc":
            ns, name = str(key[1]), str(key[2])
            claim = self.store.peek("persistentvolumeclaims", name, namespace=ns)
            if claim is None or not _held(claim, v.PVC_PROTECTION):
                return None
            if any(
                name in v.pod_claim_names(pod) and not v.pod_phase_terminal(pod)
                for pod in self.store.view("pods", namespace=ns)
            ):
                return None
            self._release("persistentvolumeclaims", name, ns, v.PVC_PROTECTION)
        else:
            name = str(key[1])
            pv = self.store.peek("persistentvolumes", name)
            if pv is None or not _held(pv, v.PV_PROTECTION):
                return None
            if (pv.get("status") or {}).get("phase") == "Bound":
                return None
            self._release("persistentvolumes", name, None, v.PV_PROTECTION)
        return None

    def _release(self, resource: str, name: str, ns: str | None, finalizer: str) -> None:
        def change(obj: Obj) -> None:
            obj["metadata"]["finalizers"] = [
                f for f in obj["metadata"].get("finalizers") or [] if f != finalizer
            ]

        self.store.mutate(resource, name, change, namespace=ns)


def _held(obj: Obj, finalizer: str) -> bool:
    meta = obj["metadata"]
    return bool(meta.get("deletionTimestamp")) and finalizer in (meta.get("finalizers") or [])
