"""The gRPC server that hosts the CSI services on a unix socket or a TCP port.

Every unary call passes through three interceptors, outermost first:

  logging        one line per call: method, ids from the request, code, duration, request id
  metrics        csi_plugin_operations_seconds{driver_name, method_name, grpc_status_code}
  error mapping  CinderCSIError -> its gRPC code (errors.grpc_code_name); anything else ->
                 INTERNAL with a short message, the traceback stays in the server log

Secrets never reach the log: `redact()` masks every field carrying the `csi_secret` option.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import signal
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from functools import cache
from types import FrameType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.deadline import Deadline
from cinder_csi.errors import CinderCSIError, InternalError, grpc_code_name
from cinder_csi.metrics import Metrics

LOG = logging.getLogger("cinder_csi.csi.server")

REQUEST_ID_HEADER = "x-request-id"
REDACTED = "***"

# Request fields worth a column in the call log, when the request has them.
_ID_FIELDS = ("volume_id", "source_volume_id", "snapshot_id", "node_id", "name")
# Polled every few seconds by kubelet and the sidecars: logged at DEBUG when they succeed.
_QUIET_METHODS = frozenset({
    "/csi.v1.Identity/Probe",
    "/csi.v1.Identity/GetPluginInfo",
    "/csi.v1.Identity/GetPluginCapabilities",
    "/csi.v1.Controller/ControllerGetCapabilities",
    "/csi.v1.Node/NodeGetCapabilities",
    "/grpc.health.v1.Health/Check",
})
# time_remaining() of a call without a deadline is "infinite future"; anything past this is it.
_NO_DEADLINE_S = 10 * 365 * 24 * 3600.0

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cinder_csi_request_id", default=None
)

Behavior = Callable[[Any, grpc.ServicerContext], Any]

# The generated module is untyped (no .pyi for the grpc stubs); give the few entry points used
# here a type once instead of silencing mypy at each call.
_AddServicer = Callable[[Any, grpc.Server], None]
_add_identity: _AddServicer = csi_pb2_grpc.add_IdentityServicer_to_server
_add_controller: _AddServicer = csi_pb2_grpc.add_ControllerServicer_to_server
_add_node: _AddServicer = csi_pb2_grpc.add_NodeServicer_to_server
_CSI_SECRET: Any = csi_pb2.csi_secret  # typed as a plain FieldDescriptor by the .pyi

if TYPE_CHECKING:
    _Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor


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


# ------------------------------------------------------------------------- call context


def current_request_id() -> str | None:
    """The request id of the CSI call being served on this thread, if any."""
    return _request_id.get()


def deadline_from(context: grpc.ServicerContext) -> Deadline:
    """The caller's deadline, or the project default when the caller sent none."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= _NO_DEADLINE_S:
        return Deadline.after(None)
    return Deadline.after(remaining)


