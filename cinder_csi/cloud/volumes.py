"""Cinder v3 volumes, their metadata, and volume types, in our own types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.cloud.collection import CinderCollection, Kind
from cinder_csi.cloud.models import VOLUME_ERROR_STATES, Volume, VolumeType
from cinder_csi.cloud.session import none_if_missing
from cinder_csi.deadline import Deadline

# In-use extend needs 3.42; name/metadata filters need 3.34; a volume from a backup 3.47.
EXTEND_IN_USE_MICROVERSION = "3.42"
RESTORE_BACKUP_MICROVERSION = "3.47"
# The attachments API (DELETE /attachments/{id}) needs 3.27.
ATTACHMENTS_MICROVERSION = "3.27"


class VolumeApi(CinderCollection[Volume]):
    kind = Kind("volume", Volume.from_api, VOLUME_ERROR_STATES)

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
