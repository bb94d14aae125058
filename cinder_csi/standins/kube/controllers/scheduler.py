"""The scheduler, as far as volumes shape it.

A pending pod goes to a Ready node that satisfies its nodeSelector, its required node affinity
and the nodeAffinity of every bound PV it uses. Claims of WaitForFirstConsumer classes that are
still unbound get ``volume.kubernetes.io/selected-node`` first; the pod is bound only after they
are. A claim of an Immediate class that is unbound keeps the pod pending.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from cinder_csi.standins.kube import volumes as v
from cinder_csi.standins.kube.controllers.base import Controller
from cinder_csi.standins.kube.selectors import node_selector_terms_match
from cinder_csi.standins.kube.store import DELETED, Change, Obj, set_condition

SCHEDULER_NAME = "default-scheduler"


class Unschedulable(Exception):
    pass


class Scheduler(Controller):
    name = "scheduler"

    def keys_for(self, change: Change) -> Iterable[Hashable]:
        kind = change.resource.kind
        if kind == "Pod":
            if change.type != DELETED:
                yield change.key
            else:
                yield from self._pending_pods()  # capacity may have freed up
        elif kind == "PersistentVolumeClaim":
            ns, name = change.key
            for pod in self.store.view("pods", namespace=ns):
                if _pending(pod) and name in v.pod_claim_names(pod):
                    yield ns, pod["metadata"]["name"]
        elif kind in ("PersistentVolume", "Node", "StorageClass", "CSINode"):
            yield from self._pending_pods()

    def initial_keys(self) -> Iterable[Hashable]:
        return self._pending_pods()

    def _pending_pods(self) -> list[Hashable]:
        return [
            (pod["metadata"]["namespace"], pod["metadata"]["name"])
            for pod in self.store.view("pods")
            if _pending(pod)
        ]

    def reconcile(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        ns, name = str(key[0]), str(key[1])
        pod = self.store.peek("pods", name, namespace=ns)
        if pod is None or not _pending(pod):
            return None
        try:
            self._schedule(pod)
        except Unschedulable as exc:
            self._mark_unschedulable(ns, name, str(exc))
        return None

    def _schedule(self, pod: Obj) -> None:
        ns = pod["metadata"]["namespace"]
        nodes = sorted(
            (n for n in self.store.view("nodes") if v.node_ready(n)),
            key=lambda n: str(n["metadata"]["name"]),
        )
        total = len(nodes)
        nodes = [n for n in nodes if _fits_pod(pod, n)]
        waiting: list[Obj] = []
        for claim_name in v.pod_claim_names(pod):
            claim = self.store.peek("persistentvolumeclaims", claim_name, namespace=ns)
            if claim is None:
                raise Unschedulable(f'persistentvolumeclaim "{claim_name}" not found')
            if claim["metadata"].get("deletionTimestamp"):
                raise Unschedulable(f'persistentvolumeclaim "{claim_name}" is being deleted')
            volume_name = (claim.get("spec") or {}).get("volumeName")
            if volume_name:
                pv = self.store.peek("persistentvolumes", volume_name)
                if pv is None:
                    raise Unschedulable(f'persistentvolume "{volume_name}" not found')
                terms = (
                    ((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}
                ).get("nodeSelectorTerms")
                if terms:
                    nodes = [n for n in nodes if node_selector_terms_match(terms, n)]
                continue
            class_name = v.claim_class(claim)
            sc = self.store.peek("storageclasses", class_name) if class_name else None
            if sc is None or sc.get("volumeBindingMode") != v.WAIT_FOR_FIRST_CONSUMER:
                raise Unschedulable("pod has unbound immediate PersistentVolumeClaims")
            volumes = self.store.view("persistentvolumes")
            provisionable = sc.get("provisioner") not in (None, "", v.NO_PROVISIONER)
            nodes = [
                n
                for n in nodes
                if (provisionable and _allowed_topology(sc, n))
                or v.best_matching_volume(claim, volumes, n) is not None
            ]
            waiting.append(claim)
        if not nodes:
            raise Unschedulable(
                f"0/{total} nodes are available: no node fits the pod and its volumes"
            )
        selected = [v.annotations_of(c).get(v.ANN_SELECTED_NODE) for c in self._claims(pod)]
        preferred = [n for n in nodes if n["metadata"]["name"] in selected]
        node = (preferred or sorted(nodes, key=self._load))[0]["metadata"]["name"]
        if waiting:
            chosen = next(n for n in nodes if n["metadata"]["name"] == node)
            for claim in waiting:
                if v.annotations_of(claim).get(v.ANN_SELECTED_NODE):
                    continue
                static = v.best_matching_volume(claim, self.store.view("persistentvolumes"), chosen)
                if static is not None:
                    self._prebind(static, claim)  # the PV controller completes the binding
                else:
                    self._select_node(claim, node)  # the provisioner's turn
            return  # the claims' binding will bring the pod back here
        self.store.bind_pod(ns, pod["metadata"]["name"], node)

    def _claims(self, pod: Obj) -> list[Obj]:
        ns = pod["metadata"]["namespace"]
        found = (
            self.store.peek("persistentvolumeclaims", n, namespace=ns)
            for n in v.pod_claim_names(pod)
        )
        return [c for c in found if c is not None]

    def _load(self, node: Obj) -> tuple[int, str]:
        name = str(node["metadata"]["name"])
        count = sum(
            1 for p in self.store.view("pods") if (p.get("spec") or {}).get("nodeName") == name
        )
        return count, name

    def _prebind(self, pv: Obj, claim: Obj) -> None:
        meta = claim["metadata"]

        def change(obj: Obj) -> None:
            obj["spec"]["claimRef"] = {
                "kind": "PersistentVolumeClaim",
                "apiVersion": "v1",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"],
            }
            obj["metadata"].setdefault("annotations", {})[v.ANN_BOUND_BY_CONTROLLER] = "yes"

        self.store.mutate("persistentvolumes", pv["metadata"]["name"], change)

    def _select_node(self, claim: Obj, node: str) -> None:
        def change(obj: Obj) -> None:
            obj["metadata"].setdefault("annotations", {})[v.ANN_SELECTED_NODE] = node

        self.store.mutate(
            "persistentvolumeclaims",
            claim["metadata"]["name"],
            change,
            namespace=claim["metadata"]["namespace"],
        )

    def _mark_unschedulable(self, ns: str, name: str, message: str) -> None:
        now = self.store.now()

        def change(obj: Obj) -> bool:
            status = obj.setdefault("status", {})
            return set_condition(status, "PodScheduled", "False", now, "Unschedulable", message)

        self.store.mutate("pods", name, change, namespace=ns, subresource="status")


def _pending(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    return (
        not spec.get("nodeName")
        and spec.get("schedulerName", SCHEDULER_NAME) == SCHEDULER_NAME
        and not pod["metadata"].get("deletionTimestamp")
        and not v.pod_phase_terminal(pod)
    )


def _fits_pod(pod: Obj, node: Obj) -> bool:
    spec = pod.get("spec") or {}
    labels = node["metadata"].get("labels") or {}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required: Any = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms")
    return not terms or node_selector_terms_match(terms, node)


def _allowed_topology(sc: Obj, node: Obj) -> bool:
    """StorageClass allowedTopologies: terms ORed, label expressions ANDed (values ORed)."""
    terms = sc.get("allowedTopologies") or []
    if not terms:
        return True
    labels = node["metadata"].get("labels") or {}
    return any(
        all(
            labels.get(e.get("key")) in (e.get("values") or [])
            for e in term.get("matchLabelExpressions") or []
        )
        for term in terms
    )
