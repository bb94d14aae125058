"""This node's identity: Nova server UUID (the CSI node ID) and availability zone.

Sources, as the upstream driver's `[Metadata] search-order`: the config drive and the metadata
service, tried in the configured order. `--node-id` / `--availability-zone` (bare metal, or to
override) win over whatever a source says; when both are given no source is asked at all.
The answer is fetched once and cached; a failed lookup is not cached, so a later call retries.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import tempfile
import threading
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cinder_csi.deadline import Deadline
from cinder_csi.errors import CinderCSIError, InvalidArgument, NotFound
from cinder_csi.host.commands import CommandRunner

log = logging.getLogger(__name__)

CONFIG_DRIVE = "configDrive"
METADATA_SERVICE = "metadataService"
DEFAULT_SEARCH_ORDER = (CONFIG_DRIVE, METADATA_SERVICE)
DEFAULT_METADATA_URL = "http://169.254.169.254/openstack/latest/meta_data.json"
DEFAULT_REQUEST_TIMEOUT_S = 5.0
CONFIG_DRIVE_LABELS = ("config-2", "CONFIG-2")  # vfat config drives carry the label upper-case
META_DATA_PATH = Path("openstack/latest/meta_data.json")


@dataclass(frozen=True)
class NodeMetadata:
    node_id: str
    availability_zone: str


class _SourceFailed(Exception):
    """One source could not answer; collected into the NotFound that names them all."""


def parse_search_order(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """Parse `configDrive,metadataService` (either order, either alone)."""
    if value is None:
        return DEFAULT_SEARCH_ORDER
    items = value.split(",") if isinstance(value, str) else list(value)
    order = tuple(item.strip() for item in items if item.strip())
    if not order:
        return DEFAULT_SEARCH_ORDER
    for item in order:
        if item not in DEFAULT_SEARCH_ORDER:
            raise InvalidArgument(
                f"invalid metadata search-order element {item!r}; "
                f"use {CONFIG_DRIVE} and/or {METADATA_SERVICE}"
            )
    if len(set(order)) != len(order):
        raise InvalidArgument(f"metadata search-order {','.join(order)!r} repeats a source")
    return order


def _parse_meta_data(raw: bytes | str, origin: str) -> NodeMetadata:
    try:
        doc: Any = json.loads(raw)
    except ValueError as exc:
        raise _SourceFailed(f"{origin} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _SourceFailed(f"{origin} is not a JSON object")
    uuid, zone = doc.get("uuid"), doc.get("availability_zone")
    if not isinstance(uuid, str) or not uuid:
        raise _SourceFailed(f"{origin} has no 'uuid'")
    if not isinstance(zone, str):
        raise _SourceFailed(f"{origin} has no 'availability_zone'")
    return NodeMetadata(node_id=uuid, availability_zone=zone)


class MetadataSource:
    def __init__(
        self,
        *,
        search_order: str | Sequence[str] | None = None,
        node_id: str | None = None,
        availability_zone: str | None = None,
        metadata_url: str = DEFAULT_METADATA_URL,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        config_drive_dir: Path | None = None,
        runner: CommandRunner | None = None,
    ) -> None:
        self.search_order = parse_search_order(search_order)
        self.node_id = node_id or None
        self.availability_zone = availability_zone or None
        # A service root ("http://169.254.169.254") gets the standard document path appended.
        self.metadata_url = (
            metadata_url if metadata_url.endswith(".json")
            else metadata_url.rstrip("/") + "/" + META_DATA_PATH.as_posix()
        )
        self.request_timeout = request_timeout
        # A directory holding the config drive's files; when set, no device is searched.
        self.config_drive_dir = config_drive_dir
        self.runner = runner or CommandRunner()
        self._lock = threading.Lock()
        self._cached: NodeMetadata | None = None

    def get(self) -> NodeMetadata:
        with self._lock:
            if self._cached is None:
                self._cached = self._lookup()
            return self._cached

    def _lookup(self) -> NodeMetadata:
        if self.node_id is not None and self.availability_zone is not None:
            return NodeMetadata(self.node_id, self.availability_zone)
        failures: list[str] = []
        for source in self.search_order:
            try:
                found = self._from_source(source)
            except _SourceFailed as exc:
                log.info("metadata source %s failed: %s", source, exc)
                failures.append(f"{source}: {exc}")
                continue
            result = NodeMetadata(
                node_id=self.node_id or found.node_id,
                availability_zone=(
                    found.availability_zone
                    if self.availability_zone is None
                    else self.availability_zone
                ),
            )
            log.info(
                "node id %s, availability zone %r (from %s)",
                result.node_id,
                result.availability_zone,
                source,
            )
            return result
        hint = "; or pass --node-id and --availability-zone"
        raise NotFound("cannot find this node's metadata: " + "; ".join(failures) + hint)

    def _from_source(self, source: str) -> NodeMetadata:
        if source == CONFIG_DRIVE:
            return self._from_config_drive()
        return self._from_metadata_service()

    # ---- metadata service ----------------------------------------------------------------

    def _from_metadata_service(self) -> NodeMetadata:
        url = self.metadata_url
        # Link-local metadata must never go through an HTTP proxy from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        try:
            with opener.open(request, timeout=self.request_timeout) as response:
                body = response.read()
        except (OSError, http.client.HTTPException) as exc:  # URLError/HTTPError are OSErrors
            raise _SourceFailed(f"GET {url} failed: {exc}") from exc
        return _parse_meta_data(body, url)

    # ---- config drive --------------------------------------------------------------------

    def _from_config_drive(self) -> NodeMetadata:
        if self.config_drive_dir is not None:
            return self._read_dir(self.config_drive_dir)
        deadline = Deadline.after(max(self.request_timeout, 1.0) * 4)
        device = self._find_config_drive(deadline)
        mount_dir = tempfile.mkdtemp(prefix="cinder-csi-configdrive-")
        try:
            self.runner.run(["mount", "-o", "ro", device, mount_dir], deadline=deadline)
        except CinderCSIError as exc:
            os.rmdir(mount_dir)
            raise _SourceFailed(f"cannot mount config drive {device}: {exc}") from exc
        try:
            return self._read_dir(Path(mount_dir))
        finally:
            self._release(mount_dir, deadline)

    def _release(self, mount_dir: str, deadline: Deadline) -> None:
        try:
            self.runner.run(["umount", mount_dir], deadline=deadline.shorter(30.0))
        except CinderCSIError as exc:
            # What was read is still good; a stray read-only mount of the drive is harmless.
            log.error("cannot unmount config drive at %s: %s", mount_dir, exc)
            return
        os.rmdir(mount_dir)

    def _find_config_drive(self, deadline: Deadline) -> str:
        for label in CONFIG_DRIVE_LABELS:
            try:
                result = self.runner.run(
                    ["blkid", "-l", "-t", f"LABEL={label}", "-o", "device"],
                    deadline=deadline,
                    ok_codes=(0, 2),
                )
            except CinderCSIError as exc:
                raise _SourceFailed(f"cannot search for the config drive: {exc}") from exc
            device = result.stdout.strip().splitlines()
            if result.returncode == 0 and device:
                return device[0]
        raise _SourceFailed(
            "no device labelled " + " or ".join(CONFIG_DRIVE_LABELS) + " (no config drive)"
        )

    @staticmethod
    def _read_dir(directory: Path) -> NodeMetadata:
        path = directory / META_DATA_PATH
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise _SourceFailed(f"cannot read {path}: {exc.strerror or exc}") from exc
        return _parse_meta_data(raw, str(path))
