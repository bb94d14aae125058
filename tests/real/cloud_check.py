"""What the real Cinder and Nova say, read with openstacksdk; and the clean-up of test volumes.

The tests never trust the controller's answer alone: they read the volume, snapshot or
attachment back from the services with the sdk. Clean-up detaches through Nova, deletes
snapshots, then volumes, and waits until Cinder no longer lists them; an admin status reset
is the last resort for a volume stuck in a transitional state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openstack.config
import openstack.connection
from openstack import exceptions as os_exc

from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY

log = logging.getLogger(__name__)
T = TypeVar("T")

SETTLED = frozenset({"available", "in-use", "error", "error_deleting", "error_extending",
                     "error_restoring"})


def connect(clouds_yaml: str, cloud: str) -> openstack.connection.Connection:
    config = openstack.config.OpenStackConfig(config_files=[clouds_yaml], load_envvars=False)
    return openstack.connection.Connection(config=config.get_one(cloud=cloud))


def until(probe: Callable[[], T | None], what: str, timeout: float = 120.0,
          interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Cloud:
    """The test's view of the real cloud: the member user, and a cloud admin."""

    user: openstack.connection.Connection
    admin: openstack.connection.Connection
    project_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.project_id = str(self.user.current_project_id)

    def wait_schedulable(self, timeout: float = 120.0) -> list[str]:
        """Wait until Cinder's scheduler knows a backend pool with free capacity; its names.

        A rig just started reports its services up before cinder-volume's first capability
        report has reached the scheduler; a create then fails with "Could not find any
        available weighted backend" (met once in CI on the first test).
        """
        def pools() -> list[str] | None:
            answer = self.admin.block_storage.get("/scheduler-stats/get_pools?detail=True")
            if answer.status_code != 200:
                return None
            ready = [str(pool.get("name")) for pool in answer.json().get("pools", [])
                     if (pool.get("capabilities") or {}).get("free_capacity_gb")]
            return ready or None
        return until(pools, "Cinder's scheduler to know a backend pool with free capacity",
                     timeout=timeout, interval=1.0)

    # ---- reads

    def volume(self, volume_id: str) -> Any | None:
        try:
            return self.user.block_storage.get_volume(volume_id)
        except os_exc.NotFoundException:
            return None

    def snapshot(self, snapshot_id: str) -> Any | None:
        try:
            return self.user.block_storage.get_snapshot(snapshot_id)
        except os_exc.NotFoundException:
            return None

    def volumes(self) -> list[Any]:
        return list(self.user.block_storage.volumes(details=True))

    def snapshots(self) -> list[Any]:
        return list(self.user.block_storage.snapshots(details=True))

    def volume_zones(self) -> list[str]:
        return [str(z.name) for z in self.user.block_storage.availability_zones()]

    def server_volume_ids(self, server_id: str) -> set[str]:
        """The volumes Nova lists as attached to the server."""
        return {a.volume_id for a in self.user.compute.volume_attachments(server_id)}

    def attached_servers(self, volume: Any) -> set[str]:
        return {a["server_id"] for a in volume.attachments or ()}

    def wait_volume(self, volume_id: str, status: str, timeout: float = 120.0) -> Any:
        def probe() -> Any | None:
            volume = self.volume(volume_id)
            return volume if volume is not None and volume.status == status else None
        return until(probe, f"volume {volume_id} {status}", timeout)

    def wait_volume_gone(self, volume_id: str, timeout: float = 120.0) -> None:
        until(lambda: True if self.volume(volume_id) is None else None,
              f"volume {volume_id} deleted", timeout)

    def quota_usage(self) -> dict[str, dict[str, int]]:
        """Cinder's quota of the user's project with usage: {resource: {limit, in_use, ...}}."""
        body = self.user.block_storage.get(
            f"/os-quota-sets/{self.project_id}", params={"usage": "True"}).json()["quota_set"]
        return {k: v for k, v in body.items() if isinstance(v, dict)}

    @contextmanager
    def quota(self, **headroom: int) -> Iterator[dict[str, int]]:
        """Limits (set as the cloud admin) of what is in use now plus the given headroom, e.g.
        ``quota(gigabytes=2)``; the old limits come back afterwards."""
        usage = self.quota_usage()
        limits = {key: usage[key]["in_use"] + usage[key].get("reserved", 0) + extra
                  for key, extra in headroom.items()}
        with self.quota_limits(**limits):
            yield limits

    @contextmanager
    def quota_limits(self, **limits: int) -> Iterator[None]:
        """These limits (as the cloud admin) for the duration; the old ones come back after."""
        usage = self.quota_usage()
        before = {key: usage[key]["limit"] for key in limits}
        self._set_quota(limits)
        try:
            yield
        finally:
            self._set_quota(before)

    def _set_quota(self, limits: dict[str, int]) -> None:
        response = self.admin.block_storage.put(
            f"/os-quota-sets/{self.project_id}", json={"quota_set": limits})
        assert response.status_code == 200, response.text

    # ---- clean-up

    def remove_volume(self, volume_id: str) -> bool:
        """Detach, delete snapshots, delete, wait. True if there was something to remove."""
        volume = self._settled(volume_id)
        if volume is None:
            return False
        servers = self.attached_servers(volume)
        for server_id in servers:
            self.user.compute.delete_volume_attachment(server_id, volume_id,
                                                       ignore_missing=True)
        if servers:
            until(lambda: self._detached(volume_id), f"volume {volume_id} detached")
        for snapshot in self.user.block_storage.snapshots(details=True, volume_id=volume_id):
            self.remove_snapshot(snapshot.id)
        volume = self.volume(volume_id)
        if volume is not None and volume.status != "deleting":
            try:
                self.user.block_storage.delete_volume(volume_id, ignore_missing=True)
            except os_exc.BadRequestException:
                self._reset(volume_id)
                self.user.block_storage.delete_volume(volume_id, ignore_missing=True)
        self.wait_volume_gone(volume_id)
        return True

    def _detached(self, volume_id: str) -> bool | None:
        volume = self.volume(volume_id)
        if volume is None:
            return True
        settled = volume.status in SETTLED and not self.attached_servers(volume)
        return True if settled else None

    def _settled(self, volume_id: str) -> Any | None:
        """The volume once out of a transitional status; reset as admin if it stays in one."""
        volume = self.volume(volume_id)
        if volume is None or volume.status in SETTLED or volume.status == "deleting":
            return volume
        try:
            return until(lambda: self._if_settled(volume_id), f"volume {volume_id} settled", 60)
        except AssertionError:
            log.warning("volume %s stuck in %s: resetting it as admin", volume_id, volume.status)
            self._reset(volume_id)
            return self.volume(volume_id)

    def _reset(self, volume_id: str) -> None:
        self.admin.block_storage.reset_volume_status(
            volume_id, status="available", attach_status="detached", migration_status="none")

    def _if_settled(self, volume_id: str) -> Any | None:
        volume = self.volume(volume_id)
        return volume if volume is None or volume.status in SETTLED else None

    def remove_snapshot(self, snapshot_id: str) -> bool:
        snapshot = self.snapshot(snapshot_id)
        if snapshot is None:
            return False
        if snapshot.status != "deleting":
            if snapshot.status == "creating":
                until(lambda: self._snapshot_settled(snapshot_id), f"snapshot {snapshot_id}", 60)
            self.user.block_storage.delete_snapshot(snapshot_id, ignore_missing=True)
        until(lambda: True if self.snapshot(snapshot_id) is None else None,
              f"snapshot {snapshot_id} deleted")
        return True

    def _snapshot_settled(self, snapshot_id: str) -> bool | None:
        snapshot = self.snapshot(snapshot_id)
        return True if snapshot is None or snapshot.status != "creating" else None

    def sweep(self, *, prefixes: Iterable[str] = (), ids: Iterable[str] = ()) -> list[str]:
        """Remove every snapshot and volume whose name or cluster tag starts with a prefix, or
        listed by id. Returns what was removed (empty when the test cleaned up after itself)."""
        prefixes, wanted = tuple(prefixes), set(ids)

        def named(item: Any) -> bool:
            return any((item.name or "").startswith(prefix) for prefix in prefixes)

        removed: list[str] = []
        for snapshot in self.snapshots():
            if (snapshot.id in wanted or named(snapshot)) and self.remove_snapshot(snapshot.id):
                removed.append(f"snapshot {snapshot.name or snapshot.id}")
        for volume in self.volumes():
            tag = (volume.metadata or {}).get(CLUSTER_METADATA_KEY) or ""
            chosen = volume.id in wanted or named(volume) or tag.startswith(prefixes)
            if chosen and self.remove_volume(volume.id):
                removed.append(f"volume {volume.name or volume.id} ({volume.id})")
        return removed
