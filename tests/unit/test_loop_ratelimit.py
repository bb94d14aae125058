"""cinder_csi.loop.kube.throttle: token bucket and per-key exponential backoff."""

from __future__ import annotations

import threading
import time

import pytest

from cinder_csi.loop.kube.throttle import ItemBackoff, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_burst_is_free_then_one_token_per_interval() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, 3, clock=clock)
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)  # waiters queue up behind each other
    clock.t += 0.3  # pays the debt of two and saves one token
    assert bucket.reserve() == pytest.approx(0.0)
    assert bucket.reserve() == pytest.approx(0.1)


def test_refill_never_exceeds_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100, 2, clock=clock)
    bucket.reserve()
    bucket.reserve()
    clock.t += 3600
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()


def test_try_acquire_does_not_go_into_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, 1, clock=clock)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    clock.t += 1.0
    assert bucket.try_acquire()


@pytest.mark.parametrize("qps", [0, -1, float("inf")])
def test_unlimited(qps: float) -> None:
    bucket = TokenBucket(qps, 1)
    assert bucket.unlimited
    assert all(bucket.reserve() == 0 for _ in range(1000))
    assert bucket.acquire()


def test_burst_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


def test_acquire_blocks_for_real_and_stop_interrupts() -> None:
    bucket = TokenBucket(20, 1)
    start = time.monotonic()
    for _ in range(5):
        assert bucket.acquire()
    assert time.monotonic() - start >= 0.15  # 4 tokens at 50 ms each, minus scheduling slack

    slow = TokenBucket(0.1, 1)
    slow.acquire()
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert slow.acquire(stop) is False
    assert time.monotonic() - start < 2


def test_item_backoff_doubles_to_the_cap_and_forget_resets() -> None:
    backoff = ItemBackoff(1.0, 300.0)
    delays = [backoff.when("a") for _ in range(12)]
    assert delays[:9] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert delays[9:] == [300, 300, 300]
    assert backoff.failures("a") == 12
    assert backoff.when("b") == 1  # keys are independent
    backoff.forget("a")
    assert backoff.failures("a") == 0
    assert backoff.when("a") == 1


def test_item_backoff_survives_huge_failure_counts() -> None:
    backoff = ItemBackoff(0.5, 10.0)
    for _ in range(2000):
        delay = backoff.when("k")
    assert delay == 10.0


def test_item_backoff_validates() -> None:
    with pytest.raises(ValueError):
        ItemBackoff(0, 1)
    with pytest.raises(ValueError):
        ItemBackoff(2, 1)
