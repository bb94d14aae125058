"""Waits on a Cinder volume or snapshot: until it has one of some statuses, or until it is gone.

Every poll is a fresh GET. An error status ends the wait at once (FailedPrecondition); the
deadline ends it with Timeout, naming the last status seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from cinder_csi import errors
from cinder_csi.deadline import Deadline
from cinder_csi.waiting import wait_for


class HasStatus(Protocol):
    @property
    def status(self) -> str: ...


S = TypeVar("S", bound=HasStatus)


def until_status(
    get: Callable[[], S],
    name: str,
    statuses: Iterable[str],
    deadline: Deadline,
    *,
    failures: Iterable[str],
    what: str | None = None,
) -> S:
    """``get()`` once its status is one of ``statuses``; ``name`` says what it is in messages
    ("volume <id>"), ``what`` what is awaited (default: "<name> to be <statuses>")."""
    wanted = frozenset(statuses)
    failed = frozenset(failures)
    wanted_text = "/".join(sorted(wanted))
    last: list[S] = []

    def probe() -> S | None:
        current = get()
        last[:] = [current]
        if current.status in wanted:
            return current
        if current.status in failed:
            raise errors.FailedPrecondition(
                f"{name} went to status {current.status!r} while waiting for {wanted_text}"
            )
        return None

    try:
        return wait_for(probe, deadline, what=what or f"{name} to be {wanted_text}")
    except errors.Timeout as exc:
        status = last[0].status if last else "unknown"
        raise errors.Timeout(f"{exc.message} (last status {status!r})") from None


def until_deleted(find: Callable[[], HasStatus | None], name: str, deadline: Deadline) -> None:
    """Returns once ``find()`` finds nothing; ``error_deleting`` fails at once."""

    def probe() -> bool | None:
        current = find()
        if current is None:
            return True
        if current.status == "error_deleting":
            raise errors.FailedPrecondition(
                f"Cinder failed to delete {name} (status error_deleting); an operator must "
                "reset its status"
            )
        return None

    wait_for(probe, deadline, what=f"{name} to be deleted")
