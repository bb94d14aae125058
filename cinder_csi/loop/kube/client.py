"""Kubernetes API clients: construction, throttling, Retry-After, raw-JSON requests, errors.

Every request of the main client first takes a token from a :class:`TokenBucket` (the
equivalent of client-go's ``--kube-api-qps/--kube-api-burst``) and rides out 429 and
5xx-with-Retry-After answers the way client-go does. Leader election gets a second client
with its own connection pool and no throttle, so a busy controller cannot starve renewals.

:class:`KubeRest` sends raw JSON dicts straight over urllib3 with the auth of
:mod:`cinder_csi.loop.kube.kubeconfig`: no generated model classes (unknown fields survive),
and no ``kubernetes`` package in the process (importing it costs some 20 MB).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3

from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.kubeconfig import TLS, ClusterAccess, from_kubeconfig, in_cluster
from cinder_csi.loop.kube.throttle import TokenBucket

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Timeout = float | tuple[float, float] | None

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

_RETRY_AFTER_CAP = 30.0  # never sleep longer than this on one Retry-After

# What a request may raise: the API's answer, or the connection's failure.
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def api_error_text(exc: BaseException) -> str:
    """``404 Not Found`` for an API answer, else the connection error's own words."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class KubeOptions:
    """How to reach the API server; kubeconfig None means in-cluster, then ~/.kube/config."""

    kubeconfig: str | None = None
    context: str | None = None
    qps: float = 300.0  # the loop's default (see README, "The watch loop")
    burst: int = 600
    timeout: float = 10.0  # default per-request timeout of KubeRest
    max_retry_after: int = 10  # retries of 429 / 5xx-with-Retry-After per request
    pool_size: int = 128  # urllib3 connections per host; >= the worker count
    user_agent: str = "cinder-csi-provisioner"


def load_access(options: KubeOptions) -> ClusterAccess:
    """The kubeconfig given, else in-cluster config, else $KUBECONFIG or ~/.kube/config."""
    if options.kubeconfig:
        return from_kubeconfig(options.kubeconfig, options.context)
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return in_cluster()
    return from_kubeconfig(None, options.context)


def ssl_context(tls: TLS, client_cert: tuple[bytes, bytes] | None = None) -> ssl.SSLContext:
    """Server verification (or none, when insecure) and the client certificate, if any."""
    ctx = ssl.create_default_context(
        cafile=tls.ca_file, cadata=tls.ca_data.decode() if tls.ca_data else None)
    if tls.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    pair = client_cert or (tls.cert_data, tls.key_data)
    if client_cert or tls.cert_file or tls.cert_data:
        with tempfile.TemporaryDirectory(prefix="kube-tls-") as tmp:
            # load_cert_chain reads files only; they live just long enough to be read.
            cert = (tls.cert_file if not client_cert and tls.cert_file
                    else _private_file(Path(tmp, "cert"), pair[0] or b""))
            key = (tls.key_file if not client_cert and tls.key_file
                   else _private_file(Path(tmp, "key"), pair[1] or b""))
            ctx.load_cert_chain(cert, key)
    return ctx


def _private_file(path: Path, data: bytes) -> str:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return str(path)


def retry_after(resp: Any) -> float | None:
    """Seconds to wait before retrying ``resp``, or None when it must not be retried."""
    status = int(resp.status)
    header = resp.headers.get("Retry-After") if resp.headers is not None else None
    if status != 429 and not (status >= 500 and header):
        return None
    try:
        seconds = float(header) if header else 1.0
    except ValueError:  # an HTTP-date; client-go ignores those too and waits 1 s
        seconds = 1.0
    return min(max(seconds, 0.0), _RETRY_AFTER_CAP)


def _discard(resp: Any) -> None:
    """Free the connection of a response we will not read (a RESTResponse or urllib3's)."""
    raw = getattr(resp, "response", resp)
    try:
        raw.drain_conn()
    except (urllib3.exceptions.HTTPError, OSError):
        raw.close()
    raw.release_conn()


class ThrottledRest:
    """Token first, then the request, then Retry-After: around every exchange of a
    connection, watches included."""

    def __init__(
        self,
        inner: Any,
        limiter: TokenBucket,
        *,
        max_retries: int,
        stop: threading.Event | None = None,
    ) -> None:
        self._inner = inner
        self.limiter = limiter
        self.max_retries = max_retries
        self._stop = stop if stop is not None else threading.Event()

    @property
    def pool_manager(self) -> Any:
        return self._inner.pool_manager

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        return self.send(method, url, lambda: self._inner.request(method, url, *args, **kwargs))

    def send(self, method: str, url: str, call: Callable[[], Any]) -> Any:
        """``call()`` (one HTTP exchange) under the limiter, again after each Retry-After."""
        attempt = 0
        while True:
            self.limiter.acquire(self._stop)
            resp = call()
            delay = retry_after(resp)
            if delay is None or attempt >= self.max_retries or self._stop.is_set():
                return resp
            attempt += 1
            log.info(
                "kube API answered %s to %s %s; retry %d/%d in %.1fs",
                resp.status, method, url.split("?", 1)[0], attempt, self.max_retries, delay,
            )
            _discard(resp)
            if self._stop.wait(delay):
                return resp  # shutting down: the caller gets the 429/5xx as an ApiException

    def close(self) -> None:
        self._stop.set()
        self._inner.close()


