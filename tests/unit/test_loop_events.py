"""cinder_csi.loop.kube.events: Event bodies, aggregation, redaction, never raising."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import urllib3

from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.events import EventRecorder, object_reference, redact, truncate

PVC = {
    "kind": "PersistentVolumeClaim",
    "apiVersion": "v1",
    "metadata": {"name": "data", "namespace": "apps", "uid": "u-1", "resourceVersion": "42"},
}
PV = {"kind": "PersistentVolume", "apiVersion": "v1",
      "metadata": {"name": "pvc-1", "uid": "u-2", "resourceVersion": "7"}}


class FakeRest:
    """Records calls; ``fail`` holds exceptions to raise on the next calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.fail: list[BaseException] = []

    def _call(self, verb: str, path: str, body: Any) -> dict[str, Any]:
        self.calls.append((verb, path, body))
        if self.fail:
            raise self.fail.pop(0)
        return {}

    def create(self, path: str, body: Any, **kw: Any) -> dict[str, Any]:
        return self._call("create", path, body)

    def patch(self, path: str, body: Any, **kw: Any) -> dict[str, Any]:
        return self._call("patch", path, body)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def recorder(rest: FakeRest, clock: Clock | None = None, **kw: Any) -> EventRecorder:
    return EventRecorder(
        rest,  # type: ignore[arg-type]
        "cinder.csi.openstack.org",
        host="ctrl-0",
        clock=clock or Clock(),
        wall_clock=lambda: datetime(2026, 11, 28, 18, 0, 0, tzinfo=UTC),
        retry_pauses=(0.0, 0.0),
        **kw,
    )


def test_first_event_creates_a_full_core_v1_event() -> None:
    rest = FakeRest()
    recorder(rest).warning(PVC, "ProvisioningFailed", "quota exceeded")
    ((verb, path, body),) = rest.calls
    assert verb == "create"
    assert path == "/api/v1/namespaces/apps/events"
    assert body["metadata"]["name"].startswith("data.")
    int(body["metadata"]["name"].split(".", 1)[1], 16)
    assert body["metadata"]["namespace"] == "apps"
    assert body["involvedObject"] == {
        "kind": "PersistentVolumeClaim", "apiVersion": "v1", "namespace": "apps",
        "name": "data", "uid": "u-1", "resourceVersion": "42",
    }
    assert body["type"] == "Warning"
    assert body["reason"] == "ProvisioningFailed"
    assert body["message"] == "quota exceeded"
    assert body["source"] == {"component": "cinder.csi.openstack.org", "host": "ctrl-0"}
    assert body["reportingComponent"] == "cinder.csi.openstack.org"
    assert body["reportingInstance"] == "ctrl-0"
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-11-28T18:00:00Z"
    assert body["count"] == 1


def test_cluster_scoped_objects_get_events_in_default() -> None:
    rest = FakeRest()
    recorder(rest).normal(PV, "VolumeDeleted", "ok")
    assert rest.calls[0][1] == "/api/v1/namespaces/default/events"
    assert "namespace" not in rest.calls[0][2]["involvedObject"]


def test_repeats_within_ten_minutes_patch_the_count() -> None:
    rest, clock = FakeRest(), Clock()
    rec = recorder(rest, clock)
    rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    name = rest.calls[0][2]["metadata"]["name"]
    for _ in range(3):
        clock.t += 299
        rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    assert [c[0] for c in rest.calls] == ["create", "patch", "patch", "patch"]
    assert rest.calls[-1][1] == f"/api/v1/namespaces/apps/events/{name}"
    assert rest.calls[-1][2] == {"count": 4, "lastTimestamp": "2026-11-28T18:00:00Z"}


