"""The watch loop's exception tree, and how a failed CSI call reads.

Every duty raises these; none of them is ever sent over gRPC, so they stay apart from
``cinder_csi.errors`` (the driver's tree, mapped to gRPC codes) and share no name with it.

    LoopError                   base of every error the loop raises on purpose
    ├── RetryAfter              to the work queue: come back after exactly ``delay`` (no failure)
    │   └── Fenced              this replica cannot prove it holds the leader lease: no call starts
    ├── DoNotRetrySoon          to the work queue: retrying soon cannot help; retried only at the
    │                           maximum backoff (external-provisioner's "final" errors)
    ├── InvalidSpec             an object asks for what can never work as written (final)
    │   ├── ParameterError      a StorageClass or claim parameter
    │   ├── CapabilityError     a PV that cannot be turned into a CSI request
    │   └── QuantityError       not a Kubernetes quantity
    ├── TopologyError           the selected node's topology cannot be determined (yet)
    ├── SourceError             a claim's data source cannot be used (yet)
    ├── Reschedule              the selected node cannot take the volume: back to the scheduler
    ├── NotOurs                 not ours to act on (yet): no Event, no retry
    ├── ProvisionFailed         a provisioning attempt failed and was reported; retried
    ├── AttemptFailed           an attach, detach or resize attempt failed; says how to retry
    ├── JournalError            (loop/journal.py) the write carrying an intent failed; retried
    └── RegistryInvalid         the registry's input cannot be honoured; nothing was changed

The CSI side: ``IN_PROGRESS_CODES`` are the gRPC codes after which the driver may still be
working, and ``rpc_error_text`` words a failed call the way the sidecars print it
(``rpc error: code = DeadlineExceeded desc = ...``), for every status, Event and log line.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from cinder_csi.metrics import go_code_name

# gRPC codes after which the operation may still be running in the driver (external-provisioner
# treats them as "in progress": retry with the same name, never give up on the volume).
IN_PROGRESS_CODES = frozenset({
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.ABORTED,
})


def rpc_code(exc: grpc.RpcError) -> grpc.StatusCode:
    """The call's status code; UNKNOWN for an RpcError that carries none."""
    return exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN


def rpc_error_text(exc: grpc.RpcError) -> str:
    """``rpc error: code = <Go code name> desc = <details>``, as the Go sidecars print it."""
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    return f"rpc error: code = {go_code_name(rpc_code(exc).name)} desc = {details}"


class LoopError(Exception):
    """Base of every error the watch loop raises on purpose."""


class RetryAfter(LoopError):
    """Raised by a work-queue handler to come back after exactly ``delay`` seconds."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"retry after {delay:.1f}s")
        self.delay = delay


class Fenced(RetryAfter):
    """A mutating CSI call was about to start on a replica that cannot prove it still leads
    (``loop/kube/leader.py``). Nothing was sent; the key comes back soon (the process exits
    if the lease is really lost)."""

    def __init__(self, reason: str, delay: float = 2.0) -> None:
        super().__init__(delay, reason)


class DoNotRetrySoon(LoopError):
    """Raised by a work-queue handler for an error that retrying soon cannot fix.

    The key is still retried (the world may change: a quota raised, a class fixed), but only
    after the maximum backoff, as external-provisioner does with final errors.
    """


class InvalidSpec(LoopError, ValueError):
    """An object asks for something that can never work as written (final until it changes)."""


class ParameterError(InvalidSpec):
    """The StorageClass or claim asks for something that can never work as written."""


class CapabilityError(InvalidSpec):
    """The PV cannot be turned into a CSI request."""


class QuantityError(InvalidSpec):
    """Not a quantity the loop understands (negative, malformed, unknown suffix)."""


class TopologyError(LoopError):
    """The topology of the selected node cannot be determined (yet)."""


class SourceError(LoopError):
    """The data source cannot be used (yet): final, retried with backoff."""


class Reschedule(LoopError):
    """The selected node cannot take the volume: hand the claim back to the scheduler."""


class NotOurs(LoopError):
    """Not ours to act on (yet); no Event."""


class ProvisionFailed(LoopError):
    """A failed attempt already reported as an Event; the queue retries it with backoff."""


class RegistryInvalid(LoopError):
    """The registry's input cannot be honoured; nothing was changed."""


class AttemptFailed(LoopError):
    """One attach, detach or resize attempt failed.

    ``message`` is what the object's status and the Event say. ``final``: retrying cannot help
    until someone changes an object. ``quiet``: a passing conflict with a fresher object, not
    worth a status or an Event; retried soon.
    """

    def __init__(self, message: str, *, code: grpc.StatusCode | None = None,
                 final: bool = False, quiet: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.final = final
        self.quiet = quiet

    def retry(self, next_delay: Callable[[], float], *, soon: float) -> LoopError:
        """What the worker raises so the queue brings the key back at the right time.

        Final: at the maximum backoff. Else the key's next backoff step (``next_delay``, taken
        only then), cut to ``soon`` when the call may still be running in the driver or the
        failure was a passing conflict.
        """
        if self.final:
            return DoNotRetrySoon(self.message)
        delay = next_delay()
        if self.quiet or self.code in IN_PROGRESS_CODES:
            delay = min(delay, soon)
        return RetryAfter(delay, self.message)
