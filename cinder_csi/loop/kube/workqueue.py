"""Keyed work queue with per-key backoff, a processing rate limit and a worker pool.

The guarantees controllers build on:

- a key waits in the queue at most once, however often it is added (dedupe);
- one key is never handed to two workers at once; a key added while a worker holds it is
  queued again when that worker calls ``done`` (so the latest state is always reconciled);
- a failing key comes back after ``base * 2**failures`` (1 s .. 5 min by default) and a
  success resets it (``forget``); a handler steers this by raising ``RetryAfter`` (exactly
  then) or ``DoNotRetrySoon`` (only at the maximum backoff), both from ``loop.errors``;
- every processing start takes a token from one bucket, so a flood of keys (a resync, a
  relist) cannot turn into a flood of cloud calls. Its default rate is the API client's
  default: a key that does anything costs at least one API request, so starting keys faster
  than the client may send gains nothing, and starting them slower caps throughput (at
  50/s it capped provisioning at ~55 claims/s).

Metrics carry client-go's workqueue names and ``name`` label; they live in the registry
handed to :class:`WorkQueueMetrics`, never in a module-global one, which also knows its
queues so that a liveness check can ask each whether it is wedged (``stalled``).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cinder_csi.loop.errors import DoNotRetrySoon, RetryAfter
from cinder_csi.loop.kube.throttle import ItemBackoff, TokenBucket

DEFAULT_QPS, DEFAULT_BURST = 300.0, 600  # processing starts per second; see the docstring

log = logging.getLogger(__name__)

Handler = Callable[[str], None]

# client-go uses 1e-8..10 s; reconciles here wait on cloud calls, so reach further.
_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 60.0, 300.0, 1000.0)


class WorkQueueMetrics:
    """client-go's workqueue metrics, registered once per registry, shared by all queues."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queues: list[WorkQueue] = []  # every queue reporting here (for liveness checks)
        labels = ["name"]
        self.depth = Gauge("workqueue_depth", "Current depth of workqueue", labels,
                           registry=registry)
        self.adds = Counter("workqueue_adds_total", "Total number of adds handled by workqueue",
                            labels, registry=registry)
        self.queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            labels, buckets=_BUCKETS, registry=registry)
        self.work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            labels, buckets=_BUCKETS, registry=registry)
        self.unfinished = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and has not been "
            "observed by work_duration; large values indicate stuck threads",
            labels, registry=registry)
        self.longest = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            labels, registry=registry)
        self.retries = Counter("workqueue_retries_total",
                               "Total number of retries handled by workqueue", labels,
                               registry=registry)


