"""cinder_csi.loop.kube.workqueue: dedupe, exclusivity, backoff, rate limit, shutdown."""

from __future__ import annotations

import collections
import itertools
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from cinder_csi.loop.errors import DoNotRetrySoon, RetryAfter
from cinder_csi.loop.kube.workqueue import WorkQueue, WorkQueueMetrics


def queue(**kw: object) -> WorkQueue:
    kw.setdefault("qps", 0)  # unthrottled unless a test asks
    return WorkQueue("test", **kw)  # type: ignore[arg-type]


def test_dedupes_while_queued_and_keeps_fifo_order() -> None:
    q = queue()
    for key in ["a", "b", "a", "c", "b", "a"]:
        q.add(key)
    assert len(q) == 3
    assert [q.get(0), q.get(0), q.get(0)] == ["a", "b", "c"]
    assert q.get(0.01) is None


def test_key_is_never_handed_out_twice_at_once() -> None:
    q = queue()
    q.add("a")
    assert q.get(0) == "a"
    q.add("a")  # changed while a worker holds it
    assert len(q) == 0
    assert q.get(0.02) is None
    q.add("a")  # still one pending run, however many adds
    q.done("a")
    assert q.get(0) == "a"
    q.done("a")
    assert q.get(0.01) is None


def test_workers_never_overlap_on_one_key_and_see_the_last_add() -> None:
    q = queue()
    active: collections.Counter[str] = collections.Counter()
    worst: collections.Counter[str] = collections.Counter()
    runs: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()

    def handler(key: str) -> None:
        with lock:
            active[key] += 1
            worst[key] = max(worst[key], active[key])
            runs[key] += 1
        time.sleep(0.002)
        with lock:
            active[key] -= 1

    q.start(8, handler)
    for _ in range(200):
        for key in ("a", "b", "c"):
            q.add(key)
    deadline = time.monotonic() + 5
    while (len(q) or q.processing()) and time.monotonic() < deadline:
        time.sleep(0.01)
    q.shutdown()
    assert q.join(5)
    assert max(worst.values()) == 1
    assert all(runs[k] >= 1 for k in "abc")
    assert sum(runs.values()) < 600  # adds were folded together


def test_add_after_waits_and_the_earliest_schedule_wins() -> None:
    q = queue()
    q.add_after("late", 0.3)
    q.add_after("soon", 0.05)
    q.add_after("late", 1.0)  # later than what is already scheduled: ignored
    assert q.waiting() == 2
    assert q.get(0.01) is None
    start = time.monotonic()
    assert q.get(1) == "soon"
    assert q.get(1) == "late"
    assert 0.2 <= time.monotonic() - start < 0.9


def test_add_after_zero_is_add() -> None:
    q = queue()
    q.add_after("k", 0)
    assert q.get(0) == "k"


def test_backoff_grows_per_key_and_forget_resets() -> None:
    q = queue(backoff_base=1.0, backoff_cap=300.0)
    assert [q.add_rate_limited("a") for _ in range(4)] == [1, 2, 4, 8]
    assert q.add_rate_limited("b") == 1
    assert q.num_requeues("a") == 4
    q.forget("a")
    assert q.num_requeues("a") == 0
    assert q.add_rate_limited("a") == 1


def test_failing_handler_is_retried_with_backoff_until_it_succeeds() -> None:
    q = queue(backoff_base=0.02, backoff_cap=1.0)
    stamps: list[float] = []
    done = threading.Event()

    def handler(key: str) -> None:
        stamps.append(time.monotonic())
        if len(stamps) < 4:
            raise RuntimeError("cloud says no")
        done.set()

    q.add("k")
    q.start(2, handler)
    assert done.wait(3)
    q.shutdown()
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps[0] >= 0.015 and gaps[1] >= 0.035 and gaps[2] >= 0.075  # 20, 40, 80 ms
    time.sleep(0.02)
    assert q.num_requeues("k") == 0  # success forgot the failures


def test_permanent_error_comes_back_after_the_maximum_backoff() -> None:
    q = queue(backoff_base=0.01, backoff_cap=0.3)
    stamps: list[float] = []

    def handler(key: str) -> None:
        stamps.append(time.monotonic())
        raise DoNotRetrySoon("class has an unknown parameter")

    q.add("k")
    q.start(1, handler)
    time.sleep(0.45)
    q.shutdown()
    q.join(2)
    assert len(stamps) == 2  # once at once, once after 0.3 s, not at 10/20/40 ms
    assert stamps[1] - stamps[0] >= 0.28


def test_retry_after_is_exact_and_not_a_failure() -> None:
    q = queue(backoff_base=5.0)
    stamps: list[float] = []

    def handler(key: str) -> None:
        stamps.append(time.monotonic())
        if len(stamps) == 1:
            raise RetryAfter(0.1, "volume still creating")

    q.add("k")
    q.start(1, handler)
    deadline = time.monotonic() + 2
    while len(stamps) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    q.shutdown()
    assert len(stamps) == 2
    assert 0.09 <= stamps[1] - stamps[0] < 1.0
    assert q.num_requeues("k") == 0


