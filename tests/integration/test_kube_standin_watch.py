"""Watches and injected faults of the Kubernetes stand-in, via the real ``kubernetes`` client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import api_client


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn(controllers=(), event_window=50, bookmark_interval=0.2) as standin:
        yield standin


@pytest.fixture
def core(kube: KubeStandIn, tmp_path: Path) -> Iterator[Any]:
    api = api_client(kube.write_kubeconfig(tmp_path / "kubeconfig"))
    yield client.CoreV1Api(api)
    api.close()


def secret(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "stringData": {"k": "v"}}


class Reflector:
    """The list+watch loop every informer runs: resume from the last version, relist on 410."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.events: list[tuple[str, str, int]] = []
        self.drops = 0
        self.relists = 0
        self.version = ""

    def relist(self) -> None:
        self.relists += 1
        listed = self.core.list_namespaced_secret("default")
        self.version = listed.metadata.resource_version
        self.events += [("SYNC", s.metadata.name, int(self.version)) for s in listed.items]

    def run(self, until: int, *, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < until and time.monotonic() < deadline:
            stream = watch.Watch().stream(
                self.core.list_namespaced_secret,
                "default",
                resource_version=self.version,
                timeout_seconds=2,
            )
            try:
                for ev in stream:
                    meta = ev["raw_object"]["metadata"]
                    self.version = meta["resourceVersion"]
                    if ev["type"] != "BOOKMARK":
                        self.events.append((ev["type"], meta["name"], int(self.version)))
                    if len(self.events) >= until:
                        break
            except urllib3.exceptions.ProtocolError:
                self.drops += 1  # the connection broke mid-stream: resume from self.version
            except ApiException as exc:
                if exc.status != 410:
                    raise
                self.relist()


def test_watch_resumes_after_a_dropped_connection_without_loss_or_duplicates(
    kube: KubeStandIn, core: Any
) -> None:
    reflector = Reflector(core)
    reflector.relist()
    for i in range(4):
        core.create_namespaced_secret("default", secret(f"s{i}"))
    kube.faults.drop_watches(1, after_events=2)
    reflector.run(until=4)
    assert reflector.drops == 1
    # Changes made between two watches must arrive too, once.
    core.delete_namespaced_secret("s0", "default")
    core.patch_namespaced_secret("s1", "default", {"metadata": {"labels": {"x": "y"}}})
    reflector.run(until=6)
    assert reflector.drops == 1
    assert [(t, n) for t, n, _ in reflector.events] == [
        ("ADDED", "s0"),
        ("ADDED", "s1"),
        ("ADDED", "s2"),
        ("ADDED", "s3"),
        ("DELETED", "s0"),
        ("MODIFIED", "s1"),
    ]
    versions = [v for _, _, v in reflector.events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_too_old_resource_version_is_410_and_a_relist_recovers(
    kube: KubeStandIn, core: Any
) -> None:
    old = core.list_namespaced_secret("default").metadata.resource_version
    for i in range(60):  # more than the event window of 50
        kube.store.create("secrets", secret(f"s{i}"))
    stream = watch.Watch().stream(
        core.list_namespaced_secret, "default", resource_version=old, timeout_seconds=2
    )
    with pytest.raises(ApiException) as exc:
        next(iter(stream))
    assert exc.value.status == 410 and "Expired: too old resource version" in str(exc.value.reason)

    reflector = Reflector(core)
    reflector.version = old
    reflector.run(until=60)
    assert reflector.relists == 1
    assert {t for t, _, _ in reflector.events} == {"SYNC"} and len(reflector.events) == 60
    kube.store.create("secrets", secret("late"))
    reflector.run(until=61)
    assert reflector.events[-1][:2] == ("ADDED", "late")


def test_forced_410_on_the_next_watch(kube: KubeStandIn, core: Any) -> None:
    reflector = Reflector(core)
    reflector.relist()
    kube.faults.expire_watches(1)
    kube.store.create("secrets", secret("a"))
    reflector.run(until=1)
    assert reflector.relists == 2  # the initial one and the forced one
    assert reflector.events[0][:2] == ("SYNC", "a")  # "a" came with the relist
    kube.store.create("secrets", secret("b"))
    reflector.run(until=2)
    assert reflector.events[1][:2] == ("ADDED", "b")


def test_watch_without_version_starts_with_synthetic_adds_and_honours_selectors(
    kube: KubeStandIn, core: Any
) -> None:
    kube.store.create("secrets", secret("a", app="x"))
    kube.store.create("secrets", secret("b", app="y"))
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    done = threading.Event()

    def consume() -> None:
        for ev in w.stream(
            core.list_namespaced_secret, "default", label_selector="app=x", timeout_seconds=3
        ):
            seen.append((ev["type"], ev["object"].metadata.name))
            if len(seen) == 4:
                break
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    time.sleep(0.3)
    kube.store.patch("secrets", "b", {"metadata": {"labels": {"app": "x"}}}, namespace="default")
    kube.store.patch("secrets", "a", {"metadata": {"labels": {"app": "z"}}}, namespace="default")
    kube.store.delete("secrets", "b", namespace="default")
    assert done.wait(5)
    thread.join()
    # b starts matching (ADDED), a stops matching (DELETED), b is deleted (DELETED).
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a"), ("DELETED", "b")]


def test_bookmarks_carry_the_latest_version(kube: KubeStandIn, core: Any) -> None:
    version = core.list_namespaced_secret("default").metadata.resource_version
    kube.store.create(
        "pods",
        {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    )  # another type moves the version
    stream = watch.Watch().stream(
        core.list_namespaced_secret,
        "default",
        resource_version=version,
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    )
    marks = [ev["raw_object"] for ev in stream if ev["type"] == "BOOKMARK"]
    assert marks and marks[0]["kind"] == "Secret"
    assert int(marks[-1]["metadata"]["resourceVersion"]) == kube.store.resource_version


def test_throttle_answers_429_with_retry_after(kube: KubeStandIn, core: Any) -> None:
    kube.faults.throttle(1, retry_after=1, path="/secrets")
    core.list_namespace()  # another path is not throttled
    raw = urllib3.PoolManager(retries=False)
    answer = raw.request("GET", f"{kube.url}/api/v1/namespaces/default/secrets")
    assert answer.status == 429 and answer.headers["Retry-After"] == "1"
    assert answer.json()["reason"] == "TooManyRequests"
    assert answer.json()["details"]["retryAfterSeconds"] == 1
    # The Python client (urllib3) honours Retry-After on 429 by itself, as against a real server.
    kube.faults.throttle(2, retry_after=1, path="/secrets")
    start = time.monotonic()
    core.list_namespaced_secret("default")
    assert time.monotonic() - start >= 2
    kube.faults.throttle(5, retry_after=0, path="/secrets")
    with pytest.raises(ApiException) as exc:
        core.list_namespaced_secret("default")  # urllib3 gives up after three retries
    assert exc.value.status == 429
    raw.clear()


def test_server_errors_then_recovery(kube: KubeStandIn, core: Any) -> None:
    kube.faults.fail(1, method="POST")
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret("default", secret("a"))
    assert exc.value.status == 500
    core.create_namespaced_secret("default", secret("a"))


def test_slow_responses(kube: KubeStandIn, core: Any) -> None:
    kube.faults.slow(0.4, count=1, path="/secrets")
    start = time.monotonic()
    core.list_namespaced_secret("default")
    assert time.monotonic() - start >= 0.4
    start = time.monotonic()
    core.list_namespaced_secret("default")
    assert time.monotonic() - start < 0.3


def test_conflict_on_the_next_update_of_one_object(kube: KubeStandIn, core: Any) -> None:
    core.create_namespaced_secret("default", secret("a"))
    core.create_namespaced_secret("default", secret("b"))
    kube.faults.conflict_on_update("secrets", "a", namespace="default")
    core.patch_namespaced_secret("b", "default", {"metadata": {"labels": {"n": "1"}}})
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_secret("a", "default", {"metadata": {"labels": {"n": "1"}}})
    assert exc.value.status == 409
    core.patch_namespaced_secret("a", "default", {"metadata": {"labels": {"n": "1"}}})


def test_stop_ends_open_watches_and_leaves_no_threads(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    kube = KubeStandIn().start()
    api = api_client(kube.write_kubeconfig(tmp_path / "kubeconfig"))
    core = client.CoreV1Api(api)
    errors: list[BaseException] = []

    def watch_forever() -> None:
        try:
            for _ in watch.Watch().stream(
                core.list_namespaced_secret, "default", resource_version="0"
            ):
                pass
        except urllib3.exceptions.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=watch_forever)
    thread.start()
    time.sleep(0.2)
    core.list_namespace()  # leaves an idle keep-alive connection in the pool
    kube.stop()
    thread.join(5)
    api.close()
    assert not thread.is_alive()
    leftover = [t for t in set(threading.enumerate()) - before if t.is_alive()]
    assert leftover == []
