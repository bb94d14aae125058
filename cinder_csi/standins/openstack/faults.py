"""Fault injection, switchable from a test while requests are in flight.

Every switch returns a `Rule`: cancel it (or leave its ``with`` block) to undo just that
fault; `Faults.reset` undoes them all. Counted rules switch themselves off once used up.
Request faults match on service ("identity", "volume", "compute", "metadata"), method,
and a regular expression searched in the URL path.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from types import TracebackType

SERVICES = ("identity", "volume", "compute", "metadata")
OPERATIONS = ("create", "delete", "extend", "retype", "attach", "detach", "snapshot", "backup")


@dataclass(eq=False)
class Rule:
    kind: str
    owner: Faults
    count: int | None = None  # None: until cancelled
    service: str | None = None
    method: str | None = None
    path: re.Pattern[str] | None = None
    status: int = 0
    seconds: float = 0.0
    retry_after: int = 0
    concurrency: int = 0  # for "limit": transitions of `target` that may run at once
    message: str = ""
    target: str | None = None  # a volume id or name, or an operation, or a service
    hits: int = 0

    def cancel(self) -> None:
        self.owner.remove(self)

    def __enter__(self) -> Rule:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    def matches_request(self, service: str, method: str, path: str) -> bool:
        return (
            (self.service is None or self.service == service)
            and (self.method is None or self.method.upper() == method)
            and (self.path is None or self.path.search(path) is not None)
        )


@dataclass
class RequestFaults:
    """What the server must do to one request before (or instead of) answering it."""

    delay: float = 0.0
    hang: float = 0.0
    disconnect: bool = False
    lose_answer: bool = False  # carry the request out, then drop the connection
    status: int = 0
    status_after: bool = False  # carry the request out, then answer `status` anyway
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)


_DEFAULT_MESSAGES = {
    500: "The server has either erred or is incapable of performing the requested operation.",
    502: "Bad Gateway",
    503: "The service is temporarily unavailable.",
    504: "Gateway Timeout",
}


class Faults:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._wake = threading.Event()

    # --- switches: requests -------------------------------------------------------------

    def delay(self, seconds: float, *, service: str | None = None, method: str | None = None,
              path: str | None = None, count: int | None = None) -> Rule:
        """Answer matching requests `seconds` late."""
        return self._add(Rule("delay", self, count, service, method, _rx(path), seconds=seconds))

    def error(self, status: int = 500, *, count: int | None = 1, service: str | None = None,
              method: str | None = None, path: str | None = None,
              message: str | None = None, after: bool = False) -> Rule:
        """Fail the next `count` matching requests with `status` (5xx usually).

        With ``after`` the request is carried out first, as when a proxy times out on a
        backend that went on working: the client sees an error for a change that happened.
        """
        text = message or _DEFAULT_MESSAGES.get(status, "Injected fault.")
        return self._add(Rule("error_after" if after else "error", self, count, service, method,
                              _rx(path), status=status, message=text))

    def lose_answer(self, *, count: int | None = 1, service: str | None = None,
                    method: str | None = None, path: str | None = None) -> Rule:
        """Carry out the next `count` matching requests, then drop the connection unanswered."""
        return self._add(Rule("lose_answer", self, count, service, method, _rx(path)))

    def rate_limit(self, *, status: int = 429, retry_after: int = 1, count: int | None = 1,
                   service: str | None = None, method: str | None = None,
                   path: str | None = None) -> Rule:
        """Refuse the next `count` matching requests with 429 (or 413) and Retry-After."""
        if status not in (413, 429):
            raise ValueError("rate limiting answers 413 or 429")
        return self._add(Rule("error", self, count, service, method, _rx(path), status=status,
                              retry_after=retry_after, message="This request was rate-limited."))

    def hang(self, seconds: float = 60.0, *, count: int | None = 1, service: str | None = None,
             method: str | None = None, path: str | None = None) -> Rule:
        """Hold matching requests for `seconds` (cut short by reset/stop), then drop them."""
        return self._add(Rule("hang", self, count, service, method, _rx(path), seconds=seconds))

    def drop(self, *, count: int | None = 1, service: str | None = None,
             method: str | None = None, path: str | None = None) -> Rule:
        """Reset the connection of the next `count` matching requests without carrying them
        out (a connection reset, as from a restarting load balancer)."""
        return self._add(Rule("disconnect", self, count, service, method, _rx(path)))

    def unreachable(self, service: str = "compute", *, count: int | None = None) -> Rule:
        """Close connections to `service` without an answer, as a dead endpoint does."""
        _check(service, SERVICES)
        return self._add(Rule("disconnect", self, count, service))

    def hide_from_catalog(self, service: str = "compute") -> Rule:
        """Tokens issued from now on carry no catalog entry for `service`."""
        _check(service, SERVICES)
        return self._add(Rule("hidden", self, target=service))

    # --- switches: resources ------------------------------------------------------------

    def stick(self, status: str, *, volume: str | None = None) -> Rule:
        """Volumes in `status` (all, or the one with this id or name) never leave it."""
        return self._add(Rule("stuck", self, message=status, target=volume))

    def fail_create(self, *, count: int | None = 1, volume: str | None = None,
                    message: str = "") -> Rule:
        """The next `count` volume creations (by name, or any) end in status ``error``, with
        Cinder's user message (API 3.3+) that its driver failed (``error_restoring`` for a
        restore from a backup); with `message`, the scheduler refused it for that reason
        ("No valid backend was found. ...")."""
        return self._add(Rule("fail_create", self, count, target=volume, message=message))

    def fail_snapshot(self, *, count: int | None = 1, snapshot: str | None = None) -> Rule:
        """The next `count` snapshots (by name, or any) end in status ``error``."""
        return self._add(Rule("fail_snapshot", self, count, target=snapshot))

    def fail_extend(self, *, count: int | None = 1, volume: str | None = None) -> Rule:
        """The next `count` extends (of this volume id or name, or any) end in
        ``error_extending``."""
        return self._add(Rule("fail_extend", self, count, target=volume))

    def fail_backup(self, *, count: int | None = 1, backup: str | None = None) -> Rule:
        """The next `count` backups (by id or name, or any) end in status ``error``."""
        return self._add(Rule("fail_backup", self, count, target=backup))

    def slow(self, operation: str, seconds: float) -> Rule:
        """Make one kind of asynchronous transition take `seconds`."""
        _check(operation, OPERATIONS)
        return self._add(Rule("slow", self, target=operation, seconds=seconds))

    def limit(self, operation: str, concurrency: int) -> Rule:
        """At most `concurrency` transitions of one kind run at once; the rest wait their turn
        in order, as on a backend with a bounded number of workers."""
        _check(operation, OPERATIONS)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        return self._add(Rule("limit", self, target=operation, concurrency=concurrency))

    def reset(self) -> None:
        """Undo every fault and release requests that hang."""
        with self._lock:
            self._rules.clear()
            self._wake.set()
            self._wake = threading.Event()

    def remove(self, rule: Rule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    # --- queries used by the services ---------------------------------------------------

    def for_request(self, service: str, method: str, path: str) -> RequestFaults:
        """Consume the matching request rules and say what to do."""
        out = RequestFaults()
        with self._lock:
            for rule in list(self._rules):
                if rule.kind not in ("delay", "hang", "disconnect", "error", "error_after",
                                     "lose_answer"):
                    continue
                if not rule.matches_request(service, method, path):
                    continue
                if rule.kind in ("error", "error_after") and out.status:
                    continue  # one error answer per request; later rules keep their count
                self._use(rule)
                if rule.kind == "delay":
                    out.delay += rule.seconds
                elif rule.kind == "hang":
                    out.hang = max(out.hang, rule.seconds)
                elif rule.kind == "disconnect":
                    out.disconnect = True
                elif rule.kind == "lose_answer":
                    out.lose_answer = True
                else:
                    out.status_after = rule.kind == "error_after"
                    out.status, out.message = rule.status, rule.message
                    if rule.retry_after:
                        out.headers["Retry-After"] = str(rule.retry_after)
        return out

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake early on `reset` so hung requests end with the test."""
        with self._lock:
            wake = self._wake
        wake.wait(seconds)

    def wake_all(self) -> None:
        with self._lock:
            self._wake.set()
            self._wake = threading.Event()

    def hidden_services(self) -> set[str]:
        with self._lock:
            return {r.target for r in self._rules if r.kind == "hidden" and r.target}

    def is_stuck(self, volume_id: str, name: str, status: str) -> bool:
        with self._lock:
            return any(
                r.kind == "stuck" and r.message == status and r.target in (None, volume_id, name)
                for r in self._rules
            )

    def take_failure(self, kind: str, resource_id: str, name: str) -> Rule | None:
        """Consume one 'fail_create'/'fail_extend'/'fail_snapshot'/'fail_backup' rule matching
        this volume, snapshot or backup, if any, and return it."""
        with self._lock:
            for rule in self._rules:
                if rule.kind == kind and rule.target in (None, resource_id, name):
                    self._use(rule)
                    return rule
        return None

    def transition_delay(self, operation: str) -> float | None:
        with self._lock:
            for rule in self._rules:
                if rule.kind == "slow" and rule.target == operation:
                    return rule.seconds
        return None

    def concurrency(self, operation: str) -> int | None:
        """How many transitions of `operation` may run at once (None: unbounded)."""
        with self._lock:
            for rule in self._rules:
                if rule.kind == "limit" and rule.target == operation:
                    return rule.concurrency
        return None

    # --- internals ----------------------------------------------------------------------

    def _add(self, rule: Rule) -> Rule:
        if rule.count is not None and rule.count < 1:
            raise ValueError("count must be at least 1 (or None for 'until cancelled')")
        with self._lock:
            self._rules.append(rule)
        return rule

    def _use(self, rule: Rule) -> None:
        # Caller holds the lock.
        rule.hits += 1
        if rule.count is not None:
            rule.count -= 1
            if rule.count == 0:
                self._rules.remove(rule)


def _rx(path: str | None) -> re.Pattern[str] | None:
    return re.compile(path) if path is not None else None


def _check(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{value!r} is not one of {', '.join(allowed)}")
