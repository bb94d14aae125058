"""Cinder's backup service: copies of a volume, or of one of its snapshots, kept apart from the
volume backend, and restored into a new volume.

As in Cinder: a backup starts ``creating`` while its source (the volume, or the snapshot it is
taken from) is ``backing-up``; it ends ``available`` (or ``error``), and the source goes back
to its status. Only an ``available`` or ``error`` backup can be deleted. A volume created from
a backup (API 3.47) holds the backup ``restoring`` until it is ``available``. Backups count
against the ``backups`` and ``backup_gigabytes`` quotas, not against ``gigabytes``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from . import backing
from .block_store import STUCK_POLL, BlockStore
from .errors import bad_request, not_found, over_limit
from .models import Backup, Restore

DELETABLE = ("available", "error")
BACKUP_FAILED_REASON = "Injected fault: the backup driver failed."


class BackupStore:
    """The backups of every project; shares the block store's lock and scheduler."""

    def __init__(self, store: BlockStore) -> None:
        self.store = store
        self.lock = store.lock
        self._backups: dict[str, Backup] = {}
        self._seq = 0
        store.restores = self

    def backup_file(self, backup_id: str) -> Path:
        return self.store.state_dir / "backups" / f"{backup_id}.img"

    # --- reads ----------------------------------------------------------------------------

    def backups(self, project_id: str | None = None) -> list[Backup]:
        with self.lock:
            return [_copy(b) for b in self._backups.values()
                    if project_id is None or b.project_id == project_id]

    def get(self, backup_id: str, project_id: str | None) -> Backup:
        with self.lock:
            return _copy(self._backup(backup_id, project_id))

    def _backup(self, backup_id: str, project_id: str | None) -> Backup:
        backup = self._backups.get(backup_id)
        if backup is None or (project_id is not None and backup.project_id != project_id):
            raise not_found(f"Backup {backup_id} could not be found.")
        return backup

    # --- create, delete -------------------------------------------------------------------

    def create(self, project_id: str, user_id: str, *, volume_id: str, snapshot_id: str | None,
               name: str | None, description: str | None, force: bool,
               metadata: Mapping[str, str], availability_zone: str | None,
               container: str | None) -> Backup:
        with self.lock:
            if availability_zone is not None and availability_zone not in self.store.zones:
                raise bad_request(f"Invalid input received: Availability zone "
                                  f"'{availability_zone}' is invalid.")
            size = (self.store.get_snapshot(snapshot_id, project_id).size if snapshot_id
                    else self.store.get_volume(volume_id, project_id).size)
            self._check_quota(project_id, size)
            source = self.store.start_backup(volume_id, snapshot_id, project_id, force=force)
            self._seq += 1
            backup = Backup(
                id=str(uuid.uuid4()), name=name, description=description, volume_id=volume_id,
                snapshot_id=snapshot_id, size=source.size, status="creating",
                project_id=project_id, user_id=user_id, metadata=dict(metadata),
                availability_zone=availability_zone or source.zone, created_at=time.time(),
                updated_at=None, seq=self._seq, container=container or "volumebackups",
            )
            self._backups[backup.id] = backup
            # The backup holds the bytes of the moment it was started.
            if source.path.exists():
                backing.copy(source.path, self.backup_file(backup.id), backup.size)
            self._later(backup.id, "creating", self._finish_create)
            return _copy(backup)

    def _finish_create(self, backup: Backup) -> None:
        self.store.finish_backup(backup.volume_id, backup.snapshot_id)
        if self.store.faults.take_failure("fail_backup", backup.id, backup.name or ""):
            backup.fail_reason = BACKUP_FAILED_REASON
            self._set_status(backup, "error")
            return
        self._set_status(backup, "available")

    def _check_quota(self, project_id: str, size: int) -> None:
        mine = [b for b in self._backups.values() if b.project_id == project_id]
        quota = self.store.quota
        count_limit = quota.limit(project_id, "backups")
        if count_limit >= 0 and len(mine) + 1 > count_limit:
            raise over_limit(f"BackupLimitExceeded: Maximum number of backups allowed "
                             f"({count_limit}) exceeded")
        gib_limit = quota.limit(project_id, "backup_gigabytes")
        used = sum(b.size for b in mine)
        if gib_limit >= 0 and used + size > gib_limit:
            raise over_limit(f"VolumeBackupSizeExceedsAvailableQuota: Requested backup exceeds "
                             f"allowed Backup gigabytes quota. Requested {size}G, quota is "
                             f"{gib_limit}G and {used}G has been consumed.")

    def delete(self, backup_id: str, project_id: str | None) -> None:
        with self.lock:
            backup = self._backup(backup_id, project_id)
            if backup.status not in DELETABLE:
                raise bad_request("Invalid backup: Backup status must be available or error")
            self._set_status(backup, "deleting")
            self._later(backup.id, "deleting", self._finish_delete)

    def _finish_delete(self, backup: Backup) -> None:
        backing.remove(self.backup_file(backup.id))
        del self._backups[backup.id]

    def reset_status(self, backup_id: str, status: str) -> None:
        with self.lock:
            self._set_status(self._backup(backup_id, None), status)

    # --- restore (RestoreSources, called by the block store under the lock) ----------------

    def restore_source(self, backup_id: str, project_id: str) -> Restore:
        backup = self._backup(backup_id, project_id)
        if backup.status != "available":
            raise bad_request(f"Invalid backup: Backup status must be available but the "
                              f"current status is \"{backup.status}\".")
        return Restore(self.backup_file(backup.id), backup.size)

    def begin_restore(self, backup_id: str) -> None:
        self._set_status(self._backups[backup_id], "restoring")

    def end_restore(self, backup_id: str) -> None:
        backup = self._backups.get(backup_id)
        if backup is not None and backup.status == "restoring":
            self._set_status(backup, "available")

    # --- status machine -------------------------------------------------------------------

    def _set_status(self, backup: Backup, status: str) -> None:
        backup.status = status
        backup.updated_at = time.time()

    def _later(self, backup_id: str, expected: str, finish: Callable[[Backup], None]) -> None:
        def fire() -> None:
            with self.lock:
                backup = self._backups.get(backup_id)
                if backup is None or backup.status != expected:
                    return
                if self.store.faults.is_stuck(backup.id, backup.name or "", backup.status):
                    self.store.scheduler.call_later(STUCK_POLL, fire)
                    return
                finish(backup)

        self.store.scheduler.call_later(self.store.transition_pause("backup"), fire)


def _copy(backup: Backup) -> Backup:
    return dataclasses.replace(backup, metadata=dict(backup.metadata))
