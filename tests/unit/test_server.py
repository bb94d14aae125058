"""Pure parts of the CSI server: endpoint parsing (csi/server.py) and secret redaction
(csi/redaction.py)."""

from __future__ import annotations

import json

import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.csi.redaction import redact
from cinder_csi.csi.server import Endpoint, parse_endpoint


@pytest.mark.parametrize(("text", "expected"), [
    ("unix:///csi/csi.sock", Endpoint("unix", "/csi/csi.sock")),
    ("unix://csi/csi.sock", Endpoint("unix", "csi/csi.sock")),
    ("UNIX:///var/lib/kubelet/plugins/x/csi.sock",
     Endpoint("unix", "/var/lib/kubelet/plugins/x/csi.sock")),
    ("tcp://127.0.0.1:10000", Endpoint("tcp", "127.0.0.1:10000")),
    ("tcp://:10000", Endpoint("tcp", "[::]:10000")),
    ("tcp://[::1]:0", Endpoint("tcp", "[::1]:0")),
])
def test_parse_endpoint(text: str, expected: Endpoint) -> None:
    assert parse_endpoint(text) == expected


def test_grpc_address() -> None:
    assert parse_endpoint("unix:///a/b.sock").grpc_address == "unix:/a/b.sock"
    assert parse_endpoint("tcp://h:1").grpc_address == "h:1"


@pytest.mark.parametrize("text", [
    "", "/csi/csi.sock", "unix://", "http://host:80", "tcp://host", "tcp://host:port",
    "tcp://host:70000", "tcp://[::1:80", "unix:/csi.sock",
])
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid endpoint"):
        parse_endpoint(text)


def test_redact_masks_secrets_and_keeps_the_rest() -> None:
    request = csi_pb2.CreateVolumeRequest(
        name="pvc-1",
        capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30),
        volume_capabilities=[csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(fs_type="xfs", mount_flags=["noatime"]),
            access_mode=csi_pb2.VolumeCapability.AccessMode(
                mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
        )],
        parameters={"type": "ssd"},
        secrets={"password": "hunter2"},
        accessibility_requirements=csi_pb2.TopologyRequirement(
            preferred=[csi_pb2.Topology(segments={"topology.cinder.csi.openstack.org/zone": "a"})]
        ),
    )
    out = redact(request)
    assert out == {
        "name": "pvc-1",
        "capacity_range": {"required_bytes": 1 << 30},
        "volume_capabilities": [{
            "mount": {"fs_type": "xfs", "mount_flags": ["noatime"]},
            "access_mode": {"mode": "SINGLE_NODE_WRITER"},
        }],
        "parameters": {"type": "ssd"},
        "secrets": "***",
        "accessibility_requirements": {
            "preferred": [{"segments": {"topology.cinder.csi.openstack.org/zone": "a"}}],
        },
    }
    assert "hunter2" not in json.dumps(out)


@pytest.mark.parametrize("message", [
    csi_pb2.NodeStageVolumeRequest(volume_id="v", secrets={"k": "hunter2"}),
    csi_pb2.ControllerPublishVolumeRequest(volume_id="v", secrets={"k": "hunter2"}),
    csi_pb2.NodeExpandVolumeRequest(volume_id="v", secrets={"k": "hunter2"}),
    csi_pb2.GetMetadataDeltaRequest(base_snapshot_id="s", secrets={"k": "hunter2"}),
])
def test_redact_every_secret_field(message: csi_pb2.CreateVolumeRequest) -> None:
    out = redact(message)
    assert out["secrets"] == "***"
    assert "hunter2" not in json.dumps(out)


def test_redact_empty_message_and_wrappers() -> None:
    assert redact(csi_pb2.ProbeRequest()) == {}
    response = csi_pb2.ProbeResponse()
    response.ready.value = False
    assert redact(response) == {"ready": {}}
