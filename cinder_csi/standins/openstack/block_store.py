"""Cinder's state: volume types, volumes, snapshots, attachments and their status machines.

Every change a client asks for is checked and started under one lock; the slow part
(creating, extending, attaching, ...) finishes later on the scheduler thread, as in a real
cloud, so clients must poll. Faults can make a transition fail or never happen.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from . import backing, loopdev, quotas
from . import messages as msg
from .backend import Backend
from .errors import bad_request, conflict, not_found
from .faults import Faults
from .models import (
    Attachment,
    BackupCopy,
    Restore,
    Snapshot,
    Volume,
    VolumeRequest,
    VolumeType,
    copy_volume,
)
from .scheduler import Scheduler
from .servers import Server

log = logging.getLogger(__name__)

DEFAULT_TYPE = "__DEFAULT__"
STUCK_POLL = 0.05  # how often a stuck transition looks whether it was released
DELETABLE = ("available", "error", "error_restoring", "error_extending", "error_managing")
_DELETE_REFUSED = (
    "Invalid volume: Volume status must be available or error or error_restoring or "
    "error_extending or error_managing and must not be migrating, attached, belong to a "
    "group, have snapshots, awaiting a transfer, or be disassociated from snapshots after "
    "volume transfer."
)
_RETYPE_REFUSED = (
    "Invalid volume: Retype needs volume to be in available or in-use state, not be part of "
    "an active migration or a consistency group, requested type has to be different that the "
    "one from the volume, and for in-use volumes front-end qos specs cannot change."
)
_MULTIATTACH_PARAM = (
    "Invalid input received: multiattach parameter has been removed. The default behavior "
    "is to use multiattach enabled volume types. Contact your administrator to create a "
    "multiattach enabled volume type and use it to create multiattach volumes."
)


class RestoreSources(Protocol):
    """The backup service, as volume creation from a backup sees it (under the store lock)."""

    def restore_source(self, backup_id: str, project_id: str) -> Restore:
        """The backup's bytes and size; 404/400 unless it is this project's and available."""

    def begin_restore(self, backup_id: str) -> None: ...

    def end_restore(self, backup_id: str) -> None: ...


class BlockStore:
    def __init__(
        self,
        state_dir: Path,
        *,
        zones: tuple[str, ...],
        faults: Faults,
        scheduler: Scheduler,
        delay: tuple[float, float],
        backend: Backend | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self.state_dir = state_dir
        self.zones = zones
        self.faults = faults
        self.scheduler = scheduler
        self.delay = delay
        self.quota = quotas.QuotaBook()
        self.backend = backend or Backend()
        self.messages = msg.MessageBook()
        self.devices = loopdev.LoopDevices()
        self._types: dict[str, VolumeType] = {}
        self._volumes: dict[str, Volume] = {}
        self._named: dict[str | None, set[str]] = {}  # name -> ids: a name filter is no scan
        self._snapshots: dict[str, Snapshot] = {}
        self._seq = 0
        # Transitions running per operation, and those waiting for a slot (Faults.limit).
        self._running: dict[str, int] = {}
        self._waiting: dict[str, deque[Callable[[], None]]] = {}
        self.restores: RestoreSources | None = None  # the backup service, when there is one
        self.add_type(DEFAULT_TYPE, description="Default Volume Type")

    # --- paths ----------------------------------------------------------------------------

    def volume_file(self, volume_id: str) -> Path:
        return self.state_dir / "volumes" / f"{volume_id}.img"

    def snapshot_file(self, snapshot_id: str) -> Path:
        return self.state_dir / "snapshots" / f"{snapshot_id}.img"

    # --- volume types ---------------------------------------------------------------------

    def add_type(self, name: str, *, multiattach: bool = False,
                 extra_specs: Mapping[str, str] | None = None,
                 description: str | None = None) -> str:
        specs = dict(extra_specs or {})
        if multiattach:
            specs["multiattach"] = "<is> True"
        with self.lock:
            if self._find_type(name) is not None:
                raise ValueError(f"volume type {name!r} exists")
            vtype = VolumeType(str(uuid.uuid4()), name, description, specs)
            self._types[vtype.id] = vtype
            return vtype.id

    def types(self) -> list[VolumeType]:
        with self.lock:
            return [dataclasses.replace(t, extra_specs=dict(t.extra_specs))
                    for t in self._types.values()]

    def get_type(self, name_or_id: str) -> VolumeType:
        with self.lock:
            vtype = self._find_type(name_or_id)
            if vtype is None:
                raise not_found(f"Volume type {name_or_id} could not be found.")
            return dataclasses.replace(vtype, extra_specs=dict(vtype.extra_specs))

    def _find_type(self, name_or_id: str) -> VolumeType | None:
        if name_or_id in self._types:
            return self._types[name_or_id]
        return next((t for t in self._types.values() if t.name == name_or_id), None)

    def _type_named(self, name_or_id: str) -> VolumeType:
        vtype = self._find_type(name_or_id)
        if vtype is None:
            raise not_found(f"Volume type with name {name_or_id} could not be found.")
        return vtype

    def type_name(self, type_id: str) -> str:
        with self.lock:
            vtype = self._types.get(type_id)
            return vtype.name if vtype else type_id

    # --- reads ----------------------------------------------------------------------------

    def volumes(self, project_id: str | None = None, *, name: str | None = None,
                match: Callable[[Volume], bool] | None = None) -> list[Volume]:
        """Copies, safe to read without the lock, of the volumes ``match`` accepts (all when
        None), of one project and with exactly this ``name`` when given."""
        with self.lock:
            found = (self._volumes.values() if name is None else
                     [self._volumes[i] for i in self._named.get(name, ())])
            return [copy_volume(v) for v in found
                    if (project_id is None or v.project_id == project_id)
                    and (match is None or match(v))]

    def _rename(self, volume: Volume, name: str | None) -> None:
        self._named.get(volume.name, set()).discard(volume.id)
        self._named.setdefault(name, set()).add(volume.id)
        volume.name = name

    def snapshots(self, project_id: str | None = None) -> list[Snapshot]:
        with self.lock:
            return [dataclasses.replace(s, metadata=dict(s.metadata))
                    for s in self._snapshots.values()
                    if project_id is None or s.project_id == project_id]

    def get_volume(self, volume_id: str, project_id: str | None) -> Volume:
        with self.lock:
            return copy_volume(self._volume(volume_id, project_id))

    def get_snapshot(self, snapshot_id: str, project_id: str | None) -> Snapshot:
        with self.lock:
            snap = self._snapshot(snapshot_id, project_id)
            return dataclasses.replace(snap, metadata=dict(snap.metadata))

    def _volume(self, volume_id: str, project_id: str | None) -> Volume:
        volume = self._volumes.get(volume_id)
        if volume is None or (project_id is not None and volume.project_id != project_id):
            raise not_found(f"Volume {volume_id} could not be found.")
        return volume

    def _snapshot(self, snapshot_id: str, project_id: str | None) -> Snapshot:
        snap = self._snapshots.get(snapshot_id)
        if snap is None or (project_id is not None and snap.project_id != project_id):
            raise not_found(f"Snapshot {snapshot_id} could not be found.")
        return snap

    # --- quotas ---------------------------------------------------------------------------

    def quota_usage(self, project_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """(in_use, reserved) per quota key."""
        with self.lock:
            usages = [quotas.Usage(v.project_id, self._types[v.type_id].name, v.size, "volumes")
                      for v in self._volumes.values()]
            usages += [quotas.Usage(s.project_id, self._types[s.type_id].name, s.size,
                                    "snapshots") for s in self._snapshots.values()]
            reserved: dict[str, int] = {}
            for v in self._volumes.values():
                if v.project_id == project_id and v.pending_gigabytes:
                    for key in ("gigabytes", f"gigabytes_{self._types[v.type_id].name}"):
                        reserved[key] = reserved.get(key, 0) + v.pending_gigabytes
            return quotas.in_use(usages, project_id), reserved

    def _check_quota(self, project_id: str, deltas: Mapping[str, int]) -> None:
        if all(self.quota.limit(project_id, key) < 0 for key in (*deltas, "per_volume_gigabytes")):
            return  # unlimited: no need to add up every volume's usage
        used, reserved = self.quota_usage(project_id)
        quotas.check(self.quota, project_id, used, reserved, deltas)

    # --- volumes --------------------------------------------------------------------------

    def create_volume(self, request: VolumeRequest, project_id: str, user_id: str) -> Volume:
        with self.lock:
            source_az, source_size, source_type = None, None, None
            copy_from: Path | None = None
            if request.backup_id:
                if self.restores is None:
                    raise bad_request("Invalid input received: the backup service is not "
                                      "available.")
                restore = self.restores.restore_source(request.backup_id, project_id)
                source_size, copy_from, what = restore.size, restore.path, "backup"
            elif request.snapshot_id:
                snap = self._snapshot(request.snapshot_id, project_id)
                if snap.status != "available":
                    raise bad_request("Invalid snapshot: Originating snapshot status must be "
                                      "one of 'available' values")
                parent = self._volumes.get(snap.volume_id)
                source_az = parent.availability_zone if parent else None
                source_size, source_type = snap.size, snap.type_id
                copy_from, what = self.snapshot_file(snap.id), "snapshot"
            elif request.source_volid:
                src = self._volume(request.source_volid, project_id)
                if src.status not in ("available", "in-use"):
                    raise bad_request(f"Invalid volume: Volume {src.id} status must be "
                                      f"available or in-use, but current status is: "
                                      f"{src.status}.")
                source_az, source_size, source_type = (src.availability_zone, src.size,
                                                       src.type_id)
                copy_from, what = self.volume_file(src.id), "source volume"
            size = request.size if request.size is not None else source_size
            if size is None or size < 1:
                raise bad_request(f"Invalid input received: Volume size '{size}' must be an "
                                  "integer and greater than 0.")
            if source_size is not None and size < source_size:
                raise bad_request(f"Invalid input received: Volume size '{size}'GB cannot be "
                                  f"smaller than the {what} size {source_size}GB.")
            if request.volume_type:
                vtype = self._type_named(request.volume_type)
            else:
                vtype = self._types[source_type] if source_type else self._type_named(
                    DEFAULT_TYPE)
            if request.multiattach and not vtype.multiattach:
                raise bad_request(_MULTIATTACH_PARAM)
            zone = request.availability_zone
            if zone is not None and zone not in self.zones:
                raise bad_request(f"Availability zone '{zone}' is invalid.")
            if zone is not None and source_az is not None and zone != source_az:
                raise bad_request("Invalid input received: Volume must be in the same "
                                  f"availability zone as the {what}")
            zone = zone or source_az or self.zones[0]
            self._check_quota(project_id, {
                "volumes": 1, "gigabytes": size, f"volumes_{vtype.name}": 1,
                f"gigabytes_{vtype.name}": size,
            })
            self._seq += 1
            volume = Volume(
                id=str(uuid.uuid4()), name=request.name, description=request.description,
                size=size, status="creating", availability_zone=zone, type_id=vtype.id,
                project_id=project_id, user_id=user_id, metadata=dict(request.metadata),
                created_at=time.time(), updated_at=None, seq=self._seq,
                multiattach=vtype.multiattach, snapshot_id=request.snapshot_id,
                source_volid=request.source_volid,
            )
            self._volumes[volume.id] = volume
            self._named.setdefault(volume.name, set()).add(volume.id)
            backup_id = request.backup_id
            if backup_id and self.restores is not None:
                self.restores.begin_restore(backup_id)
            self._later("create", volume.id,
                        lambda v: self._finish_create(v, copy_from, backup_id, request.request_id))
            return copy_volume(volume)

    def _finish_create(self, volume: Volume, copy_from: Path | None, backup_id: str | None,
                       request_id: str | None) -> None:
        if backup_id and self.restores is not None:
            self.restores.end_restore(backup_id)
        placed = (self.backend.serves(self._types[volume.type_id])
                  and self.backend.has_room(volume.size, self._allocated_gb(volume.id)))
        if not placed:
            self._fail(volume, "error", msg.SCHEDULE_ALLOCATE_VOLUME, msg.NO_BACKEND_AVAILABLE,
                       request_id)
            return
        failure = self.faults.take_failure("fail_create", volume.id, volume.name or "")
        if failure is not None and failure.message:
            # A scheduler's refusal in the test's own words ("No valid backend was found...").
            self._fail(volume, "error", msg.SCHEDULE_ALLOCATE_VOLUME,
                       (msg.NO_BACKEND_AVAILABLE[0], failure.message), request_id)
            return
        if failure is not None:
            self._fail(volume, "error_restoring" if backup_id else "error",
                       msg.CREATE_VOLUME_FROM_BACKEND, msg.DRIVER_FAILED_CREATE, request_id)
            return
        target = self.volume_file(volume.id)
        if copy_from is not None and copy_from.exists():
            backing.copy(copy_from, target, volume.size)
        else:
            backing.create(target, volume.size)
        self._set_status(volume, "available")

    def _allocated_gb(self, excluding: str) -> int:
        return sum(v.size for v in self._volumes.values()
                   if v.id != excluding and v.status not in ("error", "deleting"))

    def _fail(self, volume: Volume, status: str, action: msg.Part, detail: msg.Part,
              request_id: str | None) -> None:
        """End an asynchronous operation in ``status``, leaving Cinder's user message."""
        self._set_status(volume, status)
        self.messages.add(volume.project_id, volume.id, action, detail, request_id)

    def update_volume(self, volume_id: str, project_id: str | None,
                      changes: Mapping[str, Any]) -> Volume:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            if "name" in changes:
                self._rename(volume, changes["name"])
            if "description" in changes:
                volume.description = changes["description"]
            if "metadata" in changes:
                volume.metadata = dict(changes["metadata"])
            volume.updated_at = time.time()
            return copy_volume(volume)

    def set_metadata(self, volume_id: str, project_id: str | None, metadata: Mapping[str, str],
                     *, replace: bool) -> dict[str, str]:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            if replace:
                volume.metadata = {}
            volume.metadata.update(metadata)
            volume.updated_at = time.time()
            return dict(volume.metadata)

    def delete_metadata_key(self, volume_id: str, project_id: str | None, key: str) -> None:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            if volume.metadata.pop(key, None) is None:
                raise not_found(f"Volume {volume_id} has no metadata with key {key}.")

    def delete_volume(self, volume_id: str, project_id: str | None, *, force: bool = False,
                      cascade: bool = False) -> None:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            snaps = [s for s in self._snapshots.values() if s.volume_id == volume.id]
            attached = bool(volume.attachments)
            status_ok = force or volume.status in DELETABLE
            if not status_ok or attached or (snaps and not cascade) or volume.migration_status:
                raise bad_request(_DELETE_REFUSED)
            if cascade and any(s.status not in ("available", "error") for s in snaps):
                raise bad_request("Invalid volume: Snapshot of volume is busy.")
            self._set_status(volume, "deleting")
            for snap in snaps:
                snap.status = "deleting"
            self._later("delete", volume.id, self._finish_delete)

    def _finish_delete(self, volume: Volume) -> None:
        for snap in [s for s in self._snapshots.values() if s.volume_id == volume.id]:
            backing.remove(self.snapshot_file(snap.id))
            del self._snapshots[snap.id]
        backing.remove(self.volume_file(volume.id))
        del self._volumes[volume.id]
        self._named.get(volume.name, set()).discard(volume.id)

    def extend(self, volume_id: str, project_id: str | None, new_size: int,
               *, in_use_allowed: bool) -> None:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            allowed = ("available", "in-use") if in_use_allowed else ("available",)
            if volume.status not in allowed:
                # Cinder prints its status filter as a dict (and names only 'available',
                # even when in-use volumes may grow).
                raise bad_request(f"Invalid volume: Volume {volume.id} status must be "
                                  f"'{{'status': 'available'}}' to extend, currently "
                                  f"{volume.status}.")
            if new_size <= volume.size:
                raise bad_request("Invalid input received: New size for extend must be greater "
                                  f"than current size. (current: {volume.size}, extended: "
                                  f"{new_size}).")
            delta = new_size - volume.size
            type_name = self._types[volume.type_id].name
            self._check_quota(volume.project_id, {"gigabytes": delta,
                                                  f"gigabytes_{type_name}": delta})
            volume.pending_gigabytes = delta
            self._set_status(volume, "extending")
            self._later("extend", volume.id, lambda v: self._finish_extend(v, new_size))

    def _finish_extend(self, volume: Volume, new_size: int) -> None:
        volume.pending_gigabytes = 0
        if self.faults.take_failure("fail_extend", volume.id, volume.name or ""):
            self._fail(volume, "error_extending", msg.EXTEND_VOLUME, msg.DRIVER_FAILED_EXTEND,
                       None)
            return
        path = self.volume_file(volume.id)
        if path.exists():
            backing.grow(path, new_size)
            self.devices.refresh(volume.id)
        volume.size = new_size
        self._settle(volume)

    def retype(self, volume_id: str, project_id: str | None, new_type: str,
               policy: str) -> None:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            vtype = self._type_named(new_type)
            if policy not in ("never", "on-demand"):
                raise bad_request(f"Invalid input received: Invalid migration_policy: {policy}.")
            if vtype.id == volume.type_id:
                raise bad_request(_RETYPE_REFUSED)
            if volume.status not in ("available", "in-use"):
                raise bad_request(f"Invalid volume: Volume {volume.id} status must be available "
                                  f"or in-use, but current status is: {volume.status}.")
            if volume.attachments and vtype.multiattach != volume.multiattach:
                raise bad_request("Invalid input received: Retype of an attached volume cannot "
                                  "change its multiattach capability.")
            self._check_quota(volume.project_id, {f"volumes_{vtype.name}": 1,
                                                  f"gigabytes_{vtype.name}": volume.size})
            self._set_status(volume, "retyping")
            self._later("retype", volume.id, lambda v: self._finish_retype(v, vtype))

    def _finish_retype(self, volume: Volume, vtype: VolumeType) -> None:
        if not self.backend.serves(vtype):
            # Cinder's scheduler finds no backend for the new type and quietly puts the
            # volume back as it was: old type, old status, no user message.
            self._settle(volume)
            return
        volume.type_id = vtype.id
        volume.multiattach = vtype.multiattach
        self._settle(volume)

    def reset_status(self, volume_id: str, project_id: str | None, status: str | None,
                     attach_status: str | None, migration_status: str | None) -> None:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            if attach_status == "detached":
                for att in volume.attachments:
                    self._drop_devices(att)
                volume.attachments = []
            if status:
                self._set_status(volume, status)
            if migration_status is not None:
                volume.migration_status = None if migration_status == "none" else (
                    migration_status)

    def set_bootable(self, volume_id: str, project_id: str | None, bootable: bool) -> None:
        with self.lock:
            self._volume(volume_id, project_id).bootable = bootable

    # --- backups (driven by the backup service) -------------------------------------------

    def start_backup(self, volume_id: str, snapshot_id: str | None, project_id: str, *,
                     force: bool) -> BackupCopy:
        """Check that the volume (or its snapshot) may be backed up now and mark it
        ``backing-up``; the caller copies the bytes and calls `finish_backup`."""
        with self.lock:
            volume = self._volume(volume_id, project_id)
            if snapshot_id:
                snap = self._snapshot(snapshot_id, project_id)
                if snap.volume_id != volume.id:
                    raise bad_request(f"Invalid input received: Snapshot {snap.id} is not a "
                                      f"snapshot of volume {volume.id}.")
                if snap.status != "available":
                    raise bad_request(f"Invalid snapshot: Snapshot to be backed up must be "
                                      f"available, but the current status is \"{snap.status}\".")
                snap.status = "backing-up"
                snap.updated_at = time.time()
                return BackupCopy(self.snapshot_file(snap.id), snap.size,
                                  volume.availability_zone)
            if volume.status not in ("available", "in-use"):
                raise bad_request(f"Invalid volume: Volume to be backed up must be available "
                                  f"or in-use, but the current status is \"{volume.status}\".")
            if volume.status == "in-use" and not force:
                raise bad_request("Invalid volume: Backing up an in-use volume must use the "
                                  "force flag.")
            self._set_status(volume, "backing-up")
            return BackupCopy(self.volume_file(volume.id), volume.size, volume.availability_zone)

    def finish_backup(self, volume_id: str, snapshot_id: str | None) -> None:
        """The backup's copy is taken: the source goes back to what it was."""
        with self.lock:
            if snapshot_id:
                snap = self._snapshots.get(snapshot_id)
                if snap is not None and snap.status == "backing-up":
                    snap.status = "available"
                    snap.updated_at = time.time()
                return
            volume = self._volumes.get(volume_id)
            if volume is not None and volume.status == "backing-up":
                self._settle(volume)

    # --- snapshots ------------------------------------------------------------------------

    def create_snapshot(self, volume_id: str, project_id: str, user_id: str, *,
                        name: str | None, description: str | None, force: bool,
                        metadata: Mapping[str, str]) -> Snapshot:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            allowed = ("available", "in-use") if force else ("available",)
            if volume.status not in allowed:
                raise bad_request(f"Invalid volume: Volume {volume.id} status must be "
                                  f"available, but current status is: {volume.status}.")
            type_name = self._types[volume.type_id].name
            self._check_quota(project_id, {
                "snapshots": 1, "gigabytes": volume.size, f"snapshots_{type_name}": 1,
                f"gigabytes_{type_name}": volume.size,
            })
            self._seq += 1
            snap = Snapshot(
                id=str(uuid.uuid4()), name=name, description=description, volume_id=volume.id,
                size=volume.size, status="creating", project_id=project_id, user_id=user_id,
                metadata=dict(metadata), created_at=time.time(), updated_at=None,
                seq=self._seq, type_id=volume.type_id,
            )
            self._snapshots[snap.id] = snap
            # A snapshot holds the bytes of the moment it was taken.
            source = self.volume_file(volume.id)
            if source.exists():
                backing.copy(source, self.snapshot_file(snap.id), snap.size)
            failed = self.faults.take_failure("fail_snapshot", snap.id, name or "")
            self._later_snapshot("snapshot", snap.id, "creating",
                                 "error" if failed is not None else "available")
            return dataclasses.replace(snap, metadata=dict(snap.metadata))

    def update_snapshot(self, snapshot_id: str, project_id: str | None,
                        changes: Mapping[str, Any]) -> Snapshot:
        with self.lock:
            snap = self._snapshot(snapshot_id, project_id)
            for key in ("name", "description"):
                if key in changes:
                    setattr(snap, key, changes[key])
            if "metadata" in changes:
                snap.metadata = dict(changes["metadata"])
            snap.updated_at = time.time()
            return dataclasses.replace(snap, metadata=dict(snap.metadata))

    def set_snapshot_metadata(self, snapshot_id: str, project_id: str | None,
                              metadata: Mapping[str, str], *, replace: bool) -> dict[str, str]:
        with self.lock:
            snap = self._snapshot(snapshot_id, project_id)
            if replace:
                snap.metadata = {}
            snap.metadata.update(metadata)
            return dict(snap.metadata)

    def delete_snapshot(self, snapshot_id: str, project_id: str | None) -> None:
        with self.lock:
            snap = self._snapshot(snapshot_id, project_id)
            if snap.status not in ("available", "error", "error_deleting"):
                raise bad_request("Invalid snapshot: Volume Snapshot status must be available "
                                  "or error or error_deleting.")
            snap.status = "deleting"
            snap.updated_at = time.time()
            self._later_snapshot("delete", snap.id, "deleting", None)

    def reset_snapshot_status(self, snapshot_id: str, project_id: str | None,
                              status: str) -> None:
        with self.lock:
            self._snapshot(snapshot_id, project_id).status = status

    # --- attachments (driven by Nova) -----------------------------------------------------

    def attachments(self, server_id: str | None = None) -> list[Attachment]:
        with self.lock:
            return [a for v in self._volumes.values() for a in v.attachments
                    if server_id is None or a.server_id == server_id]

    def attach(self, volume_id: str, server: Server, *, multiattach_allowed: bool) -> Attachment:
        with self.lock:
            volume = self._volume(volume_id, server.project_id)
            holders = [a.server_id for a in volume.attachments]
            # Nova answers 400 (Cinder's InvalidVolume), whatever state the other attachment
            # is in: reserved and attaching count, as in Cinder's attachment reservation.
            if server.id in holders or (holders and not volume.multiattach):
                raise bad_request(f"Invalid volume: volume {volume.id} is already attached to "
                                  f"instances: {','.join(holders)}")
            if volume.multiattach and not multiattach_allowed:
                raise bad_request("Multiattach volume support is only available starting with "
                                  "compute API version 2.60.")
            allowed = ("available", "in-use") if volume.multiattach else ("available",)
            if volume.status not in allowed:
                raise bad_request(f"Invalid volume: Volume {volume.id} status must be available "
                                  f"or downloading to reserve, but the current status is "
                                  f"{volume.status}.")
            used = {a.device for a in self.attachments(server.id)}
            device = next((f"/dev/vd{c}" for c in "bcdefghijklmnopqrstuvwxyz"
                           if f"/dev/vd{c}" not in used), None)
            if device is None:
                raise conflict(f"No free disk device names for prefix 'vd' on {server.id}.")
            attachment = Attachment(str(uuid.uuid4()), volume.id, server.id, server.name,
                                    device, "reserved")
            volume.attachments.append(attachment)
            self._settle(volume)
            self._later_attachment("attach", volume.id, attachment.id, "reserved",
                                   lambda v: self._attach_step(v, attachment.id, server))
            return attachment

    def _attach_step(self, volume: Volume, attachment_id: str, server: Server) -> None:
        attachment = next((a for a in volume.attachments if a.id == attachment_id), None)
        if attachment is None:
            return
        if attachment.status == "reserved":
            self._replace(volume, dataclasses.replace(attachment, status="attaching"))
            self._later_attachment("attach", volume.id, attachment_id, "attaching",
                                   lambda v: self._attach_step(v, attachment_id, server))
            return
        loop = None
        if server.by_id_dir is not None and loopdev.supported():
            try:
                loop = self.devices.attach(volume.id, server.id, self.volume_file(volume.id),
                                           server.by_id_dir)
            except (OSError, subprocess.SubprocessError):
                # Nova rolls a failed attach back: the volume becomes available again.
                log.exception("loop device for volume %s failed; attach rolled back", volume.id)
                volume.attachments.remove(attachment)
                self._settle(volume)
                return
        self._replace(volume, dataclasses.replace(attachment, status="attached",
                                                  attached_at=time.time(), loop_device=loop))

    def detach(self, volume_id: str, server_id: str, project_id: str) -> None:
        with self.lock:
            volume = self._volume(volume_id, project_id)
            attachment = next((a for a in volume.attachments if a.server_id == server_id), None)
            if attachment is None:
                raise not_found(f"Instance {server_id} is not attached to volume {volume_id}")
            if attachment.status != "attached" or volume.status != "in-use":
                # Nova passes Cinder's refusal on, wrapped in its own.
                raise bad_request(
                    "Invalid volume: Invalid input received: Invalid volume: Unable to detach "
                    "volume. Volume status must be 'in-use' and attach_status must be "
                    f"'attached' to detach. (HTTP 400) (Request-ID: req-{uuid.uuid4()})")
            self._replace(volume, dataclasses.replace(attachment, status="detaching"))
            self._later_attachment("detach", volume.id, attachment.id, "detaching",
                                   lambda v: self._finish_detach(v, attachment.id))

    def delete_attachment(self, attachment_id: str, project_id: str | None) -> Attachment:
        """Cinder's side of a detach (DELETE /attachments/{id}, os-force_detach): the record
        goes at once, whatever Nova knows; the volume settles to what is left."""
        with self.lock:
            for volume in self._volumes.values():
                if project_id is not None and volume.project_id != project_id:
                    continue
                found = next((a for a in volume.attachments if a.id == attachment_id), None)
                if found is not None:
                    self._drop_devices(found)
                    volume.attachments.remove(found)
                    self._settle(volume)
                    return found
        raise not_found(f"Volume attachment {attachment_id} could not be found.")

    def find_attachment(self, attachment_id: str, project_id: str | None) -> Attachment:
        with self.lock:
            for volume in self._volumes.values():
                if project_id is not None and volume.project_id != project_id:
                    continue
                for attachment in volume.attachments:
                    if attachment.id == attachment_id:
                        return attachment
        raise not_found(f"Volume attachment {attachment_id} could not be found.")

    def release_devices_of(self, server_id: str) -> None:
        """The server is gone: its disks vanish with it, Cinder's records stay as they are."""
        with self.lock:
            for attachment in self.attachments(server_id):
                self._drop_devices(attachment)

    def _finish_detach(self, volume: Volume, attachment_id: str) -> None:
        attachment = next((a for a in volume.attachments if a.id == attachment_id), None)
        if attachment is None:
            return
        self._drop_devices(attachment)
        volume.attachments.remove(attachment)
        self._settle(volume)

    def _drop_devices(self, attachment: Attachment) -> None:
        if attachment.loop_device is not None:
            self.devices.detach(attachment.volume_id, attachment.server_id)

    def _replace(self, volume: Volume, attachment: Attachment) -> None:
        volume.attachments = [attachment if a.id == attachment.id else a
                              for a in volume.attachments]
        self._settle(volume)

    # --- status machine -------------------------------------------------------------------

    def _settle(self, volume: Volume) -> None:
        """Derive the status an idle volume has from its attachments."""
        states = {a.status for a in volume.attachments}
        for state, status in (("detaching", "detaching"), ("attaching", "attaching"),
                              ("reserved", "reserved"), ("attached", "in-use")):
            if state in states:
                self._set_status(volume, status)
                return
        self._set_status(volume, "available")

    def _set_status(self, volume: Volume, status: str) -> None:
        volume.status = status
        volume.updated_at = time.time()

    def transition_pause(self, operation: str) -> float:
        """How long one asynchronous transition of this kind takes now (faults may slow it)."""
        return self._pause(operation, 1.0)

    def _pause(self, operation: str, fraction: float) -> float:
        configured = self.faults.transition_delay(operation)
        if configured is None:
            configured = random.uniform(*self.delay)
        return configured * fraction

    def _later(self, operation: str, volume_id: str, finish: Callable[[Volume], None],
               fraction: float = 1.0, guard: Callable[[Volume], bool] | None = None) -> None:
        """Run `finish` after the operation's delay, unless the volume moved on meanwhile
        (reset, deleted: the operation is void) or a fault holds it in its status."""
        expected = self._volumes[volume_id].status
        still_due = guard or (lambda volume: volume.status == expected)

        def fire() -> None:
            with self.lock:
                volume = self._volumes.get(volume_id)
                if volume is not None and still_due(volume) and self.faults.is_stuck(
                        volume.id, volume.name or "", volume.status):
                    self.scheduler.call_later(STUCK_POLL, fire)
                    return
                self._release(operation)
                if volume is not None and still_due(volume):
                    finish(volume)

        self._when_free(operation, lambda: self.scheduler.call_later(
            self._pause(operation, fraction), fire))

    def _when_free(self, operation: str, start: Callable[[], None]) -> None:
        """Start now, or once a slot frees when the operation's concurrency is limited.
        Caller holds the lock."""
        limit = self.faults.concurrency(operation)
        running = self._running.get(operation, 0)
        if limit is not None and running >= limit:
            self._waiting.setdefault(operation, deque()).append(start)
            return
        self._running[operation] = running + 1
        start()

    def _release(self, operation: str) -> None:
        """One transition ended (or was voided): the next waiting one takes its slot."""
        waiting = self._waiting.get(operation)
        if waiting:
            waiting.popleft()()  # the slot passes on; the running count stays
            return
        self._running[operation] = max(0, self._running.get(operation, 0) - 1)

    def _later_attachment(self, operation: str, volume_id: str, attachment_id: str,
                          expected: str, finish: Callable[[Volume], None]) -> None:
        # Attach takes two steps (reserved -> attaching -> attached), each half the delay.
        fraction = 0.5 if operation == "attach" else 1.0

        def guard(volume: Volume) -> bool:
            return any(a.id == attachment_id and a.status == expected
                       for a in volume.attachments)

        self._later(operation, volume_id, finish, fraction, guard)

    def _later_snapshot(self, operation: str, snapshot_id: str, expected: str,
                        status: str | None) -> None:
        def fire() -> None:
            with self.lock:
                snap = self._snapshots.get(snapshot_id)
                if snap is None or snap.status != expected:
                    return
                if self.faults.is_stuck(snap.id, snap.name or "", snap.status):
                    self.scheduler.call_later(STUCK_POLL, fire)
                    return
                if status is None:
                    backing.remove(self.snapshot_file(snap.id))
                    del self._snapshots[snap.id]
                else:
                    snap.status = status
                    snap.updated_at = time.time()

        self.scheduler.call_later(self._pause(operation, 1.0), fire)

    def stop(self) -> None:
        self.devices.detach_all()
