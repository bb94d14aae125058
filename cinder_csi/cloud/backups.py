"""Cinder v3 backups: made from a snapshot, restored by creating a volume from them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.cloud.listing import has_next, page_params
from cinder_csi.cloud.models import BACKUP_ERROR_STATES, Backup, Page
from cinder_csi.cloud.session import ServiceSession, none_if_missing
from cinder_csi.cloud.waits import until_deleted, until_status
from cinder_csi.deadline import Deadline

# Backup metadata needs 3.43; a backup's availability zone 3.51.
BACKUP_METADATA_MICROVERSION = "3.43"
BACKUP_ZONE_MICROVERSION = "3.51"


class BackupApi:
    def __init__(self, session: ServiceSession) -> None:
        self._session = session

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

    def get(self, backup_id: str, deadline: Deadline) -> Backup:
        resp = self._session.request(
            "GET", f"/backups/{backup_id}", what=f"backup {backup_id}", deadline=deadline,
            microversion=BACKUP_ZONE_MICROVERSION,
        )
        return Backup.from_api(resp.body["backup"])

    def find(self, backup_id: str, deadline: Deadline) -> Backup | None:
        return none_if_missing(lambda: self.get(backup_id, deadline))

    def find_by_name(self, name: str, deadline: Deadline) -> list[Backup]:
        page = self.list_page(deadline=deadline, limit=1000, filters={"name": name})
        return [b for b in page.items if b.name == name]

    def list_page(
        self,
        *,
        deadline: Deadline,
        limit: int | None,
        marker: str | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> Page[Backup]:
        resp = self._session.request(
            "GET", "/backups/detail", what="backup list", deadline=deadline,
            params=page_params(limit, marker, filters), microversion=BACKUP_ZONE_MICROVERSION,
        )
        items = tuple(Backup.from_api(b) for b in resp.body.get("backups", ()))
        more = has_next(resp.body, "backups_links")
        return Page(items=items, next_marker=items[-1].id if items and more else None)

    def delete(self, backup_id: str, deadline: Deadline) -> None:
        """Ask Cinder to delete; a backup already gone counts as deleted."""
        none_if_missing(lambda: self._session.request(
            "DELETE", f"/backups/{backup_id}", what=f"delete backup {backup_id}",
            deadline=deadline,
        ))

    def wait_for_status(self, backup_id: str, status: str, deadline: Deadline) -> Backup:
        return until_status(lambda: self.get(backup_id, deadline), f"backup {backup_id}",
                            (status,), deadline, failures=BACKUP_ERROR_STATES)

    def wait_for_delete(self, backup_id: str, deadline: Deadline) -> None:
        until_deleted(lambda: self.find(backup_id, deadline), f"backup {backup_id}", deadline)
