"""all_of: results in order, every task finished before it returns or raises."""

from __future__ import annotations

import contextvars
import threading
import time

import pytest

from cinder_csi.host.parallel import all_of


def test_results_come_in_task_order() -> None:
    assert all_of(lambda: 1, lambda: "two") == (1, "two")
    assert all_of(lambda: 1, lambda: 2, lambda: 3) == (1, 2, 3)


def test_tasks_run_at_the_same_time() -> None:
    """Each waits for the other: run one after the other, neither would finish."""
    barrier = threading.Barrier(2, timeout=5)
    assert all_of(barrier.wait, barrier.wait) is not None


def test_a_failure_is_raised_only_after_every_task_finished() -> None:
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.2)
        finished.set()
        return "done"

    def fails() -> None:
        raise ValueError("not the volume")

    with pytest.raises(ValueError, match="not the volume"):
        all_of(fails, slow)
    assert finished.is_set()
    finished.clear()
    with pytest.raises(ValueError, match="not the volume"):
        all_of(slow, fails)
    assert finished.is_set()


def test_the_first_failure_in_task_order_wins() -> None:
    def first() -> None:
        time.sleep(0.1)
        raise KeyError("first")

    def second() -> None:
        raise ValueError("second")

    with pytest.raises(KeyError):
        all_of(first, second)


def test_tasks_see_the_callers_context() -> None:
    request = contextvars.ContextVar("request", default="none")
    request.set("abc123")
    assert all_of(request.get, request.get) == ("abc123", "abc123")
