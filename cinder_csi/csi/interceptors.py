"""The interceptors every unary CSI call passes through, outermost first.

  logging        one JSON line per call: method, ids from the request, code, duration, request
                 id; the redacted request too at DEBUG
  metrics        csi_plugin_operations_seconds{driver_name, method_name, grpc_status_code}
  error mapping  CinderCSIError -> its gRPC code (errors.grpc_code_name); anything else ->
                 INTERNAL with a short message, the traceback stays in the plugin log
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from google.protobuf.message import Message

from cinder_csi.csi import csi_pb2
from cinder_csi.csi.call_context import current_request_id, request_id_of, serving
from cinder_csi.csi.redaction import is_secret, redact
from cinder_csi.errors import CinderCSIError, InternalError, grpc_code_name
from cinder_csi.metrics import Metrics

LOG = logging.getLogger(__name__)

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

Behavior = Callable[[Any, grpc.ServicerContext], Any]

if TYPE_CHECKING:
    Interceptor = grpc.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.ServerInterceptor


def chain(metrics: Metrics | None) -> list[Interceptor]:
    """The interceptors of a CSI server, outermost first."""
    interceptors: list[Interceptor] = [LoggingInterceptor()]
    if metrics is not None:
        interceptors.append(MetricsInterceptor(metrics))
    interceptors.append(ErrorMappingInterceptor())
    return interceptors


class _UnaryInterceptor(Interceptor):
    """Wraps unary-unary handlers; streaming handlers (health Watch) pass through untouched.

    gRPC asks for the handler on every call; the wrapped one is built once per method and
    handler (the inner handler is the same object each time) instead of per call.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler[Any, Any]]] = {}

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
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self.wrap(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)  # a racing call builds an equal one: fine
        return wrapped

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        raise NotImplementedError


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


class _Outcome:
    """How one call ended, for the interceptors that report it whether it returned or raised."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.response: Any = None
        self.returned = False

    def result(self, response: Any) -> Any:
        self.response, self.returned = response, True
        return response


Report = Callable[[grpc.StatusCode, float, Any], None]  # code, seconds, response (or None)


@contextmanager
def _observed(context: grpc.ServicerContext, report: Report) -> Iterator[_Outcome]:
    outcome = _Outcome()
    try:
        yield outcome
    finally:
        code = _code_set(context)
        if code is None:
            code = grpc.StatusCode.OK if outcome.returned else grpc.StatusCode.UNKNOWN
        report(code, time.monotonic() - outcome.started, outcome.response)


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


class MetricsInterceptor(_UnaryInterceptor):
    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        def measured(request: Any, context: grpc.ServicerContext) -> Any:
            def report(code: grpc.StatusCode, seconds: float, _response: Any) -> None:
                self._metrics.observe_operation(method, code.name, seconds)

            with _observed(context, report) as outcome:
                return outcome.result(behavior(request, context))

        return measured


class LoggingInterceptor(_UnaryInterceptor):
    """Exactly one log line per call, as JSON; the redacted request is added at DEBUG."""

    def wrap(self, method: str, behavior: Behavior) -> Behavior:
        def logged(request: Any, context: grpc.ServicerContext) -> Any:
            rid = request_id_of(context)

            def report(code: grpc.StatusCode, seconds: float, response: Any) -> None:
                self._log(method, rid, request, response, context, code, seconds)

            with serving(rid), _observed(context, report) as outcome:
                return outcome.result(behavior(request, context))

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
        if field is not None and not is_secret(field):
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
