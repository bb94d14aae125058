"""cinder_csi.loop.registry: how a pre-created volume is checked through the CSI driver.

The integration tests run the real controller, which has GET_VOLUME; these hold the other
drivers to the same rules: ListVolumes when ControllerGetVolume is not offered, and no
adoption when the driver cannot say where a volume is attached.
"""

from __future__ import annotations

from typing import Any

from cinder_csi import TOPOLOGY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop.kube.objects import (
    CSI_NODES_PATH,
    NODES_PATH,
    PV_PATH,
    claims_path,
    namespace_path,
)
from cinder_csi.loop.registry import RegistrySpec, RegistryStatus, RegistryVolume
from tests.unit.loop_fakes import NODE_ID, RPC, VOLUME_ID, World, csinode

NS = "openshift-image-registry"
GI = 1 << 30
ATTACHING = {RPC.PUBLISH_UNPUBLISH_VOLUME}
LISTING = {RPC.LIST_VOLUMES, RPC.LIST_VOLUMES_PUBLISHED_NODES}


def world(caps: set[int]) -> World:
    w = World(caps=caps)
    w.rest.put(namespace_path(NS), {"metadata": {"name": NS}})
    w.rest.put(CSI_NODES_PATH, {"items": [csinode()]})
    w.rest.put(NODES_PATH, {"items": [
        {"metadata": {"name": "node-1", "labels": {TOPOLOGY_KEY: "az-a"}}}]})
    return w


def volume(w: World, volume_id: str = VOLUME_ID, *, zone: str = "az-a",
           nodes: tuple[str, ...] = (), abnormal: str | None = None) -> None:
    status = csi_pb2.ListVolumesResponse.VolumeStatus(published_node_ids=list(nodes))
    if abnormal is not None:
        status.volume_condition.CopyFrom(csi_pb2.VolumeCondition(abnormal=True,
                                                                 message=abnormal))
    w.csi.volumes.append(csi_pb2.ListVolumesResponse.Entry(
        volume=csi_pb2.Volume(volume_id=volume_id, capacity_bytes=10 * GI,
                              accessible_topology=[csi_pb2.Topology(
                                  segments={TOPOLOGY_KEY: zone})]),
        status=status))


def ensure(w: World, *, csi: bool = True) -> RegistryStatus:
    spec = RegistrySpec(namespace=NS, volume_id=VOLUME_ID)
    return RegistryVolume(w.rest, spec, csi=w.csi if csi else None).ensure()  # type: ignore[arg-type]


def created(w: World, path: str) -> list[dict[str, Any]]:
    return [body for verb, p, body in w.rest.calls if verb == "create" and p == path]


def test_get_volume_answers_when_the_driver_offers_it() -> None:
    w = world({RPC.GET_VOLUME, *ATTACHING, *LISTING})
    volume(w, nodes=(NODE_ID,))  # attached to our own node: fine
    status = ensure(w)
    assert status.problems == ["claim openshift-image-registry/image-registry-storage is missing"]
    assert len(w.csi.calls("ControllerGetVolume")) == 1
    assert w.csi.calls("ListVolumes") == []
    (pv,) = created(w, PV_PATH)
    assert pv["spec"]["capacity"] == {"storage": "10Gi"}
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": TOPOLOGY_KEY, "operator": "In", "values": ["az-a"]}]}]
    assert created(w, claims_path(NS))[0]["spec"]["volumeName"] == f"registry-{VOLUME_ID}"


def test_without_get_volume_the_listing_is_paged_through() -> None:
    w = world({*ATTACHING, *LISTING})
    volume(w, "other-1")
    volume(w, "other-2")
    volume(w)
    w.csi.page = 1
    ensure(w)
    assert w.csi.calls("ControllerGetVolume") == []
    assert len(w.csi.calls("ListVolumes")) == 3
    assert len(created(w, PV_PATH)) == 1


def test_a_volume_missing_from_the_listing_does_not_exist() -> None:
    w = world({*ATTACHING, *LISTING})
    volume(w, "other-1")
    status = ensure(w)
    assert any("does not exist" in p for p in status.problems), status.problems
    assert created(w, PV_PATH) == [] and created(w, claims_path(NS)) == []


def test_a_driver_that_cannot_say_where_volumes_are_attached_adopts_nothing() -> None:
    w = world({*ATTACHING, RPC.LIST_VOLUMES})
    volume(w)
    status = ensure(w)
    assert any("neither ControllerGetVolume nor ListVolumes with published nodes" in p
               for p in status.problems), status.problems
    assert w.csi.calls("ListVolumes") == []
    assert created(w, PV_PATH) == [] and created(w, claims_path(NS)) == []


def test_an_abnormal_volume_is_refused_with_the_drivers_words() -> None:
    w = world({RPC.GET_VOLUME, *ATTACHING})
    volume(w, abnormal="Cinder reports volume status 'error'")
    status = ensure(w)
    assert any("cannot be used: Cinder reports volume status 'error'" in p
               for p in status.problems), status.problems
    assert created(w, PV_PATH) == []


def test_a_volume_where_no_node_is_is_refused() -> None:
    w = world({RPC.GET_VOLUME, *ATTACHING})
    volume(w, zone="az-z")
    status = ensure(w)
    assert any("zone 'az-z', where this cluster has no node" in p
               for p in status.problems), status.problems
    assert created(w, PV_PATH) == []


def test_without_a_csi_address_a_precreated_volume_is_a_clear_problem() -> None:
    w = world({RPC.GET_VOLUME})
    volume(w)
    status = ensure(w, csi=False)
    assert any("needs --csi-address" in p for p in status.problems), status.problems
    assert w.csi.requests == [] and created(w, PV_PATH) == []
