"""The CSI Node service: stage (find, verify, format-if-blank, mount), publish (bind), and back.

Data safety rules, in order of importance:
- a device is written to only after verify() proved it belongs to the volume;
- a device is formatted only when it is blank (host/filesystems.py says what blank means);
- a filesystem of another type than requested is refused, never reformatted;
- every path we mount on must lie below the kubelet root, so a bad request cannot mount over
  an arbitrary host directory.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from cinder_csi import DEFAULT_FS_TYPE, FS_TYPES, TOPOLOGY_KEY, errors
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.csi import validation as v
from cinder_csi.csi.call_context import deadline_from
from cinder_csi.deadline import DEFAULT_TIMEOUT_S, Deadline
from cinder_csi.host import (
    DeviceFinder,
    MetadataSource,
    Mounter,
    MountInfo,
    check_volume_id,
    stats,
)
from cinder_csi.locks import OperationLocks

log = logging.getLogger(__name__)

NodeCap = csi_pb2.NodeServiceCapability.RPC.Type
CAPABILITIES = (
    NodeCap.STAGE_UNSTAGE_VOLUME, NodeCap.EXPAND_VOLUME, NodeCap.GET_VOLUME_STATS,
    NodeCap.VOLUME_CONDITION, NodeCap.SINGLE_NODE_MULTI_WRITER,
)
FSTYPE_CONTEXT_KEYS = ("fsType", "csi.storage.k8s.io/fstype")
# Linux limits of a path and of one of its components, in bytes.
PATH_MAX = 4096
NAME_MAX = 255

# Set by the controller (ours and upstream's) on a volume made from a snapshot, backup or
# volume: its filesystem is its source's size and is grown at stage when the volume is larger.
RESIZE_REQUIRED_KEY = "resizeRequired"
# XFS refuses to mount a filesystem whose UUID is already mounted, and a clone or a restored
# snapshot carries its source's UUID. Either of the two may be staged first on a node, and a
# source cannot know it was cloned, so every xfs staging mount skips the check (as upstream
# does); the device was proven to be the volume before it is mounted.
FS_MOUNT_OPTIONS = {"xfs": ("nouuid",)}


def _make_mount_point(path: Path, *, directory: bool) -> None:
    """The directory (mount) or empty file (block) to mount on; what the file system refuses
    (a file where a directory is needed, a read-only parent) is the caller's to fix."""
    try:
        if directory:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.touch(mode=0o600)
    except OSError as exc:
        raise errors.FailedPrecondition(f"cannot make mount point {path}: {exc}") from None


