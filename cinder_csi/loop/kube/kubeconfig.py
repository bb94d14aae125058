"""Where the API server is and how to authenticate: kubeconfig files and in-cluster config.

The loop's own reader, so the loop process never imports the ``kubernetes`` package (some
20 MB). It reads what client-go's loader reads for a cluster and a user: ``server``,
``certificate-authority(-data)``, ``insecure-skip-tls-verify``, ``tls-server-name``,
``proxy-url``; ``token``, ``tokenFile``, ``client-certificate(-data)``/``client-key(-data)``,
``username``/``password`` and ``exec`` credential plugins (``client.authentication.k8s.io``
``ExecCredential``, v1 and v1beta1). A user with a legacy ``auth-provider`` is handed, lazily,
to the ``kubernetes`` package's loader (one log line says so).

Token files (the service account's included) are read again when they change, so a rotated
token is used from the next request on; an exec plugin runs again when its credential expires
or after the server answered 401.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXEC_TIMEOUT_S = 60.0
_EXPIRY_MARGIN_S = 5.0  # run the plugin again this long before its credential expires


class KubeconfigError(Exception):
    """The kubeconfig (or in-cluster config) cannot be used; the message says why."""


class Credentials(Protocol):
    """What a request needs to authenticate; each call may refresh the credential."""

    def headers(self) -> dict[str, str]: ...
    def client_cert(self) -> tuple[bytes, bytes] | None: ...
    def invalidate(self) -> None: ...


@dataclass(frozen=True)
class TLS:
    """Server verification and client certificate, as files or PEM bytes."""

    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    insecure: bool = False
    server_name: str | None = None


@dataclass(frozen=True)
class ClusterAccess:
    """One API server and the means to talk to it."""

    server: str
    credentials: Credentials
    tls: TLS = field(default_factory=TLS)
    proxy: str | None = None
    source: str = ""  # "in-cluster" or the kubeconfig file and context, for logs


class NoCredentials:
    def headers(self) -> dict[str, str]:
        return {}

    def client_cert(self) -> tuple[bytes, bytes] | None:
        return None

    def invalidate(self) -> None:
        pass


@dataclass
class StaticHeader(NoCredentials):
    """A bearer token or basic-auth pair written in the kubeconfig itself."""

    value: str

    def headers(self) -> dict[str, str]:
        return {"authorization": self.value}


class TokenFile(NoCredentials):
    """A bearer token read from a file, again whenever the file changes (rotation)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._token = ""
        self.token()  # a missing file is an error now, not at the first request

    def token(self) -> str:
        try:
            st = os.stat(self.path)
            with self._lock:
                if (st.st_mtime_ns, st.st_size) != self._stamp:
                    self._token = Path(self.path).read_text(encoding="utf-8").strip()
                    self._stamp = (st.st_mtime_ns, st.st_size)
                return self._token
        except OSError as exc:
            if self._stamp is None:
                raise KubeconfigError(f"cannot read token file {self.path}: {exc}") from exc
            return self._token  # mid-rotation (the file briefly gone): keep the last one

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token()}"}


@dataclass(frozen=True)
class ExecResult:
    token: str | None
    cert: tuple[bytes, bytes] | None
    expires: float | None  # epoch seconds; None: until the server refuses it


