"""The shared vocabulary of the attachment controller's modules.

API paths, the two operations, the failed-attempt exception, the metrics, and small readers of
objects and error messages. It imports none of the other attachment modules, so each of them
can import it (``attachments``, ``attach_targets``, ``attach_writes``, ``attach_outcomes``,
``attach_reconcile``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import grpc
import urllib3
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry, Counter, Histogram

from cinder_csi.loop.kube.informer import Obj
from cinder_csi.metrics import OPERATION_BUCKETS, go_code_name

VA_PATH = "/apis/storage.k8s.io/v1/volumeattachments"
PV_PATH = "/api/v1/persistentvolumes"
ATTACH, DETACH = "attach", "detach"

# Errors of the API itself: the object may simply be retried later.
API_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


class AttachMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = {
            op: Counter(f"cinder_csi_{op}_total", f"VolumeAttachment {op} operations by result.",
                        ["result"], registry=registry)
            for op in (ATTACH, DETACH)
        }
        self.duration = {
            op: Histogram(f"cinder_csi_{op}_duration_seconds",
                          f"Time to {op} a volume for a VolumeAttachment, by result.",
                          ["result"], buckets=OPERATION_BUCKETS, registry=registry)
            for op in (ATTACH, DETACH)
        }
        self.lost = Counter(
            "cinder_csi_attach_lost_total",
            "Attached VolumeAttachments the driver no longer reported published (reconcile).",
            registry=registry)

    def observe(self, op: str, ok: bool, seconds: float) -> None:
        result = "success" if ok else "failure"
        self.total[op].labels(result).inc()
        self.duration[op].labels(result).observe(seconds)


class AttemptFailed(Exception):
    """One attach/detach attempt failed; ``message`` is what the VA status and Event say."""

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None,
                 final: bool = False, record: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.final = final  # retrying cannot help until someone changes an object
        self.record = record  # False: transient, not worth an attachError (a 409, say)


def meta_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def name_of(obj: Mapping[str, Any]) -> str:
    return str(meta_of(obj).get("name", ""))


def deleting(obj: Mapping[str, Any]) -> bool:
    return bool(meta_of(obj).get("deletionTimestamp"))


def finalizers_of(obj: Mapping[str, Any]) -> list[str]:
    return [str(f) for f in meta_of(obj).get("finalizers") or []]


def attached_by(va: Obj, driver: str) -> bool:
    """The VolumeAttachment names ``driver`` as its attacher."""
    return (va.get("spec") or {}).get("attacher") == driver


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rpc_message(exc: grpc.RpcError) -> str:
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"rpc error: code = {go_code_name(code.name)} desc = {details}"


def rpc_code(exc: grpc.RpcError) -> grpc.StatusCode:
    return exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN


def api_message(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return str(exc) or type(exc).__name__
