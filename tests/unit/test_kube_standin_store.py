"""The Kubernetes stand-in's store: secondary indexes stay true through every kind of write."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from cinder_csi.standins.kube.store import Store


def claim_of(pv: dict[str, Any]) -> Iterable[Hashable]:
    ref = (pv.get("spec") or {}).get("claimRef") or {}
    if ref.get("name"):
        yield (ref.get("namespace"), ref["name"])


def pv(name: str, claim: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                            "hostPath": {"path": "/tmp"}}
    if claim:
        spec["claimRef"] = {"namespace": "default", "name": claim}
    return {"metadata": {"name": name}, "spec": spec}


def names(objs: list[dict[str, Any]]) -> list[str]:
    return [o["metadata"]["name"] for o in objs]


def test_index_covers_objects_made_before_and_after_it_and_follows_changes() -> None:
    store = Store()
    store.create("persistentvolumes", pv("pv-b", claim="c1"))
    store.add_index("persistentvolumes", "claim", claim_of)
    store.create("persistentvolumes", pv("pv-a", claim="c1"))
    store.create("persistentvolumes", pv("pv-c"))
    assert names(store.indexed("persistentvolumes", "claim", ("default", "c1"))) == [
        "pv-a", "pv-b"]
    assert store.indexed("persistentvolumes", "claim", ("default", "c2")) == []

    store.patch("persistentvolumes", "pv-a",
                {"spec": {"claimRef": {"namespace": "default", "name": "c2"}}})
    assert names(store.indexed("persistentvolumes", "claim", ("default", "c1"))) == ["pv-b"]
    assert names(store.indexed("persistentvolumes", "claim", ("default", "c2"))) == ["pv-a"]

    store.mutate("persistentvolumes", "pv-c", lambda obj: obj["spec"].update(
        claimRef={"namespace": "default", "name": "c2"}))
    assert names(store.indexed("persistentvolumes", "claim", ("default", "c2"))) == [
        "pv-a", "pv-c"]

    store.delete("persistentvolumes", "pv-a")
    store.delete("persistentvolumes", "pv-b")
    assert names(store.indexed("persistentvolumes", "claim", ("default", "c2"))) == ["pv-c"]
    assert store.indexed("persistentvolumes", "claim", ("default", "c1")) == []


def test_indexed_objects_are_the_stored_ones_at_their_latest_version() -> None:
    store = Store()
    store.add_index("persistentvolumes", "claim", claim_of)
    store.create("persistentvolumes", pv("pv-a", claim="c1"))
    latest = store.patch("persistentvolumes", "pv-a", {"metadata": {"labels": {"x": "y"}}})
    [found] = store.indexed("persistentvolumes", "claim", ("default", "c1"))
    assert found["metadata"]["resourceVersion"] == latest["metadata"]["resourceVersion"]
    assert found is store.peek("persistentvolumes", "pv-a")
