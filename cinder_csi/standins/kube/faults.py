"""Faults a test switches on from Python; the HTTP layer consults them on every request.

A rule with a ``path`` applies only to requests whose URL path contains that string (so
``path="/persistentvolumeclaims"`` hits list, watch and every claim). ``count`` is how many
matching requests the rule hits before it disarms itself; None means until ``clear()``.
In-process controllers talk to the store directly and never see these faults.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from cinder_csi.standins.kube.errors import ApiError, internal, too_many_requests


@dataclass
class _Rule:
    count: int | None
    path: str | None
    method: str | None

    def hits(self, method: str, path: str) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        return self.path is None or self.path in path

    def take(self) -> None:
        if self.count is not None:
            self.count -= 1


@dataclass
class _Slow(_Rule):
    seconds: float = 0.0


@dataclass
class _Error(_Rule):
    code: int = 500
    retry_after: int = 1


@dataclass
class _Drop(_Rule):
    after_events: int = 0


@dataclass
class _Conflict:
    plural: str
    namespace: str | None
    name: str | None  # None: any object of the resource
    count: int


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slow: list[_Slow] = []
        self._errors: list[_Error] = []
        self._drops: list[_Drop] = []
        self._expire: list[_Rule] = []
        self._conflicts: list[_Conflict] = []
        self.requests: deque[tuple[str, str]] = deque(maxlen=10000)

    # ------------------------------------------------------------ for tests

    def slow(
        self,
        seconds: float,
        *,
        count: int | None = None,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Delay matching responses by ``seconds``."""
        with self._lock:
            self._slow.append(_Slow(count, path, method, seconds))

    def throttle(
        self,
        count: int,
        *,
        retry_after: int = 1,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests 429 TooManyRequests with Retry-After."""
        with self._lock:
            self._errors.append(_Error(count, path, method, 429, retry_after))

    def fail(
        self, count: int, *, code: int = 500, path: str | None = None, method: str | None = None
    ) -> None:
        """Answer the next ``count`` matching requests with a 5xx InternalError Status."""
        with self._lock:
            self._errors.append(_Error(count, path, method, code))

    def drop_watches(
        self, count: int = 1, *, after_events: int = 0, path: str | None = None
    ) -> None:
        """Cut the next ``count`` matching watch connections after ``after_events`` events."""
        with self._lock:
            self._drops.append(_Drop(count, path, "GET", after_events))

    def expire_watches(self, count: int = 1, *, path: str | None = None) -> None:
        """The next ``count`` matching watches end at once with a 410 Expired ERROR event."""
        with self._lock:
            self._expire.append(_Rule(count, path, "GET"))

    def conflict_on_update(
        self, resource: str, name: str | None, *, namespace: str | None = None, count: int = 1
    ) -> None:
        """The next ``count`` PUT/PATCH requests on this object (``name`` None: on any object
        of ``resource``) get 409 Conflict."""
        with self._lock:
            self._conflicts.append(_Conflict(resource, namespace, name, count))

    def clear(self) -> None:
        with self._lock:
            self._slow.clear()
            self._errors.clear()
            self._drops.clear()
            self._expire.clear()
            self._conflicts.clear()

    # ------------------------------------------------------------ for the HTTP layer

    def record(self, method: str, path: str) -> None:
        self.requests.append((method, path))

    def delay(self, method: str, path: str) -> float:
        total = 0.0
        with self._lock:
            for rule in self._slow:
                if rule.hits(method, path):
                    rule.take()
                    total += rule.seconds
        return total

    def error(self, method: str, path: str) -> ApiError | None:
        with self._lock:
            for rule in self._errors:
                if rule.hits(method, path):
                    rule.take()
                    if rule.code == 429:
                        return too_many_requests(rule.retry_after)
                    err = internal("injected fault")
                    err.code = rule.code
                    return err
        return None

    def watch_drop(self, path: str) -> int | None:
        """How many events to send before cutting this watch, or None to leave it alone."""
        with self._lock:
            for rule in self._drops:
                if rule.hits("GET", path):
                    rule.take()
                    return rule.after_events
        return None

    def watch_expire(self, path: str) -> bool:
        with self._lock:
            for rule in self._expire:
                if rule.hits("GET", path):
                    rule.take()
                    return True
        return False

    def update_conflict(self, plural: str, namespace: str | None, name: str) -> bool:
        with self._lock:
            for rule in self._conflicts:
                if (
                    rule.count > 0
                    and rule.plural == plural
                    and rule.name in (None, name)
                    and (rule.namespace is None or rule.namespace == namespace)
                ):
                    rule.count -= 1
                    return True
        return False
