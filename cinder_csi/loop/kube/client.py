"""Kubernetes API clients: construction, throttling, Retry-After, raw-JSON requests, errors.

Every request of the main client first takes a token from a :class:`TokenBucket` (the
equivalent of client-go's ``--kube-api-qps/--kube-api-burst``) and rides out 429 and
5xx-with-Retry-After answers the way client-go does. Leader election gets a second client
with its own connection pool and no throttle, so a busy controller cannot starve renewals.

:class:`KubeRest` speaks raw JSON dicts over the client's low-level ``call_api`` so objects
are not squeezed through the generated model classes (unknown fields survive).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

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


def load_configuration(options: KubeOptions) -> Any:
    """A fresh ``kubernetes.client.Configuration``; never touches the process-wide default."""
    cfg = k8s.Configuration()
    # The config loaders carry no annotations; they fill in ``cfg`` and return nothing.
    if options.kubeconfig:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=options.kubeconfig,
            context=options.context,
            client_configuration=cfg,
            persist_config=False,
        )
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=cfg
        )
    else:
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            context=options.context, client_configuration=cfg, persist_config=False
        )
    cfg.connection_pool_maxsize = options.pool_size
    return cfg


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
    """Stands in for ``ApiClient.rest_client``: token first, then the request, then Retry-After.

    Wrapping the REST layer (not the generated API classes) covers every call the client
    makes, including watches and ``_preload_content=False`` requests.
    """

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


def new_api_client(
    configuration: Any,
    limiter: TokenBucket,
    *,
    max_retries: int,
    user_agent: str,
) -> Any:
    """A ``kubernetes.client.ApiClient`` whose every request goes through ``limiter``."""
    api: Any = k8s.ApiClient(configuration)
    api.rest_client = ThrottledRest(api.rest_client, limiter, max_retries=max_retries)
    api.user_agent = user_agent
    return api


@dataclass
class KubeClients:
    """The main (throttled) client and the leader-election (unthrottled) client."""

    main: Any
    leader_election: Any
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
    limiter = TokenBucket(options.qps, options.burst)
    main = new_api_client(
        load_configuration(options),
        limiter,
        max_retries=options.max_retry_after,
        user_agent=options.user_agent,
    )
    # Own Configuration (so its own pool) and no retries: the elector has its own timing.
    leader = new_api_client(
        load_configuration(options),
        TokenBucket(0, 1),
        max_retries=0,
        user_agent=f"{options.user_agent}-leader-election",
    )
    return KubeClients(main=main, leader_election=leader, limiter=limiter, options=options)


class KubeRest:
    """Raw JSON requests through an ApiClient: dicts in, dicts out, ApiException on non-2xx.

    Requests go straight to the urllib3 pool of the client's API server, under the client's
    limiter and with its auth headers: the generated client's serialisation and the pool
    manager's URL handling cost more CPU than the exchange itself. A client behind a proxy,
    or one not built by ``new_api_client``, takes the generated client's own path.
    """

    def __init__(self, api_client: Any, *, timeout: float = 10.0) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self._throttled: ThrottledRest | None = None
        self._pool: Any = None
        self._prefix = ""
        rest = getattr(api_client, "rest_client", None)
        cfg = getattr(api_client, "configuration", None)
        if isinstance(rest, ThrottledRest) and cfg is not None and not cfg.proxy:
            self._throttled = rest
            self._pool = rest.pool_manager.connection_from_url(cfg.host)
            self._prefix = urlsplit(cfg.host).path.rstrip("/")  # a server URL with a path

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
        if self._pool is not None:
            resp = self._direct(method, path, query=query, body=body,
                                content_type=content_type, timeout=timeout)
            data = resp.data  # read in full: the connection is back in the pool
        else:
            resp = self._send(method, path, query=query, body=body,
                              content_type=content_type, timeout=timeout)
            try:
                data = resp.read()
            finally:
                resp.response.release_conn()
        if not 200 <= resp.status <= 299:
            raise ApiException.from_response(
                http_resp=resp, body=data.decode("utf-8", "replace"), data=None
            )
        if not data:
            return {}
        decoded: JSON = json.loads(data)
        return decoded

    def lister(self, path: str) -> Callable[..., Any]:
        """A list function for ``Informer`` over ``path`` (a collection), taking the keywords
        of the generated client's list methods, so the informers need none of the generated
        API classes (which cost some 20 MB of memory)."""

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
        resp = self._send("GET", path, query=query, body=None,
                          content_type="application/json", timeout=timeout)
        if not 200 <= resp.status <= 299:
            data = resp.read()
            resp.response.release_conn()
            raise ApiException.from_response(
                http_resp=resp, body=data.decode("utf-8", "replace"), data=None
            )
        return resp.response

    def _direct(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
        body: Any,
        content_type: str,
        timeout: Timeout,
    ) -> Any:
        assert self._throttled is not None
        params = list(query.items()) if isinstance(query, Mapping) else list(query or [])
        headers = dict(self.api_client.default_headers)
        headers["Accept"] = "application/json"
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        # The client's own auth (a bearer token it may refresh, or none with client certs).
        self.api_client.update_params_for_auth(headers, params, ["BearerToken"], path, method,
                                               body)
        url = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        limit = timeout if timeout is not None else self.timeout
        pool_timeout = (urllib3.Timeout(connect=limit[0], read=limit[1])
                        if isinstance(limit, tuple) else urllib3.Timeout(total=limit))
        pool = self._pool
        return self._throttled.send(method, url, lambda: pool.urlopen(
            method, url, body=data, headers=headers, timeout=pool_timeout,
            preload_content=True, redirect=False))

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | Sequence[tuple[str, Any]] | None,
        body: Any,
        content_type: str,
        timeout: Timeout,
    ) -> Any:
        params = list(query.items()) if isinstance(query, Mapping) else list(query or [])
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method_, url, header_params, body_, post = self.api_client.param_serialize(
            method,
            path,
            query_params=params or None,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        return self.api_client.call_api(
            method_, url, header_params=header_params, body=body_, post_params=post,
            _request_timeout=timeout if timeout is not None else self.timeout,
        )

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
