"""A point in monotonic time by which an operation must finish.

Every wait in the project takes a Deadline, usually derived from the gRPC caller's deadline,
so no call sleeps past the moment its caller stopped listening.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Used when a caller sent no deadline: long enough for a slow Cinder backend, still bounded.
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Deadline:
    at: float  # time.monotonic() value

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(time.monotonic() + (DEFAULT_TIMEOUT_S if seconds is None else seconds))

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def shorter(self, seconds: float) -> Deadline:
        """This deadline, or one `seconds` from now if that comes first."""
        return Deadline(min(self.at, time.monotonic() + seconds))


def for_rpc(remaining: float | None) -> Deadline:
    """The deadline of work done for an RPC: a little before the caller gives up, so the answer
    (even a DEADLINE_EXCEEDED naming what we waited for) still reaches it."""
    if remaining is None:
        return Deadline.after(None)
    return Deadline.after(max(0.0, remaining * 0.95 - 0.2))
