"""Small builders for CSI requests used across the integration and sanity tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2

GIB = 1024**3
Mode = csi_pb2.VolumeCapability.AccessMode.Mode


def mount_cap(mode: int = Mode.SINGLE_NODE_WRITER, fs_type: str = "ext4") -> Any:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs_type),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
    )


def block_cap(mode: int = Mode.SINGLE_NODE_WRITER) -> Any:
    return csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
    )


def create_request(name: str, gib: int = 1, **kwargs: Any) -> Any:
    caps = kwargs.pop("caps", None) or [mount_cap()]
    return csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=gib * GIB),
        volume_capabilities=caps,
        **kwargs,
    )


def expect_code(code: grpc.StatusCode, call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, f"expected {code}, got {error.code()}: {error.details()}"
    return error
