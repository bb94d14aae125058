"""How an attach or detach attempt ends, and when the work queue tries it again.

Success or failure goes into the metrics; a failure also into the VA's ``attachError`` /
``detachError`` and a Warning Event (only when its message changed since the last one), both
redacted. ``retry`` turns a failure into what the worker raises: permanent, or a delay from the
queue's per-key backoff, shortened when the call may still be running or was transient.
"""

from __future__ import annotations

import logging
import threading
import time

from cinder_csi.loop.attach_common import (
    API_ERRORS,
    ATTACH,
    DETACH,
    VA_PATH,
    AttachMetrics,
    AttemptFailed,
    api_message,
    name_of,
    now,
)
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.csi_client import IN_PROGRESS_CODES
from cinder_csi.loop.kube.client import MERGE_PATCH
from cinder_csi.loop.kube.informer import Obj
from cinder_csi.loop.kube.workqueue import PermanentError, RetryAfter, WorkQueue

# The attachment controller's logger, as before these lines moved here: operators filter on it.
log = logging.getLogger("cinder_csi.loop.attacher")

REASON_FAILED_ATTACH = "FailedAttachVolume"
REASON_FAILED_DETACH = "FailedDetachVolume"


class AttachOutcomes:
    """Records attempts' results; remembers each VA's last error to aggregate its Events."""

    def __init__(self, ctx: LoopContext, metrics: AttachMetrics, *,
                 in_progress_retry_cap: float) -> None:
        self.ctx = ctx
        self.metrics = metrics
        self.in_progress_retry_cap = in_progress_retry_cap  # longest wait after an in-progress
        self._lock = threading.Lock()
        self._last_error: dict[tuple[str, str], str] = {}  # (op, VA) -> last Event message

    def forget(self, name: str) -> None:
        """The VA is gone."""
        with self._lock:
            self._last_error.pop((ATTACH, name), None)
            self._last_error.pop((DETACH, name), None)

    def succeeded(self, op: str, name: str, started: float) -> None:
        self.metrics.observe(op, True, time.monotonic() - started)
        with self._lock:
            self._last_error.pop((op, name), None)

    def failed(self, op: str, va: Obj, exc: AttemptFailed, started: float) -> None:
        name = name_of(va)
        self.metrics.observe(op, False, time.monotonic() - started)
        message = self.ctx.recorder.redact(exc.message, ())
        log.warning("VolumeAttachment %s: %s failed: %s", name, op, message)
        if not exc.record:
            return
        field = "attachError" if op == ATTACH else "detachError"
        try:
            self.ctx.rest.patch(f"{VA_PATH}/{name}/status",
                                {"status": {field: {"message": message, "time": now()}}},
                                content_type=MERGE_PATCH)
        except API_ERRORS as err:
            log.info("VolumeAttachment %s: could not save %s: %s", name, field,
                     api_message(err))
        with self._lock:
            repeated = self._last_error.get((op, name)) == message
            self._last_error[(op, name)] = message
        if not repeated:
            reason = REASON_FAILED_ATTACH if op == ATTACH else REASON_FAILED_DETACH
            self.ctx.recorder.warning(va, reason, message)

    def retry(self, queue: WorkQueue, name: str, exc: AttemptFailed) -> Exception:
        """What the worker raises so the queue brings ``name`` back at the right time."""
        if exc.final:
            return PermanentError(exc.message)
        delay = queue.backoff.when(name)
        if exc.code in IN_PROGRESS_CODES or not exc.record:
            delay = min(delay, self.in_progress_retry_cap)
        return RetryAfter(delay, exc.message)
