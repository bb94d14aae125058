"""The committed CSI stubs match proto/csi.proto, and the proto keeps the CSI wire facts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from cinder_csi.csi import csi_pb2

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("csi_pb2.py", "csi_pb2.pyi", "csi_pb2_grpc.py")


def test_committed_stubs_match_regenerated(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    result = subprocess.run(
        [str(ROOT / "hack" / "gen-proto"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        committed = (ROOT / "cinder_csi" / "csi" / name).read_bytes()
        fresh = (tmp_path / name).read_bytes()
        assert committed == fresh, f"{name} is stale: run hack/gen-proto"


def test_create_volume_request_field_numbers() -> None:
    fields = csi_pb2.CreateVolumeRequest.DESCRIPTOR.fields_by_name
    assert {name: f.number for name, f in fields.items()} == {
        "name": 1,
        "capacity_range": 2,
        "volume_capabilities": 3,
        "parameters": 4,
        "secrets": 5,
        "volume_content_source": 6,
        "accessibility_requirements": 7,
        "mutable_parameters": 8,
    }


def _is_secret(field: FieldDescriptor) -> bool:
    return bool(field.GetOptions().Extensions[csi_pb2.csi_secret])


@pytest.mark.parametrize(
    "message",
    [csi_pb2.CreateVolumeRequest, csi_pb2.NodeStageVolumeRequest],
)
def test_secrets_carry_csi_secret_option(message: type) -> None:
    assert _is_secret(message.DESCRIPTOR.fields_by_name["secrets"])


def _all_messages(descriptors: list[Descriptor]) -> list[Descriptor]:
    out: list[Descriptor] = []
    for d in descriptors:
        out.append(d)
        out.extend(_all_messages(list(d.nested_types)))
    return out


def test_every_secrets_field_is_marked_and_nothing_else() -> None:
    marked = set()
    for msg in _all_messages(list(csi_pb2.DESCRIPTOR.message_types_by_name.values())):
        for field in msg.fields:
            if _is_secret(field):
                marked.add(f"{msg.name}.{field.name}")
            elif field.name == "secrets":
                pytest.fail(f"{msg.name}.secrets lacks (csi_secret)")
    assert all(name.endswith(".secrets") for name in marked)
    assert len(marked) == 19


def test_extension_numbers() -> None:
    assert csi_pb2.csi_secret.number == 1059
    for ext in ("alpha_field", "alpha_enum", "alpha_enum_value", "alpha_message",
                "alpha_method", "alpha_service"):
        assert getattr(csi_pb2, ext).number == 1060


def test_services_and_methods() -> None:
    services = csi_pb2.DESCRIPTOR.services_by_name
    methods = {name: [m.name for m in s.methods] for name, s in services.items()}
    assert methods["Identity"] == ["GetPluginInfo", "GetPluginCapabilities", "Probe"]
    assert methods["Controller"] == [
        "CreateVolume", "DeleteVolume", "ControllerPublishVolume",
        "ControllerUnpublishVolume", "ValidateVolumeCapabilities", "ListVolumes",
        "GetCapacity", "ControllerGetCapabilities", "CreateSnapshot", "DeleteSnapshot",
        "ListSnapshots", "GetSnapshot", "ControllerExpandVolume", "ControllerGetVolume",
        "ControllerModifyVolume",
    ]
    assert methods["Node"] == [
        "NodeStageVolume", "NodeUnstageVolume", "NodePublishVolume", "NodeUnpublishVolume",
        "NodeGetVolumeStats", "NodeExpandVolume", "NodeGetCapabilities", "NodeGetInfo",
    ]
    assert methods["GroupController"] == [
        "GroupControllerGetCapabilities", "CreateVolumeGroupSnapshot",
        "DeleteVolumeGroupSnapshot", "GetVolumeGroupSnapshot",
    ]
    assert methods["SnapshotMetadata"] == ["GetMetadataAllocated", "GetMetadataDelta"]
    assert services["Controller"].full_name == "csi.v1.Controller"


def test_capability_enums() -> None:
    rpc = csi_pb2.ControllerServiceCapability.RPC
    assert rpc.MODIFY_VOLUME == 14
    assert rpc.GET_SNAPSHOT == 15
    node = csi_pb2.NodeServiceCapability.RPC
    assert (node.STAGE_UNSTAGE_VOLUME, node.GET_VOLUME_STATS, node.EXPAND_VOLUME,
            node.VOLUME_CONDITION, node.SINGLE_NODE_MULTI_WRITER,
            node.VOLUME_MOUNT_GROUP) == (1, 2, 3, 4, 5, 6)
    svc = csi_pb2.PluginCapability.Service
    assert (svc.CONTROLLER_SERVICE, svc.VOLUME_ACCESSIBILITY_CONSTRAINTS,
            svc.GROUP_CONTROLLER_SERVICE, svc.SNAPSHOT_METADATA_SERVICE) == (1, 2, 3, 4)
    exp = csi_pb2.PluginCapability.VolumeExpansion
    assert (exp.ONLINE, exp.OFFLINE) == (1, 2)
    mode = csi_pb2.VolumeCapability.AccessMode
    assert mode.SINGLE_NODE_MULTI_WRITER == 7


def test_list_volumes_status_and_oneofs() -> None:
    status = csi_pb2.ListVolumesResponse.VolumeStatus.DESCRIPTOR.fields_by_name
    assert status["published_node_ids"].number == 1
    assert status["volume_condition"].number == 2
    cap = csi_pb2.VolumeCapability.DESCRIPTOR
    assert [f.name for f in cap.oneofs_by_name["access_type"].fields] == ["block", "mount"]
    plugin = csi_pb2.PluginCapability.DESCRIPTOR
    assert [f.name for f in plugin.oneofs_by_name["type"].fields] == [
        "service", "volume_expansion"
    ]
