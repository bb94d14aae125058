"""Create requests (POST) still awaiting the cloud's answer, by name.

A POST whose caller gave up before Cinder answered may still be carried out later: a slow
API, a proxy holding the request. If the caller's retry posted again meanwhile, Cinder would
end up with two volumes (or snapshots) of one name, one of them orphaned. So each create POST
runs in a thread of its own, bounded by its own timeout rather than its caller's deadline;
the caller waits for it until its deadline, and a retry of the same name waits for that same
POST instead of sending a second one. An entry lives only until its POST is answered (or
times out): from then on the lookup by name finds what it made.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from cinder_csi import errors
from cinder_csi.deadline import Deadline

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long a create POST may wait for its answer, whatever its caller's deadline.
ANSWER_WAIT_S = 60.0


class StillWaiting(errors.Timeout):
    """The caller's deadline came while its POST (or an earlier call's) awaits the answer."""


class _Entry(Generic[T]):
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = threading.Event()
        self.result: T | None = None
        self.error: errors.CinderCSIError | None = None


class PendingPosts(Generic[T]):
    """See the module docstring; one instance per kind of object (volumes, snapshots)."""

    def __init__(self, answer_wait_s: float = ANSWER_WAIT_S) -> None:
        self.answer_wait_s = answer_wait_s
        self._lock = threading.Lock()
        self._pending: dict[str, _Entry[T]] = {}

    def run(
        self, name: str, post: Callable[[Deadline], T], deadline: Deadline, *, what: str
    ) -> tuple[T, bool]:
        """The answer to the POST for `name` (started now, or already in flight), and whether
        it was already in flight (an earlier call's). Raises Timeout at `deadline`."""
        with self._lock:
            entry = self._pending.get(name)
            joined = entry is not None
            if entry is None:
                entry = _Entry()
                self._pending[name] = entry
                threading.Thread(target=self._post, args=(name, entry, post),
                                 name=f"post-{name[:40]}", daemon=True).start()
        if not entry.done.wait(max(0.0, deadline.remaining())):
            raise StillWaiting(
                f"Cinder has not answered {what} for {time.monotonic() - entry.started:.0f}s; "
                "a retry waits for that answer instead of sending a second request"
            )
        if entry.error is not None:
            raise entry.error
        assert entry.result is not None
        return entry.result, joined

    def in_flight(self, name: str) -> bool:
        with self._lock:
            return name in self._pending

    def _post(self, name: str, entry: _Entry[T], post: Callable[[Deadline], T]) -> None:
        try:
            entry.result = post(Deadline.after(self.answer_wait_s))
        except errors.CinderCSIError as exc:
            entry.error = exc
        finally:
            if entry.result is None and entry.error is None:
                # Anything else is a bug; it is logged by the thread's excepthook.
                entry.error = errors.InternalError(f"the create request of {name} failed")
            with self._lock:
                self._pending.pop(name, None)
            entry.done.set()
