"""The gRPC server that hosts the CSI services (and grpc.health.v1) on a unix socket or a TCP
port; every unary call passes through the interceptors of csi/interceptors.py."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Literal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cinder_csi.csi import csi_pb2_grpc
from cinder_csi.csi.interceptors import chain
from cinder_csi.metrics import Metrics
from cinder_csi.signals import SignalStop

LOG = logging.getLogger(__name__)

# The generated module is untyped (no .pyi for the grpc stubs); give the few entry points used
# here a type once instead of silencing mypy at each call.
_AddServicer = Callable[[Any, grpc.Server], None]
_add_identity: _AddServicer = csi_pb2_grpc.add_IdentityServicer_to_server
_add_controller: _AddServicer = csi_pb2_grpc.add_ControllerServicer_to_server
_add_node: _AddServicer = csi_pb2_grpc.add_NodeServicer_to_server


# ------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class Endpoint:
    scheme: Literal["unix", "tcp"]
    address: str  # socket path for unix, "host:port" for tcp

    @property
    def grpc_address(self) -> str:
        if self.scheme == "unix":
            return "unix:" + self.address
        return self.address


def parse_endpoint(endpoint: str) -> Endpoint:
    """Parse `unix:///abs/path`, `unix://rel/path` or `tcp://host:port` (as the Go driver does)."""
    scheme, sep, rest = endpoint.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("unix", "tcp"):
        raise ValueError(
            f"invalid endpoint {endpoint!r}: expected unix:///path/to/csi.sock or tcp://host:port"
        )
    if scheme == "unix":
        if not rest:
            raise ValueError(f"invalid endpoint {endpoint!r}: unix endpoint without a path")
        return Endpoint("unix", rest)
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid endpoint {endpoint!r}: tcp endpoint needs host:port")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"invalid endpoint {endpoint!r}: unbalanced brackets in IPv6 host")
    return Endpoint("tcp", f"{host or '[::]'}:{int(port)}")


def _prepare_socket_path(path: str) -> None:
    """Create the parent dir; remove a socket left by a dead process, never a regular file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; refusing to remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # nobody listens: stale
        LOG.info("removed stale socket %s", path)
        return
    finally:
        probe.close()
    raise FileExistsError(f"{path} is in use by another server")


# ------------------------------------------------------------------------- server


class CSIServer:
    """Hosts Identity (+ Controller and/or Node) and grpc.health.v1 on one endpoint."""

    def __init__(
        self,
        endpoint: str,
        *,
        identity: csi_pb2_grpc.IdentityServicer,
        controller: csi_pb2_grpc.ControllerServicer | None = None,
        node: csi_pb2_grpc.NodeServicer | None = None,
        max_workers: int = 64,
        grace_seconds: float = 10.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.endpoint = parse_endpoint(endpoint)
        if self.endpoint.scheme == "unix":
            self.endpoint = Endpoint("unix", os.path.abspath(self.endpoint.address))
        self.grace_seconds = grace_seconds
        self.port: int | None = None  # the bound TCP port, once started
        self._max_workers = max_workers
        self._identity = identity
        self._controller = controller
        self._node = node
        self._metrics = metrics
        self._server: grpc.Server | None = None
        self._health = health.HealthServicer()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def _service_names(self) -> Iterable[str]:
        yield "csi.v1.Identity"
        if self._controller is not None:
            yield "csi.v1.Controller"
        if self._node is not None:
            yield "csi.v1.Node"

    def start(self) -> None:
        """Bind and start serving; returns once the endpoint accepts connections."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("server already started")
            server = grpc.server(
                futures.ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="csi-grpc"
                ),
                interceptors=chain(self._metrics),
            )
            _add_identity(self._identity, server)
            if self._controller is not None:
                _add_controller(self._controller, server)
            if self._node is not None:
                _add_node(self._node, server)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            for name in ("", *self._service_names()):
                self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

            if self.endpoint.scheme == "unix":
                _prepare_socket_path(self.endpoint.address)
            port = server.add_insecure_port(self.endpoint.grpc_address)
            if self.endpoint.scheme == "tcp":
                if port == 0:
                    raise OSError(f"cannot bind {self.endpoint.address}")
                self.port = port
            server.start()
            if self.endpoint.scheme == "unix":
                # Only the CO (kubelet, sidecars: same user or group) may talk to the plugin.
                os.chmod(self.endpoint.address, 0o660)
            self._server = server
            LOG.info("serving %s on %s", ", ".join(self._service_names()), self.endpoint.address)

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, give in-flight ones `grace` seconds, then cancel them."""
        with self._lock:
            server = self._server
            if server is None or self._stopped.is_set():
                return
            grace = self.grace_seconds if grace is None else grace
            self._health.enter_graceful_shutdown()
            LOG.info("stopping; in-flight calls get %.1fs", grace)
            server.stop(grace).wait()
            if self.endpoint.scheme == "unix":
                self._remove_socket()
            self._stopped.set()

    def _remove_socket(self) -> None:
        path = self.endpoint.address
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; False when `timeout` passed first."""
        return self._stopped.wait(timeout)

    def run_until_signal(
        self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)
    ) -> signal.Signals | None:
        """Serve until one of `signals` arrives (returned), then stop gracefully.

        Returns None when the server was stopped some other way. Main thread only.
        """
        wake = threading.Event()
        on_signal = SignalStop(wake, signals)
        try:
            if self._server is None:
                self.start()
            while not wake.wait(1.0):
                if self._stopped.is_set():
                    break
        finally:
            on_signal.restore()
        if on_signal.received is not None:
            LOG.info("received %s", on_signal.received.name)
        self.stop()
        return on_signal.received
