"""CSI snapshots: Cinder snapshots, or Cinder backups (VolumeSnapshotClass ``type: backup``).

A snapshot lives on the volume's backend and in its zone; a backup is a copy in the backup
service (object storage) that survives the volume's backend and restores into any zone. As
upstream makes one: a Cinder snapshot of the volume (named like the CSI snapshot), a backup
from that snapshot, and, once the backup is available, the snapshot is deleted. The CSI
snapshot ID is then the backup's ID; restore, list and delete tell the two apart by looking
the ID up as a snapshot first, then as a backup.

A backup may take longer than one call: CreateSnapshot waits a bounded time and answers
``ready_to_use=false``; the snapshotter calls again with the same name, which finds the backup
and reports its progress. A backup that fails is deleted, with its snapshot, so a retry starts
clean; the answer says so only once it is gone, and a retry that finds it still being deleted
waits that out before making it anew (as snapshot_creator.py does for snapshots).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn, TypeVar

from cinder_csi import errors
from cinder_csi.cloud.connection import Cloud
from cinder_csi.cloud.models import Backup, Page, Snapshot
from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY
from cinder_csi.controller.snapshot_creator import (
    DISCARD_WAIT_S,
    READY_WAIT_S,
    SnapshotCreator,
    ready_window,
)
from cinder_csi.csi.validation import cinder_text
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)
T = TypeVar("T")

TYPE_PARAM = "type"  # "snapshot" (default) or "backup"
FORCE_CREATE_PARAM = "force-create"
AVAILABILITY_PARAM = "availability"  # the backup's availability zone
BACKUP_MAX_DURATION_PARAM = "backup-max-duration-seconds-per-gb"
METADATA_PARAMS = (
    "csi.storage.k8s.io/volumesnapshot/name",
    "csi.storage.k8s.io/volumesnapshot/namespace",
    "csi.storage.k8s.io/volumesnapshotcontent/name",
)
PARAMS = frozenset({TYPE_PARAM, FORCE_CREATE_PARAM, AVAILABILITY_PARAM,
                    BACKUP_MAX_DURATION_PARAM, *METADATA_PARAMS})
KINDS = ("snapshot", "backup")
# Upstream's bound on one backup wait: 30 s plus this many seconds per GiB of the snapshot.
BACKUP_BASE_WAIT_S = 30.0
BACKUP_WAIT_PER_GIB_S = 20
_TRUE = ("true", "1", "yes", "on")


@dataclass(frozen=True)
class SnapshotParams:
    """A VolumeSnapshotClass's parameters, checked."""

    kind: str = "snapshot"
    force: bool = True
    availability_zone: str | None = None
    wait_per_gib_s: int = BACKUP_WAIT_PER_GIB_S
    metadata: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> SnapshotParams:
        unknown = sorted(set(params) - PARAMS)
        if unknown:
            raise errors.InvalidArgument(
                f"unknown VolumeSnapshotClass parameter(s): {', '.join(unknown)}; supported: "
                f"{', '.join(sorted(PARAMS))}"
            )
        for key in (AVAILABILITY_PARAM, *METADATA_PARAMS):
            if key in params:
                cinder_text(params[key], f"parameter {key}")  # they reach Cinder as given
        kind = params.get(TYPE_PARAM) or "snapshot"
        if kind not in KINDS:
            raise errors.InvalidArgument(
                f"VolumeSnapshotClass type={kind!r} is not supported; use 'snapshot' or 'backup'"
            )
        per_gib = params.get(BACKUP_MAX_DURATION_PARAM)
        try:
            wait_per_gib = int(per_gib) if per_gib else BACKUP_WAIT_PER_GIB_S
        except ValueError:
            raise errors.InvalidArgument(
                f"VolumeSnapshotClass {BACKUP_MAX_DURATION_PARAM}={per_gib!r} is not a whole "
                "number of seconds"
            ) from None
        return cls(
            kind=kind,
            force=params.get(FORCE_CREATE_PARAM, "true").strip().lower() in _TRUE,
            availability_zone=params.get(AVAILABILITY_PARAM) or None,
            wait_per_gib_s=max(0, wait_per_gib),
            metadata={k: params[k] for k in METADATA_PARAMS if params.get(k)},
        )


@dataclass(frozen=True)
class CsiSnapshot:
    """What CSI says about a snapshot, whichever Cinder object holds it."""

    id: str
    source_volume_id: str
    size_gib: int
    created_at: datetime | None
    ready: bool

    @classmethod
    def of(cls, item: Snapshot | Backup) -> CsiSnapshot:
        return cls(item.id, item.volume_id, item.size_gib, item.created_at,
                   item.status == "available")


@dataclass(frozen=True)
class RestoreSource:
    """Where a volume restored from a CSI snapshot comes from."""

    snapshot_id: str | None
    backup_id: str | None
    size_gib: int
    zone: str | None  # a snapshot restores only in its volume's zone; a backup anywhere


