"""What the sanity suite shares: csi-sanity's defaults, request builders, and resource tracking.

The defaults are those of csi-sanity v5.4 when run without configuration flags: 10 GiB volumes,
expansion by 1 GiB, empty (mutable) parameters, ten repetitions for "should be idempotent", and
IDs that look valid but name nothing ("fake-vol-id-...").

`Resources` mirrors csi-sanity's resource bookkeeping: every volume, snapshot and publication a
test makes is recorded, and the test's teardown undoes them newest first the way csi-sanity's
cleanup does (NodeUnpublish and NodeUnstage of the standard paths, ControllerUnpublish,
DeleteVolume / DeleteSnapshot), failing the test when any of those calls fails.
"""

from __future__ import annotations

import collections
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from tests.integration.csi_helpers import GIB, expect_code

# --- csi-sanity's defaults -------------------------------------------------------------------

TEST_VOLUME_SIZE = 10 * GIB  # --csi.testvolumesize
TEST_VOLUME_EXPAND_SIZE = TEST_VOLUME_SIZE + 1 * GIB  # --csi.testvolumeexpandsize unset
TEST_VOLUME_PARAMETERS: dict[str, str] = {}  # --csi.testvolumeparameters unset
TEST_VOLUME_MUTABLE_PARAMETERS: dict[str, str] = {}  # --csi.testvolumemutableparameters unset
TEST_SNAPSHOT_PARAMETERS: dict[str, str] = {}  # --csi.testsnapshotparameters unset
IDEMPOTENT_COUNT = 10  # --csi.idempotentcount
MAX_NAME_LENGTH = 128
# csi-sanity sends no deadline; a test must not hang, so every call gets this one.
RPC_TIMEOUT_S = 120.0

Mode = csi_pb2.VolumeCapability.AccessMode.Mode
ControllerCap = csi_pb2.ControllerServiceCapability.RPC.Type
NodeCap = csi_pb2.NodeServiceCapability.RPC.Type
PluginService = csi_pb2.PluginCapability.Service.Type

INVALID_VOLUME_ID = "fake-vol-id"
INVALID_SNAPSHOT_ID = "reallyfakesnapshotid"


def unique(prefix: str) -> str:
    """A name unique to this call, like csi-sanity's UniqueString."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def unique_with_length(prefix: str, length: int) -> str:
    """A unique name of exactly `length` characters (csi-sanity's UniqueStringWithLength)."""
    name = unique(prefix)
    return (name + "x" * length)[:length] if len(name) < length else name[:length]


def valid_volume_id() -> str:
    """A well-formed volume ID that names no volume (csi-sanity's default ID generator)."""
    return f"fake-vol-id-{uuid.uuid4().hex[:10]}"


def valid_node_id() -> str:
    return f"fake-node-id-{uuid.uuid4().hex[:10]}"


# --- request builders ------------------------------------------------------------------------


def capability(mode: int = Mode.SINGLE_NODE_WRITER) -> csi_pb2.VolumeCapability:
    """csi-sanity's test capability: a mount volume with no fs type, and the given mode."""
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
    )


def make_create_volume_req(name: str) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        volume_capabilities=[capability()],
        capacity_range=csi_pb2.CapacityRange(
            required_bytes=TEST_VOLUME_SIZE, limit_bytes=TEST_VOLUME_SIZE
        ),
        parameters=TEST_VOLUME_PARAMETERS,
    )


def make_create_snapshot_req(name: str, source_volume_id: str) -> csi_pb2.CreateSnapshotRequest:
    return csi_pb2.CreateSnapshotRequest(
        name=name, source_volume_id=source_volume_id, parameters=TEST_SNAPSHOT_PARAMETERS
    )


def make_controller_publish_req(
    volume_id: str, node_id: str
) -> csi_pb2.ControllerPublishVolumeRequest:
    return csi_pb2.ControllerPublishVolumeRequest(
        volume_id=volume_id, node_id=node_id, volume_capability=capability(), readonly=False
    )


def make_expand_volume_req(volume_id: str) -> csi_pb2.ControllerExpandVolumeRequest:
    return csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume_id,
        capacity_range=csi_pb2.CapacityRange(required_bytes=TEST_VOLUME_EXPAND_SIZE),
        volume_capability=capability(),
    )