def _stat_volume_path(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise errors.NotFound(f"volume path {path} does not exist") from None
    except OSError as exc:  # EIO from a mount whose disk failed or whose filesystem shut down
        raise errors.FailedPrecondition(
            f"cannot stat volume path {path} ({exc.strerror or exc}): the filesystem mounted "
            "there cannot answer; its disk may have failed or been detached, or it shut down "
            "after an error (see the node's kernel log)"
        ) from exc


def _abnormal(message: str) -> csi_pb2.NodeGetVolumeStatsResponse:
    return csi_pb2.NodeGetVolumeStatsResponse(
        volume_condition=csi_pb2.VolumeCondition(abnormal=True, message=message))


@dataclass(frozen=True)
class NodeOptions:
    kubelet_root: Path = Path("/var/lib/kubelet")
    max_volumes_per_node: int = 25
    with_topology: bool = True
    additional_topology: Mapping[str, str] = field(default_factory=dict)
    # The bound of a call whose caller sent no deadline (gRPC would give it ~292 years).
    default_call_timeout: float = DEFAULT_TIMEOUT_S


@dataclass(eq=False, kw_only=True)
class NodeService(csi_pb2_grpc.NodeServicer):
    metadata: MetadataSource
    finder: DeviceFinder
    mounter: Mounter
    options: NodeOptions = field(default_factory=NodeOptions)
    locks: OperationLocks = field(default_factory=OperationLocks)

    def __post_init__(self) -> None:
        self._root = os.path.realpath(self.options.kubelet_root)

    @contextmanager
    def _holding(self, volume_id: str, rpc: str, context: grpc.ServicerContext
                 ) -> Iterator[Deadline]:
        """The call's deadline, with the volume's lock held for it: one operation per volume."""
        deadline = deadline_from(context, self.options.default_call_timeout)
        with self.locks.hold([volume_id], rpc, deadline):
            yield deadline

    # -- paths --------------------------------------------------------------------------------

    def _checked_path(self, value: str, field_name: str) -> Path:
        """An absolute path below the kubelet root, symlinks resolved as far as they exist."""
        v.require(value, field_name)
        if not os.path.isabs(value) or "\0" in value:
            raise errors.InvalidArgument(f"{field_name} {value!r} must be an absolute path")
        encoded = value.encode(errors="surrogateescape")
        if len(encoded) >= PATH_MAX or any(len(p) > NAME_MAX for p in encoded.split(b"/")):
            raise errors.InvalidArgument(
                f"{field_name} is longer than a path can be ({len(encoded)} bytes, or a "
                f"component over {NAME_MAX})"
            )
        resolved = os.path.realpath(value)
        if os.path.commonpath([resolved, self._root]) != self._root or resolved == self._root:
            raise errors.InvalidArgument(
                f"{field_name} {value!r} is outside the kubelet root {self.options.kubelet_root}"
            )
        return Path(resolved)

    def _existing_volume_path(self, value: str) -> Path:
        """For read-only calls (stats, expand): any path that is not a volume of ours below the
        kubelet root is simply not found; nothing is mounted on it."""
        v.require(value, "volume_path")
        if not os.path.isabs(value) or "\0" in value:
            raise errors.NotFound(f"no volume at {value!r} (not an absolute path)")
        path = self._checked_path(value, "volume_path")
        _stat_volume_path(path)
        return path

    @staticmethod
    def _volume_id(value: str) -> str:
        return check_volume_id(v.require(value, "volume_id"))

    @staticmethod
    def _capability(request: csi_pb2.NodeStageVolumeRequest | csi_pb2.NodePublishVolumeRequest
                    ) -> csi_pb2.VolumeCapability:
        if not request.HasField("volume_capability"):
            raise errors.InvalidArgument("volume_capability is required")
        v.check_capability(request.volume_capability)
        return request.volume_capability

    @staticmethod
    def _fstype(cap: csi_pb2.VolumeCapability, context: Mapping[str, str]) -> str:
        if cap.mount.fs_type:
            return cap.mount.fs_type
        for key in FSTYPE_CONTEXT_KEYS:
            if context.get(key):
                fstype = context[key]
                if fstype not in FS_TYPES:
                    raise errors.InvalidArgument(f"volume_context {key}={fstype!r} unsupported")
                return fstype
        return DEFAULT_FS_TYPE

    def _device(self, volume_id: str, deadline: Deadline) -> Path:
        device = self.finder.find(volume_id, deadline)
        self.finder.verify(volume_id, device, deadline)
        return device

    # -- stage --------------------------------------------------------------------------------

    def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeStageVolumeResponse:
        volume_id = self._volume_id(request.volume_id)
        staging = self._checked_path(request.staging_target_path, "staging_target_path")
        cap = self._capability(request)
        with self._holding(volume_id, "NodeStageVolume", context) as deadline:
            if cap.WhichOneof("access_type") == "block":
                self._device(volume_id, deadline)
                return csi_pb2.NodeStageVolumeResponse()  # published straight from the device
            fstype = self._fstype(cap, request.volume_context)
            device = self.finder.find(volume_id, deadline)
            options = list(cap.mount.mount_flags)
            options += [o for o in FS_MOUNT_OPTIONS.get(fstype, ()) if o not in options]
            _make_mount_point(staging, directory=True)
            # The proof that the device is the volume runs alongside the blank check's reads;
            # nothing is written to the device before it passed.
            self.mounter.format_and_mount(
                device, staging, fstype, options, deadline,
                proof=lambda: self.finder.verify(volume_id, device, deadline))
            if request.volume_context.get(RESIZE_REQUIRED_KEY, "").strip().lower() == "true":
                self.mounter.filesystems.grow_to_device(
                    device, staging, fstype, self.finder.device_size(device, deadline), deadline
                )
        log.info("staged volume %s (%s, %s) at %s", volume_id, device, fstype, staging)
        return csi_pb2.NodeStageVolumeResponse()

    def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        volume_id = self._volume_id(request.volume_id)
        staging = self._checked_path(request.staging_target_path, "staging_target_path")
        with self._holding(volume_id, "NodeUnstageVolume", context) as deadline:
            self._refuse_while_published(volume_id, staging)
            self.mounter.unmount(staging, deadline)
        return csi_pb2.NodeUnstageVolumeResponse()

    def _refuse_while_published(self, volume_id: str, staging: Path) -> None:
        """A publish bind-mount keeps the filesystem mounted when the staging mount goes;
        the detach that follows an unstage would then pull the disk from under a mounted,
        written filesystem. So unstage waits until every publication is gone."""
        staged = self.mounter.table.mounts_at(staging)
        if not staged:
            return
        elsewhere = self._other_mounts(staged[-1], besides=(staging,), below_root=False)
        if elsewhere:
            shown = ", ".join(elsewhere[:3]) + (" ..." if len(elsewhere) > 3 else "")
            raise errors.FailedPrecondition(
                f"volume {volume_id} is still published at {shown}; NodeUnpublishVolume "
                f"there before unstaging it from {staging}"
            )

    def _other_mounts(self, staged: MountInfo, *, besides: Collection[Path], below_root: bool
                      ) -> list[str]:
        """Where else the staged filesystem is mounted (its bind mounts share its device
        number), sorted; only below the kubelet root when `below_root`."""
        return sorted({
            m.mount_point for m in self.mounter.table.all()
            if m.major_minor == staged.major_minor and Path(m.mount_point) not in besides
            and (not below_root or m.mount_point.startswith(self._root + "/"))
        })

    # -- publish ------------------------------------------------------------------------------

    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = self._volume_id(request.volume_id)
        target = self._checked_path(request.target_path, "target_path")
        staging = self._checked_path(request.staging_target_path, "staging_target_path")
        cap = self._capability(request)
        readonly = request.readonly or cap.access_mode.mode in v.READ_ONLY_MODES
        with self._holding(volume_id, "NodePublishVolume", context) as deadline:
            if cap.WhichOneof("access_type") == "block":
                device = self._device(volume_id, deadline)
                _make_mount_point(target, directory=False)
                self.mounter.bind_mount(device, target, readonly=readonly, deadline=deadline)
            else:
                staged = self.mounter.table.mounts_at(staging)
                if not staged:
                    raise errors.FailedPrecondition(
                        f"volume {volume_id} is not staged at {staging}; NodeStageVolume first"
                    )
                if cap.access_mode.mode == v.Mode.SINGLE_NODE_SINGLE_WRITER:
                    self._refuse_second_publication(volume_id, staged[-1], staging, target)
                _make_mount_point(target, directory=True)
                self.mounter.bind_mount(staging, target, readonly=readonly, deadline=deadline)
        return csi_pb2.NodePublishVolumeResponse()

    def _refuse_second_publication(
        self, volume_id: str, staged: MountInfo, staging: Path, target: Path
    ) -> None:
        """SINGLE_NODE_SINGLE_WRITER: one workload at a time, so one publish target."""
        others = self._other_mounts(staged, besides=(staging, target), below_root=True)
        if others:
            raise errors.FailedPrecondition(
                f"volume {volume_id} is SINGLE_NODE_SINGLE_WRITER and already published at "
                f"{others[0]}; unpublish it there first"
            )

    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = self._volume_id(request.volume_id)
        target = self._checked_path(request.target_path, "target_path")
        with self._holding(volume_id, "NodeUnpublishVolume", context) as deadline:
            self.mounter.unmount(target, deadline)
            self._remove_target(target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def _remove_target(self, target: Path) -> None:
        """The spec asks us to delete what we created at the target path, once unmounted:
        an empty directory (mount) or an empty file (block). Anything else at that path is
        not ours, and data: it stays."""
        if self.mounter.table.is_mounted(target):
            return
        try:
            st = os.lstat(target)
            if stat.S_ISDIR(st.st_mode):
                target.rmdir()  # fails, and keeps it, unless it is empty
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                target.unlink()
            else:
                log.warning("left %s in place after unpublish: not an empty file or "
                            "directory, so not what NodePublishVolume made", target)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("could not remove %s after unpublish: %s", target, exc)

    # -- expand and stats ---------------------------------------------------------------------

    def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeExpandVolumeResponse:
        volume_id = self._volume_id(request.volume_id)
        path = self._existing_volume_path(request.volume_path)
        with self._holding(volume_id, "NodeExpandVolume", context) as deadline:
            device = self._device(volume_id, deadline)
            self.finder.rescan(device, deadline)
            is_block = (
                request.HasField("volume_capability")
                and request.volume_capability.WhichOneof("access_type") == "block"
            ) or stat.S_ISBLK(_stat_volume_path(path).st_mode)
            if not is_block:
                mounts = self.mounter.table.mounts_at(path)
                if not mounts:
                    raise errors.NotFound(f"volume {volume_id} is not mounted at {path}")
                self.mounter.filesystems.grow(device, path, mounts[-1].fstype, deadline)
            size = self.finder.device_size(device, deadline)
        required = request.capacity_range.required_bytes if request.HasField(
            "capacity_range") else 0
        if required and size < required:
            raise errors.FailedPrecondition(
                f"device {device} of volume {volume_id} is {size} bytes after a rescan, less "
                f"than the {required} requested; the cloud may not have finished extending it"
            )
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=size)

    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        self._volume_id(request.volume_id)
        # Usage is optional; a volume whose filesystem cannot answer (the I/O error of a failing
        # or detached disk, an xfs that shut down) is what the volume condition is for.
        try:
            path = self._existing_volume_path(request.volume_path)
        except errors.FailedPrecondition as exc:
            return _abnormal(str(exc))
        mounts = self.mounter.table.mounts_at(path)
        if not mounts:
            raise errors.NotFound(f"volume {request.volume_id} is not mounted at {path}")
        condition = self._condition(mounts[-1].source)
        try:
            usage = stats(path)
        except errors.FailedPrecondition as exc:
            return _abnormal(str(exc))
        Unit = csi_pb2.VolumeUsage.Unit
        if usage.block_device:
            entries = [csi_pb2.VolumeUsage(unit=Unit.BYTES, total=usage.total_bytes)]
        else:
            entries = [
                csi_pb2.VolumeUsage(unit=Unit.BYTES, total=usage.total_bytes,
                                    available=usage.available_bytes, used=usage.used_bytes),
                csi_pb2.VolumeUsage(unit=Unit.INODES, total=usage.total_inodes,
                                    available=usage.free_inodes, used=usage.used_inodes),
            ]
        return csi_pb2.NodeGetVolumeStatsResponse(usage=entries, volume_condition=condition)

    @staticmethod
    def _condition(source: str) -> csi_pb2.VolumeCondition:
        if source.startswith("/dev/") and not os.path.exists(source):
            return csi_pb2.VolumeCondition(
                abnormal=True,
                message=f"device {source} under the mount is gone (detached or failed)",
            )
        return csi_pb2.VolumeCondition(abnormal=False, message="mounted")

    # -- info ---------------------------------------------------------------------------------

    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(rpc=csi_pb2.NodeServiceCapability.RPC(type=cap))
                for cap in CAPABILITIES
            ]
        )

    def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        try:
            node = self.metadata.get()
        except errors.NotFound as exc:
            raise errors.CloudUnavailable(f"cannot tell which Nova server this is: {exc}") from None
        response = csi_pb2.NodeGetInfoResponse(
            node_id=node.node_id, max_volumes_per_node=self.options.max_volumes_per_node
        )
        if self.options.with_topology:
            segments = dict(self.options.additional_topology)
            if node.availability_zone:
                segments[TOPOLOGY_KEY] = node.availability_zone
            if segments:
                response.accessible_topology.CopyFrom(csi_pb2.Topology(segments=segments))
        return response

    def probe(self) -> str | None:
        """For Identity.Probe: ready once we know which server we run on."""
        try:
            self.metadata.get()
        except errors.CinderCSIError as exc:
            return str(exc)
        return None
