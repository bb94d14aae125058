"""Cinder v3 over HTTP: version discovery, routes and the JSON views of the block store."""

from __future__ import annotations

from typing import Any

from . import block_storage_views as views
from . import layout, listing, schema
from .backups_api import BackupsApi
from .block_store import BlockStore
from .errors import ApiError, bad_request, not_found, policy_refusal
from .identity import Identity
from .messages import Message
from .microversion import CINDER
from .models import Snapshot, Volume, VolumeRequest
from .quotas import DEFAULTS
from .wire import Request, Response, Router

# First path segments that are collections, so a URL without a project id is recognisable.
_COLLECTIONS = frozenset({"volumes", "snapshots", "types", "os-quota-sets", "limits",
                          "os-availability-zone", "attachments", "backups", "extensions",
                          "messages"})
_VOLUME_FILTERS = frozenset({"name", "status", "metadata", "availability_zone", "bootable",
                             "size", "volume_type", "id"})
_VOLUME_SORT = frozenset({"id", "name", "status", "size", "availability_zone", "created_at",
                          "updated_at", "volume_type"})
_SNAPSHOT_FILTERS = frozenset({"name", "status", "volume_id", "metadata", "id"})
_MESSAGE_FILTERS = frozenset({"resource_uuid", "resource_type", "event_id", "request_id",
                              "message_level"})
MESSAGES_MICROVERSION = (3, 3)
MESSAGE_FILTERS_MICROVERSION = (3, 5)
_SNAPSHOT_SORT = frozenset({"id", "name", "status", "size", "created_at", "updated_at",
                            "volume_id"})


