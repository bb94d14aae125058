"""cinder_csi.loop.kube.leader: Lease timing rules, on a fake clock and a fake Lease store."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import urllib3

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.csi_client import CSIClient
from cinder_csi.loop.errors import Fenced
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.leader import (
    Attempt,
    Fence,
    LeaderElectionConfig,
    LeaderElector,
    lease_name,
    micro_time,
    parse_time,
)

T0 = datetime(2026, 11, 28, 18, 0, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self.hooks: list[tuple[float, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.t

    def now(self) -> datetime:
        return T0 + timedelta(seconds=self.t)

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        self.t += seconds
        for hook in [h for h in self.hooks if h[0] <= self.t]:
            self.hooks.remove(hook)
            hook[1]()
        return stop.is_set()


class FakeStore:
    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.conflicts = 0
        self.broken = False
        self.writes: list[dict[str, Any]] = []

    def _check(self) -> None:
        if self.broken:
            raise urllib3.exceptions.MaxRetryError(None, "/", "connection refused")  # type: ignore[arg-type]

    def get(self, timeout: float) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.lease)

    def _store(self, lease: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        lease = copy.deepcopy(lease)
        lease["metadata"]["resourceVersion"] = str(self.rv)
        self.lease = lease
        self.writes.append(copy.deepcopy(lease))
        return copy.deepcopy(lease)

    def create(self, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check()
        if self.lease is not None:
            raise ApiException(status=409, reason="AlreadyExists")
        return self._store(lease)

    def replace(self, lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check()
        assert self.lease is not None
        if self.conflicts:
            self.conflicts -= 1
            self.rv += 1
            self.lease["metadata"]["resourceVersion"] = str(self.rv)
            raise ApiException(status=409, reason="Conflict")
        if lease["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        return self._store(lease)

    def set_holder(self, holder: str, renew: datetime, duration: int = 15) -> None:
        spec = {"holderIdentity": holder, "leaseDurationSeconds": duration,
                "acquireTime": micro_time(renew), "renewTime": micro_time(renew),
                "leaseTransitions": 3}
        base = self.lease or {"metadata": {"name": "lease", "namespace": "ns"}}
        self._store({**base, "spec": spec})

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"].get("holderIdentity")


def elector(store: FakeStore, clock: FakeClock, identity: str = "me",
            **callbacks: Any) -> LeaderElector:
    config = LeaderElectionConfig(name="cinder-csi-openstack-org", namespace="ns",
                                  identity=identity)
    return LeaderElector(
        store, config,
        on_started_leading=callbacks.get("started", lambda stop: None),
        on_stopped_leading=callbacks.get("stopped", lambda: None),
        on_new_leader=callbacks.get("new_leader"),
        clock=clock,
    )


def test_lease_name_and_time_format() -> None:
    assert lease_name("cinder.csi.openstack.org") == "cinder-csi-openstack-org"
    assert lease_name("a/b_c.D-9") == "a-b-c-D-9"
    assert micro_time(T0) == "2026-11-28T18:00:00.000000Z"
    assert parse_time("2026-11-28T18:00:00.000000Z") == T0
    assert parse_time("2026-11-28T18:00:00Z") == T0
    assert parse_time("garbage") is None and parse_time(None) is None


@pytest.mark.parametrize(("lease", "renew", "retry"), [(10, 10, 2), (15, 10, 9), (15, 10, 0)])
def test_config_is_validated(lease: float, renew: float, retry: float) -> None:
    with pytest.raises(ValueError):
        LeaderElectionConfig("n", "ns", "me", lease, renew, retry)


def test_creates_the_lease_when_there_is_none() -> None:
    store, clock = FakeStore(), FakeClock()
    assert elector(store, clock).try_acquire_or_renew(5) is Attempt.LEADING
    spec = store.lease["spec"]  # type: ignore[index]
    assert store.lease["metadata"] == {  # type: ignore[index]
        "name": "cinder-csi-openstack-org", "namespace": "ns", "resourceVersion": "1"}
    assert spec == {"holderIdentity": "me", "leaseDurationSeconds": 15,
                    "acquireTime": "2026-11-28T18:00:00.000000Z",
                    "renewTime": "2026-11-28T18:00:00.000000Z", "leaseTransitions": 0}


def test_renewal_moves_renew_time_only() -> None:
    store, clock = FakeStore(), FakeClock()
    e = elector(store, clock)
    e.try_acquire_or_renew(5)
    clock.t += 2
    assert e.try_acquire_or_renew(5) is Attempt.LEADING
    spec = store.lease["spec"]  # type: ignore[index]
    assert spec["renewTime"] == "2026-11-28T18:00:02.000000Z"
    assert spec["acquireTime"] == "2026-11-28T18:00:00.000000Z"
    assert spec["leaseTransitions"] == 0


def test_a_live_holder_keeps_it_until_unchanged_for_a_lease_duration() -> None:
    store, clock = FakeStore(), FakeClock()
    store.set_holder("other", T0)
    e = elector(store, clock)
    assert e.try_acquire_or_renew(5) is Attempt.HELD
    clock.t = 14.9
    assert e.try_acquire_or_renew(5) is Attempt.HELD
    clock.t = 15.0
    assert e.try_acquire_or_renew(5) is Attempt.LEADING
    assert store.lease["spec"]["leaseTransitions"] == 4  # type: ignore[index]
    assert store.lease["spec"]["acquireTime"] == micro_time(T0 + timedelta(seconds=15))  # type: ignore[index]


def test_renewals_by_the_holder_keep_it_even_if_its_clock_looks_stale() -> None:
    store, clock = FakeStore(), FakeClock()
    skewed = T0 - timedelta(hours=1)  # holder's clock is an hour behind ours
    store.set_holder("other", skewed)
    e = elector(store, clock)
    assert e.try_acquire_or_renew(5) is Attempt.HELD
    for i in range(1, 20):
        clock.t = 2.0 * i
        store.set_holder("other", skewed + timedelta(seconds=2 * i))
        assert e.try_acquire_or_renew(5) is Attempt.HELD


def test_a_lease_that_looks_stale_by_our_wall_clock_waits_a_whole_lease() -> None:
    """Our clock runs an hour ahead (or the holder's behind): renewTime is never compared
    with it. Before, one retry period of silence was enough to take a live lease over."""
    store, clock = FakeStore(), FakeClock()
    store.set_holder("other", T0 - timedelta(hours=1))
    e = elector(store, clock)
    assert e.try_acquire_or_renew(5) is Attempt.HELD
    clock.t = 2.0
    assert e.try_acquire_or_renew(5) is Attempt.HELD
    clock.t = 14.9
    assert e.try_acquire_or_renew(5) is Attempt.HELD
    clock.t = 15.0
    assert e.try_acquire_or_renew(5) is Attempt.LEADING


def test_fence_opens_with_each_renewal_and_closes_before_anyone_may_take_over() -> None:
    store, clock = FakeStore(), FakeClock()
    e = elector(store, clock)
    with pytest.raises(Fenced):
        e.fence.check()  # not leading: nothing may start
    assert e.try_acquire_or_renew(5) is Attempt.LEADING
    e.fence.check()
    clock.t = 9.9
    e.fence.check()
    clock.t = 10.0  # renew deadline after the last renewal started
    with pytest.raises(Fenced):
        e.fence.check()
    assert e.try_acquire_or_renew(5) is Attempt.LEADING
    e.fence.check()
    store.broken = True  # renewals fail from now on
    clock.t = 15.0
    assert e.try_acquire_or_renew(5) is Attempt.FAILED
    clock.t = 19.99
    e.fence.check()
    clock.t = 20.0
    with pytest.raises(Fenced):
        e.fence.check()
    # A candidate that saw our last renewal land takes over no sooner than a lease later.
    assert 10.0 + e.config.lease_duration > clock.t


def test_fence_is_measured_from_the_start_of_a_slow_renewal() -> None:
    store, clock = FakeStore(), FakeClock()
    e = elector(store, clock)
    slow = store.replace

    def replace_slowly(lease: dict[str, Any], timeout: float) -> dict[str, Any]:
        clock.t += 4.0  # the PUT lands 4 s after the renewal started
        return slow(lease, timeout)

    e.try_acquire_or_renew(5)
    store.replace = replace_slowly  # type: ignore[method-assign]
    clock.t = 2.0
    assert e.try_acquire_or_renew(5) is Attempt.LEADING  # started at 2, landed at 6
    clock.t = 11.9
    e.fence.check()
    clock.t = 12.0
    with pytest.raises(Fenced):
        e.fence.check()


def test_fence_closes_when_leadership_ends() -> None:
    store, clock = FakeStore(), FakeClock()
    e = elector(store, clock)
    stop = threading.Event()
    clock.hooks.append((4.0, stop.set))
    e.run(stop)
    with pytest.raises(Fenced):
        e.fence.check()


def test_a_free_lease_is_taken_at_once() -> None:
    store, clock = FakeStore(), FakeClock()
    store.set_holder("", T0)
    assert elector(store, clock).try_acquire_or_renew(5) is Attempt.LEADING


def test_conflict_rereads_and_retries_once() -> None:
    store, clock = FakeStore(), FakeClock()
    e = elector(store, clock)
    e.try_acquire_or_renew(5)
    store.conflicts = 1
    assert e.try_acquire_or_renew(5) is Attempt.LEADING
    store.conflicts = 2
    assert e.try_acquire_or_renew(5) is Attempt.FAILED


def test_api_errors_are_failures_not_exceptions() -> None:
    store, clock = FakeStore(), FakeClock()
    store.broken = True
    assert elector(store, clock).try_acquire_or_renew(5) is Attempt.FAILED


def test_run_leads_then_releases_on_clean_stop() -> None:
    store, clock = FakeStore(), FakeClock()
    started: list[threading.Event] = []
    stopped: list[float] = []
    leaders: list[str] = []
    e = elector(store, clock, started=started.append, stopped=lambda: stopped.append(clock.t),
                new_leader=leaders.append)
    stop = threading.Event()
    clock.hooks.append((30.0, stop.set))
    e.run(stop)
    assert len(started) == 1 and started[0].is_set()  # the leader's work was told to end
    assert stopped == [30.0]
    assert not e.is_leader()
    assert store.holder is None  # released: a successor need not wait out the lease
    assert store.lease["spec"]["leaseDurationSeconds"] == 1  # type: ignore[index]
    renewals = [w["spec"]["renewTime"] for w in store.writes]
    assert len(renewals) == 16  # create at 0, renewals at 2..28, release at 30
    assert leaders == ["me"]


def test_run_steps_down_when_renewals_fail_past_the_deadline() -> None:
    store, clock = FakeStore(), FakeClock()
    stopped: list[float] = []
    e = elector(store, clock, stopped=lambda: stopped.append(clock.t))
    clock.hooks.append((4.0, lambda: setattr(store, "broken", True)))
    e.run(threading.Event())  # returns by itself: the lease is lost
    # Last renewal at t=2; renewals at 4..12 fail; the one at t=12 is past the 10 s deadline.
    assert stopped == [12.0]
    assert store.holder == "me"  # not released: nobody could be told anyway


def test_run_steps_down_at_once_when_someone_else_holds_it() -> None:
    store, clock = FakeStore(), FakeClock()
    stopped: list[float] = []
    e = elector(store, clock, stopped=lambda: stopped.append(clock.t))
    clock.hooks.append((5.0, lambda: store.set_holder("usurper", T0 + timedelta(seconds=5))))
    e.run(threading.Event())
    assert stopped == [6.0]
    assert store.holder == "usurper"


def test_candidate_waits_then_takes_over_after_the_leader_goes_silent() -> None:
    store, clock = FakeStore(), FakeClock()
    store.set_holder("old", T0)
    stop = threading.Event()
    started: list[float] = []
    e = elector(store, clock, started=lambda ev: started.append(clock.t))
    # The old leader renews until t=20, then dies.
    def renewal(at: int) -> Callable[[], None]:
        return lambda: store.set_holder("old", T0 + timedelta(seconds=at))

    for t in range(2, 21, 2):
        clock.hooks.append((float(t), renewal(t)))
    clock.hooks.append((60.0, stop.set))
    e.run(stop)
    took_over = next(w for w in store.writes if w["spec"]["holderIdentity"] == "me")
    at = (parse_time(took_over["spec"]["acquireTime"]) - T0).total_seconds()  # type: ignore[operator]
    assert 35.0 <= at <= 40.0  # 15 s of silence after the last renewal seen at t~20


def test_csi_client_starts_no_volume_call_while_fenced(tmp_path: Any) -> None:
    client = CSIClient(str(tmp_path / "nobody-listens.sock"), timeout=1)
    client.fence = Fence(10.0, lambda: 0.0).check  # never renewed: closed
    try:
        calls = [
            lambda: client.create_volume(csi_pb2.CreateVolumeRequest(name="pvc-1")),
            lambda: client.delete_volume(csi_pb2.DeleteVolumeRequest(volume_id="v")),
            lambda: client.publish(csi_pb2.ControllerPublishVolumeRequest(volume_id="v")),
            lambda: client.unpublish(csi_pb2.ControllerUnpublishVolumeRequest(volume_id="v")),
            lambda: client.expand(csi_pb2.ControllerExpandVolumeRequest(volume_id="v")),
            lambda: client.modify(csi_pb2.ControllerModifyVolumeRequest(volume_id="v")),
        ]
        for call in calls:
            with pytest.raises(Fenced):
                call()
        with pytest.raises(grpc.RpcError):  # reads are not fenced: this one reaches the wire
            client.list_volumes(csi_pb2.ListVolumesRequest())
    finally:
        client.close()
