"""Each fault of the OpenStack stand-in, ending with no orphaned and no duplicate volume."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import ControllerHandle, start_controller
from tests.integration.csi_helpers import GIB, create_request, expect_code, mount_cap

C = grpc.StatusCode


def named(openstack: OpenStackStandIn, name: str) -> list[dict[str, object]]:
    return [v for v in openstack.volumes() if v["name"] == name]


def create(csi: ControllerHandle, name: str, timeout: float = 30) -> csi_pb2.Volume:
    return csi.controller.CreateVolume(create_request(name), timeout=timeout).volume


def test_5xx_on_reads_is_retried(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    openstack.faults.error(503, count=2, method="GET", path="/volumes")
    assert create(csi, "pvc-5xx-read").volume_id
    assert len(named(openstack, "pvc-5xx-read")) == 1


def test_5xx_on_create_fails_then_retry_makes_exactly_one(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.faults.error(500, count=1, method="POST", path="/volumes$")
    error = expect_code(C.UNAVAILABLE, lambda: create(csi, "pvc-5xx"))
    assert "500" in error.details()
    create(csi, "pvc-5xx")
    assert len(named(openstack, "pvc-5xx")) == 1


@pytest.mark.parametrize("status", [429, 413])
def test_rate_limit_is_ridden_out(
    csi: ControllerHandle, openstack: OpenStackStandIn, status: int
) -> None:
    openstack.faults.rate_limit(status=status, retry_after=1, count=2, method="POST",
                                path="/volumes$")
    started = time.monotonic()
    create(csi, f"pvc-rl-{status}")
    assert time.monotonic() - started >= 1.5  # Retry-After was honoured, twice
    assert len(named(openstack, f"pvc-rl-{status}")) == 1


def test_hung_create_is_bounded_by_the_deadline(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.faults.hang(20, count=1, method="POST", path="/volumes$")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        create(csi, "pvc-hang", timeout=4)
    assert info.value.code() in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED)
    assert time.monotonic() - started < 6
    openstack.faults.reset()
    create(csi, "pvc-hang")
    assert len(named(openstack, "pvc-hang")) == 1


def test_volume_stuck_creating_then_recovers(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    rule = openstack.faults.stick("creating", volume="pvc-stuck")
    expect_code(C.DEADLINE_EXCEEDED, lambda: create(csi, "pvc-stuck", timeout=3))
    assert [v["status"] for v in named(openstack, "pvc-stuck")] == ["creating"]
    openstack.faults.remove(rule)
    create(csi, "pvc-stuck")
    assert [v["status"] for v in named(openstack, "pvc-stuck")] == ["available"]


def test_creation_ending_in_error_is_cleaned_up(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.faults.fail_create(count=1, volume="pvc-err")
    error = expect_code(C.UNAVAILABLE, lambda: create(csi, "pvc-err"))
    assert "pvc-err" in error.details() and "deleted" in error.details()
    deadline = time.monotonic() + 10
    while named(openstack, "pvc-err") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert named(openstack, "pvc-err") == []
    create(csi, "pvc-err")
    assert [v["status"] for v in named(openstack, "pvc-err")] == ["available"]


def test_extend_failure_is_failed_precondition(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    volume = create(csi, "pvc-ext-err")
    openstack.faults.fail_extend(count=1, volume="pvc-ext-err")
    error = expect_code(C.FAILED_PRECONDITION, lambda: csi.controller.ControllerExpandVolume(
        csi_pb2.ControllerExpandVolumeRequest(
            volume_id=volume.volume_id, capacity_range=csi_pb2.CapacityRange(
                required_bytes=2 * GIB)), timeout=30))
    assert "error_extending" in error.details()


def test_attach_stuck_then_completes_on_retry(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume = create(csi, "pvc-att-stuck")
    rule = openstack.faults.stick("attaching", volume="pvc-att-stuck")
    request = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=server, volume_capability=mount_cap())
    expect_code(C.DEADLINE_EXCEEDED,
                lambda: csi.controller.ControllerPublishVolume(request, timeout=3))
    openstack.faults.remove(rule)
    csi.controller.ControllerPublishVolume(request, timeout=30)
    assert named(openstack, "pvc-att-stuck")[0]["status"] == "in-use"


def test_nova_unreachable_fails_only_nova_calls(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    server = openstack.add_server("node-0", "az-a")
    openstack.faults.unreachable("compute")
    volume = create(csi, "pvc-nonova")
    error = expect_code(C.UNAVAILABLE, lambda: csi.controller.ControllerPublishVolume(
        csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume.volume_id, node_id=server, volume_capability=mount_cap()),
        timeout=30))
    assert "compute" in error.details()


def test_nova_absent_from_catalog(
    openstack: OpenStackStandIn, cloud_conf: Path, tmp_path: Path
) -> None:
    openstack.faults.hide_from_catalog("compute")
    server_id = openstack.add_server("node-0", "az-a")
    server, csi = start_controller(cloud_conf, tmp_path / "c.sock")
    try:
        probe = csi.identity.Probe(csi_pb2.ProbeRequest(), timeout=10)
        assert probe.ready.value
        volume = create(csi, "pvc-catalog")
        error = expect_code(C.UNAVAILABLE, lambda: csi.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume.volume_id, node_id=server_id, volume_capability=mount_cap()),
            timeout=30))
        assert "catalog" in error.details()
        csi.controller.DeleteVolume(
            csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id), timeout=30)
    finally:
        csi.channel.close()
        server.stop(0)


def test_cinder_down_means_not_ready_and_unavailable(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    openstack.faults.unreachable("volume")
    time.sleep(5.1)  # let the cached probe answer expire
    assert not csi.identity.Probe(csi_pb2.ProbeRequest(), timeout=30).ready.value
    expect_code(C.UNAVAILABLE, lambda: create(csi, "pvc-down"))
    openstack.faults.reset()
    create(csi, "pvc-down")
    assert len(named(openstack, "pvc-down")) == 1


def test_expired_token_is_renewed(csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    create(csi, "pvc-tok-1")
    openstack.expire_tokens()
    create(csi, "pvc-tok-2")
    assert len(named(openstack, "pvc-tok-2")) == 1


@pytest.mark.parametrize("fault", ["lose_answer", "error_after"])
def test_create_carried_out_but_answer_lost_is_adopted_not_orphaned(
    csi: ControllerHandle, openstack: OpenStackStandIn, fault: str
) -> None:
    name = f"pvc-lost-{fault}"
    if fault == "lose_answer":
        openstack.faults.lose_answer(count=1, method="POST", path="/volumes$")
    else:
        openstack.faults.error(500, count=1, method="POST", path="/volumes$", after=True)
    volume = create(csi, name)  # the same call finds what Cinder made and adopts it
    stored = named(openstack, name)
    assert [v["id"] for v in stored] == [volume.volume_id]
    assert create(csi, name).volume_id == volume.volume_id
    assert len(named(openstack, name)) == 1


def test_snapshot_carried_out_but_answer_lost_is_found_on_retry(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    source = create(csi, "pvc-snap-src")
    openstack.faults.error(500, count=1, method="POST", path="/snapshots$", after=True)
    request = csi_pb2.CreateSnapshotRequest(name="snap-lost", source_volume_id=source.volume_id)
    expect_code(C.UNAVAILABLE, lambda: csi.controller.CreateSnapshot(request, timeout=30))
    snapshot = csi.controller.CreateSnapshot(request, timeout=30).snapshot
    assert [s["id"] for s in openstack.snapshots() if s["name"] == "snap-lost"] == [
        snapshot.snapshot_id]


def test_attach_carried_out_but_answer_lost_completes_on_retry(
    csi: ControllerHandle, openstack: OpenStackStandIn
) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume = create(csi, "pvc-att-lost")
    openstack.faults.lose_answer(count=1, method="POST", path="os-volume_attachments")
    request = csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume.volume_id, node_id=server, volume_capability=mount_cap())
    expect_code(C.UNAVAILABLE, lambda: csi.controller.ControllerPublishVolume(request, timeout=30))
    csi.controller.ControllerPublishVolume(request, timeout=30)
    attachments = [a for a in openstack.attachments() if a.get("volume_id") == volume.volume_id]
    assert len(attachments) == 1
