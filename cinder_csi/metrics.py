"""Prometheus metrics of the CSI plugin, and a small HTTP server for /metrics and /healthz.

Every metric lives in a `Metrics` instance with its own registry, so tests and several
servers in one process never collide on the global default registry.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

LOG = logging.getLogger(__name__)

# Same buckets as the upstream CSI sidecars (csi-lib-utils), so dashboards line up.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 120.0, 300.0, 600.0)

# The buckets external-provisioner gives its controller_* operation histograms.
CONTROLLER_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class OperationMetrics:
    """external-provisioner's triple for one operation: `<name>_total` (done),
    `<name>_failed_total` (failed attempts) and `<name>_duration_seconds` (how long a success
    took), all with the same labels."""

    def __init__(self, name: str, labels: list[str], *, done: str, failed: str, duration: str,
                 registry: CollectorRegistry) -> None:
        self.total = Counter(f"{name}_total", done, labels, registry=registry)
        self.failed = Counter(f"{name}_failed_total", failed, labels, registry=registry)
        self.duration = Histogram(f"{name}_duration_seconds", duration, labels,
                                  buckets=CONTROLLER_BUCKETS, registry=registry)


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


HealthCheck = Callable[[], "str | None"]


class HealthChecks:
    """Named liveness checks behind /healthz: each returns None when healthy, else why not.

    Any part may register one (the controller: its cloud client and operation locks; the
    node: its metadata and operation locks; the watch loop: leader lease, caches synced in
    time, work queues). A check must not
    block: it reads state that the work itself keeps up to date. A check that raises drops the
    probe's connection, which a liveness probe counts as a failure too.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._checks: dict[str, HealthCheck] = {}

    def register(self, name: str, check: HealthCheck) -> None:
        with self._lock:
            if name in self._checks:
                raise ValueError(f"health check {name!r} is already registered")
            self._checks[name] = check

    def unregister(self, name: str) -> None:
        with self._lock:
            self._checks.pop(name, None)

    def failures(self) -> dict[str, str]:
        """Each failing check's name and reason."""
        with self._lock:
            checks = list(self._checks.items())
        failed: dict[str, str] = {}
        for name, check in checks:
            reason = check()
            if reason is not None:
                failed[name] = reason
        return failed


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


def serve_http(endpoint: str, metrics: Metrics, healthz: HealthChecks) -> HTTPEndpoint:
    """Serve GET /metrics and /healthz on `endpoint` ("host:port", port 0 picks one).

    /healthz answers 200 "ok" when every check of `healthz` passes, else 503 naming each
    failing check and why, one per line (a liveness probe then restarts the pod).
    """
    host, port = _parse_host_port(endpoint)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._reply(200, metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                # A raising check drops the connection, which probes read as unhealthy.
                failed = healthz.failures()
                body = "".join(f"{name}: {why}\n" for name, why in sorted(failed.items()))
                self._reply(503 if failed else 200, body.encode() if failed else b"ok\n")
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

