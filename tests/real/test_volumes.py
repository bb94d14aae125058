"""Volume RPCs of the real controller against real Cinder; every answer is checked against what
Cinder itself reports afterwards."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from cinder_csi import TOPOLOGY_KEY
from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY
from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import (
    GIB,
    Mode,
    block_cap,
    create_request,
    expect_code,
    mount_cap,
)
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger, Session
from tests.real.controller_process import ControllerProcess

pytestmark = pytest.mark.real

CALL_S = 180


def create(controller: ControllerProcess, name: str, gib: int = 1, **kwargs: Any) -> Any:
    return controller.controller.CreateVolume(create_request(name, gib, **kwargs),
                                              timeout=CALL_S).volume


def delete(controller: ControllerProcess, volume_id: str) -> None:
    controller.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                                       timeout=CALL_S)


def named(cloud: Cloud, name: str) -> list[Any]:
    return [v for v in cloud.volumes() if v.name == name]


def test_create_is_idempotent_by_name_and_delete_by_id(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, session: Session) -> None:
    name = ledger.name("idem")
    first = create(controller, name, 1)
    ledger.track(first.volume_id)
    second = create(controller, name, 1)
    assert second.volume_id == first.volume_id
    assert first.capacity_bytes == GIB

    (volume,) = named(cloud, name)
    assert volume.id == first.volume_id
    assert volume.status == "available" and volume.size == 1
    assert volume.metadata[CLUSTER_METADATA_KEY] == session.cluster
    # The answer's topology is the zone Cinder put the volume in.
    assert [dict(t.segments) for t in first.accessible_topology] == [
        {TOPOLOGY_KEY: volume.availability_zone}]

    error = expect_code(grpc.StatusCode.ALREADY_EXISTS, lambda: create(controller, name, 2))
    assert first.volume_id in error.details()
    assert [v.id for v in named(cloud, name)] == [first.volume_id]

    delete(controller, first.volume_id)
    assert cloud.volume(first.volume_id) is None
    delete(controller, first.volume_id)  # already gone: still OK
    delete(controller, "6a0e9b45-0000-4000-8000-000000000000")  # never existed


def test_create_writes_the_claims_metadata_and_honours_the_zone(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    zone = cloud.volume_zones()[0]
    params = {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "apps",
              "csi.storage.k8s.io/pv/name": "pvc-1234"}
    topology = csi_pb2.TopologyRequirement(
        requisite=[csi_pb2.Topology(segments={TOPOLOGY_KEY: zone})],
        preferred=[csi_pb2.Topology(segments={TOPOLOGY_KEY: zone})])
    made = create(controller, ledger.name("meta"), 1, parameters=params,
                  accessibility_requirements=topology)
    ledger.track(made.volume_id)
    volume = cloud.volume(made.volume_id)
    assert volume is not None and volume.availability_zone == zone
    assert {k: volume.metadata.get(k) for k in params} == params


def test_a_zone_cinder_does_not_have_is_invalid_and_leaves_nothing(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    name = ledger.name("nozone")
    expect_code(grpc.StatusCode.INVALID_ARGUMENT, lambda: create(
        controller, name, 1, parameters={"availability": "no-such-zone"}))
    assert named(cloud, name) == []


def test_list_volumes_pages_through_everything_cinder_has(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: Any) -> None:
    made = [ledger.track(create(controller, ledger.name(f"page-{i}")).volume_id)
            for i in range(5)]
    seen: list[str] = []
    published: dict[str, list[str]] = {}
    deleted: list[str] = []
    token = ""
    pages = 0
    while True:
        page = controller.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token), timeout=CALL_S)
        pages += 1
        assert len(page.entries) <= 2
        for entry in page.entries:
            seen.append(entry.volume.volume_id)
            published[entry.volume.volume_id] = list(entry.status.published_node_ids)
        token = page.next_token
        if not token:
            break
        marker = page.entries[-1].volume.volume_id
        if not deleted and marker in made:
            # The marker volume disappears between pages: paging must go on regardless.
            delete(controller, marker)
            deleted.append(marker)
    assert deleted, "no page ended on a test volume"
    assert len(seen) == len(set(seen)), "a volume was listed twice"
    assert set(made) <= set(seen)
    assert set(seen) - set(deleted) <= {v.id for v in cloud.volumes()}
    assert pages >= 3
    # Nova's servers boot from volumes: Cinder reports them attached, and so must we.
    for volume in cloud.volumes():
        servers = cloud.attached_servers(volume)
        if volume.id in published and servers:
            assert set(published[volume.id]) == servers
    assert any(set(nodes) == {real.server_id("node-0")} for nodes in published.values())


def test_get_volume_reports_what_cinder_says(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    made = create(controller, ledger.name("get"), 2)
    ledger.track(made.volume_id)
    got = controller.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=made.volume_id), timeout=CALL_S)
    volume = cloud.volume(made.volume_id)
    assert volume is not None
    assert got.volume.volume_id == volume.id
    assert got.volume.capacity_bytes == volume.size * GIB == 2 * GIB
    assert got.volume.volume_context["name"] == volume.name
    assert list(got.status.published_node_ids) == []
    assert got.status.volume_condition.abnormal is False
    expect_code(grpc.StatusCode.NOT_FOUND, lambda: controller.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id="6a0e9b45-0000-4000-8000-000000000001"),
        timeout=CALL_S))


def test_validate_volume_capabilities(
        controller: ControllerProcess, ledger: Ledger) -> None:
    made = create(controller, ledger.name("caps"))
    ledger.track(made.volume_id)

    def validate(*caps: Any, volume_id: str = made.volume_id) -> Any:
        return controller.controller.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=volume_id,
                                                      volume_capabilities=list(caps)),
            timeout=CALL_S)

    ok = validate(mount_cap(), block_cap())
    assert ok.HasField("confirmed") and len(ok.confirmed.volume_capabilities) == 2
    shared = validate(block_cap(Mode.MULTI_NODE_MULTI_WRITER))
    assert not shared.HasField("confirmed") and "multiattach" in shared.message
    expect_code(grpc.StatusCode.NOT_FOUND,
                lambda: validate(mount_cap(), volume_id="6a0e9b45-0000-4000-8000-000000000002"))


def test_expand_available_then_in_use(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: Any) -> None:
    made = create(controller, ledger.name("grow"))
    volume_id = ledger.track(made.volume_id)

    def expand(gib: int, cap: Any = None) -> Any:
        request = csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=gib * GIB))
        if cap is not None:
            request.volume_capability.CopyFrom(cap)
        return controller.controller.ControllerExpandVolume(request, timeout=CALL_S)

    grown = expand(2)
    assert grown.capacity_bytes == 2 * GIB and grown.node_expansion_required
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.size == 2 and volume.status == "available"
    assert expand(1).capacity_bytes == 2 * GIB  # never shrinks: already large enough

    server = real.server_id("node-0")
    controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=server, volume_capability=block_cap()), timeout=CALL_S)
    online = expand(3, block_cap())
    assert online.capacity_bytes == 3 * GIB and not online.node_expansion_required
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.size == 3 and volume.status == "in-use"
    assert cloud.attached_servers(volume) == {server}
    controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume_id, node_id=server), timeout=CALL_S)
    expect_code(grpc.StatusCode.NOT_FOUND, lambda: controller.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id="6a0e9b45-0000-4000-8000-000000000003",
            capacity_range=csi_pb2.CapacityRange(required_bytes=GIB)), timeout=CALL_S))
