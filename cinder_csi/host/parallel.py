"""Run independent checks at the same time, and wait for every one of them.

A device's checks before it is formatted (the blank check, the proof that it is the volume)
only read; most of their time is spent in the kernel or in libblkid, where Python releases the
GIL, so they overlap. (The blank check's own two reads stay one after the other: on the loop
devices measured, run at once they waited on each other's cold reads.) The rule that makes this
safe: `all_of` returns or raises only once every check has finished, so nothing that acts on
their answers (mkfs, mount) can start while one still runs, nor after one of them failed.

Each call starts its own threads (a fraction of a millisecond) instead of sharing a pool: a
check may itself run checks in parallel, and a pool shared by concurrent calls could then wait
on itself. The threads run in a copy of the caller's context, so their log lines carry its
request.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar, overload

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


@overload
def all_of(first: Callable[[], A], second: Callable[[], B], /) -> tuple[A, B]: ...
@overload
def all_of(first: Callable[[], A], second: Callable[[], B], third: Callable[[], C], /
           ) -> tuple[A, B, C]: ...
def all_of(first: Callable[[], Any], *others: Callable[[], Any]) -> tuple[Any, ...]:
    """Every task's result, in order. The first task runs in the calling thread, the others in
    threads of their own; when any failed, the first failure in task order is raised, after
    all of them finished."""
    futures: list[Future[Any]] = []
    with ThreadPoolExecutor(len(others), thread_name_prefix="check") as pool:
        futures += [pool.submit(contextvars.copy_context().run, task) for task in others]
        # Should this raise, leaving the block still waits for the others to finish.
        result = first()
    return (result, *(future.result() for future in futures))
