"""JSON views of Cinder records, shaped by the request's microversion."""

from __future__ import annotations

from typing import Any

from . import timefmt
from .backend import Backend
from .models import Attachment, Snapshot, Volume, VolumeType
from .wire import Request

BACKEND_HOST = Backend().host
USER_VISIBLE_EXTRA_SPECS = frozenset({"RESKEY:availability_zones", "multiattach",
                                      "replication_enabled"})


def links(request: Request, kind: str, item_id: str) -> list[dict[str, str]]:
    href = f"{request.service_url}/{kind}/{item_id}"
    return [{"rel": "self", "href": href}, {"rel": "bookmark", "href": href}]


def volume_summary(request: Request, volume: Volume) -> dict[str, Any]:
    return {"id": volume.id, "name": volume.name,
            "links": links(request, "volumes", volume.id)}


def volume_detail(request: Request, volume: Volume, type_name: str) -> dict[str, Any]:
    assert request.auth is not None
    view: dict[str, Any] = {
        "id": volume.id,
        "name": volume.name,
        "description": volume.description,
        "status": volume.status,
        "size": volume.size,
        "availability_zone": volume.availability_zone,
        "created_at": timefmt.cinder(volume.created_at),
        "updated_at": timefmt.cinder(volume.updated_at) if volume.updated_at else None,
        "attachments": [
            {"id": volume.id, "attachment_id": a.id, "volume_id": volume.id,
             "server_id": a.server_id, "host_name": a.host_name, "device": a.device,
             "attached_at": timefmt.cinder(a.attached_at) if a.attached_at else None}
            for a in volume.attachments if a.status == "attached"
        ],
        "bootable": "true" if volume.bootable else "false",
        "encrypted": False,
        "multiattach": volume.multiattach,
        "metadata": volume.metadata,
        "volume_type": type_name,
        "snapshot_id": volume.snapshot_id,
        "source_volid": volume.source_volid,
        "user_id": volume.user_id,
        "os-vol-tenant-attr:tenant_id": volume.project_id,
        "replication_status": None,
        "consistencygroup_id": None,
        "links": links(request, "volumes", volume.id),
    }
    if request.auth.is_admin:
        view["migration_status"] = volume.migration_status
        view["os-vol-host-attr:host"] = BACKEND_HOST
        view["os-vol-mig-status-attr:migstat"] = volume.migration_status
        view["os-vol-mig-status-attr:name_id"] = None
        if request.at_least(3, 21):
            view["provider_id"] = None
    for since, key, value in (
        ((3, 13), "group_id", None),
        ((3, 48), "service_uuid", "8e3e7a48-6f1c-4f8c-9f1b-5d5c2c6f7a10"),
        ((3, 48), "shared_targets", False),
        ((3, 61), "cluster_name", None),
        ((3, 63), "volume_type_id", volume.type_id),
        ((3, 65), "consumes_quota", True),
    ):
        if request.at_least(*since):
            view[key] = value
    return view


def created_volume(request: Request, volume: Volume, type_name: str) -> dict[str, Any]:
    """The answer to a create: Cinder's os-vol-* attributes come from extensions of show and
    list only."""
    view = volume_detail(request, volume, type_name)
    return {k: v for k, v in view.items() if not k.startswith("os-vol-")}


def created_snapshot(request: Request, snap: Snapshot) -> dict[str, Any]:
    view = snapshot(request, snap)
    return {k: v for k, v in view.items() if not k.startswith("os-extended-snapshot-")}


def snapshot(request: Request, snap: Snapshot) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": snap.id,
        "name": snap.name,
        "description": snap.description,
        "status": snap.status,
        "size": snap.size,
        "volume_id": snap.volume_id,
        "created_at": timefmt.cinder(snap.created_at),
        "updated_at": timefmt.cinder(snap.updated_at) if snap.updated_at else None,
        "metadata": snap.metadata,
        "os-extended-snapshot-attributes:progress":
            "100%" if snap.status == "available" else "0%",
        "os-extended-snapshot-attributes:project_id": snap.project_id,
    }
    if request.at_least(3, 14):
        view["group_snapshot_id"] = None
    if request.at_least(3, 41):
        view["user_id"] = snap.user_id
    if request.at_least(3, 65):
        view["consumes_quota"] = True
    return view


def visible_extra_specs(request: Request, vtype: VolumeType) -> dict[str, str]:
    """Only admins read every extra spec; others see the user-visible ones."""
    assert request.auth is not None
    if request.auth.is_admin:
        return dict(vtype.extra_specs)
    return {k: v for k, v in vtype.extra_specs.items() if k in USER_VISIBLE_EXTRA_SPECS}


def volume_type(request: Request, vtype: VolumeType, *, access: bool = True) -> dict[str, Any]:
    """``access``: the type-access extension's attribute, on list and show but not on
    /types/default."""
    assert request.auth is not None
    view: dict[str, Any] = {"id": vtype.id, "name": vtype.name, "is_public": True,
                            "description": vtype.description,
                            "extra_specs": visible_extra_specs(request, vtype)}
    if request.auth.is_admin:
        view["qos_specs_id"] = None
    if access:
        view["os-volume-type-access:is_public"] = True
    return view


_ATTACH_STATUS = {"reserved": "reserved", "attaching": "attaching", "attached": "attached",
                  "detaching": "detaching"}


def attachment(item: Attachment, *, detail: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": item.id, "status": _ATTACH_STATUS.get(item.status, item.status),
        "instance": item.server_id, "volume_id": item.volume_id,
    }
    if detail:
        view.update({
            "attach_mode": "rw", "connection_info": {},
            "attached_at": timefmt.cinder(item.attached_at) if item.attached_at else None,
            "detached_at": None,
        })
    return view