class ExecPlugin(NoCredentials):
    """A ``client.authentication.k8s.io`` credential plugin: run, read ``ExecCredential``."""

    def __init__(self, spec: Mapping[str, Any], *, base_dir: Path,
                 cluster: Mapping[str, Any] | None = None) -> None:
        command = spec.get("command")
        if not command:
            raise KubeconfigError("exec credential plugin without a command")
        self.api_version = str(spec.get("apiVersion") or "")
        if self.api_version not in EXEC_API_VERSIONS:
            raise KubeconfigError(f"exec credential plugin {command}: apiVersion "
                                  f"{self.api_version or '(none)'} is not one of "
                                  f"{', '.join(EXEC_API_VERSIONS)}")
        if spec.get("interactiveMode") == "Always":
            raise KubeconfigError(f"exec credential plugin {command} needs an interactive "
                                  "terminal (interactiveMode: Always); the loop has none")
        # client-go: a relative command with a path separator is relative to the kubeconfig.
        self.command = str(base_dir / command) if os.sep in command and not os.path.isabs(
            command) else str(command)
        self.args = [str(a) for a in spec.get("args") or []]
        self.env = {str(e["name"]): str(e["value"]) for e in spec.get("env") or []}
        self.install_hint = str(spec.get("installHint") or "")
        self.cluster = dict(cluster) if spec.get("provideClusterInfo") and cluster else None
        self._lock = threading.Lock()
        self._current: ExecResult | None = None
        self.runs = 0

    def credential(self) -> ExecResult:
        with self._lock:
            now = time.time()
            current = self._current
            if current is None or (current.expires is not None
                                   and now >= current.expires - _EXPIRY_MARGIN_S):
                current = self._current = self._run()
            return current

    def headers(self) -> dict[str, str]:
        token = self.credential().token
        return {"authorization": f"Bearer {token}"} if token else {}

    def client_cert(self) -> tuple[bytes, bytes] | None:
        return self.credential().cert

    def invalidate(self) -> None:
        with self._lock:
            self._current = None

    def _run(self) -> ExecResult:
        info: dict[str, Any] = {"apiVersion": self.api_version, "kind": "ExecCredential",
                                "spec": {"interactive": False}}
        if self.cluster is not None:
            info["spec"]["cluster"] = self.cluster
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        name = os.path.basename(self.command)
        self.runs += 1
        try:
            done = subprocess.run(
                [self.command, *self.args], env=env, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=EXEC_TIMEOUT_S, check=False)
        except FileNotFoundError as exc:
            hint = f" ({self.install_hint.strip()})" if self.install_hint else ""
            raise KubeconfigError(f"exec credential plugin {self.command} not found{hint}"
                                  ) from exc
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KubeconfigError(f"exec credential plugin {name} failed: {exc}") from exc
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise KubeconfigError(f"exec credential plugin {name} exited {done.returncode}"
                                  + (f": {said[-1][:200]}" if said else ""))
        return self._parse(name, done.stdout)

    def _parse(self, name: str, out: bytes) -> ExecResult:
        try:
            cred = json.loads(out)
        except ValueError as exc:
            raise KubeconfigError(f"exec credential plugin {name} wrote no JSON") from exc
        if not isinstance(cred, dict) or cred.get("kind") != "ExecCredential":
            raise KubeconfigError(f"exec credential plugin {name} wrote no ExecCredential")
        if cred.get("apiVersion") != self.api_version:
            raise KubeconfigError(f"exec credential plugin {name} answered apiVersion "
                                  f"{cred.get('apiVersion')}, not {self.api_version}")
        status = cred.get("status") or {}
        token = status.get("token") or None
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if bool(cert) != bool(key):
            raise KubeconfigError(f"exec credential plugin {name} gave a client certificate "
                                  "without its key, or a key without its certificate")
        if not token and not cert:
            raise KubeconfigError(f"exec credential plugin {name} gave neither a token nor "
                                  "a client certificate")
        expires = status.get("expirationTimestamp")
        return ExecResult(token=token,
                          cert=(str(cert).encode(), str(key).encode()) if cert else None,
                          expires=parse_time(expires, name) if expires else None)


