"""cinder_csi.metrics: the histogram and the /metrics + /healthz HTTP helper."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from cinder_csi.metrics import HealthChecks, Metrics, go_code_name, serve_http


@pytest.mark.parametrize(("python", "go"), [
    ("OK", "OK"), ("CANCELLED", "Canceled"), ("DEADLINE_EXCEEDED", "DeadlineExceeded"),
    ("NOT_FOUND", "NotFound"), ("RESOURCE_EXHAUSTED", "ResourceExhausted"),
    ("INTERNAL", "Internal"),
])
def test_go_code_names(python: str, go: str) -> None:
    assert go_code_name(python) == go


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics("a.example.com"), Metrics("a.example.com")
    first.observe_operation("/csi.v1.Node/NodeStageVolume", "OK", 0.3)
    labels = {"driver_name": "a.example.com", "method_name": "/csi.v1.Node/NodeStageVolume",
              "grpc_status_code": "OK"}
    assert first.registry.get_sample_value("csi_plugin_operations_seconds_count", labels) == 1
    assert first.registry.get_sample_value("csi_plugin_operations_seconds_sum", labels) == 0.3
    assert second.registry.get_sample_value("csi_plugin_operations_seconds_count", labels) is None


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_serve_http_metrics_and_healthz() -> None:
    """/metrics and /healthz side by side (what /healthz says: tests/unit/test_health_checks)."""
    metrics = Metrics("cinder.csi.openstack.org")
    metrics.observe_operation("/csi.v1.Controller/CreateVolume", "NOT_FOUND", 1.5)
    health = HealthChecks()
    endpoint = serve_http("127.0.0.1:0", metrics, health)
    base = f"http://127.0.0.1:{endpoint.port}"
    try:
        status, body = fetch(base + "/metrics")
        assert status == 200
        assert ('csi_plugin_operations_seconds_count{driver_name="cinder.csi.openstack.org",'
                'grpc_status_code="NotFound",method_name="/csi.v1.Controller/CreateVolume"} 1.0'
                in body)
        assert fetch(base + "/healthz") == (200, "ok\n")
        health.register("lease", lambda: "lost the leader lease")
        assert fetch(base + "/healthz") == (503, "lease: lost the leader lease\n")
        assert fetch(base + "/nope")[0] == 404
    finally:
        endpoint.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(base + "/healthz", timeout=1)


@pytest.mark.parametrize("endpoint", ["", "localhost", "host:http", "host:99999"])
def test_serve_http_rejects_bad_endpoint(endpoint: str) -> None:
    with pytest.raises(ValueError, match="invalid HTTP endpoint"):
        serve_http(endpoint, Metrics("x"), HealthChecks())
