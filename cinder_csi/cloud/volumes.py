"""Cinder v3 volumes, their metadata, and volume types, in our own types."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cinder_csi.cloud.listing import has_next, page_params
from cinder_csi.cloud.models import VOLUME_ERROR_STATES, Page, Volume, VolumeType
from cinder_csi.cloud.session import ServiceSession, none_if_missing
from cinder_csi.cloud.waits import until_deleted, until_status
from cinder_csi.deadline import Deadline

# In-use extend needs 3.42; name/metadata filters need 3.34; a volume from a backup 3.47.
EXTEND_IN_USE_MICROVERSION = "3.42"
RESTORE_BACKUP_MICROVERSION = "3.47"
# The attachments API (DELETE /attachments/{id}) needs 3.27.
ATTACHMENTS_MICROVERSION = "3.27"


class VolumeApi:
    def __init__(self, session: ServiceSession) -> None:
        self._session = session

    def create(
        self,
        *,
        name: str,
        size_gib: int,
        deadline: Deadline,
        volume_type: str | None = None,
        availability_zone: str | None = None,
        metadata: Mapping[str, str] | None = None,
        snapshot_id: str | None = None,
        source_volid: str | None = None,
        backup_id: str | None = None,
        description: str | None = None,
    ) -> Volume:
        body: dict[str, Any] = {"name": name, "size": size_gib}
        optional = {
            "volume_type": volume_type,
            "availability_zone": availability_zone,
            "snapshot_id": snapshot_id,
            "source_volid": source_volid,
            "backup_id": backup_id,
            "description": description,
        }
        body.update({k: v for k, v in optional.items() if v})
        if metadata:
            body["metadata"] = dict(metadata)
        resp = self._session.request(
            "POST", "/volumes", what=f"create volume {name}", deadline=deadline,
            json={"volume": body},
            microversion=RESTORE_BACKUP_MICROVERSION if backup_id else None,
        )
        return Volume.from_api(resp.body["volume"])

    def can_restore_backups(self) -> bool:
        """Whether this Cinder creates a volume from a backup (API 3.47 or later)."""
        return self._session.supports(RESTORE_BACKUP_MICROVERSION)

    def get(self, volume_id: str, deadline: Deadline) -> Volume:
        resp = self._session.request(
            "GET", f"/volumes/{volume_id}", what=f"volume {volume_id}", deadline=deadline
        )
        return Volume.from_api(resp.body["volume"])

    def find(self, volume_id: str, deadline: Deadline) -> Volume | None:
        return none_if_missing(lambda: self.get(volume_id, deadline))

    def find_by_name(self, name: str, deadline: Deadline) -> list[Volume]:
        """Every volume with exactly this name (Cinder's filter may be a prefix match)."""
        page = self.list_page(deadline=deadline, filters={"name": name}, limit=None)
        return [v for v in page.items if v.name == name]

    def list_page(
        self,
        *,
        deadline: Deadline,
        limit: int | None,
        marker: str | None = None,
        filters: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page[Volume]:
        """One page, oldest first so markers stay stable while volumes are added."""
        params = page_params(limit, marker, filters)
        if metadata:
            params["metadata"] = json.dumps(dict(metadata), sort_keys=True)
        if limit is None:
            return self._all_pages(params, deadline)
        resp = self._session.request(
            "GET", "/volumes/detail", what="volume list", deadline=deadline, params=params
        )
        items = tuple(Volume.from_api(v) for v in resp.body.get("volumes", ()))
        more = has_next(resp.body, "volumes_links")
        return Page(items=items, next_marker=items[-1].id if items and more else None)

    def _all_pages(self, params: dict[str, str], deadline: Deadline) -> Page[Volume]:
        collected: list[Volume] = []
        marker: str | None = None
        while True:
            query = dict(params, limit="1000")
            if marker:
                query["marker"] = marker
            resp = self._session.request(
                "GET", "/volumes/detail", what="volume list", deadline=deadline, params=query
            )
            batch = [Volume.from_api(v) for v in resp.body.get("volumes", ())]
            collected.extend(batch)
            if not batch or not has_next(resp.body, "volumes_links"):
                return Page(items=tuple(collected), next_marker=None)
            marker = batch[-1].id

    def delete(self, volume_id: str, deadline: Deadline) -> None:
        """Ask Cinder to delete; a volume already gone counts as deleted."""
        none_if_missing(lambda: self._session.request(
            "DELETE", f"/volumes/{volume_id}", what=f"delete volume {volume_id}",
            deadline=deadline,
        ))

    def remove_attachment(self, volume_id: str, attachment_id: str, deadline: Deadline) -> None:
        """Drop Cinder's record of one attachment, whatever Nova knows: for a server Nova no
        longer has. The attachments API when the cloud has it, else os-force_detach (which
        default policy grants to admins only)."""
        what = f"attachment {attachment_id} of volume {volume_id}"
        if self._session.supports(ATTACHMENTS_MICROVERSION):
            none_if_missing(lambda: self._session.request(
                "DELETE", f"/attachments/{attachment_id}", what=f"delete {what}",
                deadline=deadline, microversion=ATTACHMENTS_MICROVERSION,
            ))
            return
        none_if_missing(lambda: self._action(
            volume_id, {"os-force_detach": {"attachment_id": attachment_id}}, deadline,
            what=f"force-detach {what}",
        ))

    def extend(self, volume_id: str, new_size_gib: int, deadline: Deadline) -> None:
        self._action(volume_id, {"os-extend": {"new_size": new_size_gib}}, deadline,
                     what=f"extend volume {volume_id} to {new_size_gib} GiB",
                     microversion=EXTEND_IN_USE_MICROVERSION)

    def retype(self, volume_id: str, new_type: str, deadline: Deadline) -> None:
        self._action(volume_id,
                     {"os-retype": {"new_type": new_type, "migration_policy": "on-demand"}},
                     deadline, what=f"retype volume {volume_id} to {new_type}")

    def can_extend_in_use(self) -> bool:
        """Whether this Cinder grows a volume while it is attached."""
        return self._session.supports(EXTEND_IN_USE_MICROVERSION)

    def set_metadata(self, volume_id: str, items: Mapping[str, str], deadline: Deadline) -> None:
        """Add or overwrite these metadata keys; the volume's other keys stay."""
        self._session.request(
            "POST", f"/volumes/{volume_id}/metadata", what=f"metadata of volume {volume_id}",
            deadline=deadline, json={"metadata": dict(items)},
        )

    def delete_metadata(self, volume_id: str, key: str, deadline: Deadline) -> None:
        """Remove one metadata key (it goes into the URL path: no "/"); a key already gone
        counts as removed."""
        none_if_missing(lambda: self._session.request(
            "DELETE", f"/volumes/{volume_id}/metadata/{key}",
            what=f"metadata of volume {volume_id}", deadline=deadline,
        ))

    def _action(
        self, volume_id: str, body: dict[str, Any], deadline: Deadline, *, what: str,
        microversion: str | None = None,
    ) -> None:
        self._session.request(
            "POST", f"/volumes/{volume_id}/action", what=what, deadline=deadline, json=body,
            microversion=microversion,
        )

    def wait_for_status(
        self,
        volume_id: str,
        statuses: Iterable[str],
        deadline: Deadline,
        *,
        failures: Iterable[str] = VOLUME_ERROR_STATES,
        what: str | None = None,
    ) -> Volume:
        """The volume once its status is one of ``statuses``; one in ``failures`` ends the
        wait with FailedPrecondition, the deadline with Timeout (see cloud/waits.py)."""
        return until_status(lambda: self.get(volume_id, deadline), f"volume {volume_id}",
                            statuses, deadline, failures=failures, what=what)

    def wait_for_delete(self, volume_id: str, deadline: Deadline) -> None:
        until_deleted(lambda: self.find(volume_id, deadline), f"volume {volume_id}", deadline)

    def types(self, deadline: Deadline) -> list[VolumeType]:
        resp = self._session.request("GET", "/types", what="volume types", deadline=deadline)
        return [VolumeType.from_api(t) for t in resp.body.get("volume_types", ())]

    def find_type(self, name_or_id: str, deadline: Deadline) -> VolumeType | None:
        for volume_type in self.types(deadline):
            if name_or_id in (volume_type.name, volume_type.id):
                return volume_type
        return None

    def default_type(self, deadline: Deadline) -> VolumeType | None:
        resp = none_if_missing(lambda: self._session.request(
            "GET", "/types/default", what="default volume type", deadline=deadline
        ))
        return VolumeType.from_api(resp.body["volume_type"]) if resp is not None else None

    def availability_zones(self, deadline: Deadline) -> list[str]:
        resp = self._session.request(
            "GET", "/os-availability-zone", what="availability zones", deadline=deadline
        )
        return [
            str(zone.get("zoneName"))
            for zone in resp.body.get("availabilityZoneInfo", ())
            if (zone.get("zoneState") or {}).get("available", True)
        ]
