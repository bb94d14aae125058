"""The watch-loop machinery against the Kubernetes stand-in, through real HTTP.

Informer under dropped watches and 410s, bookmarks, leader election between two electors,
429 storms, and Events, all with the real ``kubernetes`` client built by provisioner.kube.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cinder_csi.loop.kube.client import KubeClients, KubeOptions, build_clients
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.kube.informer import Handlers, Informer
from cinder_csi.loop.kube.leader import (
    KubeLeaseStore,
    LeaderElectionConfig,
    LeaderElector,
    lease_name,
)
from cinder_csi.loop.kube.objects import merge_metadata
from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import wait_until
from cinder_csi.standins.kube.store import Change

NS = "machinery"
Event = tuple[str, str, int]  # (add|update|delete, name, resourceVersion)


@pytest.fixture
def kube(request: pytest.FixtureRequest) -> Iterator[KubeStandIn]:
    window = getattr(request, "param", 1000)  # changes the server keeps for resuming watches
    standin = KubeStandIn(controllers=(), bookmark_interval=0.2, event_window=window)
    standin.start()
    standin.store.create("namespaces", {"metadata": {"name": NS}})
    try:
        yield standin
    finally:
        standin.stop()


def clients_for(kube: KubeStandIn, tmp_path: Path, name: str = "kubeconfig") -> KubeClients:
    path = kube.write_kubeconfig(tmp_path / name)
    return build_clients(KubeOptions(kubeconfig=str(path)))


@pytest.fixture
def clients(kube: KubeStandIn, tmp_path: Path) -> Iterator[KubeClients]:
    made = clients_for(kube, tmp_path)
    try:
        yield made
    finally:
        made.close()


class Log:
    """Handler events in delivery order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[Event] = []

    def _add(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        with self.lock:
            self.events.append((kind, meta["name"], int(meta["resourceVersion"])))

    def handlers(self) -> Handlers:
        return Handlers(lambda o: self._add("add", o), lambda old, new: self._add("update", new),
                        lambda o: self._add("delete", o))

    def snapshot(self) -> list[Event]:
        with self.lock:
            return list(self.events)

    def replay(self) -> dict[str, int]:
        """What the handlers believe exists, by applying their events in order."""
        state: dict[str, int] = {}
        for kind, name, rv in self.snapshot():
            if kind == "delete":
                assert name in state, f"delete of {name} that handlers never saw"
                del state[name]
            else:
                assert (kind == "add") == (name not in state), f"{kind} of {name} out of order"
                state[name] = rv
        return state


def secret_informer(clients: KubeClients, log: Log, **kw: Any) -> Informer:
    # The loop's own list function (KubeRest.lister), under drops, 410s and paging.
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("backoff_cap", 0.5)
    informer = Informer(
        "secrets", clients.rest().lister(f"/api/v1/namespaces/{NS}/secrets"), page_size=7, **kw
    )
    informer.add_handler(log.handlers())
    informer.start()
    assert informer.wait_for_sync(10)
    return informer


def server_state(kube: KubeStandIn) -> dict[str, int]:
    return {o["metadata"]["name"]: int(o["metadata"]["resourceVersion"])
            for o in kube.store.items("secrets", namespace=NS)}


def cache_state(informer: Informer) -> dict[str, int]:
    return {o["metadata"]["name"]: int(o["metadata"]["resourceVersion"])
            for o in informer.cache.objects()}


def churn(kube: KubeStandIn, ops: int, *, seed: int, pause: float = 0.0,
          at: dict[int, Callable[[], None]] | None = None) -> None:
    """Random creates/updates/deletes of secrets in NS; ``at[i]`` runs before op i."""
    rng = random.Random(seed)
    store = kube.store
    for i in range(ops):
        if at and i in at:
            at[i]()
        name = f"s{rng.randrange(40)}"
        existing = store.try_get("secrets", name, namespace=NS)
        if existing is None:
            store.create("secrets", {"metadata": {"name": name, "namespace": NS},
                                     "data": {}}, namespace=NS)
        elif rng.random() < 0.3:
            store.delete("secrets", name, namespace=NS)
        else:
            existing["metadata"]["labels"] = {"n": str(i)}
            store.update("secrets", existing, namespace=NS)
        if pause:
            time.sleep(pause)


def per_name_versions_increase(events: list[Event]) -> None:
    """No version twice and none out of order. A delete found by a relist carries the last
    state the handlers saw (its own version is unknowable), so it may repeat that version."""
    last: dict[str, int] = {}
    for kind, name, rv in events:
        seen = last.get(name, 0)
        ok = rv >= seen if kind == "delete" else rv > seen
        assert ok, f"{kind} {name}@{rv} after @{seen}: duplicate or out of order"
        last[name] = rv


def test_every_change_is_delivered_once_across_dropped_connections(
    kube: KubeStandIn, clients: KubeClients
) -> None:
    kube.faults.drop_watches(4, after_events=30, path=f"/namespaces/{NS}/secrets")
    sub = kube.store.subscribe()
    log = Log()
    informer = secret_informer(clients, log, watch_timeout=2)
    try:
        churn(kube, 300, seed=1, pause=0.001)
        wait_until(lambda: cache_state(informer) == server_state(kube), timeout=15,
                   what="cache to match the server")
        wait_until(lambda: log.replay() == server_state(kube), timeout=5, what="handlers")
    finally:
        informer.stop()
    changes: list[Change] = []
    while (change := sub.get(timeout=0)) is not None:
        if change.resource.plural == "secrets" and change.key[0] == NS:
            changes.append(change)
    sub.close()
    kinds = {"ADDED": "add", "MODIFIED": "update", "DELETED": "delete"}
    expected = [(kinds[c.type], c.key[1], c.rv) for c in changes]
    assert len(expected) == 300
    # No 410 happened, so the handlers saw exactly the server's history: nothing skipped,
    # nothing twice, in order, although four connections were cut mid-stream.
    assert log.snapshot() == expected
    assert informer.relists == 1
    watches = [p for m, p in kube.faults.requests if p.endswith(f"/namespaces/{NS}/secrets")]
    assert len(watches) >= 6  # the list plus at least five watch connections


def test_chaos_with_drops_and_a_forced_410_converges(
    kube: KubeStandIn, clients: KubeClients
) -> None:
    path = f"/namespaces/{NS}/secrets"
    kube.faults.drop_watches(3, after_events=20, path=path)
    log = Log()
    informer = secret_informer(clients, log, watch_timeout=1)

    def force_gone() -> None:
        kube.faults.expire_watches(1, path=path)
        kube.faults.drop_watches(2, after_events=5, path=path)

    try:
        churn(kube, 300, seed=2, pause=0.008, at={150: force_gone})
        wait_until(lambda: informer.relists >= 2, timeout=10, what="the relist after 410")
        wait_until(lambda: cache_state(informer) == server_state(kube), timeout=15,
                   what="cache to match the server")
        wait_until(lambda: log.replay() == server_state(kube), timeout=5, what="handlers")
    finally:
        informer.stop()
    events = log.snapshot()
    per_name_versions_increase(events)
    assert sum(1 for e in events if e[0] == "delete") >= 10


def test_objects_deleted_while_disconnected_get_on_delete(
    kube: KubeStandIn, clients: KubeClients
) -> None:
    store = kube.store
    for i in range(6):
        store.create("secrets", {"metadata": {"name": f"d{i}", "namespace": NS}}, namespace=NS)
    log = Log()
    informer = secret_informer(clients, log, watch_timeout=1)
    path = f"/api/v1/namespaces/{NS}/secrets"
    try:
        # Cut the informer off: from its next reconnect (watches last 1-2 s) every request fails.
        kube.faults.fail(10**6, path=path)
        seen = len(kube.faults.requests)
        wait_until(lambda: any(p == path for _, p in list(kube.faults.requests)[seen:]),
                   timeout=5, what="the informer to be cut off")
        store.delete("secrets", "d0", namespace=NS)
        store.delete("secrets", "d1", namespace=NS)
        changed = store.get("secrets", "d2", namespace=NS)
        changed["metadata"]["labels"] = {"changed": "yes"}
        store.update("secrets", changed, namespace=NS)
        store.create("secrets", {"metadata": {"name": "fresh", "namespace": NS}}, namespace=NS)
        store.compact()  # the history it missed is gone: resuming gets 410, so it must relist
        time.sleep(0.2)
        assert len(informer.cache) == 6  # still the old view
        kube.faults.clear()
        wait_until(lambda: cache_state(informer) == server_state(kube), timeout=10,
                   what="cache to match the server")
        time.sleep(0.1)
        assert informer.relists == 2
    finally:
        informer.stop()
    after = log.snapshot()[6:]
    rv = server_state(kube)
    assert sorted(after) == sorted([
        ("delete", "d0", after[[e[1] for e in after].index("d0")][2]),
        ("delete", "d1", after[[e[1] for e in after].index("d1")][2]),
        ("update", "d2", rv["d2"]),
        ("add", "fresh", rv["fresh"]),
    ])


@pytest.mark.parametrize("kube", [100], indirect=True)
def test_bookmarks_advance_the_resource_version_and_spare_a_relist(
    kube: KubeStandIn, clients: KubeClients
) -> None:
    store = kube.store
    store.create("namespaces", {"metadata": {"name": "elsewhere"}})
    store.create("secrets", {"metadata": {"name": "mine", "namespace": NS}}, namespace=NS)
    log = Log()
    informer = secret_informer(clients, log, watch_timeout=1)
    try:
        start_rv = int(informer.resource_version)
        secrets_path = f"/api/v1/namespaces/{NS}/secrets"
        wait_until(lambda: [p for _, p in kube.faults.requests].count(secrets_path) >= 2,
                   timeout=5, what="the watch to be open")  # else it would start too late
        time.sleep(0.1)
        # More changes than the server's 100-change window, none of them ours.
        for i in range(150):
            store.create("secrets", {"metadata": {"name": f"o{i}", "namespace": "elsewhere"}},
                         namespace="elsewhere")
            time.sleep(0.002)  # the stand-in's stream reads the shared log lazily; pace it
        wait_until(lambda: int(informer.resource_version) == store.resource_version,
                   timeout=5, what="a bookmark")
        assert int(informer.resource_version) > start_rv + 100
        # Several reconnects later (1-2 s watches) nothing was relisted: thanks to the
        # bookmark the watch resumed inside the window instead of getting 410.
        time.sleep(2.5)
        assert informer.relists == 1
        assert log.snapshot() == [("add", "mine", start_rv)]
    finally:
        informer.stop()


def test_a_429_storm_is_ridden_out(kube: KubeStandIn, clients: KubeClients) -> None:
    kube.store.create("secrets", {"metadata": {"name": "a", "namespace": NS}}, namespace=NS)
    kube.faults.throttle(2, retry_after=1, path=f"/namespaces/{NS}/secrets")
    log = Log()
    began = time.monotonic()
    informer = secret_informer(clients, log)
    try:
        assert time.monotonic() - began >= 1.9  # Retry-After was honoured, twice
        assert log.snapshot()[0][:2] == ("add", "a")
        kube.faults.throttle(1, retry_after=1, method="POST")
        rest = clients.rest()
        created = rest.create(f"/api/v1/namespaces/{NS}/secrets",
                              {"metadata": {"name": "b", "namespace": NS}})
        assert created["metadata"]["name"] == "b"
        wait_until(lambda: informer.cache.get(f"{NS}/b"), timeout=5, what="b in the cache")
    finally:
        informer.stop()


def test_events_are_created_then_aggregated(kube: KubeStandIn, clients: KubeClients) -> None:
    claim = {"kind": "Secret", "apiVersion": "v1",
             "metadata": {"name": "data", "namespace": NS, "uid": "u-1"}}
    recorder = EventRecorder(clients.rest(), "cinder.csi.openstack.org", secrets=["pw123"])
    recorder.start()
    for _ in range(3):
        recorder.warning(claim, "ProvisioningFailed", "auth with pw123 failed")
    recorder.normal(claim, "Provisioning", "External provisioner is provisioning")
    assert recorder.flush(5)
    recorder.stop()
    events = sorted(kube.store.items("events", namespace=NS), key=lambda e: e["reason"])
    assert [(e["reason"], e["count"], e["type"]) for e in events] == [
        ("Provisioning", 1, "Normal"), ("ProvisioningFailed", 3, "Warning")]
    failed = events[1]
    assert failed["message"] == "auth with *** failed"
    assert failed["involvedObject"]["uid"] == "u-1"
    assert failed["metadata"]["name"].startswith("data.")


def elector(clients: KubeClients, name: str, record: Callable[[str, str], None],
            *, release: bool = True) -> LeaderElector:
    config = LeaderElectionConfig(
        name=lease_name("cinder.csi.openstack.org"), namespace=NS, identity=name,
        lease_duration=2.0, renew_deadline=1.5, retry_period=0.2, release_on_cancel=release,
    )
    store = KubeLeaseStore(clients.leader_rest(), NS, config.name)
    return LeaderElector(store, config,
                         on_started_leading=lambda stop: record(name, "started"),
                         on_stopped_leading=lambda: record(name, "stopped"))


def test_two_electors_one_leader_and_takeover(
    kube: KubeStandIn, tmp_path: Path
) -> None:
    timeline: list[tuple[float, str, str]] = []
    t0 = time.monotonic()

    def record(who: str, what: str) -> None:
        timeline.append((time.monotonic() - t0, who, what))

    made = [clients_for(kube, tmp_path, f"kc-{i}") for i in range(3)]
    a = elector(made[0], "a", record, release=False)
    b = elector(made[1], "b", record)
    overlap: list[float] = []
    watching = threading.Event()

    def watch() -> None:
        while not watching.is_set():
            if a.is_leader() and b.is_leader():
                overlap.append(time.monotonic() - t0)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        a.start()
        wait_until(a.is_leader, timeout=5, what="a to lead")
        b.start()
        time.sleep(1.0)
        assert not b.is_leader()  # a renews every 0.2 s: b keeps waiting
        kube.faults.conflict_on_update("leases", a.config.name, namespace=NS)
        time.sleep(0.5)
        assert a.is_leader()  # a 409 is re-read, not a lost lease

        # a dies without releasing: b must wait out the 2 s lease, no longer.
        stopped_at = time.monotonic()
        a.stop()
        wait_until(b.is_leader, timeout=6, what="b to take over")
        took = time.monotonic() - stopped_at
        assert 1.5 <= took <= 3.5, took

        # b stops cleanly and releases: the next candidate need not wait.
        c = elector(made[2], "c", record)
        c.start()
        time.sleep(0.5)
        assert not c.is_leader()
        stopped_at = time.monotonic()
        b.stop()
        wait_until(c.is_leader, timeout=3, what="c to take over")
        assert time.monotonic() - stopped_at < 1.0
        c.stop()
        lease = kube.store.get("leases", a.config.name, namespace=NS)
        assert not lease["spec"].get("holderIdentity")
        assert lease["spec"]["leaseTransitions"] == 2
    finally:
        watching.set()
        watcher.join(1)
        for e in (a, b):
            e.stop(1)
        for m in made:
            m.close()
    assert overlap == []
    assert [(who, what) for _, who, what in timeline] == [
        ("a", "started"), ("a", "stopped"), ("b", "started"), ("b", "stopped"),
        ("c", "started"), ("c", "stopped")]


def test_main_client_is_throttled_and_the_leader_client_is_not(
    kube: KubeStandIn, tmp_path: Path
) -> None:
    path = kube.write_kubeconfig(tmp_path / "kc")
    made = build_clients(KubeOptions(kubeconfig=str(path), qps=10, burst=1))
    try:
        rest = made.rest()
        began = time.monotonic()
        for _ in range(6):
            rest.get(f"/api/v1/namespaces/{NS}/secrets")
        assert time.monotonic() - began >= 0.45
        leases = made.leader_rest()
        began = time.monotonic()
        for _ in range(20):
            leases.get(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases")
        assert time.monotonic() - began < 0.45
    finally:
        made.close()


def test_merge_metadata_neither_conflicts_nor_overwrites_another_writer(
        kube: KubeStandIn, clients: KubeClients) -> None:
    rest = clients.rest()
    path = f"/api/v1/namespaces/{NS}/persistentvolumeclaims/data"
    stale = rest.create(f"/api/v1/namespaces/{NS}/persistentvolumeclaims", {
        "metadata": {"name": "data", "finalizers": ["theirs/one"]},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})
    # Another writer moves the claim on: our copy is stale from here.
    rest.patch(path, {"metadata": {"finalizers": ["theirs/one", "theirs/two"],
                                   "annotations": {"theirs": "x"}}})
    added = merge_metadata(rest, stale, add_finalizers=["ours"], annotations={"ours": "y"})
    assert added is not None
    assert added["metadata"]["finalizers"] == ["theirs/one", "theirs/two", "ours"]
    assert added["metadata"]["annotations"] == {"theirs": "x", "ours": "y"}
    cleared = merge_metadata(rest, added, remove_finalizers=["ours"], annotations={"ours": None})
    assert cleared is not None
    assert cleared["metadata"]["finalizers"] == ["theirs/one", "theirs/two"]
    assert cleared["metadata"]["annotations"] == {"theirs": "x"}
    assert merge_metadata(rest, cleared, remove_finalizers=["ours"]) is cleared  # no request


def test_merge_metadata_refuses_a_replaced_or_deleting_object(
        kube: KubeStandIn, clients: KubeClients) -> None:
    rest = clients.rest()
    claims = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
    body = {"metadata": {"name": "data", "finalizers": ["theirs"]},
            "spec": {"accessModes": ["ReadWriteOnce"],
                     "resources": {"requests": {"storage": "1Gi"}}}}
    old = rest.create(claims, body)
    rest.delete(f"{claims}/data")  # held by its finalizer: deleting
    assert merge_metadata(rest, old, add_finalizers=["ours"]) is None
    rest.patch(f"{claims}/data", {"metadata": {"finalizers": None}})  # gone now
    rest.create(claims, body)  # the same name, another uid
    assert merge_metadata(rest, old, add_finalizers=["ours"]) is None
    assert rest.get(f"{claims}/data")["metadata"]["finalizers"] == ["theirs"]
