"""The kubelet's side of CSI: a client for a node plugin's socket, and the paths kubelet uses.

Paths and request contents follow the real kubelet's CSI volume plugin, so the node plugin under
test sees what it would see on a real node.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cinder_csi.csi import csi_pb2, csi_pb2_grpc

Obj = dict[str, Any]

_ACCESS_MODES = {
    "ReadWriteOnce": csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER,
    "ReadOnlyMany": csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
    "ReadWriteMany": csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER,
    "ReadWriteOncePod": csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER,
}


@dataclass(frozen=True)
class PluginInfo:
    driver: str
    node_id: str
    max_volumes: int
    topology: dict[str, str]
    stage_unstage: bool
    expand: bool
    single_node_multi_writer: bool


@dataclass
class VolumePaths:
    staging: Path | None  # None when the plugin has no STAGE_UNSTAGE_VOLUME
    target: Path


@dataclass(frozen=True)
class Volume:
    """What the kubelet needs from a PV to talk CSI about it."""

    pv_name: str
    driver: str
    handle: str
    block: bool
    fs_type: str
    mount_flags: tuple[str, ...]
    access_mode: str
    read_only: bool
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_pv(cls, pv: Obj) -> Volume:
        spec = pv.get("spec") or {}
        csi = spec.get("csi") or {}
        modes = spec.get("accessModes") or ["ReadWriteOnce"]
        return cls(
            pv_name=str(pv["metadata"]["name"]),
            driver=str(csi.get("driver", "")),
            handle=str(csi.get("volumeHandle", "")),
            block=spec.get("volumeMode") == "Block",
            fs_type=str(csi.get("fsType", "")),
            mount_flags=tuple(str(o) for o in spec.get("mountOptions") or []),
            access_mode=str(modes[0]),
            read_only=bool(csi.get("readOnly", False)),
            attributes={str(k): str(v) for k, v in (csi.get("volumeAttributes") or {}).items()},
        )


def staging_path(root: Path, vol: Volume) -> Path:
    if vol.block:
        return root / "plugins/kubernetes.io/csi/volumeDevices/staging" / vol.pv_name
    digest = hashlib.sha256(vol.handle.encode()).hexdigest()
    return root / "plugins/kubernetes.io/csi" / vol.driver / digest / "globalmount"


def publish_path(root: Path, vol: Volume, pod_uid: str) -> Path:
    if vol.block:
        return root / "plugins/kubernetes.io/csi/volumeDevices/publish" / vol.pv_name / pod_uid
    return root / "pods" / pod_uid / "volumes/kubernetes.io~csi" / vol.pv_name / "mount"


class NodeClient:
    """Identity and Node calls on one unix socket, each bounded by ``timeout`` seconds."""

    def __init__(self, socket: Path, *, timeout: float = 30.0) -> None:
        self._channel = grpc.insecure_channel(f"unix://{socket}")
        self._identity = csi_pb2_grpc.IdentityStub(self._channel)  # type: ignore[no-untyped-call]
        self._node = csi_pb2_grpc.NodeStub(self._channel)  # type: ignore[no-untyped-call]
        self.timeout = timeout
        self.info: PluginInfo | None = None

    def close(self) -> None:
        self._channel.close()

    def register(self, wait: float) -> PluginInfo:
        """What plugin registration learns: GetPluginInfo, NodeGetInfo, NodeGetCapabilities."""
        plugin = self._identity.GetPluginInfo(
            csi_pb2.GetPluginInfoRequest(), timeout=wait, wait_for_ready=True
        )
        info = self._node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=self.timeout)
        caps = self._node.NodeGetCapabilities(
            csi_pb2.NodeGetCapabilitiesRequest(), timeout=self.timeout
        )
        kinds = {c.rpc.type for c in caps.capabilities}
        rpc = csi_pb2.NodeServiceCapability.RPC
        self.info = PluginInfo(
            driver=plugin.name,
            node_id=info.node_id,
            max_volumes=int(info.max_volumes_per_node),
            topology=dict(info.accessible_topology.segments),
            stage_unstage=rpc.STAGE_UNSTAGE_VOLUME in kinds,
            expand=rpc.EXPAND_VOLUME in kinds,
            single_node_multi_writer=rpc.SINGLE_NODE_MULTI_WRITER in kinds,
        )
        return self.info

    def capability(self, vol: Volume) -> Any:
        mode = _ACCESS_MODES.get(vol.access_mode, _ACCESS_MODES["ReadWriteOnce"])
        info = self.info
        if info is not None and info.single_node_multi_writer:
            # With that capability kubelet asks for the finer single-node modes.
            if vol.access_mode == "ReadWriteOnce":
                mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_MULTI_WRITER
            elif vol.access_mode == "ReadWriteOncePod":
                mode = csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_SINGLE_WRITER
        access = csi_pb2.VolumeCapability.AccessMode(mode=mode)
        if vol.block:
            return csi_pb2.VolumeCapability(
                block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=access
            )
        mount = csi_pb2.VolumeCapability.MountVolume(
            fs_type=vol.fs_type, mount_flags=list(vol.mount_flags)
        )
        return csi_pb2.VolumeCapability(mount=mount, access_mode=access)

    def stage(
        self, vol: Volume, path: Path, publish_context: dict[str, str], secrets: dict[str, str]
    ) -> None:
        self._node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=vol.handle,
                publish_context=publish_context,
                staging_target_path=str(path),
                volume_capability=self.capability(vol),
                secrets=secrets,
                volume_context=vol.attributes,
            ),
            timeout=self.timeout,
        )

    def unstage(self, vol: Volume, path: Path) -> None:
        self._node.NodeUnstageVolume(
            csi_pb2.NodeUnstageVolumeRequest(volume_id=vol.handle, staging_target_path=str(path)),
            timeout=self.timeout,
        )

    def publish(
        self,
        vol: Volume,
        paths: VolumePaths,
        publish_context: dict[str, str],
        context: dict[str, str],
        secrets: dict[str, str],
        read_only: bool,
    ) -> None:
        self._node.NodePublishVolume(
            csi_pb2.NodePublishVolumeRequest(
                volume_id=vol.handle,
                publish_context=publish_context,
                staging_target_path=str(paths.staging) if paths.staging else "",
                target_path=str(paths.target),
                volume_capability=self.capability(vol),
                readonly=read_only,
                secrets=secrets,
                volume_context=context,
            ),
            timeout=self.timeout,
        )

    def unpublish(self, vol: Volume, target: Path) -> None:
        self._node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=vol.handle, target_path=str(target)),
            timeout=self.timeout,
        )

    def expand(self, vol: Volume, paths: VolumePaths, required_bytes: int) -> None:
        self._node.NodeExpandVolume(
            csi_pb2.NodeExpandVolumeRequest(
                volume_id=vol.handle,
                volume_path=str(paths.target),
                capacity_range=csi_pb2.CapacityRange(required_bytes=required_bytes),
                staging_target_path=str(paths.staging) if paths.staging else "",
                volume_capability=self.capability(vol),
            ),
            timeout=self.timeout,
        )
