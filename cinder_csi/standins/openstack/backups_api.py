"""Cinder v3 backups over HTTP: create, list (summary and detail), show, delete, restore."""

from __future__ import annotations

from typing import Any

from . import listing, timefmt
from .backups import BackupStore
from .block_storage_views import links
from .block_store import BlockStore
from .errors import bad_request, policy_refusal
from .models import Backup, VolumeRequest
from .wire import Request, Response, Router

FILTERS = frozenset({"name", "status", "volume_id", "id", "availability_zone"})
SORT_KEYS = frozenset({"id", "name", "status", "size", "created_at", "updated_at",
                       "volume_id", "availability_zone"})


class BackupsApi:
    def __init__(self, backups: BackupStore, store: BlockStore) -> None:
        self.backups = backups
        self.store = store

    def add_routes(self, r: Router) -> None:
        r.add("GET", "/backups", lambda q: self._list(q, detail=False))
        r.add("GET", "/backups/detail", lambda q: self._list(q, detail=True))
        r.add("POST", "/backups", self._create)
        r.add("GET", "/backups/{id}", self._show)
        r.add("DELETE", "/backups/{id}", self._delete)
        r.add("POST", "/backups/{id}/restore", self._restore)
        r.add("POST", "/backups/{id}/action", self._action)

    def _owner(self, request: Request) -> str | None:
        assert request.auth is not None
        return None if request.auth.is_admin else request.project_id

    def _scope(self, request: Request) -> str | None:
        assert request.auth is not None
        if request.auth.is_admin and request.arg("all_tenants") in ("1", "true", "True"):
            return request.arg("project_id")
        return request.project_id

    def _list(self, request: Request, *, detail: bool) -> Response:
        listing.check_filters(request, FILTERS)
        found = [b for b in self.backups.backups(self._scope(request)) if _matches(b, request)]
        chosen, extra = listing.page(
            request, found,
            field=lambda b, k: (b.created_at, b.seq) if k == "created_at" else getattr(b, k),
            item_id=lambda b: b.id, sort_keys=SORT_KEYS, collection="backups")
        items = [view(request, b) if detail else summary(request, b) for b in chosen]
        return Response(200, {"backups": items, **extra})

    def _create(self, request: Request) -> Response:
        body = request.json_object("backup")
        if not body.get("volume_id"):
            raise bad_request("Invalid input received: volume_id is required.")
        if "metadata" in body and not request.at_least(3, 43):
            raise bad_request("Invalid input for field/attribute backup. Value: metadata. "
                              "Additional properties are not allowed ('metadata' was unexpected)")
        if "availability_zone" in body and not request.at_least(3, 51):
            raise bad_request("Invalid input for field/attribute backup. Additional properties "
                              "are not allowed ('availability_zone' was unexpected)")
        metadata = body.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise bad_request("Invalid input received: metadata must be a dict.")
        assert request.auth is not None and request.project_id is not None
        backup = self.backups.create(
            request.project_id, request.auth.user_id,
            volume_id=str(body["volume_id"]),
            snapshot_id=str(body["snapshot_id"]) if body.get("snapshot_id") else None,
            name=body.get("name"), description=body.get("description"),
            force=str(body.get("force")).lower() in ("true", "1", "yes"),
            metadata={str(k): str(v) for k, v in metadata.items()},
            availability_zone=body.get("availability_zone"), container=body.get("container"),
        )
        created: dict[str, Any] = {"id": backup.id, "name": backup.name,
                                   "links": links(request, "backups", backup.id)}
        if request.at_least(3, 43):
            created["metadata"] = backup.metadata
        return Response(202, {"backup": created})

    def _show(self, request: Request) -> Response:
        backup = self.backups.get(request.params["id"], self._owner(request))
        return Response(200, {"backup": view(request, backup)})

    def _delete(self, request: Request) -> Response:
        self.backups.delete(request.params["id"], self._owner(request))
        return Response(202)

    def _restore(self, request: Request) -> Response:
        """Restore into a new volume (the stand-in does not restore over an existing one)."""
        spec = request.json_object("restore")
        if spec.get("volume_id"):
            raise bad_request("Invalid input received: the stand-in restores a backup only "
                              "into a new volume; create one with backup_id instead.")
        backup = self.backups.get(request.params["id"], self._owner(request))
        assert request.auth is not None and request.project_id is not None
        name = spec.get("name") or f"restore_backup_{backup.id}"
        volume = self.store.create_volume(
            VolumeRequest(name=name, description=None, size=None, volume_type=None,
                          availability_zone=None, metadata={}, snapshot_id=None,
                          source_volid=None, multiattach=False, backup_id=backup.id),
            request.project_id, request.auth.user_id,
        )
        return Response(202, {"restore": {"backup_id": backup.id, "volume_id": volume.id,
                                          "volume_name": volume.name}})

    def _action(self, request: Request) -> Response:
        body = request.json_object()
        if "os-reset_status" not in body:
            raise bad_request(f"There is no such action: {', '.join(body) or 'none'}")
        assert request.auth is not None
        if not request.auth.is_admin:
            raise policy_refusal("backup:backup-reset_status")
        self.backups.reset_status(request.params["id"],
                                  str(request.json_object("os-reset_status").get("status")))
        return Response(202)


def _matches(backup: Backup, request: Request) -> bool:
    for key in FILTERS:
        wanted = request.arg(key)
        if wanted is not None and str(getattr(backup, key) or "") != wanted:
            return False
    return True


def summary(request: Request, backup: Backup) -> dict[str, Any]:
    return {"id": backup.id, "name": backup.name, "links": links(request, "backups", backup.id)}


def view(request: Request, backup: Backup) -> dict[str, Any]:
    detail: dict[str, Any] = {
        **summary(request, backup),
        "description": backup.description,
        "status": backup.status,
        "size": backup.size,
        "volume_id": backup.volume_id,
        "snapshot_id": backup.snapshot_id,
        "availability_zone": backup.availability_zone,
        "container": backup.container,
        "created_at": timefmt.cinder(backup.created_at),
        "updated_at": timefmt.cinder(backup.updated_at) if backup.updated_at else None,
        "data_timestamp": timefmt.cinder(backup.created_at),
        "fail_reason": backup.fail_reason,
        "object_count": 0 if backup.status != "available" else max(1, backup.size),
        "has_dependent_backups": False,
        "is_incremental": False,
    }
    if request.at_least(3, 18):
        detail["os-backup-project-attr:project_id"] = backup.project_id
    if request.at_least(3, 43):
        detail["metadata"] = backup.metadata
    if request.at_least(3, 56):
        detail["user_id"] = backup.user_id
    if request.at_least(3, 64):
        detail["encryption_key_id"] = None
    return detail