class Snapshots:
    """One cloud's CSI snapshots: create, find, delete, and the source of a restore."""

    def __init__(self, cloud: Cloud, cluster_id: str) -> None:
        self.cloud = cloud
        self.cluster_id = cluster_id
        self.creator = SnapshotCreator(cloud)

    # -- create ---------------------------------------------------------------------------

    def create(self, name: str, source_id: str, params: SnapshotParams,
               deadline: Deadline) -> CsiSnapshot:
        if params.kind == "backup":
            return self._create_backup(name, source_id, params, deadline)
        return CsiSnapshot.of(self._snapshot_for(name, source_id, params, deadline))

    def _metadata(self, params: SnapshotParams) -> dict[str, str]:
        return {CLUSTER_METADATA_KEY: self.cluster_id, **params.metadata}

    def _snapshot_for(self, name: str, source_id: str, params: SnapshotParams,
                      deadline: Deadline) -> Snapshot:
        """The Cinder snapshot named ``name`` of ``source_id``, made if missing (exactly once,
        see snapshot_creator.py), awaited a bounded time (its status says whether it is
        ready)."""
        return self.creator.ensure(name, source_id, metadata=self._metadata(params),
                                   force=params.force, deadline=deadline)

    def _create_backup(self, name: str, source_id: str, params: SnapshotParams,
                       deadline: Deadline) -> CsiSnapshot:
        backup = self._backup_named(name, deadline)
        if backup is not None and backup.status == "deleting":
            # A failed one an earlier call left being deleted: wait it out, then make it anew.
            self.cloud.backups.wait_for_delete(backup.id, deadline)
            backup = None
        if backup is not None and backup.volume_id != source_id:
            raise errors.AlreadyExists(
                f"backup {name} already exists ({backup.id}) of volume {backup.volume_id}, "
                f"not of {source_id}"
            )
        if backup is None:
            snapshot = self._snapshot_for(name, source_id, params, deadline)
            if snapshot.status != "available":
                raise errors.OperationInProgress(
                    f"snapshot {snapshot.id} for backup {name} is still {snapshot.status!r}; "
                    "the backup starts once it is available (retry)"
                )
            backup = self.cloud.backups.create(
                name=name, volume_id=source_id, snapshot_id=snapshot.id,
                metadata=self._metadata(params), availability_zone=params.availability_zone,
                force=params.force, deadline=deadline,
                description="Created by the cinder.csi.openstack.org CSI driver",
            )
        if backup.status not in ("available", *_BACKUP_FAILED):
            wait = BACKUP_BASE_WAIT_S + params.wait_per_gib_s * max(backup.size_gib, 1)
            try:
                backup = self.cloud.backups.wait_for_status(
                    backup.id, "available", ready_window(deadline, wait))
            except errors.Timeout:
                backup = self.cloud.backups.get(backup.id, deadline)
            except errors.FailedPrecondition:
                backup = self.cloud.backups.get(backup.id, deadline)
        if backup.status in _BACKUP_FAILED:
            self._discard_backup(backup, deadline)
        if backup.status == "available":
            self._drop_intermediate_snapshot(backup, deadline)
        return CsiSnapshot.of(backup)

    def _backup_named(self, name: str, deadline: Deadline) -> Backup | None:
        found = self.cloud.backups.find_by_name(name, deadline)
        if len(found) > 1:
            found.sort(key=lambda b: (b.created_at is None, b.created_at, b.id))
            log.error("several Cinder backups are named %s: %s; using %s",
                      name, ", ".join(b.id for b in found), found[0].id)
        return found[0] if found else None

    def _discard_backup(self, backup: Backup, deadline: Deadline) -> NoReturn:
        """Delete a failed backup (and its snapshot), then fail; the answer says it was
        deleted only once Cinder no longer has it (else the retry finishes the deletion)."""
        try:
            self.cloud.backups.delete(backup.id, deadline)
            # At most a while, leaving time to drop the snapshot and answer.
            self.cloud.backups.wait_for_delete(backup.id, ready_window(deadline, DISCARD_WAIT_S))
            outcome = "it was deleted, a retry starts clean"
        except errors.CinderCSIError as exc:
            log.error("could not delete failed backup %s yet: %s; the next CreateSnapshot of "
                      "%s tries again", backup.id, exc, backup.name)
            outcome = ("deleting it has not finished yet, a retry finishes it and creates the "
                       "backup again")
        self._drop_intermediate_snapshot(backup, deadline)
        reason = f": {backup.fail_reason}" if backup.fail_reason else ""
        raise errors.CloudUnavailable(
            f"Cinder could not create backup {backup.name} ({backup.id}), status "
            f"{backup.status}{reason}; {outcome}"
        )

    def _drop_intermediate_snapshot(self, backup: Backup, deadline: Deadline) -> None:
        """The snapshot a backup was made from, once it is no longer needed: only ours, the
        one named like the backup."""
        if not backup.snapshot_id:
            return
        snapshot = self.cloud.snapshots.find(backup.snapshot_id, deadline)
        if snapshot is None or snapshot.name != backup.name:
            return
        if snapshot.status in ("available", "error"):
            self.cloud.snapshots.delete(snapshot.id, deadline)
        try:
            # Gone before we answer, so the source volume can be deleted right after.
            self.cloud.snapshots.wait_for_delete(snapshot.id, deadline.shorter(READY_WAIT_S))
        except (errors.Timeout, errors.FailedPrecondition) as exc:
            log.warning("snapshot %s of backup %s is not gone yet: %s", snapshot.id, backup.id,
                        exc)

    # -- find, delete ---------------------------------------------------------------------

    def find(self, snapshot_id: str, deadline: Deadline) -> CsiSnapshot | None:
        item = self._lookup(snapshot_id, deadline)
        return CsiSnapshot.of(item) if item is not None else None

    def _lookup(self, snapshot_id: str, deadline: Deadline) -> Snapshot | Backup | None:
        return (self.cloud.snapshots.find(snapshot_id, deadline)
                or self.cloud.backups.find(snapshot_id, deadline))

    def delete(self, snapshot_id: str, deadline: Deadline) -> None:
        item = self._lookup(snapshot_id, deadline)
        if item is None:
            return
        api = self.cloud.backups if isinstance(item, Backup) else self.cloud.snapshots
        kind = "backup" if isinstance(item, Backup) else "snapshot"
        if item.status != "deleting":
            try:
                api.delete(snapshot_id, deadline)
            except errors.InvalidArgument as exc:
                raise errors.FailedPrecondition(
                    f"Cinder refused to delete {kind} {snapshot_id} (status {item.status}): "
                    f"{exc.message}"
                ) from None
        api.wait_for_delete(snapshot_id, deadline)
        if isinstance(item, Backup):
            self._drop_intermediate_snapshot(item, deadline)

    # -- restore --------------------------------------------------------------------------

    def restore_source(self, snapshot_id: str, deadline: Deadline) -> RestoreSource:
        snapshot = self.cloud.snapshots.find(snapshot_id, deadline)
        if snapshot is not None:
            self._require_available("snapshot", snapshot_id, snapshot.status)
            parent = self.cloud.volumes.find(snapshot.volume_id, deadline)
            # Cinder restores a snapshot only in its own volume's zone.
            zone = parent.availability_zone if parent is not None else None
            return RestoreSource(snapshot.id, None, snapshot.size_gib, zone)
        backup = self.cloud.backups.find(snapshot_id, deadline)
        if backup is None:
            raise errors.NotFound(
                f"source snapshot {snapshot_id} does not exist (neither a Cinder snapshot nor "
                "a backup)"
            )
        self._require_available("backup", snapshot_id, backup.status)
        if not self.cloud.volumes.can_restore_backups():
            raise errors.FailedPrecondition(
                f"{snapshot_id} is a Cinder backup, and this cloud's Cinder is older than API "
                "3.47, which creates a volume from a backup"
            )
        return RestoreSource(None, backup.id, backup.size_gib, None)

    @staticmethod
    def _require_available(kind: str, snapshot_id: str, status: str) -> None:
        if status != "available":
            raise errors.FailedPrecondition(
                f"source {kind} {snapshot_id} is {status!r}, not available"
            )