def test_processing_starts_are_rate_limited() -> None:
    q = WorkQueue("limited", qps=20, burst=1)
    seen: list[float] = []
    for i in range(6):
        q.add(str(i))
    q.start(6, lambda key: seen.append(time.monotonic()))
    deadline = time.monotonic() + 3
    while len(seen) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    q.shutdown()
    assert len(seen) == 6
    assert max(seen) - min(seen) >= 0.2  # 5 more tokens at 50 ms each


def test_shutdown_stops_workers_and_drops_pending_work() -> None:
    q = queue()
    started = threading.Event()
    release = threading.Event()
    ran: list[str] = []

    def handler(key: str) -> None:
        ran.append(key)
        started.set()
        release.wait(2)

    q.add("busy")
    runner = threading.Thread(target=q.run, args=(2, handler))
    runner.start()
    assert started.wait(2)
    q.add("pending")
    q.add_after("later", 0.05)
    time.sleep(0.02)
    q.shutdown()
    release.set()
    runner.join(2)
    assert not runner.is_alive()
    assert "later" not in ran
    assert q.get(0) is None
    q.add("after")
    assert len(q) == 0
    assert q.shutting_down


def test_shutdown_interrupts_a_worker_waiting_for_a_token() -> None:
    q = WorkQueue("slow", qps=0.1, burst=1)
    q.add("a")
    q.add("b")
    ran: list[str] = []
    q.start(2, ran.append)
    time.sleep(0.1)
    start = time.monotonic()
    q.shutdown()
    assert q.join(2)
    assert time.monotonic() - start < 1
    assert len(ran) == 1


def test_worker_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        queue().start(0, lambda key: None)


def test_metrics_use_client_go_names_and_the_given_registry() -> None:
    registry = CollectorRegistry()
    metrics = WorkQueueMetrics(registry)
    q = WorkQueue("claims", qps=0, metrics=metrics, backoff_base=0.01)
    other = WorkQueue("volumes", qps=0, metrics=metrics)
    for key in ("a", "b", "a"):
        q.add(key)
    other.add("x")

    def value(name: str, queue_name: str = "claims") -> float | None:
        return registry.get_sample_value(name, {"name": queue_name})

    assert value("workqueue_depth") == 2
    assert value("workqueue_adds_total") == 2
    assert value("workqueue_depth", "volumes") == 1
    taken = q.get(0)
    assert taken == "a"
    time.sleep(0.02)
    assert (value("workqueue_longest_running_processor_seconds") or 0) >= 0.015
    assert (value("workqueue_unfinished_work_seconds") or 0) >= 0.015
    q.done(taken)
    q.add_rate_limited("a")
    assert value("workqueue_retries_total") == 1
    assert value("workqueue_queue_duration_seconds_count") == 1
    assert value("workqueue_work_duration_seconds_count") == 1
    assert value("workqueue_longest_running_processor_seconds") == 0
    assert value("workqueue_depth") == 1


def test_run_until_works_until_stopped_then_lets_running_keys_finish() -> None:
    q = queue()
    stop = threading.Event()
    started = threading.Event()
    finished: list[str] = []

    def handler(key: str) -> None:
        started.set()
        time.sleep(0.05)
        finished.append(key)

    result: list[bool] = []
    runner = threading.Thread(target=lambda: result.append(q.run_until(stop, 2, handler, 2.0)))
    q.add("a")
    runner.start()
    assert started.wait(2)
    stop.set()
    runner.join(3)
    assert result == [True]
    assert finished == ["a"]  # the running key finished before run_until returned
    assert q.shutting_down


def test_stalled_names_a_stuck_key_or_a_queue_that_does_not_drain() -> None:
    now = [100.0]
    q = WorkQueue("claims", clock=lambda: now[0])
    assert q.stalled(60) is None
    q.add("a")
    q.add("b")
    now[0] += 61  # keys waiting, nobody took one: no workers, or all busy
    assert q.stalled(60) == "2 keys waiting, none handed out or finished for 61s"
    assert q.get(timeout=0) == "a"
    assert q.stalled(60) is None
    now[0] += 30
    q.done("a")
    now[0] += 45  # "b" waits 45 s since "a" finished: slow, not wedged
    assert q.stalled(60) is None
    assert q.get(timeout=0) == "b"
    now[0] += 61
    assert q.stalled(60) == "a worker has been on b for 61s"
    q.done("b")
    assert q.stalled(60) is None
    now[0] += 1000
    assert q.stalled(60) is None  # idle is not wedged
    q.add("c")
    assert q.stalled(60) is None  # work that just arrived is not late yet
