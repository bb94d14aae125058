"""Create a Cinder volume for a CSI name exactly once, and only hand it back when usable.

The rules that keep volumes from leaking or doubling:
- the CSI name is the Cinder volume name, and the lookup by name comes first, so a retry finds
  the volume an earlier call made (even one that crashed before answering);
- a create POST that failed without a clear answer (timeout, 5xx) is followed by a lookup by
  name before the error is returned, so a volume Cinder made anyway is adopted, not orphaned;
- a volume that ends in ``error`` is deleted before the call fails, so the retry starts clean.

A volume of that name counts as ours when it carries our cluster tag, no tag, or the empty tag
the upstream driver writes when it runs without --cluster: so a volume upstream was still
making when the drivers were switched is adopted, not refused. Another cluster's tag is
refused (ALREADY_EXISTS).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from cinder_csi import errors
from cinder_csi.cloud.connection import Cloud
from cinder_csi.cloud.models import VOLUME_ERROR_STATES, Volume
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)

CLUSTER_METADATA_KEY = "cinder.csi.openstack.org/cluster"


@dataclass(frozen=True)
class VolumeSpec:
    name: str
    size_gib: int
    volume_type: str | None = None
    availability_zone: str | None = None
    snapshot_id: str | None = None
    source_volid: str | None = None
    backup_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class VolumeCreator:
    """Creates the Cinder volume of a CSI name, or adopts the one an earlier call made."""

    def __init__(self, cloud: Cloud, cluster_id: str) -> None:
        self.cloud = cloud
        self.cluster_id = cluster_id

    def ensure(self, spec: VolumeSpec, deadline: Deadline) -> Volume:
        existing = self.find_own(spec.name, deadline)
        if existing is not None:
            self._check_compatible(existing, spec)
            return self._until_available(existing, deadline)
        volume = self._create_or_adopt(spec, deadline)
        return self._until_available(volume, deadline)

    def find_own(self, name: str, deadline: Deadline) -> Volume | None:
        """The volume named ``name`` that belongs to this cluster, if any."""
        found = self.cloud.volumes.find_by_name(name, deadline)
        own = [v for v in found if self._is_ours(v)]
        foreign = [v for v in found if not self._is_ours(v)]
        if not own and foreign:
            owner = foreign[0].metadata[CLUSTER_METADATA_KEY]
            raise errors.AlreadyExists(
                f"a Cinder volume named {name} already exists ({foreign[0].id}) but belongs to "
                f"{owner!r}, not to cluster {self.cluster_id!r}"
            )
        if len(own) > 1:
            # Only a cloud that lost an answer can get here; keep the oldest, say so loudly.
            own.sort(key=lambda v: (v.created_at is None, v.created_at, v.id))
            log.error(
                "several Cinder volumes are named %s: %s; using %s",
                name, ", ".join(v.id for v in own), own[0].id,
            )
        return own[0] if own else None

    def _is_ours(self, volume: Volume) -> bool:
        tag = volume.metadata.get(CLUSTER_METADATA_KEY)
        return not tag or tag == self.cluster_id

    @staticmethod
    def _check_compatible(volume: Volume, spec: VolumeSpec) -> None:
        mismatches = []
        if volume.size_gib != spec.size_gib:
            mismatches.append(f"size {volume.size_gib} GiB, requested {spec.size_gib} GiB")
        if (volume.snapshot_id or None) != spec.snapshot_id:
            mismatches.append(f"source snapshot {volume.snapshot_id}, requested {spec.snapshot_id}")
        if (volume.source_volid or None) != spec.source_volid:
            mismatches.append(f"source volume {volume.source_volid}, requested {spec.source_volid}")
        if spec.volume_type and volume.volume_type not in (spec.volume_type, None):
            mismatches.append(f"type {volume.volume_type}, requested {spec.volume_type}")
        if mismatches:
            raise errors.AlreadyExists(
                f"volume {spec.name} already exists ({volume.id}) with different parameters: "
                + "; ".join(mismatches)
            )

    def _create_or_adopt(self, spec: VolumeSpec, deadline: Deadline) -> Volume:
        metadata = {CLUSTER_METADATA_KEY: self.cluster_id, **spec.metadata}
        try:
            return self.cloud.volumes.create(
                name=spec.name, size_gib=spec.size_gib, deadline=deadline,
                volume_type=spec.volume_type, availability_zone=spec.availability_zone,
                metadata=metadata, snapshot_id=spec.snapshot_id, source_volid=spec.source_volid,
                backup_id=spec.backup_id,
            )
        except (errors.CloudUnavailable, errors.Timeout) as exc:
            if isinstance(exc, errors.RateLimited):
                raise
            # The POST may have been carried out; look before reporting failure.
            try:
                adopted = self.find_own(spec.name, deadline.shorter(30.0))
            except errors.CinderCSIError:
                raise exc from None
            if adopted is None:
                raise
            log.warning("create of %s failed (%s) but Cinder made %s; adopting it",
                        spec.name, exc, adopted.id)
            return adopted

    def _until_available(self, volume: Volume, deadline: Deadline) -> Volume:
        if volume.status == "available" or volume.status == "in-use":
            return volume
        if volume.status not in VOLUME_ERROR_STATES:
            try:
                return self.cloud.volumes.wait_for_status(
                    volume.id, ("available", "in-use"), deadline,
                    what=f"volume {volume.name} ({volume.id}) to become available",
                )
            except errors.FailedPrecondition:
                pass  # it went to an error state: fall through to clean-up
        return self._discard_failed(volume, deadline)

    def _discard_failed(self, volume: Volume, deadline: Deadline) -> Volume:
        current = self.cloud.volumes.find(volume.id, deadline)
        status = current.status if current is not None else "deleted"
        reason = self._failure_reason(volume.id, deadline)
        try:
            self.cloud.volumes.delete(volume.id, deadline)
        except errors.CinderCSIError as exc:
            log.error("could not delete failed volume %s: %s", volume.id, exc)
        message = (
            f"Cinder could not create volume {volume.name} ({volume.id}): status {status}"
            + (f": {reason}" if reason else "")
            + "; the failed volume was deleted, a retry starts clean"
        )
        if reason and ("no valid" in reason.lower() or "capacity" in reason.lower()):
            raise errors.QuotaExceeded(message)
        raise errors.CloudUnavailable(message)

    def _failure_reason(self, volume_id: str, deadline: Deadline) -> str | None:
        """Cinder's last user message about the volume, when it left one."""
        try:
            texts = self.cloud.messages.for_volume(volume_id, deadline.shorter(5.0))
        except errors.CinderCSIError:
            return None  # only decorates the error being reported
        return texts[-1] if texts else None
