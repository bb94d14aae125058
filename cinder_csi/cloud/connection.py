"""The one object through which the project reaches OpenStack.

Nothing here touches the network at construction: the controller must start (and report
itself not ready) while the cloud is down, and serve Cinder-only calls when Nova is absent.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import openstack
import openstack.config
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc

from cinder_csi import errors
from cinder_csi.cloud.backups import BackupApi
from cinder_csi.cloud.compute import MULTIATTACH_MICROVERSION, ComputeApi
from cinder_csi.cloud.messages import MessageApi
from cinder_csi.cloud.quotas import QuotaApi
from cinder_csi.cloud.session import ServiceSession
from cinder_csi.cloud.snapshots import SnapshotApi
from cinder_csi.cloud.tokens import TokenKeeper, keystone_refusal
from cinder_csi.cloud.volumes import EXTEND_IN_USE_MICROVERSION, VolumeApi
from cinder_csi.config import AuthSettings
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)

# Each session's default: the highest microversion any of its verbs needs (older clouds get
# their own maximum, see ServiceSession.effective_microversion).
CINDER_MICROVERSION = EXTEND_IN_USE_MICROVERSION
NOVA_MICROVERSION = MULTIATTACH_MICROVERSION
PROBE_CACHE_S = 5.0


@dataclass(frozen=True)
class CloudTimeouts:
    """How long the cloud client waits, and when it counts as wedged."""

    # Every request keystoneauth sends without a timeout of its own (token fetches, version
    # discovery) gives up after this long; openstacksdk's api_timeout is unset by default.
    session: float = 30.0
    probe: float = 10.0
    # A request still open this long past its own timeout means the HTTP client is wedged.
    wedged_margin: float = 30.0
    # The liveness check fails after this many probes in a row ran out of time (a hung
    # Keystone or Cinder; refusals and errors do not count: a restart would not cure those).
    probe_timeouts_unhealthy: int = 3

# Thread pools call the cloud in parallel; requests' default of 10 pooled connections per host
# would make most of them reconnect.
HTTP_POOL_SIZE = 64

def connect(auth: AuthSettings, timeouts: CloudTimeouts | None = None) -> Any:
    """An openstacksdk Connection for these settings (no network I/O yet)."""
    try:
        if auth.cloud:
            conn = openstack.connection.Connection(config=_clouds_yaml_region(auth))
        else:
            options: dict[str, Any] = dict(auth.options)
            if "application_credential_secret" in options:
                options["auth_type"] = "v3applicationcredential"
            else:
                options["auth_type"] = "password"
            options.update(_transport_options(auth))
            conn = openstack.connect(load_yaml_config=False, load_envvars=False, **options)
    except (os_exc.SDKException, ks_exc.ClientException, KeyError) as exc:
        raise errors.InvalidArgument(
            f"cannot configure the OpenStack connection of {auth.section()}: {exc}"
        ) from None
    _widen_connection_pool(conn)
    conn.session.timeout = (timeouts or CloudTimeouts()).session
    return conn


def clouds_yaml_files(auth: AuthSettings) -> list[str]:
    """Where the clouds.yaml of these settings is looked for, in order, as openstacksdk does
    it: the configured file, else $OS_CLIENT_CONFIG_FILE, then the standard places."""
    if auth.clouds_file:
        return [auth.clouds_file]
    override = os.environ.get("OS_CLIENT_CONFIG_FILE")
    return [*([override] if override else []), *openstack.config.loader.CONFIG_FILES]


def _clouds_yaml_region(auth: AuthSettings) -> Any:
    files = clouds_yaml_files(auth)
    # load_envvars=False keeps stray OS_* variables from changing the credentials; the one
    # variable every openstacksdk user sets to point at their file is honoured above.
    config = openstack.config.OpenStackConfig(config_files=files, load_envvars=False)
    overrides: dict[str, Any] = _transport_options(auth)
    if auth.options:
        # Keys written in the cloud.conf section win over the clouds.yaml entry (upstream).
        overrides["auth"] = dict(auth.options)
    try:
        return config.get_one(cloud=auth.cloud, **overrides)
    except os_exc.ConfigException as exc:
        existing = [f for f in files if os.path.exists(f)]
        raise errors.InvalidArgument(
            f"{exc} (clouds.yaml files read: {', '.join(existing) or 'none found'}; set "
            "clouds-file in cloud.conf, --clouds-file, or OS_CLIENT_CONFIG_FILE)"
        ) from None


def _transport_options(auth: AuthSettings) -> dict[str, Any]:
    """Region, endpoint interface and TLS settings, as openstacksdk names them."""
    options: dict[str, Any] = {}
    if auth.region:
        options["region_name"] = auth.region
    if auth.interface:
        options["interface"] = auth.interface
    if auth.ca_file:
        options["cacert"] = auth.ca_file
    if auth.cert_file and auth.key_file:
        options["cert"], options["key"] = auth.cert_file, auth.key_file
    if auth.tls_insecure:
        options["insecure"] = True
    return options


def _widen_connection_pool(conn: Any) -> None:
    import requests.adapters

    http = conn.session.session  # the requests.Session under keystoneauth
    for prefix in ("http://", "https://"):
        http.mount(
            prefix,
            requests.adapters.HTTPAdapter(pool_connections=8, pool_maxsize=HTTP_POOL_SIZE),
        )


class Cloud:
    """Cinder and Nova, each behind its own lazily built session."""

    def __init__(
        self, auth: AuthSettings, *, connection: Any = None,
        timeouts: CloudTimeouts | None = None,
    ) -> None:
        self.auth = auth
        self.timeouts = timeouts or CloudTimeouts()
        self._conn = connection
        self._lock = threading.Lock()
        self.tokens = TokenKeeper(lambda: self.connection().session)
        self.block_storage = ServiceSession(
            "block-storage", lambda: self.connection().block_storage,
            microversion=CINDER_MICROVERSION, tokens=self.tokens,
        )
        self.compute_session = ServiceSession(
            "compute", lambda: self.connection().compute, microversion=NOVA_MICROVERSION,
            tokens=self.tokens,
        )
        self.volumes = VolumeApi(self.block_storage)
        self.snapshots = SnapshotApi(self.block_storage)
        self.backups = BackupApi(self.block_storage)
        self.quotas = QuotaApi(self.block_storage)
        self.messages = MessageApi(self.block_storage)
        self.compute = ComputeApi(self.compute_session)
        self._probe_at = 0.0
        self._probe_result: str | None = None
        self._probe_timeouts = 0
        self._background_probe: threading.Thread | None = None
        self._background_started = 0.0

    def connection(self) -> Any:
        with self._lock:
            if self._conn is None:
                self._conn = connect(self.auth, self.timeouts)
            return self._conn

    def project_id(self, deadline: Deadline) -> str:
        conn = self.connection()
        self.tokens.ensure(deadline)
        try:
            project = conn.current_project_id
        except ks_exc.Unauthorized as exc:
            raise keystone_refusal("the project id", exc) from None
        except (ks_exc.ClientException, os_exc.SDKException) as exc:
            raise errors.CloudUnavailable(f"cannot authenticate to the cloud: {exc}") from None
        if not project:
            raise errors.CloudUnavailable("the cloud token is not scoped to a project")
        return str(project)

    def probe(self) -> str | None:
        """None when Cinder answers with our credentials, else why not. Cached briefly."""
        now = time.monotonic()
        if now - self._probe_at < PROBE_CACHE_S:
            return self._probe_result
        deadline = Deadline.after(self.timeouts.probe)
        timed_out = False
        try:
            self.block_storage.request(
                "GET", "/volumes", what="probe", deadline=deadline, params={"limit": "1"}
            )
            result = None
        except errors.CinderCSIError as exc:
            result = f"Cinder is not reachable: {exc}"
            timed_out = isinstance(exc, errors.Timeout) or deadline.expired()
        with self._lock:
            self._probe_timeouts = self._probe_timeouts + 1 if timed_out else 0
        self._probe_at, self._probe_result = now, result
        return result

    def health(self) -> str | None:
        """For the liveness check: None, or why the cloud client looks wedged. Never blocks:
        it reads what the requests and probes in flight show, and starts a probe in the
        background when the last one is stale."""
        self._probe_in_background()
        limits = self.timeouts
        reasons = []
        for session in (self.block_storage, self.compute_session):
            late = session.in_flight.overdue(limits.wedged_margin)
            if late is not None:
                reasons.append(f"a {session.service} request is {late:.0f}s past its timeout")
        fetching = self.tokens.fetching_for()
        if fetching is not None and fetching > limits.session + limits.wedged_margin:
            reasons.append(f"a Keystone token request has been open for {fetching:.0f}s")
        with self._lock:
            timeouts = self._probe_timeouts
            probing = self._background_probe
            started = self._background_started
        if probing is not None and probing.is_alive():
            running = time.monotonic() - started
            if running > limits.probe + limits.wedged_margin:
                reasons.append(f"the cloud probe has been running for {running:.0f}s")
        if timeouts >= limits.probe_timeouts_unhealthy:
            reasons.append(f"the last {timeouts} cloud probes ran out of time")
        return "; ".join(reasons) or None

    def _probe_in_background(self) -> None:
        with self._lock:
            busy = self._background_probe is not None and self._background_probe.is_alive()
            if busy or time.monotonic() - self._probe_at < PROBE_CACHE_S:
                return
            thread = threading.Thread(target=self.probe, name="cloud-probe", daemon=True)
            self._background_probe, self._background_started = thread, time.monotonic()
        thread.start()
