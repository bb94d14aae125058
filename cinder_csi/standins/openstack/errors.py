"""API errors, shaped the way Cinder and Nova render them."""

from __future__ import annotations

from typing import Any

# Cinder and Nova share this table (wsgi.Fault); codes not listed render as computeFault.
_FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    429: "overLimit",
    501: "notImplemented",
    503: "serviceUnavailable",
}


class ApiError(Exception):
    """Raised by a route; rendered as an OpenStack fault body."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None,
        details: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details or {}  # extra fields of the fault body (retryAfter)

    def body(self, service: str) -> dict[str, Any]:
        if service == "identity" or self.status == 401:
            # Keystone, and keystonemiddleware in front of every service, use this shape.
            title = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
                     404: "Not Found", 409: "Conflict"}.get(self.status, "Error")
            return {"error": {"code": self.status, "message": self.message, "title": title}}
        name = _FAULT_NAMES.get(self.status, "computeFault")
        return {name: {"code": self.status, "message": self.message, **self.details}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def conflict(message: str) -> ApiError:
    return ApiError(409, message)


def unauthorized(message: str = "The request you have made requires authentication.") -> ApiError:
    return ApiError(401, message)


def over_limit(message: str) -> ApiError:
    """Cinder answers every quota refusal with ``Retry-After: 0`` and ``retryAfter`` in the
    body, so only the message tells a quota 413 from a rate limit."""
    return ApiError(413, message, headers={"Retry-After": "0"}, details={"retryAfter": "0"})


def policy_refusal(rule: str) -> ApiError:
    """Cinder's 403, naming the policy rule that refused the request."""
    return ApiError(403, f"Policy doesn't allow {rule} to be performed.")
