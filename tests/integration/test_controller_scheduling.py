"""Our controller when Cinder's scheduler turns a volume down (seen first on real Cinder):
the create fails RESOURCE_EXHAUSTED with that volume's own reason and leaves nothing, and a
retype Cinder rolls back is not reported as done."""

from __future__ import annotations

import grpc

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.kube.client import wait_until
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import ControllerHandle
from tests.integration.csi_helpers import create_request, expect_code

NO_BACKEND = "Could not find any available weighted backend"


def test_a_create_no_backend_takes_is_resource_exhausted_with_its_reason(
        csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    openstack.add_volume_type("nowhere", extra_specs={"volume_backend_name": "no-such-backend"})
    # Another volume's failure first: its message must not be taken for this volume's.
    openstack.faults.fail_create(count=1, volume="pvc-other")
    expect_code(grpc.StatusCode.UNAVAILABLE, lambda: csi.controller.CreateVolume(
        create_request("pvc-other"), timeout=30))
    error = expect_code(grpc.StatusCode.RESOURCE_EXHAUSTED, lambda: csi.controller.CreateVolume(
        create_request("pvc-nowhere", parameters={"type": "nowhere"}), timeout=30))
    assert NO_BACKEND in error.details() and "Driver failed" not in error.details()
    wait_until(lambda: True if openstack.volumes() == [] else None, timeout=10,
               what="the failed volumes deleted")


def test_a_retype_cinder_rolls_back_is_failed_precondition(
        csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    openstack.add_volume_type("nowhere", extra_specs={"volume_backend_name": "no-such-backend"})
    volume_id = csi.controller.CreateVolume(create_request("pvc-stay"), timeout=30).volume.volume_id
    error = expect_code(grpc.StatusCode.FAILED_PRECONDITION, lambda: csi.controller
                        .ControllerModifyVolume(csi_pb2.ControllerModifyVolumeRequest(
                            volume_id=volume_id, mutable_parameters={"type": "nowhere"}),
                            timeout=30))
    assert "nowhere" in error.details()
    (volume,) = openstack.volumes()
    assert (volume["volume_type"], volume["status"]) == ("__DEFAULT__", "available")
