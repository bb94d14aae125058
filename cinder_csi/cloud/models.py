"""Plain, immutable views of the cloud objects we use, parsed from API bodies."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

T = TypeVar("T")

VOLUME_ERROR_STATES = frozenset(
    {"error", "error_deleting", "error_extending", "error_restoring", "error_backing-up",
     "error_managing"}
)
SNAPSHOT_ERROR_STATES = frozenset({"error", "error_deleting"})
BACKUP_ERROR_STATES = frozenset({"error", "error_deleting", "error_restoring"})


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _str_dict(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True)
class CinderAttachment:
    server_id: str
    attachment_id: str
    device: str | None


@dataclass(frozen=True)
class Volume:
    id: str
    name: str
    size_gib: int
    status: str
    availability_zone: str | None
    volume_type: str | None
    multiattach: bool
    metadata: dict[str, str] = field(default_factory=dict)
    attachments: tuple[CinderAttachment, ...] = ()
    snapshot_id: str | None = None
    source_volid: str | None = None
    created_at: datetime | None = None

    @property
    def attached_servers(self) -> tuple[str, ...]:
        return tuple(a.server_id for a in self.attachments)

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Volume:
        attachments = tuple(
            CinderAttachment(
                server_id=str(a.get("server_id") or ""),
                attachment_id=str(a.get("attachment_id") or a.get("id") or ""),
                device=a.get("device"),
            )
            for a in body.get("attachments") or ()
            if a.get("server_id")
        )
        return cls(
            id=str(body["id"]),
            name=str(body.get("name") or ""),
            size_gib=int(body.get("size") or 0),
            status=str(body.get("status") or "unknown"),
            availability_zone=body.get("availability_zone"),
            volume_type=body.get("volume_type"),
            multiattach=bool(body.get("multiattach")),
            metadata=_str_dict(body.get("metadata")),
            attachments=attachments,
            snapshot_id=body.get("snapshot_id"),
            source_volid=body.get("source_volid"),
            created_at=parse_time(body.get("created_at")),
        )


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    volume_id: str
    size_gib: int
    status: str
    created_at: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Snapshot:
        return cls(
            id=str(body["id"]),
            name=str(body.get("name") or ""),
            volume_id=str(body.get("volume_id") or ""),
            size_gib=int(body.get("size") or 0),
            status=str(body.get("status") or "unknown"),
            created_at=parse_time(body.get("created_at")),
            metadata=_str_dict(body.get("metadata")),
        )


@dataclass(frozen=True)
class Backup:
    """A Cinder backup; the CSI snapshot of a VolumeSnapshotClass with ``type: backup``."""

    id: str
    name: str
    volume_id: str
    snapshot_id: str | None
    size_gib: int
    status: str
    created_at: datetime | None
    availability_zone: str | None = None
    fail_reason: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Backup:
        return cls(
            id=str(body["id"]),
            name=str(body.get("name") or ""),
            volume_id=str(body.get("volume_id") or ""),
            snapshot_id=body.get("snapshot_id") or None,
            size_gib=int(body.get("size") or 0),
            status=str(body.get("status") or "unknown"),
            created_at=parse_time(body.get("created_at")),
            availability_zone=body.get("availability_zone"),
            fail_reason=body.get("fail_reason"),
            metadata=_str_dict(body.get("metadata")),
        )


@dataclass(frozen=True)
class VolumeType:
    id: str
    name: str
    extra_specs: dict[str, str]

    @property
    def multiattach(self) -> bool:
        return self.extra_specs.get("multiattach", "").strip().lower() in ("<is> true", "true")

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> VolumeType:
        return cls(
            id=str(body["id"]),
            name=str(body.get("name") or ""),
            extra_specs=_str_dict(body.get("extra_specs")),
        )


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    status: str
    availability_zone: str | None

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> Server:
        return cls(
            id=str(body["id"]),
            name=str(body.get("name") or ""),
            status=str(body.get("status") or "UNKNOWN"),
            availability_zone=body.get("OS-EXT-AZ:availability_zone"),
        )


@dataclass(frozen=True)
class ServerAttachment:
    volume_id: str
    server_id: str
    device: str | None

    @classmethod
    def from_api(cls, body: dict[str, Any]) -> ServerAttachment:
        return cls(
            volume_id=str(body.get("volumeId") or ""),
            server_id=str(body.get("serverId") or ""),
            device=body.get("device"),
        )


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_marker: str | None


@dataclass(frozen=True)
class QuotaUsage:
    """One quota resource: limit -1 means unlimited."""

    limit: int
    in_use: int
    reserved: int

    @property
    def available(self) -> int | None:
        if self.limit < 0:
            return None
        return max(0, self.limit - self.in_use - self.reserved)
