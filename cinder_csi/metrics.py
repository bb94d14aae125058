"""Prometheus metrics of the CSI plugin, and a small HTTP server for /metrics and /healthz.

Every metric lives in a `Metrics` instance with its own registry, so tests and several
servers in one process never collide on the global default registry. /healthz runs the named
checks of a `HealthChecks` registry: each part of the process (the cloud client, the watch
loop's queues, leader election) adds its own, and the answer names every one that fails.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

LOG = logging.getLogger(__name__)

# Same buckets as the upstream CSI sidecars (csi-lib-utils), so dashboards line up.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 120.0, 300.0, 600.0)

# gRPC status names as Go spells them (codes.Code.String()), which is what the sidecars'
# grpc_status_code label carries; Python's names differ (DEADLINE_EXCEEDED, CANCELLED).
_GO_CODE_NAMES = {"CANCELLED": "Canceled", "OK": "OK"}


def go_code_name(code_name: str) -> str:
    """`DEADLINE_EXCEEDED` -> `DeadlineExceeded`, `CANCELLED` -> `Canceled`."""
    special = _GO_CODE_NAMES.get(code_name)
    if special is not None:
        return special
    return "".join(part.capitalize() for part in code_name.split("_"))


class Metrics:
    """The plugin's metrics; `csi_plugin_operations_seconds` mirrors the sidecars' histogram."""

    def __init__(self, driver_name: str, *, registry: CollectorRegistry | None = None) -> None:
        self.driver_name = driver_name
        self.registry = registry if registry is not None else CollectorRegistry()
        self.operations_seconds = Histogram(
            "csi_plugin_operations_seconds",
            "Duration of CSI operations served by the plugin, by method and gRPC status.",
            ["driver_name", "method_name", "grpc_status_code"],
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )

    def observe_operation(self, method: str, code_name: str, seconds: float) -> None:
        """Record one finished call; `method` is the full gRPC method, `code_name` e.g. 'OK'."""
        self.operations_seconds.labels(
            driver_name=self.driver_name,
            method_name=method,
            grpc_status_code=go_code_name(code_name),
        ).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Health:
    """One check's answer: ok, or not with the reason an operator reads."""

    ok: bool
    reason: str = ""


HealthCheck = Callable[[], Health]


class HealthChecks:
    """Named liveness checks; /healthz is 200 when all pass, else 500 with each failure."""

    def __init__(self) -> None:
        self._checks: dict[str, HealthCheck] = {}
        self._lock = threading.Lock()

    def add(self, name: str, check: HealthCheck) -> None:
        with self._lock:
            self._checks[name] = check

    def add_flag(self, name: str, ok: Callable[[], bool], reason: str) -> None:
        """A check from a yes/no callable and the reason it gives when false."""
        self.add(name, lambda: Health(True) if ok() else Health(False, reason))

    def add_probe(self, name: str, probe: Callable[[], str | None]) -> None:
        """A check from a probe that returns None when fine, else the reason it is not."""
        def check() -> Health:
            reason = probe()
            return Health(True) if reason is None else Health(False, reason)
        self.add(name, check)

    def remove(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def failing(self) -> list[str]:
        """``name: reason`` of every failing check (a raising check raises)."""
        with self._lock:
            checks = sorted(self._checks.items())
        out = []
        for name, check in checks:
            result = check()
            if not result.ok:
                out.append(f"{name}: {result.reason}")
        return out


class HTTPEndpoint:
    """A running /metrics + /healthz server; `stop()` shuts it down and joins its thread."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def _parse_host_port(endpoint: str) -> tuple[str, int]:
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid HTTP endpoint {endpoint!r}: expected host:port")
    return host.strip("[]"), int(port_text)


def serve_http(endpoint: str, metrics: Metrics, health: HealthChecks) -> HTTPEndpoint:
    """Serve GET /metrics and /healthz on `endpoint` ("host:port", port 0 picks one).

    /healthz answers 200 "ok" when every check of `health` passes, else 500 with one line per
    failing check (a liveness probe then restarts the pod).
    """
    host, port = _parse_host_port(endpoint)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                # A raising check drops the connection, which probes read as unhealthy.
                failing = health.failing()
                if failing:
                    self._reply(500, ("\n".join(failing) + "\n").encode())
                else:
                    self._reply(200, b"ok\n")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes every few seconds would flood stderr; keep them at DEBUG.
            LOG.debug("http %s " + format, self.address_string(), *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return HTTPEndpoint(server, thread)

