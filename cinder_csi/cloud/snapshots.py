"""Cinder v3 snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.cloud.listing import has_next, page_params
from cinder_csi.cloud.models import SNAPSHOT_ERROR_STATES, Page, Snapshot
from cinder_csi.cloud.session import ServiceSession, none_if_missing
from cinder_csi.cloud.waits import until_deleted, until_status
from cinder_csi.deadline import Deadline


class SnapshotApi:
    def __init__(self, session: ServiceSession) -> None:
        self._session = session

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

    def get(self, snapshot_id: str, deadline: Deadline) -> Snapshot:
        resp = self._session.request(
            "GET", f"/snapshots/{snapshot_id}", what=f"snapshot {snapshot_id}", deadline=deadline
        )
        return Snapshot.from_api(resp.body["snapshot"])

    def find(self, snapshot_id: str, deadline: Deadline) -> Snapshot | None:
        return none_if_missing(lambda: self.get(snapshot_id, deadline))

    def find_by_name(self, name: str, deadline: Deadline) -> list[Snapshot]:
        page = self.list_page(deadline=deadline, limit=1000, filters={"name": name})
        return [s for s in page.items if s.name == name]

    def list_page(
        self,
        *,
        deadline: Deadline,
        limit: int | None,
        marker: str | None = None,
        filters: Mapping[str, str] | None = None,
    ) -> Page[Snapshot]:
        resp = self._session.request(
            "GET", "/snapshots/detail", what="snapshot list", deadline=deadline,
            params=page_params(limit, marker, filters),
        )
        items = tuple(Snapshot.from_api(s) for s in resp.body.get("snapshots", ()))
        more = has_next(resp.body, "snapshots_links")
        return Page(items=items, next_marker=items[-1].id if items and more else None)

    def delete(self, snapshot_id: str, deadline: Deadline) -> None:
        """Ask Cinder to delete; a snapshot already gone counts as deleted."""
        none_if_missing(lambda: self._session.request(
            "DELETE", f"/snapshots/{snapshot_id}", what=f"delete snapshot {snapshot_id}",
            deadline=deadline,
        ))

    def wait_for_status(self, snapshot_id: str, status: str, deadline: Deadline) -> Snapshot:
        return until_status(lambda: self.get(snapshot_id, deadline), f"snapshot {snapshot_id}",
                            (status,), deadline, failures=SNAPSHOT_ERROR_STATES)

    def wait_for_delete(self, snapshot_id: str, deadline: Deadline) -> None:
        until_deleted(lambda: self.find(snapshot_id, deadline), f"snapshot {snapshot_id}",
                      deadline)
