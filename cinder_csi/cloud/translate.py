"""Turn an OpenStack HTTP answer into the project's exception tree.

Cinder and Nova wrap errors as ``{"<kind>": {"code": N, "message": "..."}}``. A 413 means
either "over quota" or "rate limited": the two are told apart by Retry-After and the body.
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from typing import Any

from cinder_csi import errors

_QUOTA_MARKERS = ("quota", "exceeds allowed", "exceeded for quota", "volumelimitexceeded")
_RATE_LIMITED = re.compile(r"\brate[- ]?limit")


def error_message(body: bytes | str) -> str:
    """The human message inside an OpenStack error body, else the body itself (trimmed)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed: Any = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    if isinstance(parsed, dict):
        for value in parsed.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])
        if "message" in parsed:
            return str(parsed["message"])
    return text.strip()[:300]


def retry_after_seconds(header: str | None, *, now: float | None = None) -> float | None:
    """Parse Retry-After: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_rate_limit(status: int, message: str, retry_after: float | None) -> bool:
    """429, or a 413 whose body says rate-limited. Real Cinder sends ``Retry-After: 0`` with
    every quota 413 (VolumeSizeExceedsLimit names no quota), so the header decides nothing."""
    if status == 429:
        return True
    if status != 413:
        return False
    lowered = message.lower()
    if any(marker in lowered for marker in _QUOTA_MARKERS):
        return False
    return _RATE_LIMITED.search(lowered) is not None


# 4xx answers by meaning. Every status the cloud can send maps to a specific error: a 4xx is
# never INTERNAL (the request was ours to fix or the state the cloud's), a 5xx or an unexpected
# 1xx/3xx is the cloud's trouble (UNAVAILABLE, retried by the caller).
_INVALID = frozenset({400, 406, 411, 414, 415, 416, 422, 431})
_GONE = frozenset({404, 410})
_CONFLICT = frozenset({409, 412, 423, 424})
_DENIED = frozenset({401, 403, 407})
_UNSUPPORTED = frozenset({405, 501})


def error_for_status(
    status: int, message: str, *, what: str, request_id: str | None, retry_after: float | None
) -> errors.CinderCSIError:
    """The project error for a non-2xx answer about ``what`` (e.g. "volume 1234")."""
    text = f"{what}: {message}" if message else what
    if is_rate_limit(status, message, retry_after):
        return errors.RateLimited(f"rate limited by the cloud: {text}", request_id=request_id)
    if status == 413:
        return errors.QuotaExceeded(f"over quota: {text}", request_id=request_id)
    if status in _GONE:
        return errors.NotFound(f"{what} not found: {message}", request_id=request_id)
    if status in _CONFLICT:
        return errors.FailedPrecondition(text, request_id=request_id)
    if status in _INVALID:
        return errors.InvalidArgument(
            f"the cloud refused {text} (HTTP {status})", request_id=request_id
        )
    if status in _DENIED:
        return errors.CloudUnavailable(
            f"the cloud denied access ({status}) for {text}; check the credentials and roles",
            request_id=request_id,
        )
    if status in _UNSUPPORTED:
        return errors.FailedPrecondition(
            f"the cloud does not support {text} (HTTP {status}); check its API version",
            request_id=request_id,
        )
    if status == 408:
        return errors.CloudUnavailable(
            f"the cloud timed out reading {text} (HTTP 408)", request_id=request_id
        )
    if 400 <= status < 500:
        return errors.FailedPrecondition(
            f"the cloud refused {text} (HTTP {status})", request_id=request_id
        )
    if status >= 500:
        return errors.CloudUnavailable(
            f"the cloud failed ({status}) on {text}", request_id=request_id
        )
    # 1xx/3xx where an answer was due: a proxy or a misconfigured endpoint in between.
    return errors.CloudUnavailable(
        f"unexpected answer {status} on {text}; check the cloud's endpoints",
        request_id=request_id,
    )
