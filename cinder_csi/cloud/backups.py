"""Cinder v3 backups: made from a snapshot, restored by creating a volume from them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.cloud.collection import CinderCollection, Kind
from cinder_csi.cloud.models import BACKUP_ERROR_STATES, Backup
from cinder_csi.deadline import Deadline

# Backup metadata needs 3.43; a backup's availability zone 3.51.
BACKUP_METADATA_MICROVERSION = "3.43"
BACKUP_ZONE_MICROVERSION = "3.51"


class BackupApi(CinderCollection[Backup]):
    kind = Kind("backup", Backup.from_api, BACKUP_ERROR_STATES, BACKUP_ZONE_MICROVERSION)

    def create(
        self,
        *,
        name: str,
        volume_id: str,
        deadline: Deadline,
        snapshot_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        availability_zone: str | None = None,
        force: bool = False,
        description: str | None = None,
    ) -> Backup:
        body: dict[str, Any] = {"name": name, "volume_id": volume_id, "force": force}
        if snapshot_id:
            body["snapshot_id"] = snapshot_id
        if description:
            body["description"] = description
        microversion = None
        if metadata:
            body["metadata"] = dict(metadata)
            microversion = BACKUP_METADATA_MICROVERSION
        if availability_zone:
            body["availability_zone"] = availability_zone
            microversion = BACKUP_ZONE_MICROVERSION
        resp = self._session.request(
            "POST", "/backups", what=f"create backup {name} of volume {volume_id}",
            deadline=deadline, json={"backup": body},
            microversion=microversion or self._session.microversion,
        )
        # The create answer holds only id, name and links: read the whole record.
        return self.get(str(resp.body["backup"]["id"]), deadline)
