"""The attach/detach controller, for CSI volumes: VolumeAttachment objects per node.

A VolumeAttachment exists while a pod on the node that is not terminated uses a PVC bound to a
CSI PV whose driver needs attaching (a CSIDriver with attachRequired, or none at all). It is
deleted once no such pod remains and the kubelet no longer reports the volume in
``node.status.volumesInUse``, the real controller's guard against detaching a mounted volume.
It also reports attached volumes in ``node.status.volumesAttached``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from cinder_csi.standins.kube import volumes as v
from cinder_csi.standins.kube.controllers.base import Controller
from cinder_csi.standins.kube.errors import ApiError
from cinder_csi.standins.kube.store import Change, Obj


@dataclass(frozen=True)
class _Wanted:
    pv: str
    driver: str
    handle: str


class AttachDetachController(Controller):
    name = "attach_detach"

    def keys_for(self, change: Change) -> Iterable[Hashable]:
        kind = change.resource.kind
        obj = change.object
        if kind == "Pod":
            for pod in (change.object, change.previous):
                node = ((pod or {}).get("spec") or {}).get("nodeName")
                if node:
                    yield node
        elif kind == "VolumeAttachment":
            yield (obj.get("spec") or {}).get("nodeName", "")
        elif kind == "Node":
            yield change.key[1]
        elif kind == "PersistentVolumeClaim":
            yield from self._nodes_using_claim(*change.key)
        elif kind == "PersistentVolume":
            ref = v.claim_ref(obj)
            if ref.get("name"):
                yield from self._nodes_using_claim(str(ref.get("namespace")), str(ref["name"]))
        elif kind == "CSIDriver":
            yield from self.initial_keys()

    def initial_keys(self) -> Iterable[Hashable]:
        nodes = {n["metadata"]["name"] for n in self.store.view("nodes")}
        nodes |= {(p.get("spec") or {}).get("nodeName") for p in self.store.view("pods")} - {None}
        nodes |= {
            (a.get("spec") or {}).get("nodeName") for a in self.store.view("volumeattachments")
        } - {None}
        return sorted(str(n) for n in nodes)

    def _nodes_using_claim(self, ns: str, name: str) -> Iterable[Hashable]:
        for pod in self.store.view("pods", namespace=ns):
            node = (pod.get("spec") or {}).get("nodeName")
            if node and name in v.pod_claim_names(pod):
                yield node

    def reconcile(self, key: Hashable) -> float | None:
        node = str(key)
        if not node:
            return None
        wanted = self._desired(node)
        existing = {
            a["metadata"]["name"]: a
            for a in self.store.view("volumeattachments")
            if (a.get("spec") or {}).get("nodeName") == node
            and ((a.get("spec") or {}).get("source") or {}).get("persistentVolumeName")
        }
        for name, want in sorted(wanted.items()):
            if name not in existing:
                self._create(name, node, want)
        in_use = set(
            ((self.store.peek("nodes", node) or {}).get("status") or {}).get("volumesInUse") or []
        )
        for name, va in sorted(existing.items()):
            if name in wanted or va["metadata"].get("deletionTimestamp"):
                continue
            pv = self.store.peek("persistentvolumes", va["spec"]["source"]["persistentVolumeName"])
            csi = ((pv or {}).get("spec") or {}).get("csi") or {}
            if (
                pv is not None
                and v.unique_volume_name(str(csi.get("driver")), str(csi.get("volumeHandle")))
                in in_use
            ):
                continue  # still mounted on the node; the kubelet's update brings us back
            self.store.delete("volumeattachments", name)
        self._report_attached(node)
        return None

    def _desired(self, node: str) -> dict[str, _Wanted]:
        wanted: dict[str, _Wanted] = {}
        for pod in self.store.view("pods"):
            if (pod.get("spec") or {}).get("nodeName") != node or v.pod_terminated(pod):
                continue
            ns = pod["metadata"]["namespace"]
            for claim_name in v.pod_claim_names(pod):
                claim = self.store.peek("persistentvolumeclaims", claim_name, namespace=ns)
                volume_name = ((claim or {}).get("spec") or {}).get("volumeName")
                pv = self.store.peek("persistentvolumes", volume_name) if volume_name else None
                csi = ((pv or {}).get("spec") or {}).get("csi")
                if pv is None or not csi:
                    continue
                driver, handle = str(csi["driver"]), str(csi["volumeHandle"])
                csidriver = self.store.peek("csidrivers", driver)
                if (
                    csidriver is not None
                    and (csidriver.get("spec") or {}).get("attachRequired", True) is False
                ):
                    continue
                wanted[v.attachment_name(handle, driver, node)] = _Wanted(
                    pv["metadata"]["name"], driver, handle
                )
        return wanted

    def _create(self, name: str, node: str, want: _Wanted) -> None:
        body = {
            "apiVersion": "storage.k8s.io/v1",
            "kind": "VolumeAttachment",
            "metadata": {"name": name},
            "spec": {
                "attacher": want.driver,
                "nodeName": node,
                "source": {"persistentVolumeName": want.pv},
            },
        }
        try:
            self.store.create("volumeattachments", body)
        except ApiError as exc:
            if exc.code != 409:  # AlreadyExists: someone (a previous pass) made it
                raise

    def _report_attached(self, node: str) -> None:
        attached = sorted(
            v.unique_volume_name(a["spec"]["attacher"], self._handle(a))
            for a in self.store.view("volumeattachments")
            if (a.get("spec") or {}).get("nodeName") == node
            and (a.get("status") or {}).get("attached") is True
        )
        report = [{"name": name, "devicePath": ""} for name in attached]
        self._write_status("nodes", node, {"volumesAttached": report})

    def _handle(self, va: Obj) -> str:
        pv = self.store.peek(
            "persistentvolumes",
            ((va.get("spec") or {}).get("source") or {}).get("persistentVolumeName", ""),
        )
        return str((((pv or {}).get("spec") or {}).get("csi") or {}).get("volumeHandle", ""))
