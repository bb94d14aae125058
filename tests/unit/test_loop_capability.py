"""cinder_csi.loop.capabilities (PV → VolumeCapability, readonly, secret refs, the driver's
capabilities) and reading the Secret a ref names."""

from __future__ import annotations

import base64
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.capabilities import (
    DriverCapabilities,
    access_mode,
    publish_readonly,
    secret_ref,
    volume_capability,
)
from cinder_csi.loop.errors import CapabilityError
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.objects import read_secret
from tests.unit.loop_fakes import RPC, FakeCSI, FakeRest, RpcError

Mode = csi_pb2.VolumeCapability.AccessMode


def pv(**spec: Any) -> dict[str, Any]:
    csi = {"driver": "d", "volumeHandle": "v"}
    csi.update(spec.pop("csi", {}))
    return {"metadata": {"name": "pv-1"},
            "spec": {"accessModes": ["ReadWriteOnce"], "csi": csi, **spec}}


@pytest.mark.parametrize(
    ("modes", "plain", "snmw"),
    [
        (["ReadWriteOnce"], Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_MULTI_WRITER),
        (["ReadOnlyMany"], Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY),
        (["ReadWriteMany"], Mode.MULTI_NODE_MULTI_WRITER, Mode.MULTI_NODE_MULTI_WRITER),
        (["ReadWriteOnce", "ReadWriteMany"], Mode.MULTI_NODE_MULTI_WRITER,
         Mode.MULTI_NODE_MULTI_WRITER),
        (["ReadOnlyMany", "ReadWriteMany"], Mode.MULTI_NODE_MULTI_WRITER,
         Mode.MULTI_NODE_MULTI_WRITER),
        (["ReadWriteOncePod"], Mode.SINGLE_NODE_WRITER, Mode.SINGLE_NODE_SINGLE_WRITER),
        (["ReadWriteOnce", "ReadWriteOnce"], Mode.SINGLE_NODE_WRITER,
         Mode.SINGLE_NODE_MULTI_WRITER),
    ],
)
def test_access_modes_map_like_csi_lib_utils(modes: list[str], plain: int, snmw: int) -> None:
    assert access_mode(modes, single_node_multi_writer=False) == plain
    assert access_mode(modes, single_node_multi_writer=True) == snmw


@pytest.mark.parametrize(
    ("modes", "why"),
    [
        (["ReadOnlyMany", "ReadWriteOnce"], "ReadOnlyMany together with ReadWriteOnce"),
        (["ReadWriteOncePod", "ReadWriteOnce"], "cannot be combined"),
        ([], "unsupported access modes"),
        (["Sometimes"], "unsupported access modes"),
    ],
)
def test_access_modes_csi_cannot_express(modes: list[str], why: str) -> None:
    for snmw in (False, True):
        with pytest.raises(CapabilityError, match=why):
            access_mode(modes, single_node_multi_writer=snmw)


def test_filesystem_volume_carries_fs_type_and_mount_options() -> None:
    cap = volume_capability(pv(csi={"fsType": "xfs"}, mountOptions=["noatime", "nobarrier"]))
    assert cap.WhichOneof("access_type") == "mount"
    assert cap.mount.fs_type == "xfs"
    assert list(cap.mount.mount_flags) == ["noatime", "nobarrier"]
    assert cap.access_mode.mode == Mode.SINGLE_NODE_WRITER


def test_fs_type_falls_back_to_the_default_only_when_unset() -> None:
    assert volume_capability(pv()).mount.fs_type == ""
    assert volume_capability(pv(), default_fs_type="ext4").mount.fs_type == "ext4"
    assert volume_capability(pv(csi={"fsType": "xfs"}),
                             default_fs_type="ext4").mount.fs_type == "xfs"


def test_block_volume_has_no_mount_part() -> None:
    cap = volume_capability(pv(volumeMode="Block", accessModes=["ReadWriteMany"],
                               csi={"fsType": "ext4"}, mountOptions=["ro"]))
    assert cap.WhichOneof("access_type") == "block"
    assert cap.access_mode.mode == Mode.MULTI_NODE_MULTI_WRITER


def test_a_pv_without_csi_source_is_refused() -> None:
    with pytest.raises(CapabilityError, match="no CSI volume source"):
        volume_capability({"metadata": {"name": "nfs"}, "spec": {"nfs": {}}})


def test_readonly_needs_the_pv_flag_and_the_capability() -> None:
    ro = pv(csi={"readOnly": True})
    assert publish_readonly(ro, supports_publish_readonly=True) is True
    assert publish_readonly(ro, supports_publish_readonly=False) is False
    assert publish_readonly(pv(), supports_publish_readonly=True) is False


def test_secret_refs_and_values() -> None:
    assert secret_ref(pv(), "controllerPublishSecretRef") is None
    with_ref = pv(csi={"controllerExpandSecretRef": {"name": "s", "namespace": "ns"}})
    assert secret_ref(with_ref, "controllerExpandSecretRef") == ("ns", "s")
    assert secret_ref(pv(csi={"controllerExpandSecretRef": {"name": "s"}}),
                      "controllerExpandSecretRef") == ("default", "s")
    rest = FakeRest()
    rest.put("/api/v1/namespaces/ns/secrets/s", {"metadata": {"name": "s"}, "data": {
        "user": base64.b64encode(b"admin").decode(),
        "blob": base64.b64encode(b"\xff\xfe").decode(),  # not text: skipped
        "broken": "%%%"}})
    assert read_secret(rest, "ns", "s") == {"user": "admin"}  # type: ignore[arg-type]
    with pytest.raises(ApiException):
        read_secret(rest, "ns", "missing")  # type: ignore[arg-type]


def test_driver_capabilities_are_asked_once_and_not_cached_on_failure() -> None:
    csi = FakeCSI(caps={RPC.PUBLISH_READONLY})
    csi.errors["ControllerGetCapabilities"] = [RpcError(grpc.StatusCode.UNAVAILABLE)]
    caps = DriverCapabilities(csi)  # type: ignore[arg-type]
    with pytest.raises(RpcError):
        caps.get()
    assert caps.has(RPC.PUBLISH_READONLY)
    assert not caps.has(RPC.EXPAND_VOLUME)
    assert len(csi.calls("ControllerGetCapabilities")) == 2
