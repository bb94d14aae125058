"""Bounded everywhere: a call without a deadline ends, a hung Keystone wedges nothing, no
volume stays locked past its caller's deadline, and /healthz fails when the cloud client is
wedged so that the liveness probe restarts the pod."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import grpc

from cinder_csi.cloud.connection import Cloud, CloudTimeouts
from cinder_csi.config import load_cloud_config
from cinder_csi.csi import csi_pb2
from cinder_csi.metrics import HealthChecks, Metrics, serve_http
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.csi_helpers import create_request, mount_cap
from tests.reliability.driver_env import (
    Outcome,
    PluginProcess,
    audit,
    concurrently,
    empty_cloud_after_each,
    module_controller,
    module_standin,
    node_process,
    outcome,
    specific,
    wait_until,
)

C = grpc.StatusCode
KEYSTONE_TOKENS = r"auth/tokens"

standin = module_standin("bounds")
plugin = module_controller("bounds", "--default-call-timeout", "3", http=True)
empty_cloud = empty_cloud_after_each()


def in_thread(call: object, join: float) -> Outcome:
    """Run an RPC with no deadline in a thread; the test fails (instead of hanging) if the
    server never answers."""
    results: list[Outcome] = []
    worker = threading.Thread(target=lambda: results.append(outcome(call)),  # type: ignore[arg-type]
                              daemon=True)
    worker.start()
    worker.join(join)
    assert results, f"a call without a deadline was still running after {join}s"
    return results[0]


def test_controller_call_without_deadline_ends_and_releases_its_volume(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    stuck = standin.faults.stick("creating", volume="pvc-nodeadline")
    started = time.monotonic()
    result = specific(in_thread(
        lambda: plugin.controller.CreateVolume(create_request("pvc-nodeadline")), join=30))
    assert result.code == C.DEADLINE_EXCEEDED, result
    assert time.monotonic() - started < 15
    stuck.cancel()
    # Not ABORTED: the first call let go of the name when it ended.
    again = specific(outcome(lambda: plugin.controller.CreateVolume(
        create_request("pvc-nodeadline"), timeout=20)))
    assert again.ok, again
    audit(standin, {"pvc-nodeadline": 1})


def test_node_call_without_deadline_ends_and_releases_its_volume(
    standin: OpenStackStandIn, tmp_path: Path
) -> None:
    kubelet, by_id = tmp_path / "kubelet", tmp_path / "by-id"
    kubelet.mkdir()
    by_id.mkdir()
    volume = "0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f"  # never attached: its device never shows
    server = standin.add_server("node-bounds", "az-a")
    with node_process(tmp_path / "node", server, by_id, kubelet,
                      "--default-call-timeout", "2") as node:
        stage = csi_pb2.NodeStageVolumeRequest(
            volume_id=volume, staging_target_path=str(kubelet / "plugins" / "s" / "mount"),
            volume_capability=mount_cap())
        first = specific(in_thread(lambda: node.node.NodeStageVolume(stage), join=20))
        assert first.code == C.NOT_FOUND, first
        again = specific(outcome(lambda: node.node.NodeStageVolume(stage, timeout=5)))
        assert again.code == C.NOT_FOUND, again  # not ABORTED: the volume was let go


def test_hung_keystone_wedges_neither_calls_nor_volumes(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    plugin.controller.CreateVolume(create_request("pvc-warm"), timeout=20)
    names = [f"pvc-ks-{i}" for i in range(3)]
    standin.expire_tokens()  # every call needs a new token now...
    with standin.faults.hang(600, count=None, service="identity", path=KEYSTONE_TOKENS):
        # ...and Keystone takes the request and never answers.
        for attempt in range(2):
            started = time.monotonic()
            results = concurrently({name: partial(
                plugin.controller.CreateVolume, create_request(name), timeout=3)
                for name in names})
            assert time.monotonic() - started < 8
            for name, result in results.items():
                specific(result, name)
                # ABORTED on the second attempt would mean the first still held the volume.
                assert result.code in (C.DEADLINE_EXCEEDED, C.UNAVAILABLE), (attempt, result)
        probe = plugin.identity.Probe(csi_pb2.ProbeRequest(), timeout=15)
        assert not probe.ready.value
    standin.faults.reset()  # drop the requests Keystone still holds
    # Keystone answers again: the same calls go through, each volume once.
    for name in names:
        result = specific(outcome(partial(
            plugin.controller.CreateVolume, create_request(name), timeout=20)))
        assert result.ok, result
    audit(standin, {"pvc-warm": 1, **dict.fromkeys(names, 1)})
    assert plugin.http_get("/healthz")[0] == 200


def http_status(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_healthz_fails_while_the_cloud_client_is_wedged_and_recovers(
    standin: OpenStackStandIn, tmp_path: Path
) -> None:
    conf = tmp_path / "cloud.conf"
    conf.write_text(standin.cloud_conf())
    # The controller's own wiring with short limits, so the test waits seconds, not minutes.
    cloud = Cloud(load_cloud_config([conf]).auth, timeouts=CloudTimeouts(
        session=1.0, probe=1.0, wedged_margin=1.0, probe_timeouts_unhealthy=2))
    checks = HealthChecks()
    checks.register("cloud", cloud.health)
    endpoint = serve_http("127.0.0.1:0", Metrics("x"), checks)
    try:
        wait_until(lambda: http_status(endpoint.port, "/healthz")[0] == 200, 15, "healthy")
        standin.expire_tokens()
        with standin.faults.hang(600, count=None, service="identity", path=KEYSTONE_TOKENS):
            _, body = wait_until(
                lambda: (answer := http_status(endpoint.port, "/healthz"))[0] == 503 and answer,
                30, "/healthz to fail")
            assert body.startswith("cloud: ") and "ran out of time" in body, body
        wait_until(lambda: http_status(endpoint.port, "/healthz")[0] == 200, 30,
                   "/healthz to recover")
    finally:
        endpoint.stop()