class Transport:
    """The urllib3 pool(s) to one API server, rebuilt when an exec plugin's client
    certificate changes; ``request`` sends one exchange (``ThrottledRest``'s inner)."""

    def __init__(self, access: ClusterAccess, *, pool_size: int,
                 make_manager: Callable[[tuple[bytes, bytes] | None], urllib3.PoolManager]
                 | None = None) -> None:
        self.access = access
        self.pool_size = pool_size
        self._make_manager = make_manager or self.new_manager
        self._lock = threading.Lock()
        self._cert: tuple[bytes, bytes] | None = None
        self._manager: urllib3.PoolManager | None = None
        self._pool: Any = None
        parts = urlsplit(access.server)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.prefix = parts.path.rstrip("/")  # a server URL with a path

    @property
    def pool_manager(self) -> urllib3.PoolManager:
        return self._current()[0]

    def _current(self) -> tuple[urllib3.PoolManager, Any]:
        cert = self.access.credentials.client_cert()
        with self._lock:
            if self._manager is None or cert != self._cert:
                old, self._cert = self._manager, cert
                self._manager = self._make_manager(cert)
                # Through a proxy, requests go by full URL through the manager.
                self._pool = (None if self.access.proxy
                              else self._manager.connection_from_url(self.access.server))
                if old is not None:
                    old.clear()
            return self._manager, self._pool

    def new_manager(self, cert: tuple[bytes, bytes] | None) -> urllib3.PoolManager:
        kwargs: dict[str, Any] = {"num_pools": 4, "maxsize": self.pool_size}
        if self.access.server.startswith("https"):
            kwargs["ssl_context"] = ssl_context(self.access.tls, cert)
            if self.access.tls.insecure:
                kwargs.update(cert_reqs="CERT_NONE", assert_hostname=False)
            if self.access.tls.server_name:
                kwargs["server_hostname"] = self.access.tls.server_name
        if self.access.proxy:
            return urllib3.ProxyManager(self.access.proxy, **kwargs)
        return urllib3.PoolManager(**kwargs)

    def urlopen(self, method: str, path: str, **kwargs: Any) -> Any:
        """One exchange to ``path`` (query included) on the server."""
        manager, pool = self._current()
        if pool is None:
            return manager.urlopen(method, self.origin + self.prefix + path, **kwargs)
        return pool.urlopen(method, self.prefix + path, **kwargs)

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        return self.urlopen(method, url, **kwargs)

    def close(self) -> None:
        with self._lock:
            if self._manager is not None:
                self._manager.clear()


@dataclass
class ApiConnection:
    """One API server: its transport under a limiter, its auth, our User-Agent."""

    access: ClusterAccess
    rest_client: ThrottledRest
    transport: Transport
    user_agent: str

    def headers(self) -> dict[str, str]:
        return {"User-Agent": self.user_agent, **self.access.credentials.headers()}

    def close(self) -> None:
        self.rest_client.close()


def new_connection(access: ClusterAccess, limiter: TokenBucket, *, max_retries: int,
                   user_agent: str, pool_size: int) -> ApiConnection:
    """A connection whose every request goes through ``limiter``."""
    transport = Transport(access, pool_size=pool_size)
    return ApiConnection(access, ThrottledRest(transport, limiter, max_retries=max_retries),
                         transport, user_agent)


@dataclass
class KubeClients:
    """The main (throttled) client and the leader-election (unthrottled) client."""

    main: ApiConnection
    leader_election: ApiConnection
    limiter: TokenBucket
    options: KubeOptions = field(default_factory=KubeOptions)

    def rest(self) -> KubeRest:
        return KubeRest(self.main, timeout=self.options.timeout)

    def leader_rest(self) -> KubeRest:
        return KubeRest(self.leader_election, timeout=self.options.timeout)

    def close(self) -> None:
        self.main.close()
        self.leader_election.close()


def build_clients(options: KubeOptions) -> KubeClients:
    access = load_access(options)
    log.debug("kube API server %s from %s", access.server, access.source)
    limiter = TokenBucket(options.qps, options.burst)
    main = new_connection(access, limiter, max_retries=options.max_retry_after,
                          user_agent=options.user_agent, pool_size=options.pool_size)
    # Own transport (so its own pool) and no retries: the elector has its own timing.
    leader = new_connection(access, TokenBucket(0, 1), max_retries=0,
                            user_agent=f"{options.user_agent}-leader-election",
                            pool_size=options.pool_size)
    return KubeClients(main=main, leader_election=leader, limiter=limiter, options=options)


