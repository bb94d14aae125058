from __future__ import annotations

import email.utils
import time

from cinder_csi import errors
from cinder_csi.cloud.translate import error_for_status, error_message, retry_after_seconds


def classify(status: int, message: str, retry_after: float | None = None) -> type:
    return type(error_for_status(status, message, what="volume v", request_id="req-1",
                                 retry_after=retry_after))


def test_413_quota_vs_rate_limit() -> None:
    quota = "VolumeSizeExceedsAvailableQuota: Requested volume exceeds allowed gigabytes quota"
    assert classify(413, quota) is errors.QuotaExceeded
    assert classify(413, quota, retry_after=5) is errors.QuotaExceeded
    assert classify(413, "This request was rate-limited.", retry_after=3) is errors.RateLimited
    assert classify(429, "slow down") is errors.RateLimited
    # Real Cinder sends Retry-After: 0 with every quota 413, including this one.
    per_volume = ("VolumeSizeExceedsLimit: Requested volume size 2G is larger than maximum "
                  "allowed limit 1G.")
    assert classify(413, per_volume, retry_after=0) is errors.QuotaExceeded
    assert classify(413, "Requested volume size 2G is larger", retry_after=0) is (
        errors.QuotaExceeded)


def test_status_classes() -> None:
    assert classify(404, "x") is errors.NotFound
    assert classify(400, "bad") is errors.InvalidArgument
    assert classify(409, "conflict") is errors.FailedPrecondition
    assert classify(503, "down") is errors.CloudUnavailable
    assert classify(401, "no") is errors.CloudUnavailable


def test_request_id_is_kept() -> None:
    error = error_for_status(500, "boom", what="w", request_id="req-9", retry_after=None)
    assert "req-9" in str(error)


def test_error_message_unwraps_openstack_bodies() -> None:
    assert error_message(b'{"itemNotFound": {"code": 404, "message": "Volume x"}}') == "Volume x"
    assert error_message(b"plain text") == "plain text"


def test_retry_after_forms() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    parsed = retry_after_seconds(date, now=now)
    assert parsed is not None and 28 <= parsed <= 31


def test_every_client_error_has_its_own_meaning() -> None:
    assert classify(414, "Request-URI Too Long") is errors.InvalidArgument
    assert classify(422, "unprocessable") is errors.InvalidArgument
    assert classify(415, "bad media") is errors.InvalidArgument
    assert classify(410, "gone") is errors.NotFound
    assert classify(412, "precondition") is errors.FailedPrecondition
    assert classify(405, "method") is errors.FailedPrecondition
    assert classify(403, "policy") is errors.CloudUnavailable
    assert classify(408, "timeout") is errors.CloudUnavailable
    assert classify(418, "teapot") is errors.FailedPrecondition


def test_no_answer_of_the_cloud_is_an_internal_error() -> None:
    # A cloud 4xx (or any other status) never reaches the CO as INTERNAL or UNKNOWN.
    for status in [*range(300, 309), *range(400, 452), *range(500, 512)]:
        error = error_for_status(status, "m", what="w", request_id=None, retry_after=None)
        code = errors.grpc_code_name(error)
        assert code not in ("INTERNAL", "UNKNOWN"), (status, code)
