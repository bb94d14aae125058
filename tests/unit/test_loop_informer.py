"""cinder_csi.loop.kube.informer against a scripted list/watch function (no HTTP)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.informer import Cache, Handlers, Informer
from cinder_csi.loop.kube.objects import object_key, split_key


def pv(name: str, rv: int, claim: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"metadata": {"name": name, "resourceVersion": str(rv)}, "spec": {}}
    if claim:
        ns, _, cname = claim.partition("/")
        obj["spec"]["claimRef"] = {"namespace": ns, "name": cname}
    return obj


def ev(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": {"kind": "PersistentVolume", "apiVersion": "v1", **obj}}


class FakeResponse:
    """A streaming body: each read1() returns the next piece; then blocks until shutdown."""

    def __init__(self, pieces: list[bytes] | None = None, data: bytes = b"",
                 hang: bool = False) -> None:
        self.pieces = list(pieces or [])
        self.data = data
        self.hang = hang
        self.cut = threading.Event()

    def read1(self, amt: int) -> bytes:
        if self.pieces:
            return self.pieces.pop(0)
        if self.hang:
            self.cut.wait(10)
        return b""

    def shutdown(self) -> None:
        self.cut.set()

    def close(self) -> None:
        self.cut.set()

    def release_conn(self) -> None:
        pass


Session = list[dict[str, Any]] | BaseException


class FakeApi:
    """``objects`` is what a list returns; ``sessions`` are scripted watch streams, in order."""

    def __init__(self, objects: list[dict[str, Any]], rv: int) -> None:
        self.objects = objects
        self.rv = rv
        self.sessions: list[Session] = []
        self.watch_rvs: list[str] = []
        self.lists = 0
        self.lock = threading.Lock()

    def __call__(self, **kw: Any) -> FakeResponse:
        assert kw["_preload_content"] is False
        with self.lock:
            if kw.get("watch"):
                assert kw["allow_watch_bookmarks"] is True
                assert kw["timeout_seconds"] > 0
                self.watch_rvs.append(kw["resource_version"])
                if not self.sessions:
                    return FakeResponse(hang=True)
                session = self.sessions.pop(0)
                if isinstance(session, BaseException):
                    raise session
                body = b"".join(json.dumps(e).encode() + b"\n" for e in session)
                # Split mid-line to prove lines are reassembled across reads.
                return FakeResponse([body[:7], body[7:]])
            return self.page(kw)

    def page(self, kw: dict[str, Any]) -> FakeResponse:
        start = int(kw.get("_continue") or 0)
        if start == 0:
            self.lists += 1
        limit = kw["limit"]
        page = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                for o in self.objects[start:start + limit]]
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if start + limit < len(self.objects):
            meta["continue"] = str(start + limit)
        body = {"kind": "PersistentVolumeList", "apiVersion": "v1", "metadata": meta,
                "items": page}
        return FakeResponse(data=json.dumps(body).encode())


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.changed = threading.Condition()

    def _note(self, kind: str, obj: dict[str, Any]) -> None:
        with self.changed:
            self.events.append((kind, obj["metadata"]["name"], obj["metadata"]["resourceVersion"]))
            self.changed.notify_all()

    def handlers(self) -> Handlers:
        return Handlers(lambda o: self._note("add", o), lambda old, new: self._note("update", new),
                        lambda o: self._note("delete", o))

    def wait_for(self, n: int, timeout: float = 3.0) -> list[tuple[str, str, str]]:
        with self.changed:
            self.changed.wait_for(lambda: len(self.events) >= n, timeout)
            return list(self.events)


def start(api: FakeApi, rec: Recorder, **kw: Any) -> Informer:
    kw.setdefault("backoff_base", 0.01)
    inf = Informer("pvs", api, page_size=2, **kw)
    inf.add_handler(rec.handlers())
    inf.start()
    assert inf.wait_for_sync(3)
    return inf


def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_keys() -> None:
    assert object_key({"metadata": {"name": "a", "namespace": "ns"}}) == "ns/a"
    assert object_key({"metadata": {"name": "pv"}}) == "pv"
    assert split_key("ns/a") == ("ns", "a")
    assert split_key("pv") == (None, "pv")


def test_paged_list_fills_the_cache_and_each_watch_event_is_delivered_once() -> None:
    api = FakeApi([pv("a", 1), pv("b", 2), pv("c", 3)], rv=3)
    api.sessions = [[
        ev("MODIFIED", pv("a", 4)),
        ev("MODIFIED", pv("a", 4)),  # a replay of the same version
        ev("ADDED", pv("d", 5)),
        ev("DELETED", pv("b", 6)),
        ev("DELETED", pv("zz", 7)),  # never seen: nothing to tell
        {"type": "BOOKMARK", "object": {"kind": "PersistentVolume",
                                        "metadata": {"resourceVersion": "20"}}},
    ]]
    rec = Recorder()
    inf = start(api, rec)
    try:
        assert rec.events[:3] == [("add", "a", "1"), ("add", "b", "2"), ("add", "c", "3")]
        assert rec.wait_for(6)[3:] == [("update", "a", "4"), ("add", "d", "5"),
                                       ("delete", "b", "6")]
        eventually(lambda: api.watch_rvs[-1:] == ["20"])  # resumed from the bookmark
        assert api.watch_rvs == ["3", "20"]
        assert sorted(inf.cache.keys()) == ["a", "c", "d"]
        assert inf.cache.get("c")["kind"] == "PersistentVolume"  # type: ignore[index]
        assert inf.cache.get("c")["apiVersion"] == "v1"  # type: ignore[index]
        assert inf.resource_version == "20"
        assert len(rec.events) == 6
    finally:
        inf.stop()


def test_410_relists_and_emits_the_difference() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                        "message": "too old resource version"}}
    # The world changes between the list and the 410, as it does while a client is away.
    api = FakeApi([pv("keep", 1), pv("change", 2), pv("vanish", 3)], rv=3)
    rec = Recorder()
    inf = Informer("pvs", api, page_size=2, backoff_base=0.01)
    inf.add_handler(rec.handlers())
    original = api.page

    def page_then_change(kw: dict[str, Any]) -> FakeResponse:
        resp = original(kw)
        if api.lists == 1 and "continue" not in json.loads(resp.data)["metadata"]:
            api.objects = [pv("keep", 1), pv("change", 9), pv("new", 10)]
            api.rv = 10
            api.sessions.append([gone])
        return resp

    api.page = page_then_change  # type: ignore[method-assign]
    inf.start()
    try:
        events = rec.wait_for(6)
        assert sorted(events[3:]) == [("add", "new", "10"), ("delete", "vanish", "3"),
                                      ("update", "change", "9")]
        assert api.lists == 2
        eventually(lambda: api.watch_rvs[-1:] == ["10"])
        assert sorted(inf.cache.keys()) == ["change", "keep", "new"]
        time.sleep(0.05)
        assert len(rec.events) == 6  # "keep" kept its version: no event
    finally:
        inf.stop()


def test_http_410_on_the_watch_also_relists() -> None:
    api = FakeApi([pv("a", 1)], rv=1)
    api.sessions = [ApiException(status=410, reason="Gone")]
    rec = Recorder()
    inf = start(api, rec)
    try:
        eventually(lambda: api.lists == 2)
        assert rec.events == [("add", "a", "1")]
    finally:
        inf.stop()


def test_errors_back_off_and_resume_from_the_last_version() -> None:
    api = FakeApi([pv("a", 1)], rv=1)
    api.sessions = [
        [ev("MODIFIED", pv("a", 2))],
        ApiException(status=500, reason="Internal"),
        [{"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd"}}],
        [ev("MODIFIED", pv("a", 3))],
    ]
    rec = Recorder()
    inf = start(api, rec)
    try:
        assert rec.wait_for(3) == [("add", "a", "1"), ("update", "a", "2"), ("update", "a", "3")]
        assert api.watch_rvs[:4] == ["1", "2", "2", "2"]
        assert api.lists == 1
    finally:
        inf.stop()


def test_resync_redelivers_every_object_as_an_update() -> None:
    api = FakeApi([pv("a", 1), pv("b", 2)], rv=2)
    rec = Recorder()
    inf = start(api, rec, resync_period=0.05)
    try:
        events = rec.wait_for(6)
        assert events[:2] == [("add", "a", "1"), ("add", "b", "2")]
        assert set(events[2:6]) == {("update", "a", "1"), ("update", "b", "2")}
    finally:
        inf.stop()


def test_a_failing_handler_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    api = FakeApi([pv("a", 1), pv("b", 2)], rv=2)
    rec = Recorder()

    def boom(obj: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    inf = Informer("pvs", api)
    inf.add_handler(Handlers(on_add_func=boom))
    inf.add_handler(rec.handlers())
    inf.start()
    try:
        assert inf.wait_for_sync(3)
        assert [e[1] for e in rec.events] == ["a", "b"]
        assert "handler bug" in caplog.text
        with pytest.raises(RuntimeError):
            inf.add_handler(rec.handlers())
    finally:
        inf.stop()


def test_stop_is_prompt_while_the_watch_is_idle() -> None:
    api = FakeApi([pv("a", 1)], rv=1)
    inf = start(api, Recorder())
    time.sleep(0.05)
    began = time.monotonic()
    assert inf.stop(), "the informer's threads did not end"
    assert time.monotonic() - began < 1


def test_indexes_follow_updates_and_deletes() -> None:
    by_claim = {"claim": lambda o: [f"{r['namespace']}/{r['name']}"]
                if (r := o["spec"].get("claimRef")) else []}
    cache = Cache(by_claim)
    cache.put("pv1", pv("pv1", 1, "ns/data"))
    cache.put("pv2", pv("pv2", 1, "ns/data"))
    cache.put("pv3", pv("pv3", 1))
    assert cache.index_keys("claim", "ns/data") == ["pv1", "pv2"]
    cache.put("pv1", pv("pv1", 2, "ns/logs"))
    assert [o["metadata"]["name"] for o in cache.by_index("claim", "ns/data")] == ["pv2"]
    assert cache.index_keys("claim", "ns/logs") == ["pv1"]
    cache.pop("pv2")
    assert cache.index_keys("claim", "ns/data") == []
    assert sorted(cache.index_values("claim")) == ["ns/logs"]
    assert cache.get_by_name(None, "pv3") is not None
    assert len(cache) == 2


def test_decoding_shares_keys_and_short_values_and_drops_managed_fields() -> None:
    import json as json_module

    from cinder_csi.loop.kube.compact import Compactor

    decoder = json_module.JSONDecoder(object_pairs_hook=Compactor())
    body = {"metadata": {"name": "pv-" + "a" * 3, "managedFields": [{"manager": "x"}],
                         "note": "n" * 100,
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration":
                                         "{}"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "volumeMode": "Filesystem"}}
    first = decoder.decode(json_module.dumps(body))
    second = decoder.decode(json_module.dumps(body))
    assert "managedFields" not in first["metadata"]
    assert first == {**body, "metadata": {"name": "pv-aaa", "note": "n" * 100,
                                          "annotations": {}}}
    key_one = next(k for k in first["metadata"] if k == "name")
    key_two = next(k for k in second["metadata"] if k == "name")
    assert key_one is key_two  # one string for every object's key
    assert first["spec"]["volumeMode"] is second["spec"]["volumeMode"]
    assert first["metadata"]["note"] is not second["metadata"]["note"]  # long ones: left alone


def test_equal_subtrees_are_shared_and_unique_ones_are_not() -> None:
    import json as json_module

    from cinder_csi.loop.kube.compact import Compactor

    def pv(i: int) -> dict[str, Any]:
        return {"metadata": {"name": f"pv-{i}", "uid": f"u-{i}",
                             "annotations": {"pv.kubernetes.io/provisioned-by": "d"}},
                "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                         "claimRef": {"name": f"c-{i}", "namespace": "ns"},
                         "csi": {"driver": "d", "volumeHandle": f"vol-{i}",
                                 "volumeAttributes": {"id": "x"}},
                         "flags": {"a": 1, "b": True, "c": 1.0, "d": None}},
                "status": {"phase": "Bound"}}

    decoder = json_module.JSONDecoder(object_pairs_hook=Compactor())
    one, two = (decoder.decode(json_module.dumps(pv(i))) for i in (1, 2))
    assert (one, two) == (pv(1), pv(2))  # what readers see is what the server sent
    for path in (("metadata", "annotations"), ("spec", "capacity"), ("spec", "accessModes"),
                 ("spec", "csi", "volumeAttributes"), ("spec", "flags"), ("status",)):
        a, b = one, two
        for step in path:
            a, b = a[step], b[step]
        assert a is b, path
    # Anything holding a name, uid or volume handle is the object's own, and so are its
    # parents: each object keeps its own root, metadata, spec, claimRef and csi.
    for a, b in ((one, two), (one["metadata"], two["metadata"]), (one["spec"], two["spec"]),
                 (one["spec"]["claimRef"], two["spec"]["claimRef"]),
                 (one["spec"]["csi"], two["spec"]["csi"])):
        assert a is not b
    # JSON's 1, 1.0 and true differ, though Python's are equal: never shared across types.
    other = decoder.decode('{"spec": {"flags": {"a": true, "b": 1, "c": 1, "d": null}}}')
    assert other["spec"]["flags"] is not one["spec"]["flags"]
    assert [type(v) for v in other["spec"]["flags"].values()] == [
        bool, int, int, type(None)]


def test_the_shared_table_starts_afresh_when_full() -> None:
    import json as json_module

    from cinder_csi.loop.kube.compact import Compactor

    decoder = json_module.JSONDecoder(object_pairs_hook=Compactor(limit=3))
    first = decoder.decode('{"a": {"x": "1"}}')["a"]
    for i in range(5):  # more distinct subtrees than the table holds
        decoder.decode(json_module.dumps({"b": {"x": str(i + 10)}}))
    again = decoder.decode('{"a": {"x": "1"}}')["a"]
    assert again == first and again is not first  # forgotten, so a copy of its own
    assert decoder.decode('{"a": {"x": "1"}}')["a"] is again


def test_index_with_one_or_many_objects_per_value() -> None:
    def by_zone(obj: dict[str, Any]) -> list[str]:
        return list(obj["zones"])

    cache = Cache({"zone": by_zone})
    cache.put("a", {"zones": ["z1", "z2"]})
    assert cache.index_keys("zone", "z1") == ["a"]
    cache.put("b", {"zones": ["z1"]})
    assert cache.index_keys("zone", "z1") == ["a", "b"]
    cache.put("a", {"zones": ["z2"]})  # a leaves z1: one left, and still found
    assert cache.index_keys("zone", "z1") == ["b"]
    assert cache.index_keys("zone", "z2") == ["a"]
    cache.put("b", {"zones": ["z1"]})  # the same value again changes nothing
    assert cache.index_keys("zone", "z1") == ["b"]
    cache.pop("b")
    assert cache.index_keys("zone", "z1") == []
    assert sorted(cache.index_values("zone")) == ["z2"]
    assert [o["zones"] for o in cache.by_index("zone", "z2")] == [["z2"]]
