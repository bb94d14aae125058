"""What a VolumeAttachment attaches, and where: read, never written.

From the informer caches (and the publish Secret from the API): the VA's PersistentVolume,
its CSI volume handle, the ``controllerPublishSecretRef`` secrets, the node's ID for our
driver, and the driver's controller capabilities. A lookup that cannot answer raises
``AttemptFailed`` with the message the VA status and Event carry.
"""

from __future__ import annotations

import grpc

from cinder_csi.loop.attach_common import (
    API_ERRORS,
    AttemptFailed,
    api_message,
    meta_of,
    name_of,
    rpc_code,
    rpc_message,
)
from cinder_csi.loop.capabilities import DriverCapabilities, read_secret, secret_ref
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.kube.informer import Obj
from cinder_csi.loop.protocol import ANN_VA_NODE_ID


class AttachTargets:
    """Resolves a VolumeAttachment to the volume and node the driver is asked about."""

    def __init__(self, ctx: LoopContext, capabilities: DriverCapabilities) -> None:
        self.ctx = ctx
        self.capabilities = capabilities

    @staticmethod
    def pv_name(va: Obj) -> str:
        source = (va.get("spec") or {}).get("source") or {}
        return str(source.get("persistentVolumeName") or "")

    @staticmethod
    def source_pv(va: Obj) -> str:
        source = (va.get("spec") or {}).get("source") or {}
        pv_name = source.get("persistentVolumeName")
        inline = source.get("inlineVolumeSpec")
        if pv_name and inline is not None:
            raise AttemptFailed("both inlineVolumeSpec and persistentVolumeName are set in the "
                                "VolumeAttachment source", final=True)
        if inline is not None:
            raise AttemptFailed("inline volumes are not supported", final=True)
        if not pv_name:
            raise AttemptFailed("neither inlineVolumeSpec nor persistentVolumeName is set in "
                                "the VolumeAttachment source", final=True)
        return str(pv_name)

    def pv(self, pv_name: str) -> Obj:
        pv = self.ctx.informers.volumes.cache.get(pv_name)
        if pv is None:
            raise AttemptFailed(f'PersistentVolume "{pv_name}" not found')
        return pv

    def handle(self, pv: Obj) -> str:
        csi = (pv.get("spec") or {}).get("csi") or {}
        if csi.get("driver") != self.ctx.driver or not csi.get("volumeHandle"):
            raise AttemptFailed(f"PersistentVolume {name_of(pv)} is not a CSI volume of driver "
                                f"{self.ctx.driver}", final=True)
        return str(csi["volumeHandle"])

    def driver_capabilities(self) -> frozenset[int]:
        try:
            return self.capabilities.get()
        except grpc.RpcError as exc:
            raise AttemptFailed(rpc_message(exc), code=rpc_code(exc)) from None

    def secrets(self, pv: Obj) -> dict[str, str]:
        ref = secret_ref(pv, "controllerPublishSecretRef")
        if ref is None:
            return {}
        try:
            values = read_secret(self.ctx.rest, *ref)
        except API_ERRORS as exc:
            raise AttemptFailed(f'failed to load secret "{ref[0]}/{ref[1]}": '
                                f"{api_message(exc)}") from None
        self.ctx.recorder.add_secrets(values.values())
        return values

    def node_id(self, va: Obj, *, fallback: bool) -> str:
        """The driver's node ID from the CSINode; for detach, else from the VA annotation.

        Attach does not fall back, as the external-attacher: a node recreated under the same
        name but on another server must not get the old server's ID.
        """
        node = str((va.get("spec") or {}).get("nodeName") or "")
        csinode = self.ctx.informers.csi_nodes.cache.get(node)
        if csinode is not None:
            for driver in (csinode.get("spec") or {}).get("drivers") or []:
                if driver.get("name") == self.ctx.driver and driver.get("nodeID"):
                    return str(driver["nodeID"])
            why = f"CSINode {node} does not contain driver {self.ctx.driver}"
        else:
            why = f"CSINode {node} not found"
        if fallback:
            annotated = (meta_of(va).get("annotations") or {}).get(ANN_VA_NODE_ID)
            if annotated:
                return str(annotated)
        raise AttemptFailed(f"cannot find the node ID of node {node!r}: {why}")
