"""Fixtures: the OpenStack stand-in over HTTP, our controller on a real unix socket, and loop
devices that are cleaned up whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cinder_csi.cloud.clouds import CloudSet
from cinder_csi.config import load_cloud_config
from cinder_csi.controller.service import MANIFEST, ControllerOptions, ControllerService
from cinder_csi.csi import csi_pb2_grpc
from cinder_csi.csi.identity import IdentityService
from cinder_csi.csi.server import CSIServer
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.loop_devices import LoopDevices

CLUSTER = "test-cluster"


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[LoopDevices]:
    with LoopDevices(tmp_path) as devices:
        yield devices


@pytest.fixture
def openstack(tmp_path: Path) -> Iterator[OpenStackStandIn]:
    standin = OpenStackStandIn(tmp_path / "openstack", availability_zones=("az-a", "az-b"))
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


@pytest.fixture
def cloud_conf(openstack: OpenStackStandIn, tmp_path: Path) -> Path:
    path = tmp_path / "cloud.conf"
    path.write_text(openstack.cloud_conf())
    return path


@dataclass
class ControllerHandle:
    controller: csi_pb2_grpc.ControllerStub
    identity: csi_pb2_grpc.IdentityStub
    service: ControllerService
    socket: Path
    channel: grpc.Channel


def start_controller(
    cloud_conf: Path, socket: Path, *, cluster: str = CLUSTER
) -> tuple[CSIServer, ControllerHandle]:
    config = load_cloud_config([cloud_conf])
    clouds = CloudSet.from_settings(config.clouds)
    service = ControllerService(clouds, ControllerOptions(
        cluster_id=cluster,
        node_volume_attach_limit=config.block_storage.node_volume_attach_limit,
    ))
    identity = IdentityService("cinder.csi.openstack.org", has_controller=True,
                               probe=clouds.probe, manifest=MANIFEST)
    server = CSIServer(f"unix://{socket}", identity=identity, controller=service, grace_seconds=2)
    server.start()
    channel = grpc.insecure_channel(f"unix://{socket}")
    handle = ControllerHandle(
        controller=csi_pb2_grpc.ControllerStub(channel),
        identity=csi_pb2_grpc.IdentityStub(channel),
        service=service,
        socket=socket,
        channel=channel,
    )
    return server, handle


@pytest.fixture
def csi(cloud_conf: Path, tmp_path: Path) -> Iterator[ControllerHandle]:
    server, handle = start_controller(cloud_conf, tmp_path / "controller.sock")
    try:
        yield handle
    finally:
        handle.channel.close()
        server.stop(0)