@dataclass(frozen=True)
class _Outgoing:
    """One request as either transport sends it: the query as pairs, the JSON headers."""

    method: str
    path: str
    params: tuple[tuple[str, Any], ...]
    headers: dict[str, str]
    body: Any
    timeout: Timeout

    @classmethod
    def of(cls, method: str, path: str,
           query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None, body: Any,
           content_type: str, timeout: Timeout) -> _Outgoing:
        params = tuple(query.items()) if isinstance(query, Mapping) else tuple(query or ())
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        return cls(method, path, params, headers, body, timeout)


class KubeRest:
    """Raw JSON requests to one API server: dicts in, dicts out, ApiException on non-2xx.

    Requests go straight to the connection's urllib3 pool, under its limiter and with its
    auth headers; a 401 makes the credential refresh (exec plugin, token file) before the
    next request.
    """

    def __init__(self, connection: ApiConnection, *, timeout: float = 10.0) -> None:
        self.connection = connection
        self.timeout = timeout

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: Timeout = None,
    ) -> JSON:
        resp = self._open(_Outgoing.of(method, path, query, body, content_type, timeout),
                          preload=True)
        data = resp.data  # read in full: the connection is back in the pool
        if not 200 <= resp.status <= 299:
            raise self._failed(resp, data)
        if not data:
            return {}
        decoded: JSON = json.loads(data)
        return decoded

    def lister(self, path: str) -> Callable[..., Any]:
        """A list function for ``Informer`` over ``path`` (a collection), taking the keywords
        of the generated client's list methods."""

        def list_or_watch(*, watch: bool = False, resource_version: str | None = None,
                          allow_watch_bookmarks: bool | None = None,
                          timeout_seconds: int | None = None, limit: int | None = None,
                          _continue: str | None = None, _preload_content: bool = False,
                          _request_timeout: Timeout = None) -> Any:
            query: list[tuple[str, Any]] = []
            if watch:
                query.append(("watch", "true"))
            if resource_version:
                query.append(("resourceVersion", resource_version))
            if allow_watch_bookmarks:
                query.append(("allowWatchBookmarks", "true"))
            if timeout_seconds is not None:
                query.append(("timeoutSeconds", timeout_seconds))
            if limit:
                query.append(("limit", limit))
            if _continue:
                query.append(("continue", _continue))
            return self.stream(path, query=query, timeout=_request_timeout)

        return list_or_watch

    def stream(
        self,
        path: str,
        *,
        query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        timeout: Timeout = None,
    ) -> Any:
        """GET with the body left unread (an ``urllib3.HTTPResponse``), for watches."""
        resp = self._open(_Outgoing.of("GET", path, query, None, "application/json", timeout),
                          preload=False)
        if not 200 <= resp.status <= 299:
            data = resp.read()
            resp.release_conn()
            raise self._failed(resp, data)
        return resp

    def _failed(self, resp: Any, data: bytes) -> ApiException:
        if resp.status == 401:
            self.connection.access.credentials.invalidate()
        return ApiException.from_response(http_resp=resp, body=data.decode("utf-8", "replace"))

    def _open(self, out: _Outgoing, *, preload: bool) -> Any:
        headers = {**self.connection.headers(), **out.headers}
        data = json.dumps(out.body).encode() if out.body is not None else None
        path = out.path + (f"?{urlencode(out.params)}" if out.params else "")
        limit = out.timeout if out.timeout is not None else self.timeout
        pool_timeout = (urllib3.Timeout(connect=limit[0], read=limit[1])
                        if isinstance(limit, tuple) else urllib3.Timeout(total=limit))
        transport = self.connection.transport
        return self.connection.rest_client.send(out.method, path, lambda: transport.urlopen(
            out.method, path, body=data, headers=headers, timeout=pool_timeout,
            preload_content=preload, redirect=False))

    def get(self, path: str, **kw: Any) -> JSON:
        return self.request("GET", path, **kw)

    def create(self, path: str, body: JSON, **kw: Any) -> JSON:
        return self.request("POST", path, body=body, **kw)

    def replace(self, path: str, body: JSON, **kw: Any) -> JSON:
        return self.request("PUT", path, body=body, **kw)

    def patch(self, path: str, body: Any, *, content_type: str = MERGE_PATCH, **kw: Any) -> JSON:
        return self.request("PATCH", path, body=body, content_type=content_type, **kw)

    def delete(self, path: str, **kw: Any) -> JSON:
        return self.request("DELETE", path, **kw)
