"""The retry policy of the cloud seam, against a scripted fake adapter (unit tier)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from keystoneauth1 import exceptions as ks_exc

from cinder_csi import errors
from cinder_csi.cloud.session import RetryPolicy, ServiceSession
from cinder_csi.deadline import Deadline


class FakeResponse:
    def __init__(self, status: int, body: bytes = b"{}", headers: dict[str, str] | None = None):
        self.status_code = status
        self.content = body
        self.headers = headers or {}

    def json(self) -> Any:
        import json

        return json.loads(self.content)


class ScriptedAdapter:
    def __init__(self, script: list[Callable[[], FakeResponse]]) -> None:
        self.script = script
        self.calls: list[tuple[str, str]] = []

    def request(self, path: str, method: str, **kwargs: Any) -> FakeResponse:
        self.calls.append((method, path))
        return self.script.pop(0)()

    def get_endpoint_data(self) -> None:
        return None


def session(adapter: ScriptedAdapter) -> ServiceSession:
    return ServiceSession("block-storage", lambda: adapter, microversion="3.42",
                          retry=RetryPolicy(attempts=4, initial=0.01, maximum=0.02))


def ok() -> FakeResponse:
    return FakeResponse(200, b'{"volume": {"id": "v"}}')


def fail(status: int, body: bytes = b"{}", **headers: str) -> Callable[[], FakeResponse]:
    return lambda: FakeResponse(status, body, headers)


def raises(exc: Exception) -> Callable[[], FakeResponse]:
    def go() -> FakeResponse:
        raise exc
    return go


def test_get_retries_5xx_then_succeeds() -> None:
    adapter = ScriptedAdapter([fail(503), fail(502), ok])
    response = session(adapter).request("GET", "/volumes/v", what="v", deadline=Deadline.after(5))
    assert response.body == {"volume": {"id": "v"}}
    assert len(adapter.calls) == 3


def test_post_is_not_retried_on_5xx() -> None:
    adapter = ScriptedAdapter([fail(500), ok])
    with pytest.raises(errors.CloudUnavailable):
        session(adapter).request("POST", "/volumes", what="v", deadline=Deadline.after(5))
    assert len(adapter.calls) == 1


def test_post_is_not_retried_on_connection_timeout() -> None:
    adapter = ScriptedAdapter([raises(ks_exc.ConnectTimeout("slow")), ok])
    with pytest.raises(errors.CloudUnavailable):
        session(adapter).request("POST", "/volumes", what="v", deadline=Deadline.after(5))
    assert len(adapter.calls) == 1


def test_post_is_retried_when_rate_limited() -> None:
    rate_limited = b'{"overLimit": {"message": "This request was rate-limited."}}'
    adapter = ScriptedAdapter([fail(429, **{"Retry-After": "0"}),
                               fail(413, rate_limited, **{"Retry-After": "0"}), ok])
    session(adapter).request("POST", "/volumes", what="v", deadline=Deadline.after(5))
    assert len(adapter.calls) == 3


def test_quota_413_is_not_retried() -> None:
    body = b'{"overLimit": {"code": 413, "message": "exceeds allowed gigabytes quota"}}'
    adapter = ScriptedAdapter([fail(413, body)])
    with pytest.raises(errors.QuotaExceeded):
        session(adapter).request("POST", "/volumes", what="v", deadline=Deadline.after(5))


def test_retries_stop_at_attempt_limit() -> None:
    adapter = ScriptedAdapter([fail(503)] * 10)
    with pytest.raises(errors.CloudUnavailable):
        session(adapter).request("GET", "/x", what="x", deadline=Deadline.after(5))
    assert len(adapter.calls) == 4


def test_expired_deadline_is_timeout_without_a_call() -> None:
    adapter = ScriptedAdapter([ok])
    with pytest.raises(errors.Timeout):
        session(adapter).request("GET", "/x", what="x", deadline=Deadline.after(0))
    assert adapter.calls == []


def test_missing_endpoint_is_unavailable_with_clear_message() -> None:
    def factory() -> Any:
        raise ks_exc.EndpointNotFound("compute")

    s = ServiceSession("compute", factory, microversion="2.60")
    with pytest.raises(errors.CloudUnavailable, match="service catalog"):
        s.request("GET", "/servers/x", what="server x", deadline=Deadline.after(5))
