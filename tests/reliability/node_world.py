"""A node on real loop devices for the data-safety scenarios (root only): the OpenStack
stand-in (Nova attaches a volume as a loop device with its by-id link), the real
`cinder-csi controller` and `cinder-csi node` processes. Cleanup always runs: processes
stopped, mounts under the test's directory removed, every loop device the stand-in made
detached, and none may be left."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.csi_helpers import create_request, mount_cap
from tests.integration.loop_devices import MIB, sha256
from tests.integration.node_env import loop_devices_backed_by, unmount_below

__all__ = ["MIB", "NodeWorld", "blkid", "node_world", "run", "sha256"]
from tests.reliability.driver_env import (
    PluginProcess,
    controller_process,
    node_argv,
    openstack_standin,
)


def blkid(device: Path) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", str(device)], capture_output=True,
                         text=True, timeout=30, check=False).stdout
    return dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)


def run(*argv: str, input_text: str | None = None) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120,
                   input=input_text)


@dataclass
class NodeWorld:
    tmp: Path
    openstack: OpenStackStandIn
    controller: PluginProcess
    server_id: str
    by_id: Path
    kubelet: Path
    node: PluginProcess | None = None

    # ---- the node plugin

    def start_node(self, env: Mapping[str, str] | None = None) -> PluginProcess:
        """(Re)start `cinder-csi node`, as the DaemonSet would after a crash."""
        if self.node is not None:
            self.node.stop()
        self.node = PluginProcess(node_argv(self.server_id, self.by_id, self.kubelet),
                                  self.tmp / "node.sock", self.tmp / "node.log",
                                  env=env).start()
        return self.node

    def path_env(self, bin_dir: Path) -> dict[str, str]:
        """The environment with `bin_dir` first on PATH (wrapper programs of a test)."""
        return dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")

    # ---- volumes

    def create(self, name: str) -> str:
        response = self.controller.controller.CreateVolume(create_request(name), timeout=30)
        return str(response.volume.volume_id)

    def attach(self, volume_id: str) -> Path:
        self.controller.controller.ControllerPublishVolume(
            csi_pb2.ControllerPublishVolumeRequest(
                volume_id=volume_id, node_id=self.server_id, volume_capability=mount_cap()),
            timeout=30)
        return self.device_of(volume_id)

    def detach(self, volume_id: str) -> None:
        self.controller.controller.ControllerUnpublishVolume(
            csi_pb2.ControllerUnpublishVolumeRequest(volume_id=volume_id,
                                                     node_id=self.server_id), timeout=30)

    def link_of(self, volume_id: str) -> Path:
        return self.by_id / f"virtio-{volume_id[:20]}"

    def device_of(self, volume_id: str) -> Path:
        return self.link_of(volume_id).resolve()

    def staging(self, name: str) -> Path:
        return self.kubelet / "plugins" / "kubernetes.io" / "csi" / name / "globalmount"

    def target(self, name: str) -> Path:
        return self.kubelet / "pods" / name / "volumes" / "kubernetes.io~csi" / "mount"

    def stage_request(self, volume_id: str, staging: Path,
                      fstype: str = "ext4") -> csi_pb2.NodeStageVolumeRequest:
        return csi_pb2.NodeStageVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging),
            volume_capability=mount_cap(fs_type=fstype))

    def publish_request(self, volume_id: str, staging: Path,
                        target: Path) -> csi_pb2.NodePublishVolumeRequest:
        return csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id, staging_target_path=str(staging), target_path=str(target),
            volume_capability=mount_cap())


@contextmanager
def node_world(tmp: Path) -> Iterator[NodeWorld]:
    by_id, kubelet = tmp / "by-id", tmp / "kubelet"
    by_id.mkdir()
    kubelet.mkdir()
    world: NodeWorld | None = None
    with ExitStack() as stack:
        try:
            openstack = stack.enter_context(openstack_standin(tmp / "openstack"))
            server_id = openstack.add_server("node-0", "az-a", by_id_dir=by_id)
            controller = stack.enter_context(controller_process(tmp / "controller", openstack))
            world = NodeWorld(tmp, openstack, controller, server_id, by_id, kubelet)
            yield world
        finally:
            if world is not None and world.node is not None:
                world.node.stop()
            unmount_below(tmp)
    # The stand-in stopped last (ExitStack order) and detached its loop devices.
    leaked = loop_devices_backed_by(tmp)
    assert not leaked, f"loop devices leaked: {leaked}"