def _request_id_of(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == REQUEST_ID_HEADER and value:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text[:64]
    return uuid.uuid4().hex[:12]


class _StatusReadable(Protocol):
    # grpc's server context has code()/details(); the grpc-stubs package does not declare them.
    def code(self) -> grpc.StatusCode | None: ...
    def details(self) -> bytes | str | None: ...


def _code_set(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    return cast(_StatusReadable, context).code()


def _details(context: grpc.ServicerContext) -> str:
    details = cast(_StatusReadable, context).details()
    if isinstance(details, bytes):
        return details.decode(errors="replace")
    return details or ""


# ------------------------------------------------------------------------- redaction


@cache
def _is_secret(field: FieldDescriptor) -> bool:
    if field.name == "secrets":
        return True
    options = field.GetOptions()
    return options.HasExtension(_CSI_SECRET) and bool(options.Extensions[_CSI_SECRET])


def redact(message: Message) -> dict[str, Any]:
    """The message as a JSON-able dict, every secret field replaced by "***"."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        out[field.name] = REDACTED if _is_secret(field) else _field_value(field, value)
    return out


def _field_value(field: FieldDescriptor, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        return {str(k): _single_value(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_single_value(field, v) for v in value]
    return _single_value(field, value)


def _single_value(field: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return redact(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


# ------------------------------------------------------------------------- interceptors


class _UnaryInterceptor(_Interceptor):
    """Wraps unary-unary handlers; streaming handlers (health Watch) pass through untouched."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        if handler.request_streaming or handler.response_streaming:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            self.wrap(handler_call_details.method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError


class ErrorMappingInterceptor(_UnaryInterceptor):
    """Turns exceptions into gRPC statuses; never lets a call end UNKNOWN."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        def mapped(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return behavior(request, context)
            except CinderCSIError as e:
                if _code_set(context) is not None:
                    raise  # the servicer chose a status itself
                if isinstance(e, InternalError):
                    LOG.error("internal error in %s", method, exc_info=True)
                context.abort(grpc.StatusCode[grpc_code_name(e)], str(e))
            # The one deliberate catch-all: the gRPC boundary must answer every failure with a
            # status, and context.abort() itself raises a plain Exception that must pass.
            except Exception:
                if _code_set(context) is not None:
                    raise  # context.abort() / set_code() by the servicer: pass through
                rid = current_request_id() or "-"
                LOG.exception("unexpected error in %s (request id %s)", method, rid)
                context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error; see plugin log for request {rid}"
                )

        return mapped


def _final_code(context: grpc.ServicerContext, *, raised: bool) -> grpc.StatusCode:
    code = _code_set(context)
    if code is not None:
        return code
    return grpc.StatusCode.UNKNOWN if raised else grpc.StatusCode.OK


class MetricsInterceptor(_UnaryInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            start = time.monotonic()
            done = False
            try:
                response = behavior(request, context)
                done = True
                return response
            finally:
                code = _final_code(context, raised=not done)
                self._metrics.observe_operation(method, code.name, time.monotonic() - start)

        return measured


class LoggingInterceptor(_UnaryInterceptor):
    """Exactly one log line per call, as JSON; the redacted request is added at DEBUG."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        def logged(request: Any, context: grpc.ServicerContext) -> Any:
            rid = _request_id_of(context)
            token = _request_id.set(rid)
            start = time.monotonic()
            response: Any = None
            done = False
            try:
                response = behavior(request, context)
                done = True
                return response
            finally:
                _request_id.reset(token)
                code = _final_code(context, raised=not done)
                self._log(method, rid, request, response, context, code, time.monotonic() - start)

        return logged

    def _log(
        self,
        method: str,
        rid: str,
        request: Any,
        response: Any,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        seconds: float,
    ) -> None:
        if code is grpc.StatusCode.OK:
            level = logging.DEBUG if method in _QUIET_METHODS else logging.INFO
        elif code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            level = logging.ERROR
        else:
            level = logging.WARNING
        if not LOG.isEnabledFor(level):
            return
        record: dict[str, Any] = {
            "method": method,
            "code": code.name,
            "duration_ms": round(seconds * 1000, 1),
            "request_id": rid,
        }
        record.update(_ids(request))
        for key, value in _ids_from_response(response).items():
            record.setdefault(key, value)
        if code is not grpc.StatusCode.OK:
            record["error"] = _details(context)
        if LOG.isEnabledFor(logging.DEBUG) and isinstance(request, Message):
            record["request"] = redact(request)
        LOG.log(level, "%s", json.dumps(record, default=str))


def _ids(message: Any) -> dict[str, str]:
    if not isinstance(message, Message):
        return {}
    fields = message.DESCRIPTOR.fields_by_name
    out: dict[str, str] = {}
    for name in _ID_FIELDS:
        field = fields.get(name)
        if field is not None and not _is_secret(field):
            value = getattr(message, name)
            if isinstance(value, str) and value:
                out[name] = value
    return out


def _ids_from_response(response: Any) -> dict[str, str]:
    # CreateVolume / CreateSnapshot: the new id is only known from the response.
    if isinstance(response, csi_pb2.CreateVolumeResponse) and response.HasField("volume"):
        return {"volume_id": response.volume.volume_id}
    if isinstance(response, csi_pb2.CreateSnapshotResponse) and response.HasField("snapshot"):
        return {"snapshot_id": response.snapshot.snapshot_id}
    return {}


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

    def _interceptors(self) -> list[_Interceptor]:
        chain: list[_Interceptor] = [LoggingInterceptor()]
        if self._metrics is not None:
            chain.append(MetricsInterceptor(self._metrics))
        chain.append(ErrorMappingInterceptor())
        return chain

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
                interceptors=self._interceptors(),
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
        received: list[signal.Signals] = []
        wake = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            received.append(signal.Signals(signum))
            wake.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in signals}
        try:
            if self._server is None:
                self.start()
            while not wake.wait(1.0):
                if self._stopped.is_set():
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if received:
            LOG.info("received %s", received[0].name)
        self.stop()
        return received[0] if received else None
