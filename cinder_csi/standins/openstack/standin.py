"""The OpenStack stand-in as one object: its services on one HTTP port, set-up and inspection."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from . import layout
from .backups import BackupStore
from .backups_api import BackupsApi
from .block_storage_api import BlockStorageApi
from .block_store import BlockStore
from .compute_api import ComputeApi
from .faults import Faults
from .http_server import ApiHttpServer, LoggedRequest, mounts
from .identity import DEFAULT_DOMAIN_NAME, CatalogEntry, Identity
from .metadata_api import MetadataApi
from .scheduler import Scheduler
from .servers import Servers

ADMIN_USER = "admin"
ADMIN_PASSWORD = "secret"
ADMIN_PROJECT = "demo"


class OpenStackStandIn:
    """Keystone + Cinder + Nova + metadata on one HTTP port; see the package docstring."""

    def __init__(
        self,
        state_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        region: str = "RegionOne",
        availability_zones: Sequence[str] = ("nova",),
        with_nova: bool = True,
        token_ttl: float = 3600.0,
        transition_delay: tuple[float, float] = (0.05, 0.2),
    ) -> None:
        if not availability_zones:
            raise ValueError("at least one availability zone is needed")
        self.state_dir = Path(state_dir)
        self.region = region
        self.faults = Faults()
        self._host, self._port = host, port
        self._with_nova = with_nova
        self._scheduler = Scheduler()
        self._identity = Identity(region=region, token_ttl=token_ttl, catalog=self._catalog)
        self._store = BlockStore(self.state_dir, zones=tuple(availability_zones),
                                 faults=self.faults, scheduler=self._scheduler,
                                 delay=transition_delay)
        self._backups = BackupStore(self._store)
        self._servers = Servers()
        self._identity.add_user(ADMIN_USER, ADMIN_PASSWORD, ADMIN_PROJECT,
                                roles=("admin", "member", "reader"))
        self._http: ApiHttpServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._http is not None:
            raise RuntimeError("already started")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        identity_router = self._identity.routes()
        compute = ComputeApi(self._servers, self._store, self._identity)
        self._http = ApiHttpServer(
            (self._host, self._port),
            mounts(
                identity=identity_router.dispatch,
                volume=BlockStorageApi(self._store, self._identity,
                                       BackupsApi(self._backups, self._store)).handle,
                compute=compute.handle if self._with_nova else None,
                metadata=MetadataApi(self._servers).handle,
            ),
            self.faults,
        )
        self._scheduler.start()
        # A short poll interval keeps stop() quick; serve_forever checks for it that often.
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,),
                                        name="openstack-standin-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving, release held requests, and detach every loop device made here."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.faults.wake_all()
        self._scheduler.stop()
        self._store.stop()

    def __enter__(self) -> OpenStackStandIn:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- addresses and credentials --------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._http is None:
            raise RuntimeError("not started")
        return self._http.base_url

    @property
    def auth_url(self) -> str:
        return f"{self.base_url}{layout.IDENTITY}/v3"

    def metadata_url(self, server_id: str) -> str:
        """Base URL a node plugin on this server uses as its metadata service."""
        return f"{self.base_url}{layout.METADATA}/{server_id}"

    def project_id(self, name: str = ADMIN_PROJECT) -> str:
        project = self._identity.project_by_name(name)
        if project is None:
            raise KeyError(f"no project {name!r}")
        return project.id

    def clouds_yaml(self, cloud_name: str = "sandbox") -> dict[str, Any]:
        return {"clouds": {cloud_name: {
            "auth": {
                "auth_url": self.auth_url,
                "username": ADMIN_USER,
                "password": ADMIN_PASSWORD,
                "project_name": ADMIN_PROJECT,
                "user_domain_name": DEFAULT_DOMAIN_NAME,
                "project_domain_name": DEFAULT_DOMAIN_NAME,
            },
            "region_name": self.region,
            "identity_api_version": 3,
            "interface": "public",
        }}}

    def cloud_conf(self) -> str:
        """The upstream driver's cloud.conf for the default user."""
        return (
            "[Global]\n"
            f"auth-url = {self.auth_url}\n"
            f"username = {ADMIN_USER}\n"
            f"password = {ADMIN_PASSWORD}\n"
            f"tenant-name = {ADMIN_PROJECT}\n"
            f"domain-name = {DEFAULT_DOMAIN_NAME}\n"
            f"region = {self.region}\n"
        )

    # --- set-up ---------------------------------------------------------------------------

    def add_user(self, name: str, password: str, project: str) -> str:
        """A member of `project` (created if new); returns the user id."""
        return self._identity.add_user(name, password, project, roles=("member", "reader"))

    def add_application_credential(self, user: str, name: str, secret: str) -> str:
        """An application credential of `user` (name or id) for its project; returns its id."""
        return self._identity.add_application_credential(user, name, secret)

    def add_server(self, name: str, availability_zone: str, *, by_id_dir: Path | None = None,
                   project: str = ADMIN_PROJECT) -> str:
        """A running server; with `by_id_dir` (and root) attachments become loop devices."""
        owner = self._identity.ensure_project(project)
        server = self._servers.add(name, availability_zone, owner.id, "", by_id_dir)
        return server.id

    def delete_server(self, server_id: str, *, orphan_attachments: bool = False) -> None:
        """Delete a server from Nova; its disks (loop devices) vanish with it. Nova normally
        has Cinder drop the server's attachments too; with `orphan_attachments` that cleanup
        fails, and Cinder goes on listing attachments to a server Nova answers 404 for (the
        state behind upstream cloud-provider-openstack #1003 and #2553)."""
        if self._servers.remove(server_id) is None:
            raise KeyError(f"no server {server_id!r}")
        self._store.release_devices_of(server_id)
        if not orphan_attachments:
            for attachment in self._store.attachments(server_id):
                self._store.delete_attachment(attachment.id, None)

    def add_volume_type(self, name: str, *, multiattach: bool = False,
                        extra_specs: Mapping[str, str] | None = None) -> str:
        return self._store.add_type(name, multiattach=multiattach, extra_specs=extra_specs)

    def set_quota(self, project: str, volumes: int | None = None, gigabytes: int | None = None,
                  snapshots: int | None = None,
                  per_type: Mapping[str, Mapping[str, int]] | None = None,
                  backups: int | None = None, backup_gigabytes: int | None = None) -> None:
        """Limits for `project` (name or id); per_type is {type: {"volumes"|"gigabytes"|
        "snapshots": n}}. -1 means unlimited."""
        project_id = self._project_ref(project)
        values = {k: v for k, v in (("volumes", volumes), ("gigabytes", gigabytes),
                                    ("snapshots", snapshots), ("backups", backups),
                                    ("backup_gigabytes", backup_gigabytes)) if v is not None}
        for type_name, limits in (per_type or {}).items():
            values.update({f"{kind}_{type_name}": n for kind, n in limits.items()})
        with self._store.lock:
            self._store.quota.set(project_id, values)

    def reset_volume_status(self, volume_id: str, status: str) -> None:
        """What an operator does with `cinder reset-state` (os-reset_status)."""
        self._store.reset_status(volume_id, None, status, None, None)

    def expire_tokens(self) -> None:
        """Forget every token, as after a Keystone key rotation; clients must re-authenticate."""
        self._identity.expire_tokens()

    # --- inspection -----------------------------------------------------------------------

    def volumes(self) -> list[dict[str, Any]]:
        out = []
        for volume in self._store.volumes():
            item = dataclasses.asdict(volume)
            item["volume_type"] = self._store.type_name(volume.type_id)
            item["backing_file"] = str(self._store.volume_file(volume.id))
            out.append(item)
        return out

    def snapshots(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(s) for s in self._store.snapshots()]

    def backups(self) -> list[dict[str, Any]]:
        out = []
        for backup in self._backups.backups():
            item = dataclasses.asdict(backup)
            item["backing_file"] = str(self._backups.backup_file(backup.id))
            out.append(item)
        return out

    def attachments(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(a) for a in self._store.attachments()]

    def servers(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(s) for s in self._servers.all()]

    def requests(self) -> list[LoggedRequest]:
        """Every request answered (or dropped) so far, oldest first."""
        if self._http is None:
            return []
        with self._http.log_lock:
            return list(self._http.request_log)

    def _project_ref(self, project: str) -> str:
        found = self._identity.project(project) or self._identity.project_by_name(project)
        if found is None:
            raise KeyError(f"no project {project!r}")
        return found.id

    def _catalog(self) -> list[CatalogEntry]:
        base = self.base_url
        volume = f"{base}{layout.VOLUME_V3}/{{project_id}}"
        entries = [
            CatalogEntry("identity", "keystone", f"{base}{layout.IDENTITY}", "identity"),
            # openstacksdk looks up "block-storage" and then its aliases; devstack lists both.
            CatalogEntry("block-storage", "cinder", volume, "volume"),
            CatalogEntry("volumev3", "cinderv3", volume, "volume"),
        ]
        if self._with_nova:
            entries.append(CatalogEntry("compute", "nova", f"{base}{layout.COMPUTE_V21}",
                                        "compute"))
        hidden = self.faults.hidden_services()
        return [e for e in entries if e.service not in hidden]
