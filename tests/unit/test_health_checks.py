"""Liveness: the HealthChecks registry behind /healthz, and the wedge detectors it reads
(operations held past their deadline, HTTP requests open past their timeout)."""

from __future__ import annotations

import time

import pytest

from cinder_csi.cloud.session import InFlight
from cinder_csi.deadline import Deadline
from cinder_csi.locks import OperationLocks
from cinder_csi.metrics import HealthChecks, Metrics, serve_http
from tests.unit.test_server_metrics import fetch


def test_healthz_names_each_failing_check() -> None:
    checks = HealthChecks()
    state = {"queues": None}
    checks.register("cloud", lambda: None)
    checks.register("queues", lambda: state["queues"])
    endpoint = serve_http("127.0.0.1:0", Metrics("x"), checks)
    try:
        base = f"http://127.0.0.1:{endpoint.port}"
        assert fetch(base + "/healthz") == (200, "ok\n")
        state["queues"] = "claims: no progress for 600s"
        assert fetch(base + "/healthz") == (503, "queues: claims: no progress for 600s\n")
        checks.register("lease", lambda: "lost the leader lease")
        assert fetch(base + "/healthz") == (  # every failing check, by name
            503, "lease: lost the leader lease\nqueues: claims: no progress for 600s\n")
        checks.unregister("lease")
        checks.unregister("queues")
        assert fetch(base + "/healthz") == (200, "ok\n")
    finally:
        endpoint.stop()


def test_a_name_is_registered_once() -> None:
    checks = HealthChecks()
    checks.register("cloud", lambda: None)
    with pytest.raises(ValueError, match="cloud"):
        checks.register("cloud", lambda: None)


def test_an_operation_past_its_deadline_is_reported() -> None:
    locks = OperationLocks()
    with locks.hold(["vol-1"], "CreateVolume", Deadline.after(-120.0)), \
            locks.hold(["vol-2"], "DeleteVolume", Deadline.after(60.0)):
        assert locks.health(margin=60.0) is not None
        assert "vol-1: CreateVolume" in (locks.health(margin=60.0) or "")
        assert set(locks.overdue(margin=60.0)) == {"vol-1"}
        assert locks.health(margin=300.0) is None
    assert locks.health(margin=0.0) is None  # released


def test_a_request_open_past_its_timeout_is_reported() -> None:
    requests = InFlight()
    with requests.track(timeout=0.0):
        time.sleep(0.05)
        late = requests.overdue(margin=0.0)
        assert late is not None and late > 0
        assert requests.overdue(margin=30.0) is None
    assert requests.overdue(margin=0.0) is None
