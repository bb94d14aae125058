"""Per-key operation guard: a second call on a busy volume is refused, never queued.

The CSI spec asks a plugin to answer ABORTED when an operation is already pending for the
same volume; the caller retries later. Queueing instead would pile up threads behind one slow
Cinder call and let a stale request run after a newer one.

A holder names the deadline of the call it serves. Every wait inside is bounded by that
deadline, so a key held well past it means the worker is wedged (a call that ignored its
bound): `overdue` reports such keys, and the liveness check fails on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cinder_csi.deadline import Deadline
from cinder_csi.errors import OperationInProgress

# A call still holding its keys this long after its deadline means a wedged worker.
OVERDUE_MARGIN_S = 60.0


@dataclass(frozen=True)
class Holder:
    operation: str
    since: float  # time.monotonic()
    deadline: Deadline | None


class OperationLocks:
    def __init__(self) -> None:
        self._busy: dict[str, Holder] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(
        self, keys: Iterable[str], operation: str, deadline: Deadline | None = None
    ) -> Iterator[None]:
        """Hold every key for the duration, or raise OperationInProgress naming the holder.

        Several keys are taken together (say a clone's source and target), all or none.
        """
        wanted = sorted({k for k in keys if k})
        with self._lock:
            for key in wanted:
                holder = self._busy.get(key)
                if holder is not None:
                    raise OperationInProgress(
                        f"{operation} refused: {holder.operation} is still in progress for "
                        f"{key}; retry later"
                    )
            holder = Holder(operation, time.monotonic(), deadline)
            for key in wanted:
                self._busy[key] = holder
        try:
            yield
        finally:
            with self._lock:
                for key in wanted:
                    self._busy.pop(key, None)

    def busy(self) -> dict[str, str]:
        with self._lock:
            return {key: holder.operation for key, holder in self._busy.items()}

    def overdue(self, margin: float) -> dict[str, str]:
        """Keys still held more than `margin` seconds after their caller's deadline, each with
        what holds it and for how long."""
        now = time.monotonic()
        with self._lock:
            return {
                key: f"{h.operation} for {now - h.since:.0f}s, "
                     f"{now - h.deadline.at:.0f}s past its deadline"
                for key, h in self._busy.items()
                if h.deadline is not None and now - h.deadline.at > margin
            }

    def health(self, margin: float = OVERDUE_MARGIN_S) -> str | None:
        """For /healthz: None, or which operations outlived their deadline (a wedged worker)."""
        late = self.overdue(margin)
        if not late:
            return None
        shown = "; ".join(f"{key}: {what}" for key, what in sorted(late.items())[:5])
        return f"{len(late)} operation(s) held past their deadline: {shown}"
