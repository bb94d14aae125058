"""What a service knows about the CSI call it serves: the caller's request id and deadline."""

from __future__ import annotations

import contextvars
import random
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from cinder_csi.deadline import DEFAULT_TIMEOUT_S, Deadline, for_rpc

REQUEST_ID_HEADER = "x-request-id"
# time_remaining() of a call without a deadline is "infinite future"; anything past this is it.
_NO_DEADLINE_S = 10 * 365 * 24 * 3600.0

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cinder_csi_request_id", default=None
)


def request_id_of(context: grpc.ServicerContext) -> str:
    """The caller's x-request-id (trimmed), else a fresh short id."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == REQUEST_ID_HEADER and value:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            return text[:64]
    return f"{random.getrandbits(48):012x}"  # uuid4() would read os.urandom every call


@contextmanager
def serving(request_id: str) -> Iterator[None]:
    """Within this block, current_request_id() on this thread is `request_id`."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def current_request_id() -> str | None:
    """The request id of the CSI call being served on this thread, if any."""
    return _request_id.get()


def deadline_from(
    context: grpc.ServicerContext, default_s: float = DEFAULT_TIMEOUT_S
) -> Deadline:
    """The deadline of the work done for this call: a little before the caller's (see
    deadline.for_rpc), or `default_s` from now when the caller sent none."""
    remaining = context.time_remaining()
    if remaining is None or remaining >= _NO_DEADLINE_S:
        return Deadline.after(default_s)
    return for_rpc(remaining)
