"""Cinder v3 snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.cloud.collection import CinderCollection, Kind
from cinder_csi.cloud.models import SNAPSHOT_ERROR_STATES, Snapshot
from cinder_csi.deadline import Deadline


class SnapshotApi(CinderCollection[Snapshot]):
    kind = Kind("snapshot", Snapshot.from_api, SNAPSHOT_ERROR_STATES)

    def create(
        self,
        *,
        volume_id: str,
        name: str,
        deadline: Deadline,
        metadata: Mapping[str, str] | None = None,
        force: bool = True,
    ) -> Snapshot:
        body: dict[str, Any] = {"volume_id": volume_id, "name": name, "force": force}
        if metadata:
            body["metadata"] = dict(metadata)
        resp = self._session.request(
            "POST", "/snapshots", what=f"create snapshot {name} of volume {volume_id}",
            deadline=deadline, json={"snapshot": body},
        )
        return Snapshot.from_api(resp.body["snapshot"])