def test_different_reason_message_or_object_is_a_new_event() -> None:
    rest = FakeRest()
    rec = recorder(rest)
    rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    rec.warning(PVC, "ProvisioningFailed", "volume type gone")
    rec.normal(PVC, "Provisioning", "quota exceeded")
    rec.warning(PV, "ProvisioningFailed", "quota exceeded")
    assert [c[0] for c in rest.calls] == ["create"] * 4
    assert len({c[2]["metadata"]["name"] for c in rest.calls}) == 4


def test_after_the_window_a_new_event_starts() -> None:
    rest, clock = FakeRest(), Clock()
    rec = recorder(rest, clock)
    rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    clock.t += 601
    rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    assert [c[0] for c in rest.calls] == ["create", "create"]


def test_event_that_aged_out_of_the_server_is_created_again() -> None:
    rest = FakeRest()
    rec = recorder(rest)
    rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    rest.fail = [ApiException(status=404, reason="Not Found")]
    rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    assert [c[0] for c in rest.calls] == ["create", "patch", "create"]
    rec.warning(PVC, "ProvisioningFailed", "quota exceeded")
    assert rest.calls[-1][0] == "patch"
    assert rest.calls[-1][1].endswith(rest.calls[2][2]["metadata"]["name"])


def test_secrets_never_reach_a_message() -> None:
    rest = FakeRest()
    rec = recorder(rest, secrets=["hunter2"])
    rec.add_secrets(["s3cr3t-token"])
    rec.warning(PVC, "ProvisioningFailed",
                "auth failed for password=hunter2 token=s3cr3t-token app=app-cred-xyz",
                secrets={"app-cred-xyz"})
    message = rest.calls[0][2]["message"]
    assert "hunter2" not in message and "s3cr3t" not in message and "app-cred-xyz" not in message
    assert message == "auth failed for password=*** token=*** app=***"
    assert "hunter2" not in json.dumps(rest.calls)


def test_redact_hook_and_overlapping_secrets() -> None:
    assert redact("abc abcdef", ["abc", "abcdef"]) == "*** ***"
    assert redact("nothing", ["", "x" * 0]) == "nothing"
    rest = FakeRest()
    rec = recorder(rest, redactor=lambda text: text.replace("Bearer ", "Bearer ***"))
    rec.warning(PVC, "Failed", "header Bearer abc")
    assert rest.calls[0][2]["message"] == "header Bearer ***abc"


def test_messages_are_cut_to_1024_bytes() -> None:
    rest = FakeRest()
    recorder(rest).warning(PVC, "ProvisioningFailed", "é" * 2000)
    message = rest.calls[0][2]["message"]
    assert len(message.encode()) <= 1024
    assert message.endswith("...")
    assert truncate("short") == "short"


def test_long_object_names_keep_the_event_name_valid() -> None:
    rest = FakeRest()
    obj = {"kind": "PersistentVolumeClaim", "metadata": {"name": "n" * 253, "namespace": "a"}}
    recorder(rest).normal(obj, "Provisioning", "x")
    assert len(rest.calls[0][2]["metadata"]["name"]) <= 253


def test_names_are_unique_even_within_one_clock_tick() -> None:
    rest = FakeRest()
    rec = recorder(rest)
    for i in range(50):
        rec.normal(PVC, "Provisioning", f"m{i}")
    assert len({c[2]["metadata"]["name"] for c in rest.calls}) == 50


@pytest.mark.parametrize("error", [
    ApiException(status=403, reason="Forbidden"),
    ApiException(status=422, reason="Invalid"),
    urllib3.exceptions.MaxRetryError(None, "/", "refused"),  # type: ignore[arg-type]
    OSError("network unreachable"),
])
def test_failures_are_logged_never_raised(error: BaseException,
                                          caplog: pytest.LogCaptureFixture) -> None:
    rest = FakeRest()
    rest.fail = [error] * 5
    recorder(rest).warning(PVC, "ProvisioningFailed", "x")
    assert "could not record event" in caplog.text


