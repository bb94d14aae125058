"""One service's HTTP seam: requests go through an openstacksdk proxy (auth, catalog,
microversions), are retried when that is safe, and fail as project errors.

Retries: rate limits (429, and 413 with Retry-After) are retried for every request, because the
cloud did not act on them. 5xx and connection failures are retried only for idempotent requests
(GET, PUT, DELETE): a POST that timed out may have been carried out, and retrying it could
create a second volume. Callers recover such POSTs by looking the object up by name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity
from keystoneauth1 import exceptions as ks_exc
from openstack import exceptions as os_exc

from cinder_csi import errors
from cinder_csi.cloud.tokens import TokenKeeper, keystone_refusal
from cinder_csi.cloud.translate import error_for_status, error_message, retry_after_seconds
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)

T = TypeVar("T")

_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE"})
# One request never waits longer than this, even when the caller's deadline is far away.
REQUEST_TIMEOUT_S = 60.0
# Setting up a service (version discovery) waits at most this long for another caller that
# is already doing it, when the caller has no deadline of its own.
SETUP_WAIT_S = 30.0


class _Retryable(Exception):
    """Internal: the request may be retried after ``delay`` seconds (None: use backoff)."""

    def __init__(self, error: errors.CinderCSIError, delay: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.delay = delay


@dataclass(frozen=True)
class Response:
    status: int
    body: Any  # parsed JSON, or None for an empty body
    request_id: str | None
    headers: dict[str, str]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    initial: float = 0.5
    maximum: float = 10.0


class ServiceSession:
    """Requests to one OpenStack service (``block-storage`` or ``compute``)."""

    def __init__(
        self,
        service: str,
        proxy_factory: Callable[[], Any],
        *,
        microversion: str | None,
        retry: RetryPolicy = RetryPolicy(),
        tokens: TokenKeeper | None = None,
    ) -> None:
        self.service = service
        self._proxy_factory = proxy_factory
        self._proxy: Any = None
        self._max_microversion: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.microversion = microversion
        self.retry = retry
        self._tokens = tokens
        self.in_flight = InFlight()

    def _adapter(self, deadline: Deadline | None = None) -> Any:
        """The proxy, made on first use: building it discovers versions (a request bounded by
        the session timeout). Callers wait for another one doing it until their deadline."""
        proxy = self._proxy
        if proxy is not None:
            return proxy
        wait = deadline.remaining() if deadline is not None else SETUP_WAIT_S
        if not self._lock.acquire(timeout=max(0.0, wait)):
            raise errors.Timeout(
                f"{self.service}: another call is still discovering the service's versions; "
                "gave up waiting at the call's deadline"
            )
        try:
            if self._proxy is None:
                if self._tokens is not None:
                    self._tokens.ensure(deadline or Deadline.after(SETUP_WAIT_S))
                proxy = self._proxy_factory()
                self._max_microversion = _max_microversion(proxy)
                self._proxy = proxy
            return self._proxy
        finally:
            self._lock.release()

    def effective_microversion(self, wanted: str | None) -> str | None:
        """``wanted``, capped at what the cloud supports (older clouds get their maximum)."""
        if wanted is None or self._max_microversion is None:
            return wanted
        if _version_tuple(wanted) <= self._max_microversion:
            return wanted
        major, minor = self._max_microversion
        return f"{major}.{minor}"

    def supports(self, microversion: str, deadline: Deadline | None = None) -> bool:
        """Whether the cloud accepts ``microversion`` (True when it did not say)."""
        self._adapter(deadline)
        return self._max_microversion is None or (
            _version_tuple(microversion) <= self._max_microversion
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        deadline: Deadline,
        json: Any = None,
        params: dict[str, str] | None = None,
        microversion: str | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> Response:
        """Send one request (with safe retries); raise a project error unless status in ``ok``."""
        idempotent = method.upper() in _IDEMPOTENT

        def wait_strategy(state: tenacity.RetryCallState) -> float:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            backoff = min(self.retry.maximum, self.retry.initial * 2 ** (state.attempt_number - 1))
            delay = exc.delay if isinstance(exc, _Retryable) and exc.delay is not None else backoff
            return min(delay, max(0.0, deadline.remaining()))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(_Retryable),
            wait=wait_strategy,
            stop=(
                tenacity.stop_after_attempt(self.retry.attempts)
                | tenacity.stop_before_delay(max(0.0, deadline.remaining()))
            ),
            reraise=True,
            before_sleep=self._log_retry(method, path),
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._once(
                        method, path, what=what, deadline=deadline, json=json, params=params,
                        microversion=microversion or self.microversion, ok=ok,
                        idempotent=idempotent,
                    )
        except _Retryable as exc:
            raise exc.error from None
        raise errors.InternalError("retry loop ended without a result")  # pragma: no cover

    def _log_retry(self, method: str, path: str) -> Callable[[tenacity.RetryCallState], None]:
        def before_sleep(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            log.warning(
                "retrying %s %s %s (attempt %d): %s",
                self.service, method, path, state.attempt_number, exc,
            )

        return before_sleep

    def _once(
        self,
        method: str,
        path: str,
        *,
        what: str,
        deadline: Deadline,
        json: Any,
        params: dict[str, str] | None,
        microversion: str | None,
        ok: tuple[int, ...],
        idempotent: bool,
    ) -> Response:
        remaining = deadline.remaining()
        if remaining <= 0:
            raise errors.Timeout(f"deadline passed before {method} {what}")
        timeout = min(REQUEST_TIMEOUT_S, remaining)
        kwargs: dict[str, Any] = {
            "raise_exc": False,
            "timeout": timeout,
            "connect_retries": 0,
        }
        if json is not None:
            kwargs["json"] = json
        if params:
            kwargs["params"] = params
        try:
            token = self._tokens.ensure(deadline) if self._tokens is not None else None
            adapter = self._adapter(deadline)
            effective = self.effective_microversion(microversion)
            if effective:
                kwargs["microversion"] = effective
            if self._tokens is not None:
                kwargs["allow_reauth"] = False  # a 401 comes back to the token keeper
            with self.in_flight.track(timeout):
                raw = adapter.request(path, method, **kwargs)
            if int(raw.status_code) == 401 and self._tokens is not None:
                # The token was revoked or Keystone forgot it; nothing was done, so the
                # request may be sent again (once) with a new one.
                self._tokens.renew(token, deadline)
                kwargs["timeout"] = min(REQUEST_TIMEOUT_S, deadline.remaining())
                with self.in_flight.track(kwargs["timeout"]):
                    raw = adapter.request(path, method, **kwargs)
        except (
            ks_exc.EndpointNotFound,
            os_exc.EndpointNotFound,
            os_exc.ServiceDisabledException,
            os_exc.ServiceDiscoveryException,
        ) as exc:
            raise errors.CloudUnavailable(
                f"{self.service} is not in the cloud's service catalog, so {what} cannot be "
                f"reached: {exc}"
            ) from None
        except ks_exc.Unauthorized as exc:
            raise keystone_refusal(what, exc) from None
        except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.UnknownConnectionError) as exc:
            error = errors.CloudUnavailable(f"{self.service} unreachable on {method} {what}: {exc}")
            if idempotent:
                raise _Retryable(error, None) from None
            raise error from None
        except (ks_exc.ClientException, os_exc.SDKException) as exc:
            raise errors.CloudUnavailable(
                f"{self.service} error on {method} {what}: {exc}"
            ) from None
        return self._check(raw, what=what, ok=ok, idempotent=idempotent)

    @staticmethod
    def _check(raw: Any, *, what: str, ok: tuple[int, ...], idempotent: bool) -> Response:
        headers = {k.lower(): v for k, v in raw.headers.items()}
        request_id = headers.get("x-openstack-request-id") or headers.get("x-compute-request-id")
        status = int(raw.status_code)
        if status in ok:
            body = None
            if raw.content:
                try:
                    body = raw.json()
                except ValueError:
                    body = None
            return Response(status=status, body=body, request_id=request_id, headers=headers)
        message = error_message(raw.content or b"")
        retry_after = retry_after_seconds(headers.get("retry-after"))
        error = error_for_status(
            status, message, what=what, request_id=request_id, retry_after=retry_after
        )
        if isinstance(error, errors.RateLimited):
            raise _Retryable(error, retry_after)
        if status >= 500 and idempotent:
            raise _Retryable(error, None)
        raise error


class InFlight:
    """Requests being sent right now, with the timeout each was sent with: one still open
    well past it means the HTTP client is wedged (for /healthz)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[float, float]] = {}  # id -> (started, timeout)
        self._next = 0

    @contextmanager
    def track(self, timeout: float) -> Iterator[None]:
        with self._lock:
            self._next += 1
            key = self._next
            self._open[key] = (time.monotonic(), timeout)
        try:
            yield
        finally:
            with self._lock:
                self._open.pop(key, None)

    def overdue(self, margin: float) -> float | None:
        """How long the worst request has been open past its timeout plus `margin`."""
        now = time.monotonic()
        with self._lock:
            late = [now - started - timeout - margin for started, timeout in self._open.values()]
        worst = max(late, default=0.0)
        return worst if worst > 0 else None


def none_if_missing(call: Callable[[], T]) -> T | None:
    """The call's answer, or None when the cloud says the object does not exist: for lookups
    and deletes, where "not there" is an answer rather than a failure."""
    try:
        return call()
    except errors.NotFound:
        return None


def _version_tuple(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


def _max_microversion(proxy: Any) -> tuple[int, int] | None:
    """The highest microversion the endpoint announced in its version document, if any."""
    try:
        data = proxy.get_endpoint_data()
    except (ks_exc.ClientException, os_exc.SDKException):
        return None
    found = getattr(data, "max_microversion", None) if data is not None else None
    if isinstance(found, tuple) and len(found) >= 2:
        return int(found[0]), int(found[1])
    return None