_BACKUP_FAILED = ("error", "error_deleting", "error_restoring")


# -- listing ------------------------------------------------------------------------------------

# ListSnapshots walks the snapshots, then the backups; a token in the backups phase has this
# prefix (alone: the first page of backups).
BACKUP_PHASE = "backups:"


def list_snapshots(
    cloud: Cloud, *, source_volume_id: str | None, limit: int, token: str,
    deadline: Deadline,
) -> tuple[list[CsiSnapshot], str]:
    """One page of CSI snapshots (Cinder snapshots, then backups) and the next token."""
    filters = {"volume_id": source_volume_id} if source_volume_id else {}
    entries: list[CsiSnapshot] = []
    if not token.startswith(BACKUP_PHASE):
        page = _paged(lambda: cloud.snapshots.list_page(
            deadline=deadline, limit=limit, marker=token or None, filters=filters), token)
        entries = [CsiSnapshot.of(s) for s in page.items]
        if page.next_marker:
            return entries, page.next_marker
        if len(entries) >= limit:
            return entries, BACKUP_PHASE
        token = BACKUP_PHASE
    marker = token[len(BACKUP_PHASE):] or None
    backups = _paged(lambda: cloud.backups.list_page(
        deadline=deadline, limit=limit - len(entries), marker=marker, filters=filters), token)
    entries += [CsiSnapshot.of(b) for b in backups.items]
    return entries, (BACKUP_PHASE + backups.next_marker) if backups.next_marker else ""


def _paged(call: Callable[[], Page[T]], token: str) -> Page[T]:
    try:
        return call()
    except (errors.InvalidArgument, errors.NotFound):
        if token:
            raise errors.InvalidToken(
                f"starting_token {token} is no longer valid; restart the listing"
            ) from None
        raise
