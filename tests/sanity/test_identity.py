"""csi-sanity "Identity Service": GetPluginCapabilities, Probe, GetPluginInfo.

csi-sanity runs these against its --csi.endpoint (the node socket when the controller has its
own); we hold both of our endpoints to them.
"""

from __future__ import annotations

import re

import pytest

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from tests.sanity.conftest import SanityEnv
from tests.sanity.helpers import PluginService

Expansion = csi_pb2.PluginCapability.VolumeExpansion.Type
DRIVER_NAME = re.compile(r"^[a-zA-Z][A-Za-z0-9-\.\_]{0,61}[a-zA-Z]$")


@pytest.fixture(params=["node", "controller"])
def identity(request: pytest.FixtureRequest, sanity_env: SanityEnv) -> csi_pb2_grpc.IdentityStub:
    if request.param == "node":
        return sanity_env.identity
    return sanity_env.controller_identity


class TestGetPluginCapabilities:
    def test_should_return_appropriate_capabilities(
        self, identity: csi_pb2_grpc.IdentityStub
    ) -> None:
        response = identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
        assert response is not None
        for cap in response.capabilities:
            kind = cap.WhichOneof("type")
            if kind == "service":
                assert cap.service.type in (
                    PluginService.CONTROLLER_SERVICE,
                    PluginService.VOLUME_ACCESSIBILITY_CONSTRAINTS,
                ), f"Unknown service: {cap.service.type}"
            elif kind == "volume_expansion":
                assert cap.volume_expansion.type in (Expansion.ONLINE, Expansion.OFFLINE), (
                    f"Unknown volume expansion mode: {cap.volume_expansion.type}"
                )
            else:
                pytest.fail(f"Unknown capability: {cap}")


class TestProbe:
    def test_should_return_appropriate_information(
        self, identity: csi_pb2_grpc.IdentityStub
    ) -> None:
        # The call must succeed (an error would be raised here: csi-sanity accepts only OK).
        response = identity.Probe(csi_pb2.ProbeRequest())
        assert response is not None
        if response.HasField("ready"):
            assert response.ready.value in (True, False)


class TestGetPluginInfo:
    def test_should_return_appropriate_information(
        self, identity: csi_pb2_grpc.IdentityStub
    ) -> None:
        response = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
        assert response is not None
        assert response.name, "empty driver name"
        assert len(response.name) <= 63
        assert DRIVER_NAME.match(response.name), f"bad driver name {response.name!r}"
