"""The PV controller of kube-controller-manager: provisioning hand-off, binding and release.

It never provisions or deletes storage itself; for classes with an external provisioner it only
annotates the claim (``volume.kubernetes.io/storage-provisioner``) and later binds the PV that
the provisioner creates with a claimRef, as the real controller does.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from cinder_csi.standins.kube import volumes as v
from cinder_csi.standins.kube.controllers.base import Controller
from cinder_csi.standins.kube.store import DELETED, Change, Obj

CLAIM = "claim"
VOLUME = "volume"
# Store indexes, so that a claim's sync looks its volume up instead of scanning every PV.
BY_CLAIM = "pv-controller/claim"  # PV -> (namespace, name) of its claimRef
UNCLAIMED = "pv-controller/unclaimed"  # PV without claimRef -> True (static candidates)
UNBOUND = "pv-controller/unbound"  # PVC without volumeName -> True


def _claim_of(pv: Obj) -> Iterable[Hashable]:
    ref = v.claim_ref(pv)
    if ref.get("name"):
        yield (str(ref.get("namespace") or ""), str(ref["name"]))


def _unclaimed(pv: Obj) -> Iterable[Hashable]:
    return () if v.claim_ref(pv) else (True,)


def _unbound(claim: Obj) -> Iterable[Hashable]:
    return () if (claim.get("spec") or {}).get("volumeName") else (True,)


class PVController(Controller):
    name = "pv"

    def install(self) -> None:
        self.store.add_index("persistentvolumes", BY_CLAIM, _claim_of)
        self.store.add_index("persistentvolumes", UNCLAIMED, _unclaimed)
        self.store.add_index("persistentvolumeclaims", UNBOUND, _unbound)

    def keys_for(self, change: Change) -> Iterable[Hashable]:
        kind = change.resource.kind
        obj = change.object
        if kind == "PersistentVolumeClaim":
            ns, name = change.key
            yield (CLAIM, ns, name)
            volume = (obj.get("spec") or {}).get("volumeName")
            if volume:
                yield (VOLUME, volume)
            if change.type == DELETED:
                for pv in self.store.indexed("persistentvolumes", BY_CLAIM, (ns, name)):
                    yield (VOLUME, pv["metadata"]["name"])
        elif kind == "PersistentVolume":
            yield (VOLUME, obj["metadata"]["name"])
            ref = v.claim_ref(obj)
            if ref.get("name"):
                yield (CLAIM, ref.get("namespace", ""), ref["name"])
            elif change.type != DELETED:
                yield from self._pending_claims()  # a new Available volume may match a claim
        elif kind == "StorageClass":
            yield from self._pending_claims()

    def initial_keys(self) -> Iterable[Hashable]:
        for claim in self.store.view("persistentvolumeclaims"):
            yield (CLAIM, claim["metadata"]["namespace"], claim["metadata"]["name"])
        for pv in self.store.view("persistentvolumes"):
            yield (VOLUME, pv["metadata"]["name"])

    def _pending_claims(self) -> Iterable[Hashable]:
        for claim in self.store.indexed("persistentvolumeclaims", UNBOUND, True):
            yield (CLAIM, claim["metadata"]["namespace"], claim["metadata"]["name"])

    def reconcile(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        if key[0] == CLAIM:
            self._sync_claim(str(key[1]), str(key[2]))
        else:
            self._sync_volume(str(key[1]))
        return None

    # ------------------------------------------------------------ claims

    def _sync_claim(self, ns: str, name: str) -> None:
        claim = self.store.peek("persistentvolumeclaims", name, namespace=ns)
        if claim is None:
            return
        volume_name = (claim.get("spec") or {}).get("volumeName")
        if not volume_name:
            self._sync_unbound_claim(claim)
            return
        pv = self.store.peek("persistentvolumes", volume_name)
        if pv is None:
            if v.annotations_of(claim).get(v.ANN_BIND_COMPLETED):
                self._set_claim_phase(claim, "Lost")
            return
        ref = (pv.get("spec") or {}).get("claimRef")
        if ref is None or _refers_to(ref, claim):
            self._bind(pv, claim)
        elif v.annotations_of(claim).get(v.ANN_BIND_COMPLETED):
            self._set_claim_phase(claim, "Lost")  # its volume went to another claim

    def _sync_unbound_claim(self, claim: Obj) -> None:
        pv = self._prebound_volume(claim)
        class_name = v.claim_class(claim)
        sc = self.store.peek("storageclasses", class_name) if class_name else None
        delayed = sc is not None and sc.get("volumeBindingMode") == v.WAIT_FOR_FIRST_CONSUMER
        if pv is None and not delayed:
            pv = self._best_match(claim)
        if pv is not None:
            self._bind(pv, claim)
            return
        if sc is None or sc.get("provisioner") in (None, "", v.NO_PROVISIONER):
            return
        selected = v.annotations_of(claim).get(v.ANN_SELECTED_NODE)
        if delayed and not selected:
            return
        provisioner = str(sc["provisioner"])
        annotations = v.annotations_of(claim)
        if (
            annotations.get(v.ANN_STORAGE_PROVISIONER) == provisioner
            and annotations.get(v.ANN_STORAGE_PROVISIONER_BETA) == provisioner
        ):
            return

        def annotate(obj: Obj) -> None:
            ann = obj["metadata"].setdefault("annotations", {})
            ann[v.ANN_STORAGE_PROVISIONER] = provisioner
            ann[v.ANN_STORAGE_PROVISIONER_BETA] = provisioner

        self.store.mutate(
            "persistentvolumeclaims",
            claim["metadata"]["name"],
            annotate,
            namespace=claim["metadata"]["namespace"],
        )

    def _prebound_volume(self, claim: Obj) -> Obj | None:
        """A PV whose claimRef already names this claim (provisioned, or pre-bound by a user)."""
        meta = claim["metadata"]
        for pv in self.store.indexed("persistentvolumes", BY_CLAIM,
                                     (meta["namespace"], meta["name"])):
            ref = (pv.get("spec") or {}).get("claimRef")
            if ref and _refers_to(ref, claim) and not pv["metadata"].get("deletionTimestamp"):
                return pv
        return None

    def _best_match(self, claim: Obj) -> Obj | None:
        # Only a PV without claimRef can match (best_matching_volume skips the others).
        return v.best_matching_volume(
            claim, self.store.indexed("persistentvolumes", UNCLAIMED, True))

    def _bind(self, pv: Obj, claim: Obj) -> None:
        """bindVolumeToClaim, then the volume's status, then bindClaimToVolume and its status."""
        claim_meta = claim["metadata"]
        pv_name = pv["metadata"]["name"]
        ref = (pv.get("spec") or {}).get("claimRef")
        by_controller = ref is None or not _refers_to(ref, claim)

        def bind_volume(obj: Obj) -> None:
            spec = obj["spec"]
            current = spec.get("claimRef") or {}
            if (
                current.get("uid") != claim_meta["uid"]
                or current.get("name") != claim_meta["name"]
                or current.get("namespace") != claim_meta["namespace"]
            ):
                spec["claimRef"] = {
                    "kind": "PersistentVolumeClaim",
                    "namespace": claim_meta["namespace"],
                    "name": claim_meta["name"],
                    "uid": claim_meta["uid"],
                    "apiVersion": "v1",
                    "resourceVersion": claim_meta["resourceVersion"],
                }
            if by_controller:
                obj["metadata"].setdefault("annotations", {})[v.ANN_BOUND_BY_CONTROLLER] = "yes"

        self.store.mutate("persistentvolumes", pv_name, bind_volume)
        self._set_volume_phase(pv_name, "Bound")

        claim_by_controller = not (claim.get("spec") or {}).get("volumeName")

        def bind_claim(obj: Obj) -> None:
            obj["spec"]["volumeName"] = pv_name
            ann = obj["metadata"].setdefault("annotations", {})
            ann[v.ANN_BIND_COMPLETED] = "yes"
            if claim_by_controller:
                ann[v.ANN_BOUND_BY_CONTROLLER] = "yes"

        name, ns = claim_meta["name"], claim_meta["namespace"]
        self.store.mutate("persistentvolumeclaims", name, bind_claim, namespace=ns)
        bound_pv = self.store.peek("persistentvolumes", pv_name) or pv

        def claim_status(obj: Obj) -> None:
            status = obj.setdefault("status", {})
            pv_spec = bound_pv.get("spec") or {}
            if status.get("phase") != "Bound":
                # Capacity is copied only when the claim becomes Bound: later a difference
                # means a filesystem resize is still pending.
                status["capacity"] = dict(pv_spec.get("capacity") or {})
            status["phase"] = "Bound"
            status["accessModes"] = list(pv_spec.get("accessModes") or [])

        self.store.mutate(
            "persistentvolumeclaims", name, claim_status, namespace=ns, subresource="status"
        )

    def _set_claim_phase(self, claim: Obj, phase: str) -> None:
        def change(obj: Obj) -> bool:
            status = obj.setdefault("status", {})
            if status.get("phase") == phase:
                return False
            status["phase"] = phase
            return True

        self.store.mutate(
            "persistentvolumeclaims",
            claim["metadata"]["name"],
            change,
            namespace=claim["metadata"]["namespace"],
            subresource="status",
        )

    # ------------------------------------------------------------ volumes

    def _sync_volume(self, name: str) -> None:
        pv = self.store.peek("persistentvolumes", name)
        if pv is None:
            return
        ref = (pv.get("spec") or {}).get("claimRef")
        if not ref or not ref.get("uid"):
            # Unused, or pre-bound by name only: Available until the claim binds it.
            self._set_volume_phase(name, "Available")
            return
        claim = self.store.peek(
            "persistentvolumeclaims", str(ref.get("name")), namespace=str(ref.get("namespace"))
        )
        if claim is not None and claim["metadata"]["uid"] == ref.get("uid"):
            bound_to = (claim.get("spec") or {}).get("volumeName")
            if bound_to == name:
                self._set_volume_phase(name, "Bound")
            elif bound_to and v.annotations_of(pv).get(v.ANN_BOUND_BY_CONTROLLER):
                self._unbind(name)  # the claim ended up on another volume
            return
        # The claim is gone (or was re-created with a new uid): release.
        phase = (pv.get("status") or {}).get("phase")
        if phase in ("Released", "Failed"):
            return
        policy = (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy", "Retain")
        if policy in ("Retain", "Delete") and self._deletable_or_retained(pv, policy):
            self._set_volume_phase(name, "Released")
        else:
            self._set_volume_phase(name, "Failed", f"No {policy.lower()} plugin found for volume")

    def _deletable_or_retained(self, pv: Obj, policy: str) -> bool:
        """Delete is left to an external provisioner; without one the real controller fails."""
        if policy == "Retain":
            return True
        return bool(
            v.annotations_of(pv).get(v.ANN_PROVISIONED_BY) or (pv.get("spec") or {}).get("csi")
        )

    def _unbind(self, name: str) -> None:
        def change(obj: Obj) -> None:
            obj["spec"].pop("claimRef", None)
            (obj["metadata"].get("annotations") or {}).pop(v.ANN_BOUND_BY_CONTROLLER, None)

        self.store.mutate("persistentvolumes", name, change)
        self._set_volume_phase(name, "Available")

    def _set_volume_phase(self, name: str, phase: str, message: str = "") -> None:
        def change(obj: Obj) -> bool:
            status = obj.setdefault("status", {})
            if status.get("phase") == phase and status.get("message", "") == message:
                return False
            status["phase"] = phase
            if message:
                status["message"] = message
            else:
                status.pop("message", None)
            return True

        self.store.mutate("persistentvolumes", name, change, subresource="status")


def _refers_to(ref: dict[str, Any], claim: Obj) -> bool:
    meta = claim["metadata"]
    if ref.get("name") != meta["name"] or ref.get("namespace") != meta["namespace"]:
        return False
    return not ref.get("uid") or ref.get("uid") == meta["uid"]
