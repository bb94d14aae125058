"""The records Cinder keeps: volume types, volumes, their attachments, snapshots, backups."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class VolumeType:
    id: str
    name: str
    description: str | None
    extra_specs: dict[str, str]

    @property
    def multiattach(self) -> bool:
        return self.extra_specs.get("multiattach", "").strip().lower() in ("<is> true", "true")


@dataclass(frozen=True)
class Attachment:
    id: str
    volume_id: str
    server_id: str
    host_name: str
    device: str
    status: str  # reserved -> attaching -> attached -> detaching
    attached_at: float | None = None
    loop_device: str | None = None


@dataclass
class Volume:
    id: str
    name: str | None
    description: str | None
    size: int
    status: str
    availability_zone: str
    type_id: str
    project_id: str
    user_id: str
    metadata: dict[str, str]
    created_at: float
    updated_at: float | None
    seq: int
    multiattach: bool
    snapshot_id: str | None = None
    source_volid: str | None = None
    bootable: bool = False
    attachments: list[Attachment] = field(default_factory=list)
    migration_status: str | None = None
    pending_gigabytes: int = 0  # quota reserved by an extend in progress


@dataclass
class Snapshot:
    id: str
    name: str | None
    description: str | None
    volume_id: str
    size: int
    status: str
    project_id: str
    user_id: str
    metadata: dict[str, str]
    created_at: float
    updated_at: float | None
    seq: int
    type_id: str


@dataclass(frozen=True)
class VolumeRequest:
    """A validated-for-shape create request; the store checks it against its state."""

    name: str | None
    description: str | None
    size: int | None
    volume_type: str | None
    availability_zone: str | None
    metadata: dict[str, str]
    snapshot_id: str | None
    source_volid: str | None
    multiattach: bool
    backup_id: str | None = None
    request_id: str | None = None  # for the user message a failed create leaves


def copy_volume(volume: Volume) -> Volume:
    """A copy whose mutable parts a reader may keep without the store's lock."""
    return dataclasses.replace(volume, metadata=dict(volume.metadata),
                               attachments=list(volume.attachments))


@dataclass
class Backup:
    id: str
    name: str | None
    description: str | None
    volume_id: str
    snapshot_id: str | None
    size: int
    status: str  # creating -> available (-> restoring -> available) -> deleting; error
    project_id: str
    user_id: str
    metadata: dict[str, str]
    availability_zone: str | None
    created_at: float
    updated_at: float | None
    seq: int
    container: str | None = None
    fail_reason: str | None = None


@dataclass(frozen=True)
class BackupCopy:
    """The bytes a new backup copies, and how to give the source its status back after."""

    path: Path
    size: int
    zone: str


@dataclass(frozen=True)
class Restore:
    """The bytes and size of a backup about to be restored into a new volume."""

    path: Path
    size: int
