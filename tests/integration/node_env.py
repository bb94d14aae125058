"""A node on real loop devices: the OpenStack stand-in (Nova attaches loop devices), our
controller, and our node plugin, each on a real unix socket. Cleanup always runs: unmount what
lies under the test's directory, then let the stand-in detach every loop device it made."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.csi.server import CSIServer
from cinder_csi.host import DeviceFinder, MetadataSource, Mounter, MountTable
from cinder_csi.node.service import NodeOptions, NodeService
from cinder_csi.node.wiring import node_identity
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import ControllerHandle, start_controller
from tests.integration.csi_helpers import GIB, create_request, mount_cap


@dataclass
class NodeEnv:
    openstack: OpenStackStandIn
    csi: ControllerHandle
    node: csi_pb2_grpc.NodeStub
    server_id: str
    by_id: Path
    kubelet: Path

    def staging(self, name: str) -> Path:
        return self.kubelet / "plugins" / "cinder" / name / "globalmount"

    def target(self, name: str) -> Path:
        return self.kubelet / "pods" / name / "volumes" / "mount"

    def create(self, name: str, gib: int = 1, **kwargs: object) -> str:
        request = create_request(name, gib, **kwargs)
        return str(self.csi.controller.CreateVolume(request, timeout=30).volume.volume_id)

    def attach(self, volume_id: str, cap: csi_pb2.VolumeCapability | None = None) -> None:
        self.csi.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=self.server_id, volume_capability=cap or mount_cap()
            ),
            timeout=30,
        )

    def detach(self, volume_id: str) -> None:
        self.csi.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id, node_id=self.server_id),
            timeout=30,
        )

    def stage(self, volume_id: str, staging: Path, cap: csi_pb2.VolumeCapability | None = None,
              timeout: float = 60) -> None:
        self.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging),
                volume_capability=cap or mount_cap(),
            ),
            timeout=timeout,
        )

    def unstage(self, volume_id: str, staging: Path) -> None:
        self.node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id=volume_id, staging_target_path=str(staging)),
            timeout=30,
        )

    def publish(self, volume_id: str, staging: Path, target: Path,
                cap: csi_pb2.VolumeCapability | None = None, readonly: bool = False) -> None:
        self.node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id, staging_target_path=str(staging), target_path=str(target),
                volume_capability=cap or mount_cap(), readonly=readonly,
            ),
            timeout=30,
        )

    def unpublish(self, volume_id: str, target: Path) -> None:
        self.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)),
            timeout=30,
        )

    def device_of(self, volume_id: str) -> Path:
        return (self.by_id / f"virtio-{volume_id[:20]}").resolve()


def unmount_below(root: Path) -> None:
    """Unmount everything mounted under ``root``, newest first."""
    prefix = str(root.resolve()) + "/"
    for mount in reversed(MountTable().all()):
        if mount.mount_point.startswith(prefix):
            result = subprocess.run(["umount", mount.mount_point], capture_output=True,
                                    timeout=30, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", mount.mount_point], capture_output=True,
                               timeout=30, check=False)


def loop_devices_backed_by(directory: Path) -> list[str]:
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if str(directory) in line]


@contextmanager
def node_env(tmp_path: Path, *, zone: str = "az-a") -> Iterator[NodeEnv]:
    openstack = OpenStackStandIn(tmp_path / "openstack", availability_zones=("az-a", "az-b"))
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    kubelet = tmp_path / "kubelet"
    kubelet.mkdir()
    servers: list[CSIServer] = []
    channels: list[grpc.Channel] = []
    openstack.start()
    try:
        server_id = openstack.add_server("node-0", zone, by_id_dir=by_id)
        conf = tmp_path / "cloud.conf"
        conf.write_text(openstack.cloud_conf())
        controller_server, csi = start_controller(conf, tmp_path / "controller.sock")
        servers.append(controller_server)
        channels.append(csi.channel)
        node = NodeService(
            metadata=MetadataSource(node_id=server_id, availability_zone=zone),
            finder=DeviceFinder(by_id_dir=by_id),
            mounter=Mounter(),
            options=NodeOptions(kubelet_root=kubelet),
        )
        identity = node_identity("cinder.csi.openstack.org", node)
        node_server = CSIServer(f"unix://{tmp_path / 'node.sock'}", identity=identity, node=node,
                                grace_seconds=2)
        node_server.start()
        servers.append(node_server)
        channel = grpc.insecure_channel(f"unix://{tmp_path / 'node.sock'}")
        channels.append(channel)
        yield NodeEnv(openstack, csi, csi_pb2_grpc.NodeStub(channel), server_id, by_id, kubelet)
    finally:
        for channel in channels:
            channel.close()
        for server in servers:
            server.stop(0)
        unmount_below(tmp_path)
        openstack.stop()
        leaked = loop_devices_backed_by(tmp_path)
        assert not leaked, f"loop devices leaked: {leaked}"


__all__ = ["GIB", "NodeEnv", "loop_devices_backed_by", "node_env", "unmount_below"]
