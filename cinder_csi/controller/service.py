"""The CSI Controller service: CSI requests in, Cinder and Nova calls out.

Validation happens here; the cloud work is in create_or_adopt.py (create), publishing.py
(publish/unpublish), snapshots.py (snapshots and backups) and cloud/. Each mutating call holds
the per-volume guard, so a second call on a busy volume is answered ABORTED instead of racing
the first. Each call works in the cloud its secrets name (``cloud: <name>``, upstream's
multi-cloud), the default cloud without one; a name that is not configured is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import Int64Value

from cinder_csi import (
    FEATURE_LISTED_NAMES,
    FEATURE_RECLAIM_POLICY,
    FEATURES_MANIFEST_KEY,
    LISTED_NAME_KEY,
    LISTED_STATUS_KEY,
    RECLAIM_POLICY_KEY,
    TOPOLOGY_KEY,
    errors,
)
from cinder_csi.cloud.clouds import CloudSet
from cinder_csi.cloud.connection import Cloud
from cinder_csi.cloud.models import VOLUME_ERROR_STATES, Volume
from cinder_csi.cloud.volumes import EXTEND_IN_USE_MICROVERSION
from cinder_csi.controller.create_or_adopt import (
    CLUSTER_METADATA_KEY,
    VolumeCreator,
    VolumeSpec,
    Wanted,
)
from cinder_csi.controller.paging import Token, list_clouds, resume_after
from cinder_csi.controller.publishing import Attacher
from cinder_csi.controller.snapshots import (
    BACKUP_PHASE,
    CsiSnapshot,
    SnapshotParams,
    Snapshots,
    list_snapshots,
)
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.csi import validation as v
from cinder_csi.csi.call_context import deadline_from
from cinder_csi.deadline import DEFAULT_TIMEOUT_S, Deadline
from cinder_csi.locks import OperationLocks
from cinder_csi.waiting import wait_for

log = logging.getLogger(__name__)

# StorageClass parameters, as the upstream driver names them.
PARAM_TYPE = "type"
PARAM_AVAILABILITY = "availability"
# Added by external-provisioner with --extra-create-metadata; copied into volume metadata.
PVC_NAME = "csi.storage.k8s.io/pvc/name"
PVC_NAMESPACE = "csi.storage.k8s.io/pvc/namespace"
PV_NAME = "csi.storage.k8s.io/pv/name"
CREATE_METADATA_PARAMS = (PVC_NAME, PVC_NAMESPACE, PV_NAME)
FSTYPE_PARAM = "csi.storage.k8s.io/fstype"
VOLUME_PARAMS = frozenset({PARAM_TYPE, PARAM_AVAILABILITY, FSTYPE_PARAM, RECLAIM_POLICY_KEY,
                           *CREATE_METADATA_PARAMS})
# volume_context of a volume made from a snapshot, backup or volume: the node grows its
# filesystem at stage when the volume is larger than its source (upstream's key).
RESIZE_REQUIRED_KEY = "resizeRequired"
MUTABLE_PARAMS = frozenset({PARAM_TYPE, RECLAIM_POLICY_KEY})
RECLAIM_POLICIES = ("Delete", "Retain")
# GetPluginInfo's manifest: what a watch loop may rely on (see cinder_csi/__init__).
MANIFEST = {FEATURES_MANIFEST_KEY: f"{FEATURE_LISTED_NAMES},{FEATURE_RECLAIM_POLICY}"}
# What GetCapacity reports when the quota is unlimited: int64 max, "no limit we know of".
UNLIMITED_BYTES = 2**63 - 1

Cap = csi_pb2.ControllerServiceCapability.RPC.Type
CAPABILITIES = (
    Cap.CREATE_DELETE_VOLUME, Cap.PUBLISH_UNPUBLISH_VOLUME, Cap.LIST_VOLUMES, Cap.GET_VOLUME,
    Cap.LIST_VOLUMES_PUBLISHED_NODES, Cap.CREATE_DELETE_SNAPSHOT, Cap.LIST_SNAPSHOTS,
    Cap.CLONE_VOLUME, Cap.EXPAND_VOLUME, Cap.GET_CAPACITY, Cap.PUBLISH_READONLY,
    Cap.SINGLE_NODE_MULTI_WRITER, Cap.VOLUME_CONDITION, Cap.MODIFY_VOLUME,
)


@dataclass(frozen=True)
class ControllerOptions:
    cluster_id: str = "kubernetes"
    with_topology: bool = True
    ignore_volume_az: bool = False
    node_volume_attach_limit: int | None = None
    # The bound of a call whose caller sent no deadline (gRPC would give it ~292 years).
    default_call_timeout: float = DEFAULT_TIMEOUT_S


def _timestamp(item: Volume | CsiSnapshot) -> Timestamp:
    stamp = Timestamp()
    if item.created_at is not None:
        stamp.FromDatetime(item.created_at)
    return stamp


def _unknown(params: Mapping[str, str], known: Iterable[str], what: str) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise errors.InvalidArgument(
            f"unknown {what} parameter(s): {', '.join(unknown)}; supported: "
            f"{', '.join(sorted(known))}"
        )


def _reclaim_policy(*given: str | None) -> dict[str, str]:
    """The reclaim policy a watch loop asked to record (volume metadata), checked."""
    policy = next((g for g in given if g), None)
    if policy is None:
        return {}
    if policy not in RECLAIM_POLICIES:
        raise errors.InvalidArgument(
            f"parameter {RECLAIM_POLICY_KEY}={policy!r}: must be one of "
            f"{', '.join(RECLAIM_POLICIES)}")
    return {RECLAIM_POLICY_KEY: policy}


def _volume_condition(volume: Volume) -> csi_pb2.VolumeCondition:
    if volume.status in VOLUME_ERROR_STATES or volume.status == "maintenance":
        return csi_pb2.VolumeCondition(
            abnormal=True, message=f"Cinder reports volume status {volume.status!r}"
        )
    return csi_pb2.VolumeCondition(abnormal=False, message=f"status {volume.status}")


@dataclass(frozen=True)
class CloudTools:
    """One cloud and the workers bound to it."""

    name: str
    cloud: Cloud
    creator: VolumeCreator
    attacher: Attacher
    snapshots: Snapshots


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(
        self,
        clouds: Cloud | CloudSet,
        options: ControllerOptions | None = None,
        locks: OperationLocks | None = None,
    ) -> None:
        self.clouds = clouds if isinstance(clouds, CloudSet) else CloudSet.single(clouds)
        self.options = options or ControllerOptions()
        self.locks = locks or OperationLocks()
        cluster = self.options.cluster_id
        self._tools = {
            name: CloudTools(
                name, cloud, VolumeCreator(cloud, cluster),
                Attacher(cloud, attach_limit=self.options.node_volume_attach_limit),
                Snapshots(cloud, cluster),
            )
            for name, cloud in self.clouds
        }

    def _for(self, secrets: Mapping[str, str]) -> CloudTools:
        """The cloud a request's secrets name (upstream's ``cloud`` key), else the default."""
        name = CloudSet.name_in(secrets)
        self.clouds.named(name)  # refuses a cloud we do not serve, naming those we do
        return self._tools[name]

    def _default(self) -> CloudTools:
        """For calls that carry no secrets and name no volume (GetCapacity)."""
        names = self.clouds.names()
        return self._tools["" if "" in self._tools else names[0]]

    def _deadline(self, context: grpc.ServicerContext) -> Deadline:
        return deadline_from(context, self.options.default_call_timeout)

    # -- capabilities -------------------------------------------------------------------------

    def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.ControllerServiceCapability(
                    rpc=csi_pb2.ControllerServiceCapability.RPC(type=cap)
                )
                for cap in CAPABILITIES
            ]
        )

    # -- volumes ------------------------------------------------------------------------------

    def CreateVolume(
        self, request: csi_pb2.CreateVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateVolumeResponse:
        name = v.cinder_text(v.require(request.name, "name"), "name", name=True)
        v.check_capabilities(request.volume_capabilities)
        params = dict(request.parameters)
        _unknown(params, VOLUME_PARAMS, "StorageClass")
        mutable = dict(request.mutable_parameters)
        _unknown(mutable, MUTABLE_PARAMS, "mutable (VolumeAttributesClass)")
        if mutable.get(PARAM_TYPE):
            params[PARAM_TYPE] = mutable[PARAM_TYPE]  # the attributes class wins over the class
        recorded = _reclaim_policy(mutable.get(RECLAIM_POLICY_KEY), params.get(RECLAIM_POLICY_KEY))
        for key in (PARAM_TYPE, PARAM_AVAILABILITY, *CREATE_METADATA_PARAMS):
            if key in params:
                v.cinder_text(params[key], f"parameter {key}")
        capacity = request.capacity_range if request.HasField("capacity_range") else None
        size = v.size_gib(capacity)
        zone = self._zone(request, params)
        deadline = self._deadline(context)
        source_keys: list[str] = []
        snapshot_id = source_volid = None
        source = request.volume_content_source
        kind = source.WhichOneof("type") if request.HasField("volume_content_source") else None
        if kind == "snapshot":
            snapshot_id = v.require_id(source.snapshot.snapshot_id, "snapshot_id", "snapshot")
            source_keys.append(snapshot_id)
        elif kind == "volume":
            source_volid = v.require_id(source.volume.volume_id, "volume_id", "source volume")
            source_keys.append(source_volid)
        volume_type = params.get(PARAM_TYPE) or None
        wanted = Wanted(
            name=name, required_bytes=capacity.required_bytes if capacity else 0,
            limit_bytes=capacity.limit_bytes if capacity else 0, volume_type=volume_type,
            snapshot_id=snapshot_id, source_volid=source_volid,
        )

        tools = self._for(request.secrets)
        with self.locks.hold([name, *source_keys], "CreateVolume", deadline):
            # The name first: a retry whose snapshot, source or type is gone by now still
            # gets the volume its first attempt made.
            volume = tools.creator.adopt(wanted, deadline)
            if volume is not None:
                self._check_multi_node(request, multiattach=volume.multiattach, name=name)
                return csi_pb2.CreateVolumeResponse(volume=self._csi_volume(volume, request))
            if volume_type or v.multi_node(request.volume_capabilities):
                # Only then is the type worth a lookup: to name an unknown one clearly, and to
                # know whether several nodes may share the volume.
                multiattach = self._type_is_multiattach(tools.cloud, volume_type, deadline)
                self._check_multi_node(request, multiattach=multiattach, name=name)
            backup_id = None
            if snapshot_id:
                restore = tools.snapshots.restore_source(snapshot_id, deadline)
                size = self._fit_source_size(size, restore.size_gib, request,
                                             f"snapshot {snapshot_id}")
                zone = restore.zone or zone
                snapshot_id, backup_id = restore.snapshot_id, restore.backup_id
            elif source_volid:
                size, zone = self._from_volume(tools.cloud, source_volid, request, size, zone,
                                               deadline)
            spec = VolumeSpec(
                name=name, size_gib=size, volume_type=volume_type, availability_zone=zone,
                snapshot_id=snapshot_id, source_volid=source_volid, backup_id=backup_id,
                metadata={**{k: params[k] for k in CREATE_METADATA_PARAMS if params.get(k)},
                          **recorded},
            )
            volume = tools.creator.create(spec, deadline)
        return csi_pb2.CreateVolumeResponse(volume=self._csi_volume(volume, request))

    @staticmethod
    def _check_multi_node(
        request: csi_pb2.CreateVolumeRequest, *, multiattach: bool, name: str
    ) -> None:
        reason = v.unsupported_multi_node_reason(
            request.volume_capabilities, multiattach=multiattach, volume=f"volume {name}"
        )
        if reason:
            raise errors.InvalidArgument(reason)

    @staticmethod
    def _type_is_multiattach(cloud: Cloud, volume_type: str | None, deadline: Deadline) -> bool:
        if volume_type:
            found = cloud.volumes.find_type(volume_type, deadline)
            if found is None:
                raise errors.InvalidArgument(
                    f"StorageClass parameter type={volume_type!r}: no such Cinder volume type"
                )
            return found.multiattach
        default = cloud.volumes.default_type(deadline)
        return default.multiattach if default is not None else False

    def _zone(self, request: csi_pb2.CreateVolumeRequest, params: Mapping[str, str]) -> str | None:
        if params.get(PARAM_AVAILABILITY):
            return params[PARAM_AVAILABILITY]
        if not self.options.with_topology or not request.HasField("accessibility_requirements"):
            return None
        req = request.accessibility_requirements
        for topology in [*req.preferred, *req.requisite]:
            zone = topology.segments.get(TOPOLOGY_KEY)
            if zone:
                return v.cinder_text(str(zone), f"topology {TOPOLOGY_KEY}")
        return None

    @staticmethod
    def _fit_source_size(size: int, source_gib: int, request: Any, what: str) -> int:
        """Cinder cannot make a volume smaller than its source: grow to the source's size,
        unless limit_bytes forbids it."""
        if size >= source_gib:
            return size
        limit = request.capacity_range.limit_bytes if request.HasField("capacity_range") else 0
        if limit and source_gib * v.GIB > limit:
            raise errors.OutOfRange(
                f"{what} is {source_gib} GiB, more than limit_bytes {limit} allows"
            )
        return source_gib

    def _from_volume(
        self, cloud: Cloud, volume_id: str, request: Any, size: int, zone: str | None,
        deadline: Deadline,
    ) -> tuple[int, str | None]:
        source = cloud.volumes.find(volume_id, deadline)
        if source is None:
            raise errors.NotFound(f"source volume {volume_id} does not exist")
        size = self._fit_source_size(size, source.size_gib, request, f"volume {volume_id}")
        return size, source.availability_zone or zone

    def _csi_volume(self, volume: Volume, request: csi_pb2.CreateVolumeRequest) -> csi_pb2.Volume:
        result = csi_pb2.Volume(volume_id=volume.id, capacity_bytes=volume.size_gib * v.GIB)
        if request.HasField("volume_content_source"):
            result.content_source.CopyFrom(request.volume_content_source)
            # The copied filesystem is as big as its source; the node grows it at stage.
            result.volume_context[RESIZE_REQUIRED_KEY] = "true"
        result.accessible_topology.extend(self._topology(volume))
        return result

    def _topology(self, volume: Volume) -> list[csi_pb2.Topology]:
        """Where the volume can be used: its zone, unless topology is off or ignored."""
        if (
            not self.options.with_topology
            or self.options.ignore_volume_az
            or not volume.availability_zone
        ):
            return []
        return [csi_pb2.Topology(segments={TOPOLOGY_KEY: volume.availability_zone})]

    def DeleteVolume(
        self, request: csi_pb2.DeleteVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteVolumeResponse:
        volume_id = v.require(request.volume_id, "volume_id")
        cloud = self._for(request.secrets).cloud
        if not v.is_uuid(volume_id):
            return csi_pb2.DeleteVolumeResponse()  # cannot exist: already deleted
        deadline = self._deadline(context)
        with self.locks.hold([volume_id], "DeleteVolume", deadline):
            volume = cloud.volumes.find(volume_id, deadline)
            if volume is None:
                return csi_pb2.DeleteVolumeResponse()
            if volume.attached_servers or volume.status in ("in-use", "attaching", "reserved"):
                servers = ", ".join(volume.attached_servers) or "a server"
                raise errors.FailedPrecondition(
                    f"volume {volume_id} is still attached to {servers}; detach it first"
                )
            if volume.status != "deleting":
                try:
                    cloud.volumes.delete(volume_id, deadline)
                except errors.InvalidArgument as exc:
                    raise errors.FailedPrecondition(
                        f"Cinder refused to delete volume {volume_id}: {exc.message} "
                        "(delete its snapshots first)"
                    ) from None
            cloud.volumes.wait_for_delete(volume_id, deadline)
        return csi_pb2.DeleteVolumeResponse()

    def ControllerPublishVolume(
        self, request: csi_pb2.ControllerPublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerPublishVolumeResponse:
        v.require(request.volume_id, "volume_id")
        v.require(request.node_id, "node_id")
        if not request.HasField("volume_capability"):
            raise errors.InvalidArgument("volume_capability is required")
        v.check_capability(request.volume_capability)
        volume_id = v.require_id(request.volume_id, "volume_id", "volume")
        node_id = v.require_id(request.node_id, "node_id", "node")
        tools = self._for(request.secrets)
        deadline = self._deadline(context)
        with self.locks.hold([volume_id], "ControllerPublishVolume", deadline):
            volume = tools.cloud.volumes.get(volume_id, deadline)
            reason = v.unsupported_multi_node_reason(
                [request.volume_capability], multiattach=volume.multiattach,
                volume=f"volume {volume_id}",
            )
            if reason:
                raise errors.FailedPrecondition(reason)
            publish_context = tools.attacher.attach(
                volume_id, node_id, readonly=request.readonly, deadline=deadline
            )
        return csi_pb2.ControllerPublishVolumeResponse(publish_context=publish_context)

    def ControllerUnpublishVolume(
        self, request: csi_pb2.ControllerUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerUnpublishVolumeResponse:
        volume_id = v.require(request.volume_id, "volume_id")
        tools = self._for(request.secrets)
        if not v.is_uuid(volume_id) or (request.node_id and not v.is_uuid(request.node_id)):
            return csi_pb2.ControllerUnpublishVolumeResponse()  # nothing of that name is attached
        deadline = self._deadline(context)
        with self.locks.hold([volume_id], "ControllerUnpublishVolume", deadline):
            if request.node_id:
                nodes: Iterable[str] = [request.node_id]
            else:
                found = tools.cloud.volumes.find(volume_id, deadline)
                nodes = found.attached_servers if found is not None else ()
            for node_id in nodes:
                tools.attacher.detach(volume_id, node_id, deadline)
        return csi_pb2.ControllerUnpublishVolumeResponse()

    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        volume_id = v.require(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise errors.InvalidArgument("volume_capabilities is required")
        volume_id = v.require_id(volume_id, "volume_id", "volume")
        volume = self._for(request.secrets).cloud.volumes.get(volume_id, self._deadline(context))
        try:
            v.check_capabilities(request.volume_capabilities)
        except errors.InvalidArgument as exc:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=exc.message)
        reason = v.unsupported_multi_node_reason(
            request.volume_capabilities, multiattach=volume.multiattach,
            volume=f"volume {volume_id}",
        )
        if reason:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=reason)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
            mutable_parameters=request.mutable_parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    def ListVolumes(
        self, request: csi_pb2.ListVolumesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListVolumesResponse:
        if request.max_entries < 0:
            raise errors.InvalidArgument("max_entries must not be negative")
        token = Token.decode(request.starting_token) if request.starting_token else None
        limit = request.max_entries or 1000
        deadline = self._deadline(context)
        listed, next_token = list_clouds(
            self.clouds.names(), token, limit,
            lambda name, within, most: self._list_cloud(name, within, most, deadline),
        )
        volumes = [volume for _, volume in listed]
        entries = [
            csi_pb2.ListVolumesResponse.Entry(
                volume=self._listed_volume(volume),
                status=csi_pb2.ListVolumesResponse.VolumeStatus(
                    published_node_ids=volume.attached_servers,
                    volume_condition=_volume_condition(volume),
                ),
            )
            for volume in volumes
        ]
        return csi_pb2.ListVolumesResponse(
            entries=entries, next_token=next_token.encode() if next_token else ""
        )

    def _list_cloud(
        self, name: str, token: Token | None, limit: int, deadline: Deadline
    ) -> tuple[list[Volume], Token | None]:
        """One cloud's share of a ListVolumes page, and the token to continue in it."""
        cloud = self._tools[name].cloud
        try:
            page = cloud.volumes.list_page(
                deadline=deadline, limit=limit, marker=token.volume_id if token else None
            )
            volumes = list(page.items)
            following = (Token.after(volumes[-1], name) if page.next_marker and volumes
                         else None)
        except (errors.InvalidArgument, errors.NotFound):
            if token is None:
                raise
            # The marker volume was deleted since the last page: resume after its sort key.
            volumes, following = resume_after(
                token, limit,
                lambda marker: cloud.volumes.list_page(
                    deadline=deadline, limit=1000, marker=marker),
            )
            following = Token(following.volume_id, following.created_at, name) if following \
                else None
        return volumes, following

    def _listed_volume(self, volume: Volume) -> csi_pb2.Volume:
        # The cluster tag, Cinder name and status let a CO-side sweep find volumes it made but
        # lost, and tell an idle one (available) from one being used or changed.
        context = {LISTED_NAME_KEY: volume.name} if volume.name else {}
        context[LISTED_STATUS_KEY] = volume.status
        for key in (CLUSTER_METADATA_KEY, RECLAIM_POLICY_KEY):
            if key in volume.metadata:
                context[key] = volume.metadata[key]
        result = csi_pb2.Volume(
            volume_id=volume.id, capacity_bytes=volume.size_gib * v.GIB, volume_context=context
        )
        result.accessible_topology.extend(self._topology(volume))
        return result

    def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetVolumeResponse:
        volume_id = v.require_id(request.volume_id, "volume_id", "volume")
        volume = self._find_anywhere(volume_id, self._deadline(context))
        return csi_pb2.ControllerGetVolumeResponse(
            volume=self._listed_volume(volume),
            status=csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=volume.attached_servers,
                volume_condition=_volume_condition(volume),
            ),
        )

    def _find_anywhere(self, volume_id: str, deadline: Deadline) -> Volume:
        """A volume by ID in whichever cloud has it (the call carries no secrets)."""
        for _, cloud in self.clouds:
            found = cloud.volumes.find(volume_id, deadline)
            if found is not None:
                return found
        raise errors.NotFound(f"volume {volume_id} does not exist")

    def ControllerExpandVolume(
        self, request: csi_pb2.ControllerExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerExpandVolumeResponse:
        v.require(request.volume_id, "volume_id")
        if not request.HasField("capacity_range"):
            raise errors.InvalidArgument("capacity_range is required")
        volume_id = v.require_id(request.volume_id, "volume_id", "volume")
        size = v.size_gib(request.capacity_range)
        block = (
            request.HasField("volume_capability")
            and request.volume_capability.WhichOneof("access_type") == "block"
        )
        cloud = self._for(request.secrets).cloud
        deadline = self._deadline(context)
        with self.locks.hold([volume_id], "ControllerExpandVolume", deadline):
            volume = cloud.volumes.get(volume_id, deadline)
            if volume.size_gib < size:
                volume = self._extend(cloud, volume, size, deadline)
        return csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=volume.size_gib * v.GIB, node_expansion_required=not block
        )

    @staticmethod
    def _extend(cloud: Cloud, volume: Volume, size: int, deadline: Deadline) -> Volume:
        if volume.status not in ("available", "in-use", "extending"):
            raise errors.FailedPrecondition(
                f"volume {volume.id} cannot be extended while its status is {volume.status!r}"
            )
        if volume.status == "in-use" and not cloud.volumes.can_extend_in_use():
            raise errors.FailedPrecondition(
                f"volume {volume.id} is attached and this cloud's Cinder is older than API "
                f"{EXTEND_IN_USE_MICROVERSION}, so it cannot grow while in use; stop the pod "
                "and retry"
            )
        if volume.status != "extending":
            cloud.volumes.extend(volume.id, size, deadline)

        def grown() -> Volume | None:
            current = cloud.volumes.get(volume.id, deadline)
            if current.status == "error_extending":
                raise errors.FailedPrecondition(
                    f"Cinder failed to extend volume {volume.id} (status error_extending); "
                    "an operator must reset its status"
                )
            # A fresh GET each time: the status flips back before the size on some backends.
            if current.status != "extending" and current.size_gib >= size:
                return current
            return None

        return wait_for(grown, deadline, what=f"volume {volume.id} to grow to {size} GiB")

    def ControllerModifyVolume(
        self, request: csi_pb2.ControllerModifyVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerModifyVolumeResponse:
        v.require(request.volume_id, "volume_id")
        params = dict(request.mutable_parameters)
        _unknown(params, MUTABLE_PARAMS, "mutable")
        if PARAM_TYPE in params:
            v.cinder_text(params[PARAM_TYPE], f"mutable parameter {PARAM_TYPE}")
        volume_id = v.require_id(request.volume_id, "volume_id", "volume")
        recorded = _reclaim_policy(params.get(RECLAIM_POLICY_KEY))
        cloud = self._for(request.secrets).cloud
        deadline = self._deadline(context)
        with self.locks.hold([volume_id], "ControllerModifyVolume", deadline):
            volume = cloud.volumes.get(volume_id, deadline)
            if any(volume.metadata.get(k) != value for k, value in recorded.items()):
                cloud.volumes.set_metadata(volume_id, recorded, deadline)
            new_type = params.get(PARAM_TYPE)
            if not new_type:
                return csi_pb2.ControllerModifyVolumeResponse()  # nothing asked: nothing to do
            target = cloud.volumes.find_type(new_type, deadline)
            if target is None:
                raise errors.InvalidArgument(f"type={new_type!r}: no such Cinder volume type")
            if volume.volume_type in (target.name, target.id):
                return csi_pb2.ControllerModifyVolumeResponse()
            if volume.status not in ("available", "in-use", "retyping"):
                raise errors.FailedPrecondition(
                    f"volume {volume_id} cannot be retyped while its status is {volume.status!r}"
                )
            if volume.status != "retyping":
                cloud.volumes.retype(volume_id, target.name, deadline)
            done = cloud.volumes.wait_for_status(
                volume_id, ("available", "in-use"), deadline,
                what=f"volume {volume_id} to be retyped to {target.name}",
            )
            if done.volume_type not in (target.name, target.id):
                # Cinder rolls a retype back silently (no backend takes the type, or the
                # migration failed): the status settles, the type stays.
                raise errors.FailedPrecondition(
                    f"Cinder did not retype volume {volume_id} to {target.name}: it is still "
                    f"of type {done.volume_type!r} (no backend of that type took it, or the "
                    "migration failed; the cloud's scheduler and volume logs say which)"
                )
        return csi_pb2.ControllerModifyVolumeResponse()

    # -- capacity -----------------------------------------------------------------------------

    def GetCapacity(
        self, request: csi_pb2.GetCapacityRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetCapacityResponse:
        params = dict(request.parameters)
        _unknown(params, VOLUME_PARAMS, "StorageClass")
        deadline = self._deadline(context)
        cloud = self._default().cloud
        quotas = cloud.quotas.usage(cloud.project_id(deadline), deadline)
        names = ["gigabytes"]
        if params.get(PARAM_TYPE):
            names.append(f"gigabytes_{params[PARAM_TYPE]}")
        finite = [
            quota.available for name in names
            if (quota := quotas.get(name)) is not None and quota.available is not None
        ]
        available = min(finite) * v.GIB if finite else UNLIMITED_BYTES
        per_volume = quotas.get("per_volume_gigabytes")
        maximum = per_volume.limit * v.GIB if per_volume and per_volume.limit > 0 else 0
        response = csi_pb2.GetCapacityResponse(
            available_capacity=available, minimum_volume_size=Int64Value(value=v.GIB)
        )
        if maximum:
            response.maximum_volume_size.value = maximum
        return response

    # -- snapshots ----------------------------------------------------------------------------

    def CreateSnapshot(
        self, request: csi_pb2.CreateSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateSnapshotResponse:
        name = v.cinder_text(v.require(request.name, "name"), "name", name=True)
        v.require(request.source_volume_id, "source_volume_id")
        params = SnapshotParams.parse(request.parameters)
        source_id = v.require_id(request.source_volume_id, "source_volume_id", "source volume")
        tools = self._for(request.secrets)
        deadline = self._deadline(context)
        with self.locks.hold([name], "CreateSnapshot", deadline):
            snapshot = tools.snapshots.create(name, source_id, params, deadline)
        return csi_pb2.CreateSnapshotResponse(snapshot=self._csi_snapshot(snapshot))

    @staticmethod
    def _csi_snapshot(snapshot: CsiSnapshot) -> csi_pb2.Snapshot:
        return csi_pb2.Snapshot(
            snapshot_id=snapshot.id,
            source_volume_id=snapshot.source_volume_id,
            size_bytes=snapshot.size_gib * v.GIB,
            creation_time=_timestamp(snapshot),
            ready_to_use=snapshot.ready,
        )

    def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteSnapshotResponse:
        snapshot_id = v.require(request.snapshot_id, "snapshot_id")
        tools = self._for(request.secrets)
        if not v.is_uuid(snapshot_id):
            return csi_pb2.DeleteSnapshotResponse()
        deadline = self._deadline(context)
        with self.locks.hold([snapshot_id], "DeleteSnapshot", deadline):
            tools.snapshots.delete(snapshot_id, deadline)
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(
        self, request: csi_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListSnapshotsResponse:
        if request.max_entries < 0:
            raise errors.InvalidArgument("max_entries must not be negative")
        tools = self._for(request.secrets)
        deadline = self._deadline(context)
        if request.snapshot_id:
            found = (
                tools.snapshots.find(request.snapshot_id, deadline)
                if v.is_uuid(request.snapshot_id) else None
            )
            if found is None or (
                request.source_volume_id and found.source_volume_id != request.source_volume_id
            ):
                return csi_pb2.ListSnapshotsResponse()
            return csi_pb2.ListSnapshotsResponse(
                entries=[csi_pb2.ListSnapshotsResponse.Entry(snapshot=self._csi_snapshot(found))]
            )
        if request.source_volume_id and not v.is_uuid(request.source_volume_id):
            return csi_pb2.ListSnapshotsResponse()
        token = request.starting_token
        marker = token.removeprefix(BACKUP_PHASE)
        if marker and not v.is_uuid(marker):
            raise errors.InvalidToken(
                f"starting_token {v.shown(token)} is not one this driver issued")
        items, next_token = list_snapshots(
            tools.cloud, source_volume_id=request.source_volume_id or None,
            limit=request.max_entries or 1000, token=token, deadline=deadline,
        )
        return csi_pb2.ListSnapshotsResponse(
            entries=[csi_pb2.ListSnapshotsResponse.Entry(snapshot=self._csi_snapshot(s))
                     for s in items],
            next_token=next_token,
        )
