"""The HTTP front: one port for every service, request ids, fault injection, error bodies."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from . import layout
from .errors import ApiError, bad_request, not_found
from .faults import Faults
from .wire import Request, Response

log = logging.getLogger(__name__)

ServiceHandler = Callable[[Request], Response]
REQUEST_LOG_SIZE = 10_000
# The longest request URL the services' WSGI servers read (eventlet's default); longer ones
# are answered 414 before any service sees them.
MAX_URL_LENGTH = 8192


@dataclass(frozen=True)
class Mount:
    prefix: str  # path prefix stripped before the service sees the request
    service: str  # name used by faults and in error bodies
    handler: ServiceHandler


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int  # 0 when the connection was dropped
    request_id: str


class ApiHttpServer(ThreadingHTTPServer):
    daemon_threads = True  # a request held by a hang fault must not block shutdown
    allow_reuse_address = True
    # A real API server accepts bursts; the default backlog of 5 resets connections when a
    # hundred workers start at once.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], mounts: list[Mount], faults: Faults) -> None:
        super().__init__(address, _Handler)
        # Longest prefix first, so /identity wins over the bare "/" root.
        self.mounts = sorted(mounts, key=lambda m: len(m.prefix), reverse=True)
        self.faults = faults
        self.log_lock = threading.Lock()
        # Bounded: benchmarks send many requests; tests only look at recent ones.
        self.request_log: deque[LoggedRequest] = deque(maxlen=REQUEST_LOG_SIZE)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def mount_for(self, path: str) -> Mount | None:
        for mount in self.mounts:
            if path == mount.prefix or path.startswith(mount.prefix.rstrip("/") + "/"):
                return mount
        return None

    def record(self, entry: LoggedRequest) -> None:
        with self.log_lock:
            self.request_log.append(entry)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle on, a keep-alive client's
    # delayed ACK holds every answer back by ~40 ms.
    disable_nagle_algorithm = True
    server: ApiHttpServer

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        path = url.path
        request_id = f"req-{uuid.uuid4()}"
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        mount = self.server.mount_for(path)
        service = mount.service if mount else "identity"
        if len(self.path) > MAX_URL_LENGTH:
            self.server.record(LoggedRequest(self.command, path[:200], "", 414, request_id))
            self._write(Response(414, {"message": "Request URI Too Long"}), service, request_id)
            return
        faults = self.server.faults.for_request(service, self.command, path)
        if faults.disconnect or faults.hang:
            self.server.faults.sleep(faults.hang)
            self._drop(path, url.query, request_id)
            return
        if faults.delay:
            self.server.faults.sleep(faults.delay)
        try:
            if faults.status and not faults.status_after:
                raise ApiError(faults.status, faults.message, headers=faults.headers)
            if mount is None:
                raise not_found("The resource could not be found.")
            request = Request(
                method=self.command,
                path=path[len(mount.prefix.rstrip("/")):],
                query=parse_qs(url.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=_parse_json(raw),
                base_url=self.server.base_url,
                service_url=self.server.base_url + mount.prefix,
                request_id=request_id,
            )
            response = mount.handler(request)
            if faults.status:  # carried out, answered with an error all the same
                raise ApiError(faults.status, faults.message, headers=faults.headers)
        except ApiError as error:
            response = Response(error.status, error.body(service), error.headers)
            if error.status == 401:
                # Keystone, and keystonemiddleware in front of each service, say where to
                # authenticate.
                auth_url = f"{self.server.base_url}{layout.IDENTITY}/v3"
                response.headers.setdefault("WWW-Authenticate", f'Keystone uri="{auth_url}"')
        if faults.lose_answer:
            self._drop(path, url.query, request_id)
            return
        # Logged before answering, so a client that saw the answer also sees the entry.
        self.server.record(LoggedRequest(self.command, path, url.query, response.status,
                                         request_id))
        self._write(response, service, request_id)

    def _write(self, response: Response, service: str, request_id: str) -> None:
        payload = b""
        if response.body is not None and self.command != "HEAD":
            payload = json.dumps(response.body).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-openstack-request-id", request_id)
        if service == "compute":
            self.send_header("x-compute-request-id", request_id)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _drop(self, path: str, query: str, request_id: str) -> None:
        """Close the connection without an answer, as a dead or hung endpoint would."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may already have given up
            self.connection.shutdown(socket.SHUT_RDWR)
        self.server.record(LoggedRequest(self.command, path, query, 0, request_id))


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("Malformed request body") from None


def mounts(identity: ServiceHandler, volume: ServiceHandler, compute: ServiceHandler | None,
           metadata: ServiceHandler) -> list[Mount]:
    found = [
        Mount("/", "identity", identity),  # GET / answers with Keystone's versions
        Mount(layout.IDENTITY, "identity", identity),
        Mount("/v3", "identity", lambda r: identity(_under_v3(r))),
        Mount(layout.VOLUME, "volume", volume),
        Mount(layout.METADATA, "metadata", metadata),
    ]
    if compute is not None:
        found.append(Mount(layout.COMPUTE, "compute", compute))
    return found


def _under_v3(request: Request) -> Request:
    # Keystone mounted at the root (/v3/auth/tokens) as well as under /identity.
    request.path = "/v3" + request.path
    return request
