"""Create a Cinder volume for a CSI name exactly once, and only hand it back when usable.

The rules that keep volumes from leaking or doubling:
- the CSI name is the Cinder volume name, and the lookup by name comes first, before sources
  or types are resolved: a retry finds the volume an earlier call made (even one that crashed
  before answering), even when its snapshot, source volume or type is gone by now;
- a create POST that failed without a clear answer (5xx, a lost connection) is followed by a
  lookup by name before the error is returned, so a volume Cinder made anyway is adopted, not
  orphaned; one still awaiting its answer when the caller's deadline comes is left running,
  and a retry waits for it rather than posting a second volume (controller/pending.py), and
  posts itself only if that POST then fails and no volume by the name exists;
- a volume that ends in ``error`` is deleted before the call fails, so the retry starts clean.
  Only a deletion seen through to the end is reported as such: while the failed volume may
  still exist the call fails UNAVAILABLE ("still in progress" to every CO), never with a
  final code, so the retry finds the volume by name and finishes the deletion;
- a volume by that name in any other error state (error_extending, error_deleting, ...) once
  held data and is never deleted here.

A volume of that name counts as ours when it carries our cluster tag, no tag, or the empty tag
the upstream driver writes when it runs without --cluster: so a volume upstream was still
making when the drivers were switched is adopted, not refused. Another cluster's tag is
refused (ALREADY_EXISTS).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import NoReturn

from cinder_csi import errors
from cinder_csi.cloud.connection import Cloud
from cinder_csi.cloud.models import VOLUME_ERROR_STATES, Volume
from cinder_csi.controller.pending import PendingPosts, StillWaiting
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)

CLUSTER_METADATA_KEY = "cinder.csi.openstack.org/cluster"
GIB = 1024**3
# The status of a volume whose creation failed; the only error state we clean up ourselves.
CREATION_FAILED = "error"
# How long a discard waits to see a failed volume gone before leaving it to the retry.
DISCARD_WAIT_S = 30.0
_USABLE = ("available", "in-use")
# Cinder's scheduler says "Could not find any available weighted backend" both when no backend
# has room and when none serves the type; older releases said "No valid host".
_NO_BACKEND_MARKERS = ("no valid", "capacity", "could not find any available")


@dataclass(frozen=True)
class Wanted:
    """What a CreateVolume asks for, as far as it can be checked against an existing volume
    before anything else is looked up."""

    name: str
    required_bytes: int = 0
    limit_bytes: int = 0
    volume_type: str | None = None
    snapshot_id: str | None = None
    source_volid: str | None = None


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
        self.pending: PendingPosts[Volume] = PendingPosts()

    def adopt(self, wanted: Wanted, deadline: Deadline) -> Volume | None:
        """The usable volume an earlier call made for this name, or None when there is none
        (any more: a failed one is deleted here first). Raises AlreadyExists when the volume
        by that name does not match the request."""
        existing = self.find_own(wanted.name, deadline)
        if existing is None:
            return None
        if existing.status == "deleting":
            self.cloud.volumes.wait_for_delete(existing.id, deadline)
            return None
        if existing.status == CREATION_FAILED and not existing.attachments:
            log.warning("volume %s (%s) of an earlier CreateVolume ended in error; deleting it "
                        "before creating it again", wanted.name, existing.id)
            if not self._delete_failed(existing, deadline):
                self._fail(existing, deadline, deleted=False)
            return None
        self._check_compatible(existing, wanted,
                               from_backup=self._maybe_from_backup(existing, wanted, deadline))
        return self._until_available(existing, deadline)

    def create(self, spec: VolumeSpec, deadline: Deadline) -> Volume:
        """Create the volume (no volume by this name exists) and wait until it is usable."""
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

    def _maybe_from_backup(self, volume: Volume, wanted: Wanted, deadline: Deadline) -> bool:
        """Whether ``volume`` may have been restored from the CSI snapshot ``wanted`` names
        when that is a Cinder backup (VolumeSnapshotClass type: backup): Cinder shows no source
        on such a volume, so it fits any snapshot ID that is not a Cinder snapshot (a backup,
        or a source deleted since)."""
        if not wanted.snapshot_id or volume.snapshot_id or volume.source_volid:
            return False
        return self.cloud.snapshots.find(wanted.snapshot_id, deadline) is None

    @staticmethod
    def _check_compatible(volume: Volume, wanted: Wanted, *, from_backup: bool = False) -> None:
        """CSI: an existing volume is the answer if it satisfies the request's capacity range
        and content source; a source grown to its snapshot's size still fits."""
        mismatches = []
        size = volume.size_gib * GIB
        if size < wanted.required_bytes or (wanted.limit_bytes and size > wanted.limit_bytes):
            mismatches.append(
                f"size {volume.size_gib} GiB, requested {wanted.required_bytes} to "
                f"{wanted.limit_bytes or 'any'} bytes"
            )
        if (volume.snapshot_id or None) != wanted.snapshot_id and not from_backup:
            mismatches.append(
                f"source snapshot {volume.snapshot_id}, requested {wanted.snapshot_id}"
            )
        if (volume.source_volid or None) != wanted.source_volid:
            mismatches.append(
                f"source volume {volume.source_volid}, requested {wanted.source_volid}"
            )
        if wanted.volume_type and volume.volume_type not in (wanted.volume_type, None):
            mismatches.append(f"type {volume.volume_type}, requested {wanted.volume_type}")
        if mismatches:
            raise errors.AlreadyExists(
                f"volume {wanted.name} already exists ({volume.id}) with different parameters: "
                + "; ".join(mismatches)
            )

    def _create_or_adopt(self, spec: VolumeSpec, deadline: Deadline) -> Volume:
        metadata = {CLUSTER_METADATA_KEY: self.cluster_id, **spec.metadata}

        def post(answer_by: Deadline) -> Volume:
            return self.cloud.volumes.create(
                name=spec.name, size_gib=spec.size_gib, deadline=answer_by,
                volume_type=spec.volume_type, availability_zone=spec.availability_zone,
                metadata=metadata, snapshot_id=spec.snapshot_id, source_volid=spec.source_volid,
                backup_id=spec.backup_id,
            )

        # A POST in flight for this name is an earlier call's: it is joined, not repeated.
        # Should it fail without a clear answer and without making the volume, this call
        # posts once itself (that earlier call's caller has its answer already).
        joining = self.pending.in_flight(spec.name)
        while True:
            try:
                volume, joined = self.pending.run(spec.name, post, deadline,
                                                  what=f"the create of volume {spec.name}")
                if joined and volume.size_gib != spec.size_gib:
                    raise errors.AlreadyExists(
                        f"volume {spec.name} is being created ({volume.id}) with "
                        f"{volume.size_gib} GiB, not the {spec.size_gib} GiB requested"
                    )
                return volume
            except StillWaiting:
                raise  # the POST is still awaiting its answer: the retry joins it
            except (errors.CloudUnavailable, errors.Timeout) as exc:
                if isinstance(exc, errors.RateLimited):
                    raise
                # The POST may have been carried out; look before reporting failure.
                try:
                    adopted = self.find_own(spec.name, deadline.shorter(30.0))
                except errors.CinderCSIError:
                    raise exc from None
                if adopted is not None:
                    log.warning("create of %s failed (%s) but Cinder made %s; adopting it",
                                spec.name, exc, adopted.id)
                    return adopted
                if not joining or deadline.expired():
                    raise
                log.info("the earlier create of %s failed (%s) and made nothing; posting it "
                         "again", spec.name, exc)
                joining = False

    def _until_available(self, volume: Volume, deadline: Deadline) -> Volume:
        if volume.status in _USABLE:
            return volume
        if volume.status not in VOLUME_ERROR_STATES:
            try:
                volume = self.cloud.volumes.wait_for_status(
                    volume.id, _USABLE, deadline,
                    what=f"volume {volume.name} ({volume.id}) to become available",
                )
                return volume
            except errors.FailedPrecondition:
                volume = self.cloud.volumes.get(volume.id, deadline)
            except errors.NotFound:
                raise errors.CloudUnavailable(
                    f"volume {volume.name} ({volume.id}) was deleted while it was being "
                    "created; a retry creates it again"
                ) from None
        if volume.status == CREATION_FAILED and not volume.attachments:
            self._fail(volume, deadline, deleted=self._delete_failed(volume, deadline))
        raise errors.FailedPrecondition(
            f"volume {volume.name} ({volume.id}) exists but is in status {volume.status!r}; "
            "it may hold data, so it is left alone: an operator must repair or delete it"
        )

    def _delete_failed(self, volume: Volume, deadline: Deadline) -> bool:
        """Delete a volume whose creation failed; True once Cinder no longer has it. Never
        raises: a deletion that did not finish is the retry's to finish."""
        try:
            self.cloud.volumes.delete(volume.id, deadline)
            self.cloud.volumes.wait_for_delete(volume.id, deadline.shorter(DISCARD_WAIT_S))
        except errors.CinderCSIError as exc:
            log.error("could not delete failed volume %s (%s) yet: %s; the next CreateVolume "
                      "of %s tries again", volume.id, volume.status, exc, volume.name)
            return False
        return True

    def _fail(self, volume: Volume, deadline: Deadline, *, deleted: bool) -> NoReturn:
        reason = self._failure_reason(volume.id, deadline)
        message = (
            f"Cinder could not create volume {volume.name} ({volume.id}): status "
            f"{volume.status}" + (f": {reason}" if reason else "")
        )
        if not deleted:
            # Not RESOURCE_EXHAUSTED or any other final code: the failed volume may still
            # exist, and only a caller that retries with this name will find and delete it.
            raise errors.CloudUnavailable(
                message + "; deleting the failed volume has not finished yet, a retry "
                "finishes it and creates the volume again"
            )
        message += "; the failed volume was deleted, a retry starts clean"
        if reason and any(marker in reason.lower() for marker in _NO_BACKEND_MARKERS):
            raise errors.QuotaExceeded(message)
        raise errors.CloudUnavailable(message)

    def _failure_reason(self, volume_id: str, deadline: Deadline) -> str | None:
        """Cinder's last user message about the volume, when it left one."""
        try:
            texts = self.cloud.messages.for_volume(volume_id, deadline.shorter(5.0))
        except errors.CinderCSIError:
            return None  # only decorates the error being reported
        return texts[-1] if texts else None