def make_modify_volume_req(volume_id: str) -> csi_pb2.ControllerModifyVolumeRequest:
    return csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume_id, mutable_parameters=TEST_VOLUME_MUTABLE_PARAMETERS
    )


def expect_error(code: grpc.StatusCode, call: Callable[[], Any]) -> grpc.RpcError:
    """The call fails with exactly `code` (csi-sanity's ExpectErrorCode)."""
    return expect_code(code, call)


# --- response checks -------------------------------------------------------------------------


def verify_volume_info(volume: csi_pb2.Volume) -> None:
    assert volume is not None
    assert volume.volume_id, "volume ID in response is missing"


def verify_snapshot_info(snapshot: csi_pb2.Snapshot) -> None:
    assert snapshot is not None
    assert snapshot.snapshot_id, f"snapshot ID is empty: {snapshot}"
    assert snapshot.source_volume_id, f"source volume ID is empty: {snapshot}"
    stamp = snapshot.creation_time
    assert snapshot.HasField("creation_time") and (stamp.seconds or stamp.nanos), (
        f"creation time is zero: {snapshot}"
    )


# --- a default deadline for every call -------------------------------------------------------


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class DefaultTimeout(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        if details.timeout is None:
            details = _CallDetails(
                details.method, self.seconds, details.metadata, details.credentials,
                details.wait_for_ready, details.compression,
            )
        return continuation(details, request)


def channel(socket: str) -> grpc.Channel:
    return grpc.intercept_channel(
        grpc.insecure_channel(f"unix://{socket}"), DefaultTimeout(RPC_TIMEOUT_S)
    )


# --- capabilities ----------------------------------------------------------------------------


def controller_supports(controller: csi_pb2_grpc.ControllerStub, cap: int) -> bool:
    response = controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest())
    for item in response.capabilities:
        assert item.HasField("rpc"), f"capability without rpc: {item}"
        if item.rpc.type == cap:
            return True
    return False


def node_supports(node: csi_pb2_grpc.NodeStub, cap: int) -> bool:
    response = node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
    for item in response.capabilities:
        assert item.HasField("rpc"), f"capability without rpc: {item}"
        if item.rpc.type == cap:
            return True
    return False


def plugin_supports(identity: csi_pb2_grpc.IdentityStub, service: int) -> bool:
    response = identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    return any(
        item.HasField("service") and item.service.type == service
        for item in response.capabilities
    )


# --- the per-test context and resources ------------------------------------------------------


@dataclass
class SanityContext:
    """What a csi-sanity spec sees: the two connections and the test's mount/staging dirs."""

    controller: csi_pb2_grpc.ControllerStub
    node: csi_pb2_grpc.NodeStub
    identity: csi_pb2_grpc.IdentityStub  # on the node endpoint, like csi-sanity's sc.Conn
    controller_identity: csi_pb2_grpc.IdentityStub
    target_path: str  # the *parent* of NodePublish's target, made by the test
    staging_path: str  # NodeStage's staging_target_path, made by the test

    @property
    def target(self) -> str:
        return self.target_path + "/target"


@dataclass
class _Tracked:
    id: str
    snapshot: bool = False
    node_id: str = ""


