"""Requisite/preferred topology from CSINodes, Nodes and the class's allowedTopologies."""

from __future__ import annotations

from typing import Any

import pytest

from cinder_csi.loop import topology as t
from cinder_csi.loop.errors import TopologyError

DRIVER = "cinder.csi.openstack.org"
KEY = "topology.cinder.csi.openstack.org/zone"


def csi_node(name: str, keys: list[str] | None = None, driver: str = DRIVER) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": driver, "nodeID": f"id-{name}"}
    if keys is not None:
        entry["topologyKeys"] = keys
    return {"metadata": {"name": name}, "spec": {"drivers": [entry]}}


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": dict(labels)}}


ZONED = {f"n{i}": node(f"n{i}", **{KEY: z}) for i, z in enumerate(["b", "a", "b", "c"])}
CSI_NODES = [csi_node(name, [KEY]) for name in ZONED]


def immediate(claim: str, sc: dict[str, Any] | None = None,
              csi_nodes: list[dict[str, Any]] = CSI_NODES) -> t.Requirement | None:
    return t.for_immediate(DRIVER, claim, csi_nodes, ZONED.get, sc or {})


def test_node_segment_reads_the_registered_keys_from_node_labels() -> None:
    assert t.node_segment(csi_node("n0", [KEY]), ZONED["n0"], DRIVER) == {KEY: "b"}
    assert t.node_segment(csi_node("n0", [KEY], driver="other"), ZONED["n0"], DRIVER) is None
    assert t.node_segment(csi_node("n0", ["missing"]), ZONED["n0"], DRIVER) is None
    assert t.node_segment(csi_node("n0", [KEY]), None, DRIVER) is None


def test_selected_node_is_both_requisite_and_preferred() -> None:
    req = t.for_selected_node(DRIVER, "n1", csi_node("n1", [KEY]), ZONED["n1"])
    assert req == t.Requirement([{KEY: "a"}], [{KEY: "a"}])
    csi = req.to_csi()
    assert [dict(x.segments) for x in csi.requisite] == [{KEY: "a"}]
    assert [dict(x.segments) for x in csi.preferred] == [{KEY: "a"}]


def test_selected_node_without_csinode_or_driver_or_labels_is_an_error() -> None:
    with pytest.raises(TopologyError, match="CSINode"):
        t.for_selected_node(DRIVER, "n1", None, ZONED["n1"])
    with pytest.raises(TopologyError, match="not registered"):
        t.for_selected_node(DRIVER, "n1", csi_node("n1", [KEY], driver="x"), ZONED["n1"])
    with pytest.raises(TopologyError, match="lacks"):
        t.for_selected_node(DRIVER, "n1", csi_node("n1", ["nope"]), ZONED["n1"])


def test_selected_node_of_a_driver_without_topology_has_no_requirement() -> None:
    assert t.for_selected_node(DRIVER, "n1", csi_node("n1"), ZONED["n1"]) is None


def test_immediate_requisite_is_every_distinct_segment_sorted() -> None:
    req = immediate("claim")
    assert req is not None
    assert req.requisite == [{KEY: "a"}, {KEY: "b"}, {KEY: "c"}]
    assert sorted(map(str, req.preferred)) == sorted(map(str, req.requisite))


def test_immediate_preferred_is_a_stable_rotation_that_spreads() -> None:
    firsts = set()
    for i in range(60):
        req = immediate(f"claim-{i}")
        assert req is not None
        again = immediate(f"claim-{i}")
        assert again == req  # stable for the same claim
        offset = t.spread_offset(f"claim-{i}", 3)
        assert req.preferred == req.requisite[offset:] + req.requisite[:offset]
        firsts.add(req.preferred[0][KEY])
    assert firsts == {"a", "b", "c"}


def test_immediate_respects_allowed_topologies() -> None:
    sc = {"allowedTopologies": [{"matchLabelExpressions": [{"key": KEY, "values": ["c", "a"]}]}]}
    req = immediate("claim", sc)
    assert req is not None
    assert req.requisite == [{KEY: "a"}, {KEY: "c"}]


def test_immediate_without_nodes_falls_back_to_allowed_topologies() -> None:
    sc = {"allowedTopologies": [{"matchLabelExpressions": [{"key": KEY, "values": ["z"]}]}]}
    req = immediate("claim", sc, csi_nodes=[])
    assert req is not None and req.requisite == [{KEY: "z"}]
    assert immediate("claim", {}, csi_nodes=[]) is None


def test_nodes_without_the_driver_do_not_count() -> None:
    nodes = [csi_node("n0", [KEY], driver="other"), csi_node("n1", [KEY])]
    req = immediate("claim", csi_nodes=nodes)
    assert req is not None and req.requisite == [{KEY: "a"}]


def test_requirement_dispatches_on_selected_node() -> None:
    claim = {"metadata": {"name": "c"}}
    lookup = {c["metadata"]["name"]: c for c in CSI_NODES}.get
    req = t.requirement(DRIVER, claim, {}, selected_node="n3", csi_node_lookup=lookup,
                        csi_nodes=lambda: CSI_NODES, node_lookup=ZONED.get)
    assert req is not None and req.requisite == [{KEY: "c"}]
    req = t.requirement(DRIVER, claim, {}, selected_node=None, csi_node_lookup=lookup,
                        csi_nodes=lambda: CSI_NODES, node_lookup=ZONED.get)
    assert req is not None and len(req.requisite) == 3