class WorkQueue:
    def __init__(
        self,
        name: str,
        *,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        qps: float = DEFAULT_QPS,
        burst: int = DEFAULT_BURST,
        metrics: WorkQueueMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.backoff = ItemBackoff(backoff_base, backoff_cap)
        self.limiter = TokenBucket(qps, burst)
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: deque[str] = deque()
        self._dirty: set[str] = set()
        self._queued_at: dict[str, float] = {}
        self._processing: dict[str, float] = {}
        self._waiting: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}
        self._seq = 0
        self._last_progress = self._clock()  # a key handed out or finished, or work arriving
        self._shutdown = threading.Event()
        self._workers: list[threading.Thread] = []
        self._metrics = metrics
        if metrics is not None:
            metrics.queues.append(self)
            metrics.depth.labels(name).set_function(lambda: float(len(self)))
            metrics.unfinished.labels(name).set_function(self._unfinished_seconds)
            metrics.longest.labels(name).set_function(self._longest_seconds)

    # ---- adding

    def add(self, key: str) -> None:
        with self._cond:
            self._add_locked(key)

    def add_after(self, key: str, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutdown.is_set():
                return
            due = self._clock() + delay
            if self._due.get(key, float("inf")) <= due:
                return  # already coming back sooner
            self._due[key] = due
            self._seq += 1
            heapq.heappush(self._waiting, (due, self._seq, key))
            self._cond.notify_all()  # a sleeping get() may now have to wake earlier

    def add_rate_limited(self, key: str) -> float:
        """Requeue after the key's next backoff step; returns that delay."""
        delay = self.backoff.when(key)
        self._count_retry()
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self.backoff.forget(key)

    def num_requeues(self, key: str) -> int:
        return self.backoff.failures(key)

    def _add_locked(self, key: str) -> None:
        if self._shutdown.is_set() or key in self._dirty:
            return
        self._dirty.add(key)
        if self._metrics is not None:
            self._metrics.adds.labels(self.name).inc()
        if key in self._processing:
            return  # done() puts it back once the current worker lets go
        if not self._ready:
            self._last_progress = self._clock()  # an idle queue is not a stalled one
        self._ready.append(key)
        self._queued_at[key] = self._clock()
        self._cond.notify()

    def _promote_due(self, now: float) -> None:
        while self._waiting and self._waiting[0][0] <= now:
            due, _, key = heapq.heappop(self._waiting)
            if self._due.get(key) == due:  # else superseded by an earlier add_after
                del self._due[key]
                self._add_locked(key)

    def _count_retry(self) -> None:
        if self._metrics is not None:
            self._metrics.retries.labels(self.name).inc()

    # ---- taking

    def get(self, timeout: float | None = None) -> str | None:
        """The next key to work on, or None on shutdown (or timeout). Call done(key) after."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                now = self._clock()
                self._promote_due(now)
                if self._shutdown.is_set():
                    return None
                if self._ready:
                    key = self._ready.popleft()
                    self._dirty.discard(key)
                    self._processing[key] = now
                    self._last_progress = now
                    queued = self._queued_at.pop(key, now)
                    if self._metrics is not None:
                        self._metrics.queue_duration.labels(self.name).observe(now - queued)
                    return key
                wait: float | None = None
                if self._waiting:
                    wait = max(0.0, self._waiting[0][0] - now)
                if deadline is not None:
                    left = deadline - now
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cond.wait(wait)

    def done(self, key: str) -> None:
        with self._cond:
            self._last_progress = self._clock()
            started = self._processing.pop(key, None)
            if started is not None and self._metrics is not None:
                self._metrics.work_duration.labels(self.name).observe(self._clock() - started)
            if key in self._dirty and not self._shutdown.is_set():
                self._ready.append(key)
                self._queued_at[key] = self._clock()
                self._cond.notify()

    # ---- state

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready)

    def waiting(self) -> int:
        """Keys scheduled for later (backoff or add_after)."""
        with self._cond:
            return len(self._due)

    def processing(self) -> list[str]:
        with self._cond:
            return list(self._processing)

    def stalled(self, after: float) -> str | None:
        """Why the queue looks wedged, or None: a worker on one key for longer than
        ``after`` seconds, or keys waiting while none was handed out or finished for that long
        (every worker busy, or none left)."""
        now = self._clock()
        with self._cond:
            if self._shutdown.is_set():
                return None
            if self._processing:
                key, since = min(self._processing.items(), key=lambda item: item[1])
                if now - since > after:
                    return f"a worker has been on {key} for {now - since:.0f}s"
            if self._ready and now - self._last_progress > after:
                return (f"{len(self._ready)} keys waiting, none handed out or finished for "
                        f"{now - self._last_progress:.0f}s")
        return None

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    def _unfinished_seconds(self) -> float:
        now = self._clock()
        with self._cond:
            return sum(now - t for t in self._processing.values())

    def _longest_seconds(self) -> float:
        now = self._clock()
        with self._cond:
            return max((now - t for t in self._processing.values()), default=0.0)

    # ---- workers

    def start(self, workers: int, handler: Handler) -> None:
        """Start ``workers`` threads calling ``handler(key)``; returns at once."""
        if workers < 1:
            raise ValueError("need at least one worker")
        for i in range(workers):
            thread = threading.Thread(
                target=self._work, args=(handler,), name=f"{self.name}-worker-{i}", daemon=True
            )
            self._workers.append(thread)
            thread.start()

    def run(self, workers: int, handler: Handler) -> None:
        """Like start(), then block until shutdown() and the workers' current items end."""
        self.start(workers, handler)
        self.join()

    def run_until(self, stop: threading.Event, workers: int, handler: Handler,
                  timeout: float) -> bool:
        """Like start(); once ``stop`` is set, shut down and give the keys being worked on up
        to ``timeout`` seconds to finish (True when they did)."""
        self.start(workers, handler)
        stop.wait()
        self.shutdown()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._workers:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)
        return not any(t.is_alive() for t in self._workers)

    def shutdown(self) -> None:
        """Stop handing out keys; queued and scheduled keys are dropped, running ones finish."""
        with self._cond:
            self._shutdown.set()
            self._ready.clear()
            self._dirty.clear()
            self._queued_at.clear()
            self._waiting.clear()
            self._due.clear()
            self._cond.notify_all()

    def _work(self, handler: Handler) -> None:
        while True:
            key = self.get()
            if key is None:
                return
            try:
                if self.limiter.acquire(self._shutdown):
                    self.process(key, handler)
            finally:
                self.done(key)

    def process(self, key: str, handler: Handler) -> None:
        """Run ``handler(key)`` once and schedule the retry its outcome asks for."""
        try:
            handler(key)
        except RetryAfter as exc:
            self._count_retry()
            self.add_after(key, exc.delay)
            log.debug("%s: %s: %s", self.name, key, exc)
        except DoNotRetrySoon as exc:
            self.backoff.when(key)
            self._count_retry()
            self.add_after(key, self.backoff.cap)
            log.warning("%s: %s failed, retry in %.0fs: %s", self.name, key,
                        self.backoff.cap, exc)
        # The handler is the controller's whole reconcile; any error it raises means
        # "try again later", which is exactly what this boundary does with it.
        except Exception as exc:
            delay = self.add_rate_limited(key)
            log.warning("%s: %s failed (attempt %d), retry in %.1fs: %s", self.name, key,
                        self.backoff.failures(key), delay, exc,
                        exc_info=log.isEnabledFor(logging.DEBUG))
        else:
            self.forget(key)