class BlockStorageApi:
    def __init__(self, store: BlockStore, identity: Identity,
                 backups: BackupsApi | None = None) -> None:
        self.store = store
        self.identity = identity
        self.backups = backups
        self.router = self._routes()

    def handle(self, request: Request) -> Response:
        """`request.path` is relative to /volume."""
        root = f"{request.base_url}{layout.VOLUME_V3}/"
        path = request.path.rstrip("/")
        if path == "":
            return Response(300, {"versions": [CINDER.document(root)]})
        if path != "/v3" and not path.startswith("/v3/"):
            raise not_found("The resource could not be found.")
        if path == "/v3":
            # Cinder answers the versioned root with a list, like the unversioned one.
            return Response(200, {"versions": [CINDER.document(root)]})
        auth = self.identity.validate(request.headers.get("x-auth-token"))
        segments = path[len("/v3/"):].split("/")
        if segments[0] not in _COLLECTIONS:
            if segments[0] != auth.project_id:
                version = CINDER.negotiate(request.headers)  # a bad version is the first error
                raise ApiError(400, "Malformed request url",
                               headers=CINDER.response_headers(version))
            segments = segments[1:]
        return self.router.serve(
            request, auth, CINDER, segments,
            service_url=f"{request.base_url}{layout.VOLUME_V3}/{auth.project_id}",
        )

    def _routes(self) -> Router:
        r = Router()
        r.add("GET", "/volumes", lambda q: self._list_volumes(q, detail=False))
        r.add("GET", "/volumes/detail", lambda q: self._list_volumes(q, detail=True))
        r.add("POST", "/volumes", self._create_volume)
        r.add("GET", "/volumes/{id}", self._show_volume)
        r.add("PUT", "/volumes/{id}", self._update_volume)
        r.add("DELETE", "/volumes/{id}", self._delete_volume)
        r.add("POST", "/volumes/{id}/action", self._volume_action)
        r.add("GET", "/volumes/{id}/metadata", self._show_metadata)
        r.add("POST", "/volumes/{id}/metadata", lambda q: self._set_metadata(q, replace=False))
        r.add("PUT", "/volumes/{id}/metadata", lambda q: self._set_metadata(q, replace=True))
        r.add("GET", "/volumes/{id}/metadata/{key}", self._show_metadata_key)
        r.add("PUT", "/volumes/{id}/metadata/{key}", self._set_metadata_key)
        r.add("DELETE", "/volumes/{id}/metadata/{key}", self._delete_metadata_key)
        r.add("GET", "/snapshots", lambda q: self._list_snapshots(q, detail=False))
        r.add("GET", "/snapshots/detail", lambda q: self._list_snapshots(q, detail=True))
        r.add("POST", "/snapshots", self._create_snapshot)
        r.add("GET", "/snapshots/{id}", self._show_snapshot)
        r.add("PUT", "/snapshots/{id}", self._update_snapshot)
        r.add("DELETE", "/snapshots/{id}", self._delete_snapshot)
        r.add("POST", "/snapshots/{id}/action", self._snapshot_action)
        r.add("GET", "/snapshots/{id}/metadata", self._show_snapshot_metadata)
        r.add("POST", "/snapshots/{id}/metadata",
              lambda q: self._set_snapshot_metadata(q, replace=False))
        r.add("PUT", "/snapshots/{id}/metadata",
              lambda q: self._set_snapshot_metadata(q, replace=True))
        r.add("GET", "/attachments", lambda q: self._list_attachments(q, detail=False))
        r.add("GET", "/attachments/detail", lambda q: self._list_attachments(q, detail=True))
        r.add("GET", "/attachments/{id}", self._show_attachment)
        r.add("DELETE", "/attachments/{id}", self._delete_attachment)
        r.add("GET", "/types", self._list_types)
        r.add("GET", "/types/default", self._default_type)
        r.add("GET", "/types/{id}", self._show_type)
        r.add("GET", "/types/{id}/extra_specs", self._extra_specs)
        r.add("GET", "/types/{id}/extra_specs/{key}", self._extra_spec)
        r.add("GET", "/os-quota-sets/{project}", self._show_quota)
        r.add("GET", "/os-quota-sets/{project}/defaults", self._quota_defaults)
        r.add("PUT", "/os-quota-sets/{project}", self._update_quota)
        r.add("GET", "/limits", self._limits)
        r.add("GET", "/os-availability-zone", self._zones)
        r.add("GET", "/messages", self._list_messages)
        r.add("GET", "/messages/{id}", self._show_message)
        r.add("DELETE", "/messages/{id}", self._delete_message)
        if self.backups is not None:
            self.backups.add_routes(r)
        return r

    # --- volumes --------------------------------------------------------------------------

    def _scope(self, request: Request) -> str | None:
        """Project whose resources a request may see (None: all, for admins who ask)."""
        assert request.auth is not None
        if request.auth.is_admin and request.arg("all_tenants") in ("1", "true", "True"):
            return request.arg("project_id")
        return request.project_id

    def _list_volumes(self, request: Request, *, detail: bool) -> Response:
        listing.check_filters(request, _VOLUME_FILTERS)
        name = request.arg("name") or None  # exact: looked up, not scanned ("name~" is not)
        volumes = self.store.volumes(self._scope(request), name=name,
                                     match=lambda v: self._volume_matches(v, request))
        chosen, extra = listing.page(request, volumes, field=self._volume_field,
                                     item_id=lambda v: v.id, sort_keys=_VOLUME_SORT,
                                     collection="volumes")
        if detail:
            items = [self._volume_view(request, v) for v in chosen]
        else:
            items = [views.volume_summary(request, v) for v in chosen]
        return Response(200, {"volumes": items, **extra})

    def _volume_field(self, volume: Volume, key: str) -> Any:
        if key == "created_at":
            return (volume.created_at, volume.seq)
        if key == "volume_type":
            return self.store.type_name(volume.type_id)
        return getattr(volume, key)

    def _volume_matches(self, volume: Volume, request: Request) -> bool:
        for key, values in request.query.items():
            wanted = values[-1]
            inexact = key.endswith("~")
            key = key.rstrip("~")
            if key not in _VOLUME_FILTERS:
                continue
            if key == "metadata":
                expected = listing.parse_dict(wanted, "metadata")
                if any(volume.metadata.get(k) != v for k, v in expected.items()):
                    return False
                continue
            if key == "bootable":
                actual_text, wanted = ("true" if volume.bootable else "false"), wanted.lower()
            else:
                actual = self._volume_field(volume, key)
                actual_text = "" if actual is None else str(actual)
            if inexact and request.at_least(3, 34):
                if wanted.lower() not in actual_text.lower():
                    return False
            elif actual_text != wanted:
                return False
        return True

    def _create_volume(self, request: Request) -> Response:
        body = request.json_object("volume")
        size = schema.size(body.get("size"))  # Cinder's request schema checks it first
        if body.get("backup_id") and not request.at_least(3, 47):
            raise bad_request("Invalid input for field/attribute volume. Additional properties "
                              "are not allowed ('backup_id' was unexpected)")
        vreq = VolumeRequest(
            name=schema.text(body.get("name"), "name"),
            description=schema.text(body.get("description"), "description"),
            size=size,
            volume_type=schema.text(body.get("volume_type"), "volume_type"),
            availability_zone=schema.text(body.get("availability_zone"), "availability_zone"),
            metadata=schema.metadata(body.get("metadata")),
            snapshot_id=body.get("snapshot_id"),
            source_volid=body.get("source_volid"),
            multiattach=bool(body.get("multiattach")),
            backup_id=str(body["backup_id"]) if body.get("backup_id") else None,
            request_id=request.request_id,
        )
        assert request.auth is not None and request.project_id is not None
        volume = self.store.create_volume(vreq, request.project_id, request.auth.user_id)
        return Response(202, {"volume": views.created_volume(
            request, volume, self.store.type_name(volume.type_id))})

    def _show_volume(self, request: Request) -> Response:
        volume = self.store.get_volume(request.params["id"], self._owner(request))
        return Response(200, {"volume": self._volume_view(request, volume)})

    def _update_volume(self, request: Request) -> Response:
        body = request.json_object("volume")
        changes: dict[str, Any] = {k: body[k] for k in ("name", "description", "metadata")
                                   if k in body}
        if "display_name" in body:
            changes["name"] = body["display_name"]
        volume = self.store.update_volume(request.params["id"], self._owner(request), changes)
        return Response(200, {"volume": self._volume_view(request, volume)})

    def _delete_volume(self, request: Request) -> Response:
        truthy = ("true", "True", "1")
        self.store.delete_volume(
            request.params["id"], self._owner(request),
            cascade=request.arg("cascade") in truthy,
            force=request.arg("force") in truthy and request.at_least(3, 23),
        )
        return Response(202)

    def _volume_action(self, request: Request) -> Response:
        body = request.json_object()
        volume_id, owner = request.params["id"], self._owner(request)
        if "os-extend" in body:
            spec = request.json_object("os-extend")
            try:
                new_size = int(spec["new_size"])
            except (KeyError, TypeError, ValueError):
                raise bad_request("Invalid input received: new_size must be an integer.") from None
            self.store.extend(volume_id, owner, new_size, in_use_allowed=request.at_least(3, 42))
        elif "os-retype" in body:
            spec = request.json_object("os-retype")
            if not spec.get("new_type"):
                raise bad_request("Invalid input received: Retype requires new_type.")
            self.store.retype(volume_id, owner, str(spec["new_type"]),
                              str(spec.get("migration_policy") or "never"))
        elif "os-reset_status" in body:
            self._admin_only(request, "volume_extension:volume_admin_actions:reset_status")
            spec = request.json_object("os-reset_status")
            self.store.reset_status(volume_id, owner, spec.get("status"),
                                    spec.get("attach_status"), spec.get("migration_status"))
        elif "os-force_delete" in body:
            self._admin_only(request, "volume_extension:volume_admin_actions:force_delete")
            self.store.delete_volume(volume_id, owner, force=True)
        elif "os-force_detach" in body:
            self._admin_only(request, "volume_extension:volume_admin_actions:force_detach")
            spec = body.get("os-force_detach") or {}
            attachment_id = spec.get("attachment_id") if isinstance(spec, dict) else None
            volume = self.store.get_volume(volume_id, owner)
            targets = [a.id for a in volume.attachments
                       if attachment_id in (None, a.id)]
            if attachment_id and not targets:
                raise not_found(f"Volume attachment {attachment_id} could not be found.")
            for target in targets:
                self.store.delete_attachment(target, owner)
        elif "os-set_bootable" in body:
            spec = request.json_object("os-set_bootable")
            bootable = str(spec.get("bootable")).lower() in ("true", "1")
            self.store.set_bootable(volume_id, owner, bootable)
            return Response(200)
        else:
            raise _no_such_action(body)
        return Response(202)

    def _show_metadata(self, request: Request) -> Response:
        volume = self.store.get_volume(request.params["id"], self._owner(request))
        return Response(200, {"metadata": volume.metadata})

    def _set_metadata(self, request: Request, *, replace: bool) -> Response:
        metadata = _metadata_body(request, "metadata")
        merged = self.store.set_metadata(request.params["id"], self._owner(request), metadata,
                                         replace=replace)
        return Response(200, {"metadata": merged})

    def _show_metadata_key(self, request: Request) -> Response:
        volume = self.store.get_volume(request.params["id"], self._owner(request))
        key = request.params["key"]
        if key not in volume.metadata:
            raise not_found(f"Volume {volume.id} has no metadata with key {key}.")
        return Response(200, {"meta": {key: volume.metadata[key]}})

    def _set_metadata_key(self, request: Request) -> Response:
        meta = _metadata_body(request, "meta")
        key = request.params["key"]
        if list(meta) != [key]:
            raise bad_request("Request body and URI mismatch")
        self.store.set_metadata(request.params["id"], self._owner(request), meta, replace=False)
        return Response(200, {"meta": meta})

    def _delete_metadata_key(self, request: Request) -> Response:
        self.store.delete_metadata_key(request.params["id"], self._owner(request),
                                       request.params["key"])
        return Response(200)

    # --- snapshots ------------------------------------------------------------------------

    def _list_snapshots(self, request: Request, *, detail: bool) -> Response:
        listing.check_filters(request, _SNAPSHOT_FILTERS)
        snaps = [s for s in self.store.snapshots(self._scope(request))
                 if _snapshot_matches(s, request)]
        chosen, extra = listing.page(
            request, snaps,
            field=lambda s, k: (s.created_at, s.seq) if k == "created_at" else getattr(s, k),
            item_id=lambda s: s.id, sort_keys=_SNAPSHOT_SORT, collection="snapshots")
        if detail:
            items = [views.snapshot(request, s) for s in chosen]
        else:
            items = [{"id": s.id, "name": s.name, "status": s.status, "size": s.size,
                      "volume_id": s.volume_id} for s in chosen]
        return Response(200, {"snapshots": items, **extra})

    def _create_snapshot(self, request: Request) -> Response:
        body = request.json_object("snapshot")
        if not body.get("volume_id"):
            raise bad_request("Invalid input received: volume_id is required.")
        force_raw = body.get("force")
        force = str(force_raw).lower() in ("true", "1", "yes")
        if request.at_least(3, 66):
            # From 3.66 in-use volumes need no force flag, and force=false is refused.
            if force_raw is not None and not force:
                raise bad_request("Invalid input received: force flag must be true or "
                                  "omitted from microversion 3.66.")
            force = True
        assert request.auth is not None and request.project_id is not None
        snap = self.store.create_snapshot(
            str(body["volume_id"]), request.project_id, request.auth.user_id,
            name=schema.text(body.get("name"), "name"),
            description=schema.text(body.get("description"), "description"), force=force,
            metadata=schema.metadata(body.get("metadata")),
        )
        return Response(202, {"snapshot": views.created_snapshot(request, snap)})

    def _show_snapshot(self, request: Request) -> Response:
        snap = self.store.get_snapshot(request.params["id"], self._owner(request))
        return Response(200, {"snapshot": views.snapshot(request, snap)})

    def _update_snapshot(self, request: Request) -> Response:
        body = request.json_object("snapshot")
        changes: dict[str, Any] = {k: body[k] for k in ("name", "description", "metadata")
                                   if k in body}
        snap = self.store.update_snapshot(request.params["id"], self._owner(request), changes)
        return Response(200, {"snapshot": views.snapshot(request, snap)})

    def _delete_snapshot(self, request: Request) -> Response:
        self.store.delete_snapshot(request.params["id"], self._owner(request))
        return Response(202)

    def _snapshot_action(self, request: Request) -> Response:
        body = request.json_object()
        snapshot_id, owner = request.params["id"], self._owner(request)
        if "os-reset_status" in body:
            self._admin_only(request, "volume_extension:snapshot_admin_actions:reset_status")
            status = request.json_object("os-reset_status").get("status")
            self.store.reset_snapshot_status(snapshot_id, owner, str(status))
        elif "os-force_delete" in body:
            self._admin_only(request, "volume_extension:snapshot_admin_actions:force_delete")
            self.store.reset_snapshot_status(snapshot_id, owner, "error")
            self.store.delete_snapshot(snapshot_id, owner)
        else:
            raise _no_such_action(body)
        return Response(202)

    def _show_snapshot_metadata(self, request: Request) -> Response:
        snap = self.store.get_snapshot(request.params["id"], self._owner(request))
        return Response(200, {"metadata": snap.metadata})

    def _set_snapshot_metadata(self, request: Request, *, replace: bool) -> Response:
        metadata = _metadata_body(request, "metadata")
        merged = self.store.set_snapshot_metadata(request.params["id"], self._owner(request),
                                                  metadata, replace=replace)
        return Response(200, {"metadata": merged})

    # --- attachments (API 3.27) -----------------------------------------------------------

    def _attachments_api(self, request: Request) -> None:
        if not request.at_least(3, 27):
            raise not_found("The resource could not be found.")

    def _list_attachments(self, request: Request, *, detail: bool) -> Response:
        self._attachments_api(request)
        owner = self._scope(request)
        volume_id = request.arg("volume_id")
        found = [(v, a) for v in self.store.volumes(owner) for a in v.attachments
                 if volume_id is None or v.id == volume_id]
        return Response(200, {"attachments": [views.attachment(a, detail=detail)
                                              for _, a in found]})

    def _show_attachment(self, request: Request) -> Response:
        self._attachments_api(request)
        attachment = self.store.find_attachment(request.params["id"], self._owner(request))
        return Response(200, {"attachment": views.attachment(attachment, detail=True)})

    def _delete_attachment(self, request: Request) -> Response:
        self._attachments_api(request)
        self.store.delete_attachment(request.params["id"], self._owner(request))
        return Response(200, {"attachments": []})

    # --- types, quotas, limits, zones -----------------------------------------------------

    def _list_types(self, request: Request) -> Response:
        return Response(200, {"volume_types": [views.volume_type(request, t)
                                               for t in self.store.types()]})

    def _default_type(self, request: Request) -> Response:
        default = self.store.get_type("__DEFAULT__")
        return Response(200, {"volume_type": views.volume_type(request, default, access=False)})

    def _show_type(self, request: Request) -> Response:
        return Response(200, {"volume_type": views.volume_type(request, self.store.get_type(
            request.params["id"]))})

    def _extra_specs(self, request: Request) -> Response:
        vtype = self.store.get_type(request.params["id"])
        return Response(200, {"extra_specs": views.visible_extra_specs(request, vtype)})

    def _extra_spec(self, request: Request) -> Response:
        vtype = self.store.get_type(request.params["id"])
        key = request.params["key"]
        if key not in views.visible_extra_specs(request, vtype):
            raise not_found(f"Volume Type {vtype.id} has no extra specs with key {key}.")
        return Response(200, {key: vtype.extra_specs[key]})

    def _quota_target(self, request: Request) -> str:
        assert request.auth is not None
        target = request.params["project"]
        if target != request.auth.project_id and not request.auth.is_admin:
            raise policy_refusal("volume_extension:quotas:show")
        return target

    def _quota_keys(self) -> list[str]:
        return self.store.quota.keys(t.name for t in self.store.types())

    def _show_quota(self, request: Request) -> Response:
        target = self._quota_target(request)
        used, reserved = self.store.quota_usage(target)
        body: dict[str, Any] = {"id": target}
        with_usage = request.arg("usage") in ("True", "true", "1")
        for key in self._quota_keys():
            limit = self.store.quota.limit(target, key)
            body[key] = ({"limit": limit, "in_use": used.get(key, 0),
                          "reserved": reserved.get(key, 0)}
                         if with_usage else limit)
        return Response(200, {"quota_set": body})

    def _quota_defaults(self, request: Request) -> Response:
        body: dict[str, Any] = {"id": request.params["project"]}
        body.update({k: DEFAULTS.get(k, -1) for k in self._quota_keys()})
        return Response(200, {"quota_set": body})

    def _update_quota(self, request: Request) -> Response:
        self._admin_only(request, "volume_extension:quotas:update")
        values = request.json_object("quota_set")
        keys = set(self._quota_keys())
        bad = sorted(k for k in values if k not in keys)
        if bad:
            raise bad_request(f"Bad key(s) in quota set: {', '.join(bad)}")
        try:
            parsed = {k: int(v) for k, v in values.items()}
        except (TypeError, ValueError):
            raise bad_request("Quota limit must be an integer.") from None
        target = request.params["project"]
        used, reserved = self.store.quota_usage(target)
        for key, limit in sorted(parsed.items()):
            usage = used.get(key, 0) + reserved.get(key, 0)
            if 0 <= limit < usage:
                raise bad_request(
                    f"Quota {key} limit must be equal or greater than existing resources. "
                    f"Current usage is {usage} and the requested limit is {limit}.")
        with self.store.lock:
            self.store.quota.set(target, parsed)
        return Response(200, {"quota_set": {k: self.store.quota.limit(target, k)
                                            for k in self._quota_keys()}})

    def _limits(self, request: Request) -> Response:
        assert request.project_id is not None
        project = request.project_id
        used, _ = self.store.quota_usage(project)
        limit = self.store.quota.limit
        absolute = {
            "maxTotalVolumes": limit(project, "volumes"),
            "maxTotalSnapshots": limit(project, "snapshots"),
            "maxTotalVolumeGigabytes": limit(project, "gigabytes"),
            "maxTotalBackups": limit(project, "backups"),
            "maxTotalBackupGigabytes": limit(project, "backup_gigabytes"),
            "totalVolumesUsed": used.get("volumes", 0),
            "totalSnapshotsUsed": used.get("snapshots", 0),
            "totalGigabytesUsed": used.get("gigabytes", 0),
            "totalBackupsUsed": 0,
            "totalBackupGigabytesUsed": 0,
        }
        return Response(200, {"limits": {"rate": [], "absolute": absolute}})

    def _zones(self, request: Request) -> Response:
        return Response(200, {"availabilityZoneInfo": [
            {"zoneName": zone, "zoneState": {"available": True}} for zone in self.store.zones
        ]})

    # --- user messages --------------------------------------------------------------------

    def _messages_supported(self, request: Request) -> None:
        if not request.at_least(*MESSAGES_MICROVERSION):
            raise not_found("The resource could not be found.")

    def _list_messages(self, request: Request) -> Response:
        self._messages_supported(request)
        with self.store.lock:
            found = self.store.messages.of_project(self._owner(request))
        if request.at_least(*MESSAGE_FILTERS_MICROVERSION):
            # Before 3.5 Cinder ignores every filter and lists the project's messages.
            listing.check_filters(request, _MESSAGE_FILTERS)
            for key in _MESSAGE_FILTERS:
                wanted = request.arg(key)
                if wanted is not None:
                    found = [m for m in found if str(getattr(m, key)) == wanted]
        return Response(200, {"messages": [m.view(request.service_url) for m in found]})

    def _show_message(self, request: Request) -> Response:
        found = self._message(request, remove=False)
        return Response(200, {"message": found.view(request.service_url)})

    def _delete_message(self, request: Request) -> Response:
        self._message(request, remove=True)
        return Response(204)

    def _message(self, request: Request, *, remove: bool) -> Message:
        self._messages_supported(request)
        with self.store.lock:
            book = self.store.messages
            lookup = book.pop if remove else book.get
            found = lookup(request.params["id"], self._owner(request))
        if found is None:
            raise not_found(f"Message {request.params['id']} could not be found.")
        return found

    # --- helpers --------------------------------------------------------------------------

    def _owner(self, request: Request) -> str | None:
        assert request.auth is not None
        return None if request.auth.is_admin else request.project_id

    def _volume_view(self, request: Request, volume: Volume) -> dict[str, Any]:
        return views.volume_detail(request, volume, self.store.type_name(volume.type_id))

    def _admin_only(self, request: Request, rule: str) -> None:
        assert request.auth is not None
        if not request.auth.is_admin:
            raise policy_refusal(rule)


def _no_such_action(body: dict[str, Any]) -> ApiError:
    return bad_request(f"There is no such action: {', '.join(body) or 'none'}. Verify the "
                       "request body and Content-Type header and try again.")


def _metadata_body(request: Request, key: str) -> dict[str, str]:
    return schema.metadata(request.json_object(key))


def _snapshot_matches(snap: Snapshot, request: Request) -> bool:
    for key in _SNAPSHOT_FILTERS:
        wanted = request.arg(key)
        if wanted is None:
            continue
        if key == "metadata":
            expected = listing.parse_dict(wanted, "metadata")
            if any(snap.metadata.get(k) != v for k, v in expected.items()):
                return False
        elif str(getattr(snap, key) or "") != wanted:
            return False
    return True
