"""Identity service, over a real gRPC channel where the wire matters."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cinder_csi import DEFAULT_DRIVER_NAME, version
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.csi.identity import IdentityService
from cinder_csi.csi.server import CSIServer
from cinder_csi.errors import FailedPrecondition

Service = csi_pb2.PluginCapability.Service
Expansion = csi_pb2.PluginCapability.VolumeExpansion


class ProbeState:
    def __init__(self) -> None:
        self.reason: str | None = None
        self.error: Exception | None = None

    def __call__(self) -> str | None:
        if self.error is not None:
            raise self.error
        return self.reason


@pytest.fixture
def probe() -> ProbeState:
    return ProbeState()


@pytest.fixture
def stub(tmp_path: Path, probe: ProbeState) -> Iterator[csi_pb2_grpc.IdentityStub]:
    sock = tmp_path / "csi.sock"
    server = CSIServer(f"unix://{sock}", identity=IdentityService(
        DEFAULT_DRIVER_NAME, has_controller=True, probe=probe))
    server.start()
    with grpc.insecure_channel(f"unix://{sock}") as channel:
        yield csi_pb2_grpc.IdentityStub(channel)
    server.stop(grace=0)


def capabilities(response: csi_pb2.GetPluginCapabilitiesResponse) -> list[tuple[str, int]]:
    out = []
    for cap in response.capabilities:
        kind = cap.WhichOneof("type")
        out.append((kind, getattr(cap, kind).type))
    return out


def test_plugin_info(stub: csi_pb2_grpc.IdentityStub) -> None:
    info = stub.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
    assert (info.name, info.vendor_version) == (DEFAULT_DRIVER_NAME, version())


def test_plugin_capabilities_with_controller(stub: csi_pb2_grpc.IdentityStub) -> None:
    reply = stub.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest(), timeout=5)
    assert capabilities(reply) == [
        ("service", Service.CONTROLLER_SERVICE),
        ("service", Service.VOLUME_ACCESSIBILITY_CONSTRAINTS),
        ("volume_expansion", Expansion.ONLINE),
        ("volume_expansion", Expansion.OFFLINE),
    ]


def test_node_only_plugin_has_no_controller_capability() -> None:
    identity = IdentityService("node.example.com", has_controller=False, probe=lambda: None)
    reply = identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest(), None)  # type: ignore[arg-type]
    assert ("service", Service.CONTROLLER_SERVICE) not in capabilities(reply)
    assert ("service", Service.VOLUME_ACCESSIBILITY_CONSTRAINTS) in capabilities(reply)


def test_probe_ready_and_not_ready(stub: csi_pb2_grpc.IdentityStub, probe: ProbeState) -> None:
    reply = stub.Probe(csi_pb2.ProbeRequest(), timeout=5)
    assert reply.HasField("ready") and reply.ready.value is True
    probe.reason = "cloud not reachable yet"
    reply = stub.Probe(csi_pb2.ProbeRequest(), timeout=5)
    assert reply.HasField("ready") and reply.ready.value is False


def test_probe_error_maps_to_its_code(stub: csi_pb2_grpc.IdentityStub, probe: ProbeState) -> None:
    probe.error = FailedPrecondition("metadata service unreachable")
    with pytest.raises(grpc.RpcError) as info:
        stub.Probe(csi_pb2.ProbeRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


def test_not_ready_warning_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    reason: list[str | None] = ["no cloud"]
    identity = IdentityService(DEFAULT_DRIVER_NAME, has_controller=True,
                               probe=lambda: reason[0], clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="cinder_csi.csi.identity")

    def probe_at(t: float) -> None:
        now[0] = t
        identity.Probe(csi_pb2.ProbeRequest(), None)  # type: ignore[arg-type]

    for t in (1000.0, 1001.0, 1029.0):
        probe_at(t)
    reason[0] = "no node id"
    probe_at(1029.5)  # a new reason is logged at once
    reason[0] = "no cloud"
    probe_at(1030.0)  # 30 s after the first "no cloud" warning
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["not ready: no cloud", "not ready: no node id", "not ready: no cloud"]


@pytest.mark.parametrize("name", [
    DEFAULT_DRIVER_NAME, "a", "csi-driver.example.com", "A1", "x" * 63,
])
def test_valid_driver_names(name: str) -> None:
    assert IdentityService(name, has_controller=False, probe=lambda: None).driver_name == name


@pytest.mark.parametrize("name", [
    "", "x" * 64, "-cinder.csi", "cinder.csi.", "cinder_csi", "cinder csi", "cinder/csi",
])
def test_invalid_driver_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid CSI driver name"):
        IdentityService(name, has_controller=False, probe=lambda: None)
