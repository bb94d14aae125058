"""The CSI Controller service: CSI requests in, Cinder and Nova calls out.

Validation happens here; the cloud work is in create_or_adopt.py (create), publishing.py
(publish/unpublish) and cloud/. Each mutating call holds the per-volume guard, so a second
call on a busy volume is answered ABORTED instead of racing the first.
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
from cinder_csi.cloud.connection import Cloud
from cinder_csi.cloud.models import VOLUME_ERROR_STATES, Snapshot, Volume
from cinder_csi.cloud.volumes import EXTEND_IN_USE_MICROVERSION
from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY, VolumeCreator, VolumeSpec
from cinder_csi.controller.paging import Token, resume_after
from cinder_csi.controller.publishing import Attacher
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.csi import validation as v
from cinder_csi.csi.call_context import deadline_from
from cinder_csi.deadline import Deadline
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
SNAPSHOT_METADATA_PARAMS = (
    "csi.storage.k8s.io/volumesnapshot/name",
    "csi.storage.k8s.io/volumesnapshot/namespace",
    "csi.storage.k8s.io/volumesnapshotcontent/name",
)
SNAPSHOT_PARAMS = frozenset({"type", "force-create", "availability", *SNAPSHOT_METADATA_PARAMS})
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


def _timestamp(volume_or_snapshot: Volume | Snapshot) -> Timestamp:
    stamp = Timestamp()
    if volume_or_snapshot.created_at is not None:
        stamp.FromDatetime(volume_or_snapshot.created_at)
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


class ControllerService(csi_pb2_grpc.ControllerServicer):
    def __init__(
        self,
        cloud: Cloud,
        options: ControllerOptions | None = None,
        locks: OperationLocks | None = None,
    ) -> None:
        self.cloud = cloud
        self.options = options or ControllerOptions()
        self.locks = locks or OperationLocks()
        self.creator = VolumeCreator(cloud, self.options.cluster_id)
        self.attacher = Attacher(cloud, attach_limit=self.options.node_volume_attach_limit)

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
        name = v.require(request.name, "name")
        v.check_capabilities(request.volume_capabilities)
        params = dict(request.parameters)
        _unknown(params, VOLUME_PARAMS, "StorageClass")
        mutable = dict(request.mutable_parameters)
        _unknown(mutable, MUTABLE_PARAMS, "mutable (VolumeAttributesClass)")
        if mutable.get(PARAM_TYPE):
            params[PARAM_TYPE] = mutable[PARAM_TYPE]  # the attributes class wins over the class
        recorded = _reclaim_policy(mutable.get(RECLAIM_POLICY_KEY), params.get(RECLAIM_POLICY_KEY))
        size = v.size_gib(request.capacity_range if request.HasField("capacity_range") else None)
        deadline = deadline_from(context)
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

        with self.locks.hold([name, *source_keys], "CreateVolume"):
            volume_type = params.get(PARAM_TYPE) or None
            if volume_type or v.multi_node(request.volume_capabilities):
                # Only then is the type worth a lookup: to name an unknown one clearly, and to
                # know whether several nodes may share the volume.
                multiattach = self._type_is_multiattach(volume_type, deadline)
                reason = v.unsupported_multi_node_reason(
                    request.volume_capabilities, multiattach=multiattach,
                    volume=f"volume {name}",
                )
                if reason:
                    raise errors.InvalidArgument(reason)
            zone = self._zone(request, params)
            if snapshot_id:
                size, zone = self._from_snapshot(snapshot_id, request, size, zone, deadline)
            elif source_volid:
                size, zone = self._from_volume(source_volid, request, size, zone, deadline)
            spec = VolumeSpec(
                name=name, size_gib=size, volume_type=volume_type, availability_zone=zone,
                snapshot_id=snapshot_id, source_volid=source_volid,
                metadata={**{k: params[k] for k in CREATE_METADATA_PARAMS if params.get(k)},
                          **recorded},
            )
            volume = self.creator.ensure(spec, deadline)
        return csi_pb2.CreateVolumeResponse(volume=self._csi_volume(volume, request))

    def _type_is_multiattach(self, volume_type: str | None, deadline: Deadline) -> bool:
        if volume_type:
            found = self.cloud.volumes.find_type(volume_type, deadline)
            if found is None:
                raise errors.InvalidArgument(
                    f"StorageClass parameter type={volume_type!r}: no such Cinder volume type"
                )
            return found.multiattach
        default = self.cloud.volumes.default_type(deadline)
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
                return str(zone)
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

    def _from_snapshot(
        self, snapshot_id: str, request: Any, size: int, zone: str | None, deadline: Deadline
    ) -> tuple[int, str | None]:
        snapshot = self.cloud.snapshots.find(snapshot_id, deadline)
        if snapshot is None:
            raise errors.NotFound(f"source snapshot {snapshot_id} does not exist")
        if snapshot.status != "available":
            raise errors.FailedPrecondition(
                f"source snapshot {snapshot_id} is {snapshot.status!r}, not available"
            )
        size = self._fit_source_size(size, snapshot.size_gib, request, f"snapshot {snapshot_id}")
        parent = self.cloud.volumes.find(snapshot.volume_id, deadline)
        # Cinder restores a snapshot only in its own volume's zone.
        if parent is not None and parent.availability_zone:
            zone = parent.availability_zone
        return size, zone

    def _from_volume(
        self, volume_id: str, request: Any, size: int, zone: str | None, deadline: Deadline
    ) -> tuple[int, str | None]:
        source = self.cloud.volumes.find(volume_id, deadline)
        if source is None:
            raise errors.NotFound(f"source volume {volume_id} does not exist")
        size = self._fit_source_size(size, source.size_gib, request, f"volume {volume_id}")
        return size, source.availability_zone or zone

    def _csi_volume(self, volume: Volume, request: csi_pb2.CreateVolumeRequest) -> csi_pb2.Volume:
        result = csi_pb2.Volume(volume_id=volume.id, capacity_bytes=volume.size_gib * v.GIB)
        if request.HasField("volume_content_source"):
            result.content_source.CopyFrom(request.volume_content_source)
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
        if not v.is_uuid(volume_id):
            return csi_pb2.DeleteVolumeResponse()  # cannot exist: already deleted
        deadline = deadline_from(context)
        with self.locks.hold([volume_id], "DeleteVolume"):
            volume = self.cloud.volumes.find(volume_id, deadline)
            if volume is None:
                return csi_pb2.DeleteVolumeResponse()
            if volume.attached_servers or volume.status in ("in-use", "attaching", "reserved"):
                servers = ", ".join(volume.attached_servers) or "a server"
                raise errors.FailedPrecondition(
                    f"volume {volume_id} is still attached to {servers}; detach it first"
                )
            if volume.status != "deleting":
                try:
                    self.cloud.volumes.delete(volume_id, deadline)
                except errors.InvalidArgument as exc:
                    raise errors.FailedPrecondition(
                        f"Cinder refused to delete volume {volume_id}: {exc.message} "
                        "(delete its snapshots first)"
                    ) from None
            self.cloud.volumes.wait_for_delete(volume_id, deadline)
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
        deadline = deadline_from(context)
        with self.locks.hold([volume_id], "ControllerPublishVolume"):
            volume = self.cloud.volumes.get(volume_id, deadline)
            reason = v.unsupported_multi_node_reason(
                [request.volume_capability], multiattach=volume.multiattach,
                volume=f"volume {volume_id}",
            )
            if reason:
                raise errors.FailedPrecondition(reason)
            publish_context = self.attacher.attach(
                volume_id, node_id, readonly=request.readonly, deadline=deadline
            )
        return csi_pb2.ControllerPublishVolumeResponse(publish_context=publish_context)

    def ControllerUnpublishVolume(
        self, request: csi_pb2.ControllerUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerUnpublishVolumeResponse:
        volume_id = v.require(request.volume_id, "volume_id")
        if not v.is_uuid(volume_id) or (request.node_id and not v.is_uuid(request.node_id)):
            return csi_pb2.ControllerUnpublishVolumeResponse()  # nothing of that name is attached
        deadline = deadline_from(context)
        with self.locks.hold([volume_id], "ControllerUnpublishVolume"):
            if request.node_id:
                nodes: Iterable[str] = [request.node_id]
            else:
                found = self.cloud.volumes.find(volume_id, deadline)
                nodes = found.attached_servers if found is not None else ()
            for node_id in nodes:
                self.attacher.detach(volume_id, node_id, deadline)
        return csi_pb2.ControllerUnpublishVolumeResponse()

    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        volume_id = v.require(request.volume_id, "volume_id")
        if not request.volume_capabilities:
            raise errors.InvalidArgument("volume_capabilities is required")
        volume_id = v.require_id(volume_id, "volume_id", "volume")
        volume = self.cloud.volumes.get(volume_id, deadline_from(context))
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
        deadline = deadline_from(context)
        try:
            page = self.cloud.volumes.list_page(
                deadline=deadline, limit=limit, marker=token.volume_id if token else None
            )
            volumes = list(page.items)
            next_token = Token.after(volumes[-1]) if page.next_marker and volumes else None
        except (errors.InvalidArgument, errors.NotFound):
            if token is None:
                raise
            # The marker volume was deleted since the last page: resume after its sort key.
            volumes, next_token = resume_after(
                token, limit,
                lambda marker: self.cloud.volumes.list_page(
                    deadline=deadline, limit=1000, marker=marker),
            )
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
        volume = self.cloud.volumes.get(volume_id, deadline_from(context))
        return csi_pb2.ControllerGetVolumeResponse(
            volume=self._listed_volume(volume),
            status=csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
                published_node_ids=volume.attached_servers,
                volume_condition=_volume_condition(volume),
            ),
        )

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
        deadline = deadline_from(context)
        with self.locks.hold([volume_id], "ControllerExpandVolume"):
            volume = self.cloud.volumes.get(volume_id, deadline)
            if volume.size_gib < size:
                volume = self._extend(volume, size, deadline)
        return csi_pb2.ControllerExpandVolumeResponse(
            capacity_bytes=volume.size_gib * v.GIB, node_expansion_required=not block
        )

    def _extend(self, volume: Volume, size: int, deadline: Deadline) -> Volume:
        if volume.status not in ("available", "in-use", "extending"):
            raise errors.FailedPrecondition(
                f"volume {volume.id} cannot be extended while its status is {volume.status!r}"
            )
        if volume.status == "in-use" and not self.cloud.volumes.can_extend_in_use():
            raise errors.FailedPrecondition(
                f"volume {volume.id} is attached and this cloud's Cinder is older than API "
                f"{EXTEND_IN_USE_MICROVERSION}, so it cannot grow while in use; stop the pod "
                "and retry"
            )
        if volume.status != "extending":
            self.cloud.volumes.extend(volume.id, size, deadline)

        def grown() -> Volume | None:
            current = self.cloud.volumes.get(volume.id, deadline)
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
        volume_id = v.require_id(request.volume_id, "volume_id", "volume")
        deadline = deadline_from(context)
        recorded = _reclaim_policy(params.get(RECLAIM_POLICY_KEY))
        with self.locks.hold([volume_id], "ControllerModifyVolume"):
            volume = self.cloud.volumes.get(volume_id, deadline)
            if any(volume.metadata.get(k) != value for k, value in recorded.items()):
                self.cloud.volumes.set_metadata(volume_id, recorded, deadline)
            new_type = params.get(PARAM_TYPE)
            if not new_type:
                return csi_pb2.ControllerModifyVolumeResponse()  # nothing asked: nothing to do
            target = self.cloud.volumes.find_type(new_type, deadline)
            if target is None:
                raise errors.InvalidArgument(f"type={new_type!r}: no such Cinder volume type")
            if volume.volume_type in (target.name, target.id):
                return csi_pb2.ControllerModifyVolumeResponse()
            if volume.status not in ("available", "in-use", "retyping"):
                raise errors.FailedPrecondition(
                    f"volume {volume_id} cannot be retyped while its status is {volume.status!r}"
                )
            if volume.status != "retyping":
                self.cloud.volumes.retype(volume_id, target.name, deadline)
            self.cloud.volumes.wait_for_status(
                volume_id, ("available", "in-use"), deadline,
                what=f"volume {volume_id} to be retyped to {target.name}",
            )
        return csi_pb2.ControllerModifyVolumeResponse()

    # -- capacity -----------------------------------------------------------------------------

    def GetCapacity(
        self, request: csi_pb2.GetCapacityRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetCapacityResponse:
        params = dict(request.parameters)
        _unknown(params, VOLUME_PARAMS, "StorageClass")
        deadline = deadline_from(context)
        quotas = self.cloud.quotas.usage(self.cloud.project_id(deadline), deadline)
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
        name = v.require(request.name, "name")
        v.require(request.source_volume_id, "source_volume_id")
        params = dict(request.parameters)
        _unknown(params, SNAPSHOT_PARAMS, "VolumeSnapshotClass")
        if params.get("type", "snapshot") != "snapshot":
            raise errors.InvalidArgument(
                f"VolumeSnapshotClass type={params['type']!r} is not supported; use 'snapshot'"
            )
        force = params.get("force-create", "true").lower() in ("true", "1", "yes")
        source_id = v.require_id(request.source_volume_id, "source_volume_id", "source volume")
        deadline = deadline_from(context)
        with self.locks.hold([name], "CreateSnapshot"):
            existing = self.cloud.snapshots.find_by_name(name, deadline)
            if existing:
                snapshot = existing[0]
                if snapshot.volume_id != source_id:
                    raise errors.AlreadyExists(
                        f"snapshot {name} already exists ({snapshot.id}) of volume "
                        f"{snapshot.volume_id}, not of {source_id}"
                    )
            else:
                if self.cloud.volumes.find(source_id, deadline) is None:
                    raise errors.NotFound(f"source volume {source_id} does not exist")
                metadata = {k: params[k] for k in SNAPSHOT_METADATA_PARAMS if params.get(k)}
                snapshot = self.cloud.snapshots.create(
                    volume_id=source_id, name=name, deadline=deadline, metadata=metadata,
                    force=force,
                )
            if snapshot.status != "available":
                try:
                    snapshot = self.cloud.snapshots.wait_for_status(
                        snapshot.id, "available", deadline.shorter(60.0)
                    )
                except errors.Timeout:
                    snapshot = self.cloud.snapshots.get(snapshot.id, deadline)
                except errors.FailedPrecondition:
                    self.cloud.snapshots.delete(snapshot.id, deadline)
                    raise errors.CloudUnavailable(
                        f"Cinder could not create snapshot {name} ({snapshot.id}); it was "
                        "deleted, a retry starts clean"
                    ) from None
        return csi_pb2.CreateSnapshotResponse(snapshot=self._csi_snapshot(snapshot))

    @staticmethod
    def _csi_snapshot(snapshot: Snapshot) -> csi_pb2.Snapshot:
        return csi_pb2.Snapshot(
            snapshot_id=snapshot.id,
            source_volume_id=snapshot.volume_id,
            size_bytes=snapshot.size_gib * v.GIB,
            creation_time=_timestamp(snapshot),
            ready_to_use=snapshot.status == "available",
        )

    def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteSnapshotResponse:
        snapshot_id = v.require(request.snapshot_id, "snapshot_id")
        if not v.is_uuid(snapshot_id):
            return csi_pb2.DeleteSnapshotResponse()
        deadline = deadline_from(context)
        with self.locks.hold([snapshot_id], "DeleteSnapshot"):
            snapshot = self.cloud.snapshots.find(snapshot_id, deadline)
            if snapshot is None:
                return csi_pb2.DeleteSnapshotResponse()
            if snapshot.status != "deleting":
                try:
                    self.cloud.snapshots.delete(snapshot_id, deadline)
                except errors.InvalidArgument as exc:
                    raise errors.FailedPrecondition(
                        f"Cinder refused to delete snapshot {snapshot_id}: {exc.message}"
                    ) from None
            self.cloud.snapshots.wait_for_delete(snapshot_id, deadline)
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(
        self, request: csi_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListSnapshotsResponse:
        if request.max_entries < 0:
            raise errors.InvalidArgument("max_entries must not be negative")
        deadline = deadline_from(context)
        if request.snapshot_id:
            found = (
                self.cloud.snapshots.find(request.snapshot_id, deadline)
                if v.is_uuid(request.snapshot_id) else None
            )
            if found is None or (
                request.source_volume_id and found.volume_id != request.source_volume_id
            ):
                return csi_pb2.ListSnapshotsResponse()
            return csi_pb2.ListSnapshotsResponse(
                entries=[csi_pb2.ListSnapshotsResponse.Entry(snapshot=self._csi_snapshot(found))]
            )
        filters: dict[str, str] = {}
        if request.source_volume_id:
            if not v.is_uuid(request.source_volume_id):
                return csi_pb2.ListSnapshotsResponse()
            filters["volume_id"] = request.source_volume_id
        token = request.starting_token
        if token and not v.is_uuid(token):
            raise errors.InvalidToken(f"starting_token {token!r} is not one this driver issued")
        try:
            page = self.cloud.snapshots.list_page(
                deadline=deadline, limit=request.max_entries or 1000, marker=token or None,
                filters=filters,
            )
        except (errors.InvalidArgument, errors.NotFound):
            if token:
                raise errors.InvalidToken(
                    f"starting_token {token} is no longer valid; restart the listing"
                ) from None
            raise
        return csi_pb2.ListSnapshotsResponse(
            entries=[
                csi_pb2.ListSnapshotsResponse.Entry(snapshot=self._csi_snapshot(s))
                for s in page.items
            ],
            next_token=page.next_marker or "",
        )
