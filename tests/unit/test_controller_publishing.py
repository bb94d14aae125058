"""cinder_csi.controller.publishing: how the attach and detach waits poll Cinder."""

from __future__ import annotations

import dataclasses

import pytest

from cinder_csi import errors, waiting
from cinder_csi.cloud.models import CinderAttachment, Volume
from cinder_csi.controller.publishing import DEVICE_PATH_KEY, POLL_MAX_S, Attacher
from cinder_csi.deadline import Deadline

FREE = Volume(id="vol-1", name="pvc-1", size_gib=1, status="available",
              availability_zone="nova", volume_type=None, multiattach=False)


def on_server(status: str) -> Volume:
    return dataclasses.replace(FREE, status=status, attachments=(
        CinderAttachment(server_id="srv-1", attachment_id="a-1", device="/dev/vdb"),))


class Cloud:
    """Cinder and Nova in one: after Nova's POST, Cinder shows the change in progress for
    ``polls`` GETs, then done."""

    def __init__(self, polls: int, *, attached: bool = False) -> None:
        self.polls = polls
        self.current = on_server("in-use") if attached else FREE
        self.final = self.current
        self.volumes = self.compute = self

    def get(self, volume_id: str, deadline: Deadline) -> Volume:
        if self.current is not self.final:
            self.polls -= 1
            if self.polls < 0:
                self.current = self.final
        return self.current

    find = get

    def find_server(self, server_id: str, deadline: Deadline) -> object:
        return object()

    def attach(self, server_id: str, volume_id: str, deadline: Deadline) -> None:
        self.current, self.final = on_server("attaching"), on_server("in-use")

    def detach(self, server_id: str, volume_id: str, deadline: Deadline) -> None:
        self.current, self.final = on_server("detaching"), FREE


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    taken: list[float] = []
    monkeypatch.setattr(waiting.time, "sleep", taken.append)
    return taken


def test_the_attach_wait_starts_fast_and_never_pauses_longer_than_the_cap(
        pauses: list[float]) -> None:
    cloud = Cloud(polls=30)  # a long attach: the backoff reaches its cap
    context = Attacher(cloud).attach(  # type: ignore[arg-type]
        "vol-1", "srv-1", readonly=False, deadline=Deadline.after(600))
    assert context == {DEVICE_PATH_KEY: "/dev/vdb"}
    assert pauses[0] <= 0.1
    assert pauses == sorted(pauses)  # it backs off...
    assert max(pauses) == POLL_MAX_S <= 0.5  # ...but sees in-use within this of happening
    assert len(pauses) == 30  # one pause per look that still found it attaching


def test_the_detach_wait_is_capped_the_same_way(pauses: list[float]) -> None:
    cloud = Cloud(polls=20, attached=True)
    Attacher(cloud).detach("vol-1", "srv-1", Deadline.after(600))  # type: ignore[arg-type]
    assert cloud.current is FREE
    assert pauses[0] <= 0.1 and max(pauses) == POLL_MAX_S


def test_the_wait_still_ends_at_the_deadline(pauses: list[float]) -> None:
    cloud = Cloud(polls=10**9)
    with pytest.raises(errors.Timeout):
        Attacher(cloud).attach(  # type: ignore[arg-type]
            "vol-1", "srv-1", readonly=False, deadline=Deadline.after(0.0))
