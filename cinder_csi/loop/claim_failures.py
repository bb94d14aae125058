"""How the claim controller classifies, reports and holds off a failed provisioning attempt.

The exceptions that name a failure's class; CreateVolume's gRPC code mapped to upstream's
classes (may still be running: retry with the same name; RESOURCE_EXHAUSTED with a selected
node: reschedule; INVALID_ARGUMENT: retry only at the maximum backoff; else final, with
backoff); the Warning Event and failure metric; and the per-claim hold-off that claim updates
cannot bypass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
from prometheus_client import Counter

from cinder_csi.loop import protocol as p
from cinder_csi.loop.claim_predicates import in_flight, terminating
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.csi_client import IN_PROGRESS_CODES
from cinder_csi.loop.deletion import annotations_of, edit_metadata
from cinder_csi.loop.kube.informer import Obj
from cinder_csi.loop.kube.throttle import ItemBackoff
from cinder_csi.loop.kube.workqueue import PermanentError


class ProvisionFailed(Exception):
    """A failed attempt already reported as an Event; the queue retries it with backoff."""


class Skip(Exception):
    """Not ours to act on (yet); no Event."""


class SourceError(Exception):
    """The data source cannot be used (yet): final, retried with backoff."""


class Reschedule(Exception):
    """The selected node cannot take the volume: hand the claim back to the scheduler."""


class ClaimFailures:
    """Reports failures; ``clear_intent`` finishes a deleted claim no volume can exist for."""

    def __init__(self, ctx: LoopContext, failed_total: Counter,
                 clear_intent: Callable[[Obj], None]) -> None:
        self.ctx = ctx
        self.failed_total = failed_total  # labelled (class, source)
        self.clear_intent = clear_intent
        self._lock = threading.Lock()
        # Per-claim backoff that claim updates cannot bypass: a failed claim is not tried
        # again before its time even when it changes meanwhile (a reschedule removes and
        # re-adds selected-node at once; retrying on each would be a hot loop).
        self.holdoff = ItemBackoff(1.0, 300.0)
        self.not_before: dict[str, float] = {}  # claim uid -> monotonic time

    def hold_remaining(self, uid: str) -> float:
        """Seconds the claim must still wait after its last failure (<= 0: none)."""
        with self._lock:
            return self.not_before.get(uid, 0.0) - time.monotonic()

    def forget(self, uid: str) -> None:
        """The claim succeeded or is gone: its next failure starts the backoff afresh."""
        self.holdoff.forget(uid)
        with self._lock:
            self.not_before.pop(uid, None)

    def failed(self, claim: Obj, labels: tuple[str, str], message: str, *, final: bool,
               permanent: bool = False) -> None:
        """Report a failed attempt; raise so the queue retries it, unless nothing is left to
        do (a terminating claim with a final error: no volume can exist)."""
        self.failed_total.labels(*labels).inc()
        self.ctx.recorder.warning(claim, "ProvisioningFailed", message)
        if final and terminating(claim):
            if in_flight(claim):
                self.clear_intent(claim)
            return
        uid = str(claim["metadata"]["uid"])
        delay = self.holdoff.cap if permanent else self.holdoff.when(uid)
        with self._lock:
            self.not_before[uid] = time.monotonic() + delay
        if permanent:
            raise PermanentError(message)
        raise ProvisionFailed(message)

    def create_failed(self, claim: Obj, labels: tuple[str, str], pv_name: str,
                      class_name: str, exc: grpc.RpcError) -> None:
        code = exc.code()
        detail = (f'failed to provision volume {pv_name} with StorageClass "{class_name}": '
                  f"rpc error: code = {code.name} desc = {exc.details()}")
        if code in IN_PROGRESS_CODES:
            # The driver may still be creating it: same name next time, intent kept.
            self.failed(claim, labels, detail, final=False)
        elif (code == grpc.StatusCode.RESOURCE_EXHAUSTED
              and annotations_of(claim).get(p.ANN_SELECTED_NODE)):
            self.reschedule(claim, labels, detail)
        else:
            self.failed(claim, labels, detail, final=True,
                        permanent=code == grpc.StatusCode.INVALID_ARGUMENT)

    def reschedule(self, claim: Obj, labels: tuple[str, str], message: str) -> None:
        if not terminating(claim):
            edit_metadata(self.ctx.rest, claim, annotations={p.ANN_SELECTED_NODE: None})
        self.failed(claim, labels, message + "; the claim goes back to the scheduler to pick "
                    "another node", final=True)
