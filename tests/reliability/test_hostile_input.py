"""Hostile CSI input against the real controller and node processes: every answer has a
specific code, input the cloud would refuse never reaches it, the servers keep serving, and
nothing appears outside the kubelet root. Examples first, then generated input (hypothesis)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.csi_helpers import GIB, create_request
from tests.reliability.driver_env import (
    PluginProcess,
    audit,
    controller_process,
    openstack_standin,
    outcome,
    specific,
)

C = grpc.StatusCode
TOPOLOGY_KEY = "topology.cinder.csi.openstack.org/zone"


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenStackStandIn]:
    with openstack_standin(tmp_path_factory.mktemp("hostile") / "openstack") as running:
        yield running


@pytest.fixture(scope="module")
def controller(standin: OpenStackStandIn, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[PluginProcess]:
    with controller_process(tmp_path_factory.mktemp("hostile-controller"), standin) as running:
        yield running


def zone_topology(zone: str) -> csi_pb2.TopologyRequirement:
    return csi_pb2.TopologyRequirement(preferred=[csi_pb2.Topology(segments={TOPOLOGY_KEY: zone})])


# Requests the cloud would refuse (or could not even be sent as a URL), and the code each gets
# before any cloud call.
REFUSED: dict[str, tuple[Callable[[], Any], grpc.StatusCode]] = {
    "name of 256 characters": (lambda: create_request("p" * 256), C.INVALID_ARGUMENT),
    "name of 100,000 characters": (lambda: create_request("p" * 100_000), C.INVALID_ARGUMENT),
    "name with NUL": (lambda: create_request("pvc-\0-x"), C.INVALID_ARGUMENT),
    "name with a line break": (lambda: create_request("pvc-\n"), C.INVALID_ARGUMENT),
    "name outside the BMP": (lambda: create_request("pvc-\U0001F4BE"), C.INVALID_ARGUMENT),
    "name with white space around": (lambda: create_request(" pvc-1"), C.INVALID_ARGUMENT),
    "type of 300 characters": (
        lambda: create_request("pvc-t", parameters={"type": "t" * 300}), C.INVALID_ARGUMENT),
    "zone of 300 characters": (
        lambda: create_request("pvc-z", parameters={"availability": "z" * 300}),
        C.INVALID_ARGUMENT),
    "topology zone of 300 characters": (
        lambda: create_request("pvc-tz", accessibility_requirements=zone_topology("z" * 300)),
        C.INVALID_ARGUMENT),
    "metadata value of 256 characters": (
        lambda: create_request("pvc-m", parameters={"csi.storage.k8s.io/pvc/name": "n" * 256}),
        C.INVALID_ARGUMENT),
    "size beyond Cinder's integer": (lambda: create_request("pvc-big", 2**32), C.OUT_OF_RANGE),
    "negative size": (lambda: csi_pb2.CreateVolumeRequest(
        name="pvc-neg", capacity_range=csi_pb2.CapacityRange(required_bytes=-GIB),
        volume_capabilities=create_request("x").volume_capabilities), C.INVALID_ARGUMENT),
    "source snapshot that is no UUID": (lambda: create_request(
        "pvc-src", volume_content_source=csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id="../../x"))),
        C.NOT_FOUND),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_input_the_cloud_would_refuse_is_refused_before_any_cloud_call(
    standin: OpenStackStandIn, controller: PluginProcess, case: str
) -> None:
    build, code = REFUSED[case]
    sent_before = len(standin.requests())
    result = specific(outcome(lambda: controller.controller.CreateVolume(build(), timeout=20)),
                      case)
    assert result.code == code, result
    assert len(standin.requests()) == sent_before, "the request reached the cloud"
    assert len(result.details) < 1000, "the error echoes the whole input"
    assert controller.identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value
    audit(standin, {})


@pytest.mark.parametrize("call", ["snapshot name", "snapshot metadata", "modify type",
                                  "expand beyond Cinder", "listing token", "list snapshots"])
def test_other_calls_refuse_what_the_cloud_would_refuse(
    standin: OpenStackStandIn, controller: PluginProcess, call: str
) -> None:
    volume_id = "0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f"
    requests: dict[str, tuple[Callable[[], Any], grpc.StatusCode]] = {
        "snapshot name": (lambda: controller.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name="s" * 256, source_volume_id=volume_id),
            timeout=20), C.INVALID_ARGUMENT),
        "snapshot metadata": (lambda: controller.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(
                name="snap", source_volume_id=volume_id,
                parameters={"csi.storage.k8s.io/volumesnapshot/name": "\0"}),
            timeout=20), C.INVALID_ARGUMENT),
        "modify type": (lambda: controller.controller.ControllerModifyVolume(
            csi_pb2.ControllerModifyVolumeRequest(
                volume_id=volume_id, mutable_parameters={"type": "t" * 1000}),
            timeout=20), C.INVALID_ARGUMENT),
        "expand beyond Cinder": (lambda: controller.controller.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(
                volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(
                    required_bytes=2**62)), timeout=20), C.OUT_OF_RANGE),
        "listing token": (lambda: controller.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(starting_token="eyJpZCI6ICIuLi8uLiIsICJhdCI6ICIyMDIwLTAxLTAxIn0"),
            timeout=20), C.ABORTED),
        "list snapshots": (lambda: controller.controller.ListSnapshots(
            csi_pb2.ListSnapshotsRequest(starting_token="x" * 10_000), timeout=20), C.ABORTED),
    }
    send, code = requests[call]
    sent_before = len(standin.requests())
    result = specific(outcome(send), call)
    assert result.code == code, result
    assert len(standin.requests()) == sent_before, "the request reached the cloud"
