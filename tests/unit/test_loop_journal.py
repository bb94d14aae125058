"""The provisioning journal (loop/journal.py) against a fake API server: what it writes, when,
and what it answers when writing fails."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.intent import Intent
from cinder_csi.loop.journal import (
    IntentJournal,
    JournalEntry,
    JournalError,
    configmap_name,
    in_the_making,
    parse,
)
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import KubeRest

NS = "kube-system"
NAME = configmap_name("cinder.csi.openstack.org")
PATH = f"/api/v1/namespaces/{NS}/configmaps/{NAME}"


class ConfigMapServer:
    """One ConfigMap behind get / create / merge-patch; ``gate`` holds patches back and
    ``fail`` answers the next calls with errors."""

    def __init__(self) -> None:
        self.data: dict[str, str] | None = None  # None: no ConfigMap
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.fail: list[BaseException] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def _failure(self) -> None:
        with self._lock:
            if self.fail:
                raise self.fail.pop(0)

    def get(self, path: str, **kw: Any) -> dict[str, Any]:
        assert path == PATH
        self._failure()
        if self.data is None:
            raise ApiException(status=404, reason="Not Found")
        return {"metadata": {"name": NAME}, "data": dict(self.data)}

    def create(self, path: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        assert path == PATH.rsplit("/", 1)[0]
        assert body["metadata"] == {"name": NAME, "namespace": NS, "labels": {
            "app.kubernetes.io/component": "provisioning-journal"}}
        self._failure()
        with self._lock:
            if self.data is not None:
                raise ApiException(status=409, reason="AlreadyExists")
            self.writes.append(("create", copy.deepcopy(body["data"])))
            self.data = dict(body["data"])
        return body

    def patch(self, path: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        assert path == PATH
        self.entered.set()
        self.gate.wait(10)
        self._failure()
        with self._lock:
            if self.data is None:
                raise ApiException(status=404, reason="Not Found")
            self.writes.append(("patch", copy.deepcopy(body["data"])))
            for key, value in body["data"].items():
                if value is None:
                    self.data.pop(key, None)
                else:
                    self.data[key] = value
        return {"data": dict(self.data)}


def entry(uid: str, name: str = "data", **intent: Any) -> JournalEntry:
    request = csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uid}", capacity_range=csi_pb2.CapacityRange(required_bytes=1 << 30))
    return JournalEntry("default", name, uid, Intent(
        request=request, storage_class="standard", reclaim_policy="Delete", fs_type="ext4",
        **intent))


def journal_on(server: ConfigMapServer, **kw: Any) -> IntentJournal:
    kw.setdefault("linger", 0.0)
    return IntentJournal(cast(KubeRest, server), NS, NAME, **kw)


@pytest.fixture
def server() -> ConfigMapServer:
    return ConfigMapServer()


def wait_for(what: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_record_returns_once_the_server_has_it(server: ConfigMapServer) -> None:
    journal = journal_on(server)
    first = entry("u1")
    assert journal.record(first)
    assert server.writes == [("create", {"pvc-u1": first.encode()})]  # made when missing
    assert journal.record(entry("u2"))
    assert server.writes[1] == ("patch", {"pvc-u2": entry("u2").encode()})
    assert journal.record(first)  # on the server already: no write
    assert len(server.writes) == 2
    assert journal.get("pvc-u1") == first and journal.has("pvc-u2")
    assert [e.key for e in journal.entries_of("default/data")] == ["pvc-u1", "pvc-u2"]
    journal.stop()


def test_waiting_entries_share_one_write(server: ConfigMapServer) -> None:
    server.data = {}
    journal = journal_on(server)
    server.gate.clear()
    threads = [threading.Thread(target=journal.record, args=(entry(f"u{i}"),))
               for i in range(10)]
    threads[0].start()
    assert server.entered.wait(5)  # the first write is on its way, held back
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: sum(t.is_alive() for t in threads) == 10)
    time.sleep(0.05)
    assert len(server.writes) == 0
    server.gate.set()
    for thread in threads:
        thread.join(5)
    assert [len(data) for _, data in server.writes] == [1, 9]
    assert set(server.data) == {f"pvc-u{i}" for i in range(10)}
    journal.stop()


def test_a_removal_rides_on_the_next_recording(server: ConfigMapServer) -> None:
    journal = journal_on(server, flush_after=60)
    assert journal.record(entry("u1"))
    journal.forget("pvc-u1")
    assert not journal.has("pvc-u1")  # out of the view at once
    time.sleep(0.05)
    assert len(server.writes) == 1  # not written on its own
    assert journal.record(entry("u2"))
    assert server.writes[-1] == ("patch", {"pvc-u1": None, "pvc-u2": entry("u2").encode()})
    journal.stop()


def test_a_lone_removal_is_written_after_flush_after(server: ConfigMapServer) -> None:
    journal = journal_on(server, flush_after=0.1)
    assert journal.record(entry("u1"))
    journal.forget("pvc-u1")
    wait_for(lambda: server.data == {})
    assert server.writes[-1] == ("patch", {"pvc-u1": None})
    journal.stop()


def test_stop_writes_pending_removals_and_a_crash_does_not(server: ConfigMapServer) -> None:
    journal = journal_on(server, flush_after=60)
    assert journal.record(entry("u1"))
    assert journal.record(entry("u2"))
    journal.forget("pvc-u1")
    journal.stop()
    assert server.data is not None and set(server.data) == {"pvc-u2"}
    crashed = journal_on(server, flush_after=60)
    crashed.load()
    crashed.forget("pvc-u2")
    crashed.stop(flush=False)
    assert set(server.data) == {"pvc-u2"}  # a stale entry, dropped by the next run


def test_failed_write_raises_and_is_not_taken_for_recorded(server: ConfigMapServer) -> None:
    server.data = {}
    journal = journal_on(server)
    server.fail.append(ApiException(status=500, reason="Internal Server Error"))
    with pytest.raises(JournalError, match="500"):
        journal.record(entry("u1"))
    assert journal.has("pvc-u1")  # it may have reached the server: still in the making
    assert journal.record(entry("u1"))  # written again, not assumed
    assert server.data == {"pvc-u1": entry("u1").encode()}
    journal.stop()


def test_forbidden_journal_sends_intents_to_the_claims(server: ConfigMapServer) -> None:
    server.data = {}
    journal = journal_on(server)
    server.fail.append(ApiException(status=403, reason="Forbidden"))
    assert journal.record(entry("u1")) is False
    calls = len(server.writes)
    assert journal.record(entry("u2")) is False  # no more requests
    assert len(server.writes) == calls
    journal.stop()


def test_a_full_journal_refuses(server: ConfigMapServer) -> None:
    one = entry("u1")
    journal = journal_on(server, max_bytes=len(one.key) + len(one.encode()))
    assert journal.record(one)
    assert journal.record(entry("u2")) is False
    journal.forget("pvc-u1")
    journal.stop()


def test_load_keeps_unreadable_entries_for_the_sweep(server: ConfigMapServer) -> None:
    server.data = {"pvc-u1": entry("u1").encode(), "pvc-x": "not json",
                   "pvc-u3": entry("u2").encode()}  # names another claim's volume
    journal = journal_on(server)
    journal.load()
    assert [e.key for e in journal.entries()] == ["pvc-u1"]
    assert journal.names_on_server() == {"pvc-u1", "pvc-x", "pvc-u3"}
    server.data = None
    assert journal.names_on_server() == {"pvc-u1", "pvc-x", "pvc-u3"}  # the view's


def test_entries_round_trip_with_everything_the_intent_holds() -> None:
    from cinder_csi.loop.intent import SourceRef
    from cinder_csi.loop.pvspec import SecretRef
    original = entry("u9", "restored", mount_options=("noatime",),
                     secrets={"provisioner": SecretRef("creds", "default")},
                     source=SourceRef("VolumeSnapshot", "default", "snap"),
                     selected_node="node-1")
    assert JournalEntry.decode("pvc-u9", original.encode()) == original
    with pytest.raises(ValueError):
        JournalEntry.decode("pvc-other", original.encode())
    entries, unreadable = parse({"data": {"pvc-u9": original.encode(), "bad": "{}"}})
    assert list(entries) == ["pvc-u9"] and unreadable == {"bad"}


def test_in_the_making_reads_the_journal_and_the_claim(server: ConfigMapServer) -> None:
    journal = journal_on(server)
    claim = {"metadata": {"uid": "u1", "annotations": {}}}
    assert not in_the_making(claim, journal)
    assert journal.record(entry("u1"))
    assert in_the_making(claim, journal)
    assert not in_the_making(claim, None)
    journal.stop()


def test_writes_wait_longer_when_provisioning_takes_longer(
        server: ConfigMapServer, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = journal_on(server, linger=0.01)
    assert journal.linger_now() == 0.01  # nothing measured yet: the floor
    now = [1000.0]
    monkeypatch.setattr("cinder_csi.loop.journal.time.monotonic", lambda: now[0])
    assert journal.record(entry("u1"))
    now[0] += 4.0  # a 4 s provisioning: wait a share of it
    journal.forget("pvc-u1")
    assert journal.linger_now() == pytest.approx(0.2)
    assert journal.record(entry("u2"))
    now[0] += 600.0  # a very slow one: never more than the ceiling
    journal.forget("pvc-u2")
    assert journal.linger_now() == 0.5
    journal.stop(flush=False)
