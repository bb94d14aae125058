"""The Kubernetes REST API over HTTP/1.1: routing, query parameters, faults and watch streaming.

Plain ``http.server`` with one thread per connection. Keep-alive matters (client-go and urllib3
pool connections), so every response has a Content-Length except watches, which are chunked
JSON lines as on the real server. ``ApiServer.close_connections()`` lets ``stop()`` unblock
threads parked on idle keep-alive connections, so that no thread outlives the server.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import sys
import threading
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

from cinder_csi.standins.kube import discovery, errors, openapi, table
from cinder_csi.standins.kube.errors import ApiError
from cinder_csi.standins.kube.faults import Faults
from cinder_csi.standins.kube.patch import APPLY_PATCH
from cinder_csi.standins.kube.resources import ResourceType, lookup
from cinder_csi.standins.kube.selectors import matcher, parse_field_selector, parse_label_selector
from cinder_csi.standins.kube.store import ListResult, Store
from cinder_csi.standins.kube.watch import WatchRequest, stream

log = logging.getLogger(__name__)

Obj = dict[str, Any]

# Requests remembered for KubeStandIn.requests(); a busy test makes a few thousand.
REQUEST_LOG_SIZE = 100_000


@dataclass(frozen=True)
class Route:
    resource: ResourceType
    namespace: str | None  # None: cluster-scoped, or all namespaces for a namespaced list
    name: str | None
    subresource: str | None


@dataclass(frozen=True)
class SeenRequest:
    method: str
    target: str  # path and query, as sent
    user_agent: str


class ApiServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close() joins every handler thread
    allow_reuse_address = True
    # A real API server accepts bursts; the default backlog of 5 resets connections when a
    # hundred workers start at once.
    request_queue_size = 1024

    def __init__(
        self, address: tuple[str, int], store: Store, faults: Faults, *, bookmark_interval: float
    ) -> None:
        self.store = store
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.stopping = threading.Event()
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._seen_lock = threading.Lock()
        self._seen: deque[SeenRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self._counts: Counter[tuple[str, str, str]] = Counter()
        super().__init__(address, Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-request is ordinary (a process that exits, a pool that
        drops idle connections): logged at debug, not printed as a traceback on stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
            log.debug("client %s hung up: %s", client_address, exc)
            return
        super().handle_error(request, client_address)

    def remember(self, request: SeenRequest, resource: str) -> None:
        with self._seen_lock:
            self._seen.append(request)
            self._counts[request.user_agent, request.method, resource] += 1

    def requests(self) -> list[SeenRequest]:
        with self._seen_lock:
            return list(self._seen)

    def request_counts(self) -> dict[tuple[str, str, str], int]:
        with self._seen_lock:
            return dict(self._counts)

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conn_lock:
            if alive:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):  # already closed by the peer
                conn.shutdown(socket.SHUT_RDWR)


class _Dropped(Exception):
    """A watch fault cut the connection."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: ApiServer
    timeout = 120  # idle keep-alive connections are closed after this

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------ request plumbing

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        body = self._read_body()
        self.server.remember(
            SeenRequest(method, self.path, str(self.headers.get("User-Agent") or "")),
            _counted_as(path, query),
        )
        faults = self.server.faults
        faults.record(method, path)
        try:
            delay = faults.delay(method, path)
            if delay:
                self.server.stopping.wait(delay)
            injected = faults.error(method, path)
            if injected is not None:
                raise injected
            self._route(method, path, query, body)
        except ApiError as exc:
            self._send_json(exc.code, exc.status(), retry_after=exc.retry_after)
        except _Dropped:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0] or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _json_body(self, body: bytes) -> Any:
        ctype = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if "protobuf" in ctype or "cbor" in ctype:
            # Only kubectl's typed generators (create namespace, create secret ...) send these.
            raise errors.unsupported_media_type(ctype)
        if not body:
            raise errors.bad_request("the body of the request was empty")
        try:
            if ctype == "application/yaml":
                return yaml.safe_load(body)
            return json.loads(body)
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(
                f"the body of the request could not be decoded: {exc}"
            ) from exc

    def _send_json(self, code: int, payload: Any, *, retry_after: int | None = None) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        # A UUID's shape from the process's PRNG: uuid4() reads os.urandom on every answer.
        self.send_header("Audit-Id", str(uuid.UUID(int=random.getrandbits(128), version=4)))
        self.send_header("Cache-Control", "no-cache, private")
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(data)

    def _send_text(self, code: int, text: str) -> None:
        data = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # ------------------------------------------------------------ routing

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        parts = [unquote(p) for p in path.split("/") if p]
        if path in ("/healthz", "/readyz", "/livez"):
            self._send_text(200, "ok")
            return
        if method == "GET" and self._discovery(parts):
            return
        route = _parse_route(parts)
        if route is None:
            raise errors.path_not_found()
        self._resource(method, route, query, body, path)

    def _discovery(self, parts: list[str]) -> bool:
        doc: Any = None
        if parts == ["version"]:
            doc = discovery.SERVER_VERSION
        elif parts == ["api"]:
            doc = discovery.api_versions(self.server.address)
        elif parts == ["apis"]:
            doc = discovery.api_group_list()
        elif len(parts) == 2 and parts[0] == "api":
            doc = discovery.resource_list("", parts[1])
        elif len(parts) == 2 and parts[0] == "apis":
            doc = discovery.api_group(parts[1])
        elif len(parts) == 3 and parts[0] == "apis":
            doc = discovery.resource_list(parts[1], parts[2])
        elif parts and parts[0] == "openapi":
            doc = openapi.document(parts[1:])
        else:
            return False
        if doc is None:
            raise errors.path_not_found()
        self._send_json(200, doc)
        return True

    def _resource(
        self, method: str, route: Route, query: dict[str, str], body: bytes, path: str
    ) -> None:
        store = self.server.store
        rt = route.resource
        dry_run = query.get("dryRun") == "All"
        if route.name is None:
            if method == "GET":
                if _truthy(query.get("watch")):
                    self._watch(route, query, path)
                else:
                    self._list(route, query)
            elif method == "POST":
                if route.namespace is None and rt.namespaced:
                    raise errors.method_not_allowed(method, path)
                created = store.create(
                    rt, self._json_body(body), namespace=route.namespace, dry_run=dry_run
                )
                self._send_json(200 if dry_run else 201, created)
            elif method == "DELETE":
                if route.namespace is None and rt.namespaced:
                    raise errors.method_not_allowed(method, path)
                options = self._delete_options(query, body)
                deleted = store.delete_collection(
                    rt,
                    namespace=route.namespace,
                    label_selector=query.get("labelSelector"),
                    field_selector=query.get("fieldSelector"),
                    grace_period=options.get("gracePeriodSeconds"),
                    dry_run=dry_run or options.get("dryRun") == ["All"],
                )
                self._send_json(200, _list_body(rt, ListResult(deleted, store.resource_version)))
            else:
                raise errors.method_not_allowed(method, path)
            return
        name = route.name
        if route.subresource == "binding":
            if method != "POST":
                raise errors.method_not_allowed(method, path)
            binding = self._json_body(body)
            target = (binding.get("target") or {}) if isinstance(binding, dict) else {}
            store.bind_pod(route.namespace or "default", name, str(target.get("name", "")))
            self._send_json(
                201,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "code": 201,
                },
            )
            return
        if route.subresource not in (None, "status", "finalize"):
            raise errors.path_not_found()
        if method == "GET":
            obj = store.get(rt, name, namespace=route.namespace)
            if table.wants_table(self.headers.get("Accept") or ""):
                meta = {"resourceVersion": obj["metadata"]["resourceVersion"]}
                self._send_json(200, table.table(rt, [obj], meta))
            else:
                self._send_json(200, obj)
        elif method == "PUT":
            obj = self._json_body(body)
            given = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) else None
            if given != name:
                raise errors.bad_request(
                    f"the name of the object ({given}) does not match the name on the URL ({name})"
                )
            self._conflict_fault(route)
            updated = store.update(
                rt, obj, namespace=route.namespace, subresource=route.subresource, dry_run=dry_run
            )
            self._send_json(200, updated)
        elif method == "PATCH":
            self._conflict_fault(route)
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ctype == APPLY_PATCH:
                raise errors.unsupported_media_type(ctype)
            patched = store.patch(
                rt,
                name,
                self._json_body(body),
                ctype,
                namespace=route.namespace,
                subresource=route.subresource,
                dry_run=dry_run,
            )
            self._send_json(200, patched)
        elif method == "DELETE" and route.subresource is None:
            options = self._delete_options(query, body)
            obj, gone = store.delete(
                rt,
                name,
                namespace=route.namespace,
                grace_period=options.get("gracePeriodSeconds"),
                preconditions=options.get("preconditions"),
                dry_run=dry_run or options.get("dryRun") == ["All"],
            )
            if gone and not rt.delete_returns_object:
                details: Obj = {"name": name, "kind": rt.plural, "uid": obj["metadata"]["uid"]}
                if rt.group:
                    details["group"] = rt.group
                self._send_json(
                    200,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": details,
                    },
                )
            else:
                self._send_json(200 if gone else 202, obj)
        else:
            raise errors.method_not_allowed(method, path)

    def _conflict_fault(self, route: Route) -> None:
        if route.name and self.server.faults.update_conflict(
            route.resource.plural, route.namespace, route.name
        ):
            raise errors.conflict(route.resource, route.name, errors.STALE)

    def _delete_options(self, query: dict[str, str], body: bytes) -> Obj:
        options: Obj = {}
        if body:
            parsed = self._json_body(body)
            if not isinstance(parsed, dict):
                raise errors.bad_request("DeleteOptions must be an object")
            options.update(parsed)
        if "gracePeriodSeconds" in query:
            options["gracePeriodSeconds"] = _int(query, "gracePeriodSeconds")
        if query.get("dryRun") == "All":
            options["dryRun"] = ["All"]
        grace = options.get("gracePeriodSeconds")
        if grace is not None and not isinstance(grace, int):
            raise errors.bad_request("gracePeriodSeconds must be an integer")
        return options

    def _list(self, route: Route, query: dict[str, str]) -> None:
        store = self.server.store
        result = store.list(
            route.resource,
            namespace=route.namespace,
            label_selector=query.get("labelSelector"),
            field_selector=query.get("fieldSelector"),
            limit=_int(query, "limit") or 0,
            continue_token=query.get("continue") or None,
            resource_version=query.get("resourceVersion"),
            resource_version_match=query.get("resourceVersionMatch"),
        )
        if table.wants_table(self.headers.get("Accept") or ""):
            self._send_json(200, table.table(route.resource, result.items, _list_meta(result)))
        else:
            self._send_json(200, _list_body(route.resource, result))

    def _watch(self, route: Route, query: dict[str, str], path: str) -> None:
        rt = route.resource
        match = matcher(
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(query.get("fieldSelector"), rt),
        )
        send_initial = _truthy(query.get("sendInitialEvents"))
        if send_initial and not _truthy(query.get("allowWatchBookmarks")):
            raise errors.invalid(
                rt,
                "",
                [
                    errors.FieldError(
                        "Forbidden",
                        "allowWatchBookmarks",
                        "allowWatchBookmarks must be set to true when sendInitialEvents is set",
                    )
                ],
            )
        timeout = _int(query, "timeoutSeconds")
        request = WatchRequest(
            resource=rt,
            namespace=route.namespace,
            match=match,
            resource_version=query.get("resourceVersion"),
            allow_bookmarks=_truthy(query.get("allowWatchBookmarks")),
            send_initial_events=send_initial,
            timeout=float(timeout) if timeout else None,
        )
        as_table = table.wants_table(self.headers.get("Accept") or "")
        faults = self.server.faults
        expire = faults.watch_expire(path)
        drop_after = faults.watch_drop(path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        sent = 0
        if expire:
            gone = errors.expired(
                f"too old resource version: {request.resource_version or 0} "
                f"({self.server.store.resource_version})"
            )
            self._chunk({"type": "ERROR", "object": gone.status()})
        else:
            for item in stream(
                self.server.store,
                request,
                stop=self.server.stopping,
                bookmark_interval=self.server.bookmark_interval,
            ):
                if drop_after is not None and sent >= drop_after:
                    self._cut()
                if as_table and item["type"] in ("ADDED", "MODIFIED", "DELETED"):
                    item = {
                        "type": item["type"],
                        "object": table.table(
                            rt,
                            [item["object"]],
                            {"resourceVersion": item["object"]["metadata"]["resourceVersion"]},
                        ),
                    }
                self._chunk(item)
                sent += 1
            if drop_after is not None:
                self._cut()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _chunk(self, item: Obj) -> None:
        data = json.dumps(item, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        """End the stream mid-flight, without the final chunk, as a broken connection would."""
        self.wfile.flush()
        with contextlib.suppress(OSError):  # the peer went first
            self.connection.shutdown(socket.SHUT_RDWR)
        raise _Dropped()


def _parse_route(parts: list[str]) -> Route | None:
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None
    namespace: str | None = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    rt = lookup(group, version, rest[0])
    if rt is None or len(rest) > 3:
        return None
    if namespace is not None and not rt.namespaced:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if rt.namespaced and name is not None and namespace is None:
        return None
    return Route(rt, namespace, name, sub)


def _counted_as(path: str, query: dict[str, str]) -> str:
    """What a request is counted as: resource[/subresource], "watch" marked; else the path."""
    route = _parse_route([unquote(p) for p in path.split("/") if p])
    if route is None:
        return path
    what = route.resource.plural + (f"/{route.subresource}" if route.subresource else "")
    return what + (" (watch)" if _truthy(query.get("watch")) else "")


def _list_meta(result: ListResult) -> Obj:
    meta: Obj = {"resourceVersion": str(result.resource_version)}
    if result.continue_token:
        meta["continue"] = result.continue_token
    if result.remaining is not None:
        meta["remainingItemCount"] = result.remaining
    return meta


def _list_body(rt: ResourceType, result: ListResult) -> Obj:
    items = []
    for obj in result.items:
        # The real server leaves kind/apiVersion off list items.
        item = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        items.append(item)
    return {
        "kind": rt.list_kind,
        "apiVersion": rt.api_version,
        "metadata": _list_meta(result),
        "items": items,
    }


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes")


def _int(query: dict[str, str], key: str) -> int | None:
    value = query.get(key)
    if value in (None, ""):
        return None
    try:
        return int(str(value))
    except ValueError as exc:
        raise errors.bad_request(f"invalid value for {key}: {value!r}") from exc
