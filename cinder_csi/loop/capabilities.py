"""Capabilities: the driver's, asked once for the whole loop, and what a PV's CSI request needs.

- ``DriverCapabilities``: the controller's capabilities, one cache shared by every duty
  (``LoopContext.capabilities``);
- the VolumeCapability of a PV, read the way the sidecars read it: ``Block`` volumeMode →
  block access, else mount access with the PV's fsType and mountOptions; the access mode from
  the PV's access modes (csi-lib-utils' mapping, which depends on the driver's
  SINGLE_NODE_MULTI_WRITER capability);
- the readonly flag, which must be false unless the driver has PUBLISH_READONLY;
- which Secret a ``*SecretRef`` of the PV's CSI source names.

A PV these rules cannot express raises ``CapabilityError``, a final error: retrying does not
help until someone changes the PV.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.csi_client import CSIClient
from cinder_csi.loop.errors import CapabilityError
from cinder_csi.loop.kube.objects import name_of

Mode = csi_pb2.VolumeCapability.AccessMode
RPC = csi_pb2.ControllerServiceCapability.RPC

RWO, ROX, RWX, RWOP = "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"


def access_mode(
    modes: list[str] | tuple[str, ...], *, single_node_multi_writer: bool
) -> csi_pb2.VolumeCapability.AccessMode.Mode:
    """PV access modes → one CSI access mode, as csi-lib-utils' ``ToCSIAccessMode``."""
    wanted = set(modes)
    if RWOP in wanted:
        if len(wanted) > 1:
            raise CapabilityError(
                "ReadWriteOncePod cannot be combined with other access modes on one "
                "PersistentVolume")
        # Without SINGLE_NODE_MULTI_WRITER the driver cannot tell RWOP from RWO.
        if single_node_multi_writer:
            return Mode.SINGLE_NODE_SINGLE_WRITER
        return Mode.SINGLE_NODE_WRITER
    if RWX in wanted:  # wins over whatever else is listed
        return Mode.MULTI_NODE_MULTI_WRITER
    if ROX in wanted and RWO in wanted:
        raise CapabilityError(
            "CSI cannot express ReadOnlyMany together with ReadWriteOnce on one "
            "PersistentVolume; keep one of them")
    if ROX in wanted:
        return Mode.MULTI_NODE_READER_ONLY
    if RWO in wanted:
        if single_node_multi_writer:
            return Mode.SINGLE_NODE_MULTI_WRITER
        return Mode.SINGLE_NODE_WRITER
    raise CapabilityError(f"unsupported access modes {sorted(wanted) or '(none)'}")


def volume_capability(
    pv: Mapping[str, Any], *, single_node_multi_writer: bool = False, default_fs_type: str = ""
) -> csi_pb2.VolumeCapability:
    """The VolumeCapability of a PV's CSI source (ControllerPublish / ControllerExpand)."""
    spec = pv.get("spec") or {}
    csi = spec.get("csi")
    if not isinstance(csi, Mapping):
        raise CapabilityError(f"PersistentVolume {name_of(pv) or '?'} has no CSI volume source")
    mode = csi_pb2.VolumeCapability.AccessMode(mode=access_mode(
        list(spec.get("accessModes") or []), single_node_multi_writer=single_node_multi_writer))
    if spec.get("volumeMode") == "Block":
        return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(),
                                        access_mode=mode)
    mount = csi_pb2.VolumeCapability.MountVolume(
        fs_type=str(csi.get("fsType") or default_fs_type),
        mount_flags=[str(o) for o in spec.get("mountOptions") or []],
    )
    return csi_pb2.VolumeCapability(mount=mount, access_mode=mode)


def publish_readonly(pv: Mapping[str, Any], *, supports_publish_readonly: bool) -> bool:
    # "CO MUST set this field to false if SP does not have the PUBLISH_READONLY capability."
    csi = (pv.get("spec") or {}).get("csi") or {}
    return bool(csi.get("readOnly")) and supports_publish_readonly


def secret_ref(pv: Mapping[str, Any], field: str) -> tuple[str, str] | None:
    """(namespace, name) of ``spec.csi.<field>`` (e.g. controllerPublishSecretRef), if set."""
    ref = ((pv.get("spec") or {}).get("csi") or {}).get(field) or {}
    if not ref.get("name"):
        return None
    return str(ref.get("namespace") or "default"), str(ref["name"])


class DriverCapabilities:
    """The controller's capabilities, asked once (and again after a failed ask)."""

    def __init__(self, csi: CSIClient) -> None:
        self._csi = csi
        self._lock = threading.Lock()
        self._caps: frozenset[int] | None = None

    def get(self) -> frozenset[int]:
        """Raises grpc.RpcError when the driver cannot be asked; nothing is cached then."""
        with self._lock:
            if self._caps is None:
                self._caps = frozenset(self._csi.controller_capabilities())
            return self._caps

    def has(self, capability: int) -> bool:
        return capability in self.get()
