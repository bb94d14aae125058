"""Per-key operation guard: a second call on a busy volume is refused, never queued.

The CSI spec asks a plugin to answer ABORTED when an operation is already pending for the
same volume; the caller retries later. Queueing instead would pile up threads behind one slow
Cinder call and let a stale request run after a newer one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from cinder_csi.errors import OperationInProgress


class OperationLocks:
    def __init__(self) -> None:
        self._busy: dict[str, str] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, keys: Iterable[str], operation: str) -> Iterator[None]:
        """Hold every key for the duration, or raise OperationInProgress naming the holder.

        Several keys are taken together (say a clone's source and target), all or none.
        """
        wanted = sorted({k for k in keys if k})
        with self._lock:
            for key in wanted:
                holder = self._busy.get(key)
                if holder is not None:
                    raise OperationInProgress(
                        f"{operation} refused: {holder} is still in progress for {key}; "
                        "retry later"
                    )
            for key in wanted:
                self._busy[key] = operation
        try:
            yield
        finally:
            with self._lock:
                for key in wanted:
                    self._busy.pop(key, None)

    def busy(self) -> dict[str, str]:
        with self._lock:
            return dict(self._busy)