def test_transient_errors_are_retried() -> None:
    rest = FakeRest()
    rest.fail = [ApiException(status=500, reason="Internal"),
                 ApiException(status=429, reason="Too Many Requests")]
    recorder(rest).warning(PVC, "ProvisioningFailed", "x")
    assert [c[0] for c in rest.calls] == ["create"] * 3


def test_objects_without_a_name_are_ignored() -> None:
    rest = FakeRest()
    recorder(rest).normal({"metadata": {}}, "X", "y")
    assert rest.calls == []


def test_background_writer_and_overflow() -> None:
    rest = FakeRest()
    rec = recorder(rest, queue_size=100)
    rec.start()
    for i in range(20):
        rec.normal(PVC, "Provisioning", f"m{i}")
    assert rec.flush(5)
    rec.stop()
    assert len(rest.calls) == 20

    class Stuck(FakeRest):
        def __init__(self) -> None:
            super().__init__()
            self.gate = threading.Event()
            self.entered = threading.Event()

        def create(self, path: str, body: Any, **kw: Any) -> dict[str, Any]:
            self.entered.set()
            self.gate.wait(5)
            return super().create(path, body)

    stuck = Stuck()
    full = recorder(stuck, queue_size=1)
    full.start()
    full.normal(PVC, "Provisioning", "first")  # the writer takes it and hangs on the API
    assert stuck.entered.wait(2)
    full.normal(PVC, "Provisioning", "second")  # fills the queue
    full.normal(PVC, "Provisioning", "third")  # never blocks, never raises: dropped
    assert full.dropped == 1
    stuck.gate.set()
    full.stop(2)
    assert [c[2]["message"] for c in stuck.calls] == ["first", "second"]


def test_object_reference_keeps_only_set_fields() -> None:
    assert object_reference({"metadata": {"name": "a"}}) == {"name": "a"}


def test_a_deferred_event_is_written_once_due_unless_cancelled_first() -> None:
    rest = FakeRest()
    clock = Clock()
    rec = recorder(rest, clock)
    rec.start()
    try:
        kept = rec.deferred(PVC, "Normal", "Provisioning", "started", after=5.0)
        dropped = rec.deferred(PV, "Normal", "Provisioning", "started", after=5.0)
        rec.normal(PVC, "ProvisioningSucceeded", "done")  # not held back by the deferred
        wait_for(lambda: len(rest.calls) == 1)
        assert rest.calls[0][2]["reason"] == "ProvisioningSucceeded"
        dropped.cancel()
        clock.t += 5.0
        rec.normal(PVC, "Other", "wakes the writer")
        wait_for(lambda: len(rest.calls) == 3)
        written = [(c[2]["involvedObject"]["name"], c[2]["reason"]) for c in rest.calls]
        # The new event woke the writer; the deferred one was due by then and went next.
        assert written == [("data", "ProvisioningSucceeded"), ("data", "Other"),
                           ("data", "Provisioning")]
        kept.cancel()  # too late: it was written, and nothing else happens
    finally:
        rec.stop(2)
    assert len(rest.calls) == 3


def test_flush_and_stop_write_deferred_events_at_once() -> None:
    rest = FakeRest()
    rec = recorder(rest)  # the clock stands still: nothing would ever fall due by itself
    rec.start()
    rec.deferred(PVC, "Normal", "Provisioning", "started", after=60.0)
    gone = rec.deferred(PV, "Normal", "Provisioning", "started", after=60.0)
    gone.cancel()
    assert rec.flush(2)
    assert [c[2]["involvedObject"]["name"] for c in rest.calls] == ["data"]
    rec.deferred(PVC, "Normal", "Again", "x", after=60.0)
    rec.stop(2)
    assert [c[2]["reason"] for c in rest.calls] == ["Provisioning", "Again"]


def test_before_start_a_deferred_event_is_written_at_once() -> None:
    rest = FakeRest()
    recorder(rest).deferred(PVC, "Normal", "Provisioning", "started", after=60.0).cancel()
    assert [c[2]["reason"] for c in rest.calls] == ["Provisioning"]


def wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
