"""API errors as the real kube-apiserver reports them: a ``Status`` object with reason and code.

Clients branch on ``reason`` and ``code`` (client-go's ``IsNotFound``, ``IsConflict``, the Python
client's ``ApiException.status``), so both, and the message formats, follow the real server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cinder_csi.standins.kube.resources import ResourceType

_CAUSE_REASONS = {
    "Required": "FieldValueRequired",
    "Invalid": "FieldValueInvalid",
    "Forbidden": "FieldValueForbidden",
    "NotSupported": "FieldValueNotSupported",
    "Duplicate": "FieldValueDuplicate",
}


class ApiError(Exception):
    """Raised anywhere in the stand-in; the HTTP layer turns it into a Status response."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.retry_after = retry_after

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


@dataclass(frozen=True)
class FieldError:
    """One validation failure; ``kind`` is Required, Invalid, Forbidden, NotSupported, Duplicate,
    TooLong."""

    kind: str
    field: str
    detail: str = ""
    value: Any = None
    supported: tuple[str, ...] = ()

    def body(self) -> str:
        # Mirrors apimachinery's field.Error.ErrorBody().
        if self.kind == "Required":
            text = "Required value"
        elif self.kind == "Forbidden":
            text = "Forbidden"
        elif self.kind == "Duplicate":
            text = f"Duplicate value: {_render(self.value)}"
        elif self.kind == "TooLong":
            text = "Too long"
        elif self.kind == "NotSupported":
            text = f"Unsupported value: {_render(self.value)}"
            if self.supported:
                choices = ", ".join(_render(s) for s in self.supported)
                text += f": supported values: {choices}"
        else:
            text = f"Invalid value: {_render(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"


def _render(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _details(rt: ResourceType, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": rt.plural}
    if rt.group:
        details["group"] = rt.group
    details.update(extra)
    return details


def _about(rt: ResourceType, name: str, status: int, reason: str, message: str) -> ApiError:
    """An error about one named object: its details name the object as the API server does."""
    return ApiError(status, reason, message, details=_details(rt, name))


def not_found(rt: ResourceType, name: str) -> ApiError:
    return _about(rt, name, 404, "NotFound", f'{rt.qualified} "{name}" not found')


def namespace_not_found(name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'namespaces "{name}" not found',
        details={"name": name, "kind": "namespaces"},
    )


def already_exists(rt: ResourceType, name: str) -> ApiError:
    return _about(rt, name, 409, "AlreadyExists", f'{rt.qualified} "{name}" already exists')


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    return _about(rt, name, 409, "Conflict",
                  f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}')


STALE = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(rt: ResourceType, name: str, errors: list[FieldError]) -> ApiError:
    summary = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(str(e) for e in errors) + "]"
    causes = [
        {"reason": _CAUSE_REASONS[e.kind], "message": e.body(), "field": e.field} for e in errors
    ]
    details: dict[str, Any] = {"name": name, "kind": rt.kind, "causes": causes}
    if rt.group:
        details["group"] = rt.group
    # A custom resource is named with its group ("VolumeSnapshot.snapshot.storage.k8s.io").
    kind = f"{rt.kind}.{rt.group}" if rt.custom else rt.kind
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}', details=details)


def forbidden(rt: ResourceType, name: str, why: str) -> ApiError:
    return _about(rt, name, 403, "Forbidden", f'{rt.qualified} "{name}" is forbidden: {why}')


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def too_many_requests(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
        details={"retryAfterSeconds": retry_after},
        retry_after=retry_after,
    )


def internal(message: str) -> ApiError:
    return ApiError(
        500,
        "InternalError",
        f"Internal error occurred: {message}",
        details={"causes": [{"message": message}]},
    )


def path_not_found() -> ApiError:
    return ApiError(
        404,
        "NotFound",
        "the server could not find the requested resource",
        details={
            "causes": [{"reason": "UnexpectedServerResponse", "message": "404 page not found"}]
        },
    )


def method_not_allowed(method: str, what: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"{method} is not supported on {what}")


def unsupported_media_type(content_type: str) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"application/json, application/yaml (not {content_type})",
    )
