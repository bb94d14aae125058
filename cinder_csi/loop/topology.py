"""Where a new volume may live: CSI requisite/preferred topology from CSINodes and Nodes.

A segment is a ``{topology key: value}`` dict. A node's segment is the values of its Node
labels for the keys its CSINode lists for the driver (how kubelet registered the plugin).

- A selected node (WaitForFirstConsumer): requisite = preferred = [that node's segment], so the
  volume lands where the pod will run.
- Immediate binding: requisite = every distinct segment of the nodes running the driver, kept
  to the class's ``allowedTopologies``; preferred = the same list rotated by a stable hash of
  the claim name, so claims spread over the zones instead of piling into the first one.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.errors import TopologyError

Segment = dict[str, str]


@dataclass(frozen=True)
class Requirement:
    requisite: list[Segment]
    preferred: list[Segment]

    def to_csi(self) -> csi_pb2.TopologyRequirement:
        return csi_pb2.TopologyRequirement(
            requisite=[csi_pb2.Topology(segments=s) for s in self.requisite],
            preferred=[csi_pb2.Topology(segments=s) for s in self.preferred],
        )


def driver_entry(csi_node: Mapping[str, Any], driver: str) -> Mapping[str, Any] | None:
    for entry in (csi_node.get("spec") or {}).get("drivers") or []:
        if entry.get("name") == driver:
            return dict(entry)
    return None


def node_segment(csi_node: Mapping[str, Any], node: Mapping[str, Any] | None,
                 driver: str) -> Segment | None:
    """The node's segment for ``driver``; None when the driver is not on the node or a label
    it registered is missing from the Node (kubelet has not labelled it yet)."""
    entry = driver_entry(csi_node, driver)
    if entry is None or node is None:
        return None
    keys = [str(k) for k in entry.get("topologyKeys") or []]
    labels = (node.get("metadata") or {}).get("labels") or {}
    if any(k not in labels for k in keys):
        return None
    return {k: str(labels[k]) for k in keys}


def _allowed_terms(storage_class: Mapping[str, Any]) -> list[dict[str, set[str]]]:
    terms = []
    for term in storage_class.get("allowedTopologies") or []:
        exprs = {
            str(e.get("key")): {str(v) for v in e.get("values") or []}
            for e in term.get("matchLabelExpressions") or []
        }
        terms.append(exprs)
    return terms


def allowed(segment: Mapping[str, str], storage_class: Mapping[str, Any]) -> bool:
    """True when the class has no allowedTopologies or one of its terms admits ``segment``."""
    terms = _allowed_terms(storage_class)
    if not terms:
        return True
    return any(
        all(segment.get(key) in values for key, values in term.items()) for term in terms
    )


def _expand_allowed(storage_class: Mapping[str, Any]) -> list[Segment]:
    """Every segment the class's allowedTopologies spell out (the product of each term)."""
    out: list[Segment] = []
    for term in _allowed_terms(storage_class):
        keys = sorted(term)
        for values in itertools.product(*(sorted(term[k]) for k in keys)):
            out.append(dict(zip(keys, values, strict=True)))
    return _distinct(out)


def _distinct(segments: Iterable[Segment]) -> list[Segment]:
    seen: dict[tuple[tuple[str, str], ...], Segment] = {}
    for segment in segments:
        seen.setdefault(tuple(sorted(segment.items())), segment)
    return [seen[k] for k in sorted(seen)]


def spread_offset(claim_name: str, count: int) -> int:
    """A stable (process-independent) offset for ``claim_name`` among ``count`` segments."""
    return zlib.crc32(claim_name.encode()) % count if count else 0


def for_selected_node(driver: str, node_name: str, csi_node: Mapping[str, Any] | None,
                      node: Mapping[str, Any] | None) -> Requirement | None:
    if csi_node is None:
        raise TopologyError(f'CSINode of the selected node "{node_name}" does not exist yet')
    entry = driver_entry(csi_node, driver)
    if entry is None:
        raise TopologyError(f'driver {driver} is not registered on the selected node '
                            f'"{node_name}" (CSINode has no entry for it)')
    if not entry.get("topologyKeys"):
        return None  # the driver reports no topology: any place will do
    segment = node_segment(csi_node, node, driver)
    if segment is None:
        raise TopologyError(f'node "{node_name}" lacks the topology labels '
                            f'{entry.get("topologyKeys")} its CSINode lists')
    return Requirement([segment], [dict(segment)])


def for_immediate(driver: str, claim_name: str, csi_nodes: Sequence[Mapping[str, Any]],
                  node_lookup: Callable[[str], Mapping[str, Any] | None],
                  storage_class: Mapping[str, Any]) -> Requirement | None:
    segments = []
    for csi_node in csi_nodes:
        name = str((csi_node.get("metadata") or {}).get("name", ""))
        segment = node_segment(csi_node, node_lookup(name), driver)
        if segment:
            segments.append(segment)
    requisite = [s for s in _distinct(segments) if allowed(s, storage_class)]
    if not requisite:
        # No node qualifies (none registered yet, or none inside the allowed topologies): the
        # class's own list is the only constraint left; with none, let the driver choose.
        requisite = _expand_allowed(storage_class)
    if not requisite:
        return None
    offset = spread_offset(claim_name, len(requisite))
    preferred = [dict(s) for s in requisite[offset:] + requisite[:offset]]
    return Requirement(requisite, preferred)


def requirement(driver: str, claim: Mapping[str, Any], storage_class: Mapping[str, Any],
                *, selected_node: str | None,
                csi_node_lookup: Callable[[str], Mapping[str, Any] | None],
                csi_nodes: Callable[[], Sequence[Mapping[str, Any]]],
                node_lookup: Callable[[str], Mapping[str, Any] | None]) -> Requirement | None:
    """The accessibility requirement for provisioning ``claim`` (None: no constraint)."""
    if selected_node:
        return for_selected_node(driver, selected_node, csi_node_lookup(selected_node),
                                 node_lookup(selected_node))
    name = str((claim.get("metadata") or {}).get("name", ""))
    return for_immediate(driver, name, csi_nodes(), node_lookup, storage_class)