@dataclass
class Resources:
    """Records what a test makes and undoes it afterwards, as csi-sanity's Resources does.

    ``with_node`` is False for the groups csi-sanity runs without a node client (ExpandVolume
    and ModifyVolume): their cleanup makes no node calls.
    """

    sc: SanityContext
    with_node: bool = True
    _items: list[_Tracked] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- volumes ----------------------------------------------------------------------------

    def create_volume(self, request: csi_pb2.CreateVolumeRequest) -> csi_pb2.CreateVolumeResponse:
        response = self.sc.controller.CreateVolume(request)
        if response.volume.volume_id:
            self._add(_Tracked(response.volume.volume_id))
        return response

    def must_create_volume(
        self, request: csi_pb2.CreateVolumeRequest
    ) -> csi_pb2.CreateVolumeResponse:
        response = self.create_volume(request)
        assert response.HasField("volume"), "volume in response is nil"
        assert response.volume.volume_id, "volume ID in response is missing"
        return response

    def delete_volume(self, request: csi_pb2.DeleteVolumeRequest) -> csi_pb2.DeleteVolumeResponse:
        response = self.sc.controller.DeleteVolume(request)
        self._remove(request.volume_id)
        return response

    def controller_publish_volume(
        self, request: csi_pb2.ControllerPublishVolumeRequest
    ) -> csi_pb2.ControllerPublishVolumeResponse:
        response = self.sc.controller.ControllerPublishVolume(request)
        if request.volume_id and request.node_id:
            self._add(_Tracked(request.volume_id, node_id=request.node_id))
        return response

    must_controller_publish_volume = controller_publish_volume

    # -- snapshots --------------------------------------------------------------------------

    def create_snapshot(
        self, request: csi_pb2.CreateSnapshotRequest
    ) -> csi_pb2.CreateSnapshotResponse:
        response = self.sc.controller.CreateSnapshot(request)
        if response.snapshot.snapshot_id:
            self._add(_Tracked(response.snapshot.snapshot_id, snapshot=True))
        return response

    def must_create_snapshot(
        self, request: csi_pb2.CreateSnapshotRequest
    ) -> csi_pb2.CreateSnapshotResponse:
        response = self.create_snapshot(request)
        verify_snapshot_info(response.snapshot)
        return response

    def must_create_snapshot_from_volume_request(
        self, volume_request: csi_pb2.CreateVolumeRequest, snapshot_name: str
    ) -> tuple[csi_pb2.CreateSnapshotResponse, csi_pb2.CreateVolumeResponse]:
        volume = self.must_create_volume(volume_request)
        snapshot = self.must_create_snapshot(
            make_create_snapshot_req(snapshot_name, volume.volume.volume_id)
        )
        return snapshot, volume

    def delete_snapshot(
        self, request: csi_pb2.DeleteSnapshotRequest
    ) -> csi_pb2.DeleteSnapshotResponse:
        response = self.sc.controller.DeleteSnapshot(request)
        if request.snapshot_id:
            self._remove(request.snapshot_id)
        return response

    # -- node -------------------------------------------------------------------------------

    def node_id(self) -> str:
        info = self.sc.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
        assert info.node_id, f"NodeGetInfo returned no node id: {info}"
        return str(info.node_id)

    # -- bookkeeping ------------------------------------------------------------------------

    def _add(self, item: _Tracked) -> None:
        with self._lock:
            self._items.append(item)

    def _remove(self, resource_id: str) -> None:
        with self._lock:
            self._items = [item for item in self._items if item.id != resource_id]

    def cleanup(self) -> None:
        """Undo everything recorded, newest first; fail listing every call that failed."""
        with self._lock:
            items, self._items = list(reversed(self._items)), []
        stage = self.with_node and node_supports(self.sc.node, NodeCap.STAGE_UNSTAGE_VOLUME)
        ctrl, node = self.sc.controller, self.sc.node
        errors: list[str] = []
        for item in items:
            if item.snapshot:
                _attempt(errors, ctrl.DeleteSnapshot,
                         csi_pb2.DeleteSnapshotRequest(snapshot_id=item.id))
                continue
            if self.with_node:
                # Not every volume was published or staged: NOT_FOUND is fine here.
                _attempt(errors, node.NodeUnpublishVolume, csi_pb2.NodeUnpublishVolumeRequest(
                    volume_id=item.id, target_path=self.sc.target), missing_ok=True)
                if stage:
                    _attempt(errors, node.NodeUnstageVolume, csi_pb2.NodeUnstageVolumeRequest(
                        volume_id=item.id, staging_target_path=self.sc.staging_path),
                        missing_ok=True)
            if item.node_id:
                _attempt(errors, ctrl.ControllerUnpublishVolume,
                         csi_pb2.ControllerUnpublishVolumeRequest(
                             volume_id=item.id, node_id=item.node_id))
            _attempt(errors, ctrl.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=item.id))
        assert not errors, "resource cleanup failed:\n" + "\n".join(errors)


def _attempt(errors: list[str], method: Callable[[Any], Any], request: Any, *,
             missing_ok: bool = False) -> None:
    try:
        method(request)
    except grpc.RpcError as exc:
        if missing_ok and exc.code() == grpc.StatusCode.NOT_FOUND:
            return
        what = type(request).__name__.removesuffix("Request")
        errors.append(f"{what}({_brief(request)}): {exc.code().name}: {exc.details()}")


def _brief(request: Any) -> str:
    return ", ".join(f"{f.name}={v!r}" for f, v in request.ListFields())
