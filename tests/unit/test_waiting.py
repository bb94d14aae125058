"""cinder_csi.waiting: the poll starts fast, backs off to a cap, and ends at the deadline."""

from __future__ import annotations

import pytest

from cinder_csi import errors, waiting
from cinder_csi.deadline import Deadline


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    taken: list[float] = []
    monkeypatch.setattr(waiting.time, "sleep", taken.append)
    return taken


def test_backs_off_from_the_first_pause_to_the_cap(pauses: list[float]) -> None:
    left = [20]

    def probe() -> str | None:
        left[0] -= 1
        return "done" if left[0] < 0 else None

    assert waiting.wait_for(probe, Deadline.after(600), what="x") == "done"
    assert pauses[0] == 0.1
    assert pauses == sorted(pauses)
    assert max(pauses) == waiting.DEFAULT_MAXIMUM_S == 1.0
    assert len(pauses) == 20


def test_a_wait_ends_at_its_deadline_naming_what_it_waited_for(pauses: list[float]) -> None:
    with pytest.raises(errors.Timeout) as raised:
        waiting.wait_for(lambda: None, Deadline.after(0.0), what="volume v to be available")
    assert "volume v to be available" in raised.value.message
