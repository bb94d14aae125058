"""Poll until a condition holds: exponential backoff, bounded by a Deadline, never spinning."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from cinder_csi.deadline import Deadline
from cinder_csi.errors import Timeout

T = TypeVar("T")

# The longest pause between two looks: a caller hears of a change at most this late. Cinder
# takes seconds to create or attach, so 1 s costs few GETs; a 3 s cap made the last of a
# wave of creates wait up to 3 s longer than the cloud did.
DEFAULT_MAXIMUM_S = 1.0


def backoff_delays(initial: float, factor: float, maximum: float) -> Iterator[float]:
    """The delays of an exponential series, capped at ``maximum``, without end."""
    delay = initial
    while True:
        yield delay
        delay = min(maximum, delay * factor)


def wait_for(
    probe: Callable[[], T | None],
    deadline: Deadline,
    *,
    what: str,
    initial: float = 0.1,
    factor: float = 1.5,
    maximum: float = DEFAULT_MAXIMUM_S,
    stop: threading.Event | None = None,
) -> T:
    """Call ``probe`` until it returns something other than None, and return that.

    ``probe`` may raise to abort the wait (a terminal state, say). Raises Timeout naming
    ``what`` when the deadline passes first.
    """
    delays = backoff_delays(initial, factor, maximum)
    while True:
        result = probe()
        if result is not None:
            return result
        remaining = deadline.remaining()
        if remaining <= 0:
            raise Timeout(f"timed out waiting for {what}")
        delay = min(next(delays), remaining)
        if stop is not None:
            if stop.wait(delay):
                raise Timeout(f"stopped while waiting for {what}")
        else:
            time.sleep(delay)