def parse_time(text: str, who: str) -> float:
    """RFC 3339 (``2026-01-02T03:04:05Z``) as epoch seconds."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError as exc:
        raise KubeconfigError(f"{who}: expirationTimestamp {text!r} is not RFC 3339") from exc


# ---- in-cluster


def in_cluster(env: Mapping[str, str] | None = None,
               account_dir: Path = SERVICE_ACCOUNT_DIR) -> ClusterAccess:
    env = os.environ if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        raise KubeconfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
    if ":" in host:  # IPv6
        host = f"[{host}]"
    ca = account_dir / "ca.crt"
    if not ca.is_file():
        raise KubeconfigError(f"in-cluster config: {ca} is missing")
    return ClusterAccess(server=f"https://{host}:{port}",
                         credentials=TokenFile(str(account_dir / "token")),
                         tls=TLS(ca_file=str(ca)), source="in-cluster")


# ---- kubeconfig files


def default_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    env = os.environ if env is None else env
    listed = [Path(p).expanduser() for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    return listed or [Path("~/.kube/config").expanduser()]


@dataclass
class _Merged:
    """Named entries from one or more files; the first file to name an entry wins."""

    current_context: str = ""
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = field(default_factory=lambda: {
        "clusters": {}, "users": {}, "contexts": {}})

    def add(self, doc: Mapping[str, Any], path: Path) -> None:
        self.current_context = self.current_context or str(doc.get("current-context") or "")
        for kind, inner in (("clusters", "cluster"), ("users", "user"),
                            ("contexts", "context")):
            for entry in doc.get(kind) or []:
                name = str(entry.get("name", ""))
                self.entries[kind].setdefault(name, (dict(entry.get(inner) or {}), path.parent))

    def get(self, kind: str, name: str, source: str) -> tuple[dict[str, Any], Path]:
        if name not in self.entries[kind]:
            raise KubeconfigError(f"{source}: no {kind[:-1]} named {name!r}")
        return self.entries[kind][name]


def from_kubeconfig(paths: list[Path] | Path | str | None = None,
                    context: str | None = None) -> ClusterAccess:
    """The cluster and user of ``context`` (default: current-context) in the given files
    (default: $KUBECONFIG, else ~/.kube/config)."""
    files = ([Path(paths)] if isinstance(paths, (str, Path)) else paths) or default_paths()
    merged = _Merged()
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            if len(files) > 1:
                continue  # client-go skips missing files of a KUBECONFIG list
            raise KubeconfigError(f"kubeconfig {path} does not exist") from None
        except (OSError, yaml.YAMLError) as exc:
            raise KubeconfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise KubeconfigError(f"kubeconfig {path} is not a mapping")
        merged.add(doc, path)
    source = ":".join(str(p) for p in files)
    name = context or merged.current_context
    if not name:
        raise KubeconfigError(f"{source}: no current-context and no context given")
    ctx, _ = merged.get("contexts", name, source)
    cluster, cluster_dir = merged.get("clusters", str(ctx.get("cluster", "")), source)
    user, user_dir = (merged.get("users", str(ctx["user"]), source) if ctx.get("user")
                      else ({}, cluster_dir))
    server = str(cluster.get("server") or "")
    if not server:
        raise KubeconfigError(f"{source}: cluster {ctx.get('cluster')!r} has no server")
    where = f"{source} (context {name})"
    if user.get("auth-provider"):
        return _fallback(files, name, where, str(user["auth-provider"].get("name", "")))
    tls = TLS(
        ca_file=_path(cluster.get("certificate-authority"), cluster_dir),
        ca_data=_data(cluster.get("certificate-authority-data"), "certificate-authority-data"),
        cert_file=_path(user.get("client-certificate"), user_dir),
        key_file=_path(user.get("client-key"), user_dir),
        cert_data=_data(user.get("client-certificate-data"), "client-certificate-data"),
        key_data=_data(user.get("client-key-data"), "client-key-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        server_name=cluster.get("tls-server-name") or None,
    )
    return ClusterAccess(server=server, credentials=_credentials(user, user_dir, cluster),
                         tls=tls, proxy=cluster.get("proxy-url") or None, source=where)


def _credentials(user: Mapping[str, Any], base: Path,
                 cluster: Mapping[str, Any]) -> Credentials:
    if user.get("exec"):
        info = {k: cluster[k] for k in ("server", "certificate-authority-data",
                                        "insecure-skip-tls-verify", "tls-server-name",
                                        "proxy-url") if cluster.get(k)}
        extension = next((e.get("extension") for e in cluster.get("extensions") or []
                          if e.get("name") == "client.authentication.k8s.io/exec"), None)
        if extension is not None:
            info["config"] = extension
        return ExecPlugin(user["exec"], base_dir=base, cluster=info)
    if user.get("token"):
        return StaticHeader(f"Bearer {user['token']}")
    if user.get("tokenFile"):
        return TokenFile(str(_path(user["tokenFile"], base)))
    if user.get("username") or user.get("password"):
        pair = f"{user.get('username', '')}:{user.get('password', '')}".encode()
        return StaticHeader(f"Basic {base64.b64encode(pair).decode()}")
    return NoCredentials()


def _path(value: Any, base: Path) -> str | None:
    return str(base / str(value)) if value else None  # an absolute value ignores base


def _data(value: Any, what: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise KubeconfigError(f"{what} is not base64") from exc


# ---- the kubernetes package's loader, for what this module does not read


class PackageCredentials(NoCredentials):
    """Auth through a ``kubernetes.client.Configuration`` (which refreshes its own token)."""

    def __init__(self, configuration: Any) -> None:
        self.configuration = configuration

    def headers(self) -> dict[str, str]:
        setting = self.configuration.auth_settings().get("BearerToken") or {}
        return {str(setting["key"]): str(setting["value"])} if setting.get("value") else {}


def _fallback(files: list[Path], context: str, where: str, provider: str) -> ClusterAccess:
    log.info("%s: auth-provider %r is not read by the loop's own loader; using the kubernetes "
             "package's (about 20 MB more memory)", where, provider)
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    cfg = k8s.Configuration()
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(files[0]) if len(files) == 1 else None, context=context,
        client_configuration=cfg, persist_config=False)
    tls = TLS(ca_file=cfg.ssl_ca_cert, cert_file=cfg.cert_file, key_file=cfg.key_file,
              insecure=not cfg.verify_ssl, server_name=cfg.tls_server_name or None)
    return ClusterAccess(server=str(cfg.host), credentials=PackageCredentials(cfg), tls=tls,
                         proxy=cfg.proxy or None, source=f"{where} via the kubernetes package")
