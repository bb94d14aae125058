"""Real Cinder, Nova and Keystone errors reach the caller with the README's gRPC codes, and a
refused request leaves nothing behind in the cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import GIB, block_cap, create_request, expect_code
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger, Session
from tests.real.controller_process import ControllerProcess, running_controller
from tests.real.env import RealEnv

pytestmark = pytest.mark.real

CALL_S = 180


def create(controller: ControllerProcess, name: str, gib: int = 1, **kwargs: Any) -> Any:
    return controller.controller.CreateVolume(create_request(name, gib, **kwargs),
                                              timeout=CALL_S).volume


def named(cloud: Cloud, name: str) -> list[Any]:
    return [v for v in cloud.volumes() if v.name == name]


def test_over_quota_is_resource_exhausted_and_creates_nothing(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    big, fits = ledger.name("too-big"), ledger.name("fits")
    with cloud.quota(gigabytes=2):
        error = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            lambda: create(controller, big, 3))
        assert "quota" in error.details().lower() and big in error.details()
        assert named(cloud, big) == []

        volume = create(controller, fits, 2)
        ledger.track(volume.volume_id)
        # Snapshots count against the same gigabytes: over quota too.
        snap = ledger.name("snap")
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: controller.controller
                    .CreateSnapshot(csi_pb2.CreateSnapshotRequest(
                        name=snap, source_volume_id=volume.volume_id), timeout=CALL_S))
        assert [s for s in cloud.snapshots() if s.name == snap] == []
        # So does growing a volume.
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: controller.controller
                    .ControllerExpandVolume(csi_pb2.ControllerExpandVolumeRequest(
                        volume_id=volume.volume_id,
                        capacity_range=csi_pb2.CapacityRange(required_bytes=4 * GIB)),
                        timeout=CALL_S))
        after = cloud.volume(volume.volume_id)
        assert after is not None and (after.size, after.status) == (2, "available")

    with cloud.quota(volumes=0):
        name = ledger.name("one-too-many")
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: create(controller, name, 1))
        assert named(cloud, name) == []
    with cloud.quota_limits(per_volume_gigabytes=1):
        name = ledger.name("per-volume")
        expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: create(controller, name, 2))
        assert named(cloud, name) == []


def test_no_backend_with_room_is_resource_exhausted_and_leaves_nothing(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    name = ledger.name("huge")
    with cloud.quota_limits(gigabytes=-1, per_volume_gigabytes=-1):
        error = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED,
                            lambda: create(controller, name, 100_000))
    # Cinder's own reason, for this volume (not another one's message).
    assert "Could not find any available weighted backend" in error.details(), error.details()
    assert named(cloud, name) == []


def test_unknown_volume_type_is_invalid_argument(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger) -> None:
    name = ledger.name("badtype")
    error = expect_code(grpc.StatusCode.INVALID_ARGUMENT, lambda: create(
        controller, name, 1, parameters={"type": "no-such-type"}))
    assert "no-such-type" in error.details()
    assert named(cloud, name) == []


def test_delete_while_attached_is_failed_precondition(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, real: RealEnv) -> None:
    volume = create(controller, ledger.name("busy"))
    volume_id = ledger.track(volume.volume_id)
    server = real.server_id("node-1")
    controller.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=server, volume_capability=block_cap()), timeout=CALL_S)
    error = expect_code(grpc.StatusCode.FAILED_PRECONDITION, lambda: controller.controller
                        .DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                                      timeout=CALL_S))
    assert volume_id in error.details() and server in error.details()
    still = cloud.volume(volume_id)
    assert still is not None and still.status == "in-use"
    assert cloud.attached_servers(still) == {server}
    controller.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
        volume_id=volume_id, node_id=server), timeout=CALL_S)
    controller.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id),
                                       timeout=CALL_S)
    assert cloud.volume(volume_id) is None


def test_wrong_password_is_a_clear_error_naming_keystone(
        real: RealEnv, session: Session, cloud: Cloud, tmp_path: Path, ledger: Ledger) -> None:
    wrong = "not-the-password-7f3a"
    conf = tmp_path / "cloud.conf"
    conf.write_text("\n".join(
        f"password = {wrong}" if line.strip().startswith("password") else line
        for line in real.cloud_conf.read_text().splitlines()) + "\n")
    name = ledger.name("denied")
    with running_controller(tmp_path, ["--cloud-config", str(conf), "--cluster",
                                       session.cluster]) as bad:
        probe = bad.identity.Probe(csi_pb2.ProbeRequest(), timeout=30)
        assert probe.ready.value is False
        error = expect_code(grpc.StatusCode.UNAVAILABLE, lambda: create(bad, name, 1))
        details = error.details()
        assert "Keystone" in details, details
        assert auth_url(real.cloud_conf) in details, details
        assert wrong not in details
        log = bad.log_text()
    assert wrong not in log, "the password reached the log"
    assert named(cloud, name) == []


def auth_url(cloud_conf: Path) -> str:
    for line in cloud_conf.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "auth-url":
            return value.strip()
    raise AssertionError(f"{cloud_conf} has no auth-url")
