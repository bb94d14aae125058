"""Rate limiters: a token bucket (calls per second) and a per-key exponential backoff.

The token bucket throttles the Kubernetes client and the start of work items; the backoff
spaces out the retries of one failing key. Both are pure bookkeeping around an injectable
clock, so tests drive them without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable


class TokenBucket:
    """``qps`` tokens per second, at most ``burst`` saved up; ``qps <= 0`` or inf means no limit.

    A caller reserves a token even when the bucket is empty (the count goes negative) and
    then sleeps for the debt, so waiters are served in arrival order without a queue.
    """

    def __init__(
        self, qps: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._stamp = clock()

    @property
    def unlimited(self) -> bool:
        return self.qps <= 0 or math.isinf(self.qps)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._stamp)
        self._stamp = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.qps)

    def reserve(self) -> float:
        """Take one token; return how many seconds the caller must wait before using it."""
        if self.unlimited:
            return 0.0
        with self._lock:
            self._refill(self._clock())
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def try_acquire(self) -> bool:
        """Take a token only if one is available now."""
        if self.unlimited:
            return True
        with self._lock:
            self._refill(self._clock())
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Block until a token is ours; False if ``stop`` was set while waiting."""
        delay = self.reserve()
        if delay <= 0:
            return True
        if stop is None:
            time.sleep(delay)
            return True
        return not stop.wait(delay)


class ItemBackoff:
    """Per-key exponential backoff: ``base * 2**failures``, capped at ``cap``.

    ``when(key)`` counts a failure and returns the delay for it; ``forget(key)`` resets the
    key after a success. Keys that never fail cost nothing.
    """

    def __init__(self, base: float = 1.0, cap: float = 300.0) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"need 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self._lock = threading.Lock()
        self._failures: dict[Hashable, int] = {}

    def when(self, key: Hashable) -> float:
        with self._lock:
            n = self._failures.get(key, 0)
            self._failures[key] = n + 1
        # 2**n overflows floats for large n; past the cap the exponent no longer matters.
        if n >= 64:
            return self.cap
        return min(self.cap, math.ldexp(self.base, n))

    def failures(self, key: Hashable) -> int:
        with self._lock:
            return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._failures.pop(key, None)
