"""Two `cinder-csi provisioner --leader-election` processes: one leads, the other takes over
when the leader is killed with SIGKILL; /metrics and /healthz are served."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from kubernetes import client as k8s

from cinder_csi.standins.kube.client import api_client
from tests.e2e.sandbox_helpers import RunningSandbox, running_sandbox, until

T = TypeVar("T")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[RunningSandbox]:
    with running_sandbox(tmp_path, "--no-loop") as running:
        yield running


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(state: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cinder_csi.cli", "provisioner",
         "--csi-address", f"unix://{state / 'controller.sock'}",
         "--kubeconfig", str(state / "kubeconfig"), "--cluster", "sandbox",
         "--leader-election", "--leader-election-namespace", "default",
         "--http-endpoint", f"127.0.0.1:{port}", "--log-file", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except OSError:
        return 0, ""


def claim(api: Any, name: str) -> None:
    api.create_namespaced_persistent_volume_claim("default", {
        "metadata": {"name": name},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                 "resources": {"requests": {"storage": "1Gi"}}}})


def bound(api: Any, name: str) -> bool | None:
    found = api.read_namespaced_persistent_volume_claim(name, "default")
    return True if found.status.phase == "Bound" else None


def test_one_leads_and_the_other_takes_over(sandbox: RunningSandbox, tmp_path: Path) -> None:
    state = sandbox.state_dir
    api: Any = k8s.CoreV1Api(api_client(state / "kubeconfig"))
    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    processes = [start(state, logs[i], ports[i]) for i in range(2)]
    try:
        leader = until(lambda: next((i for i in range(2) if logs[i].exists()
                                     and "became leader" in logs[i].read_text()), None),
                       "a leader")
        follower = 1 - leader
        claim(api, "first")
        until(lambda: bound(api, "first"), "the first claim to bind")
        assert "became leader" not in logs[follower].read_text()
        status, body = http_get(ports[leader], "/metrics")
        assert status == 200
        for metric in ("controller_persistentvolumeclaim_provision_total",
                       "csi_sidecar_operations_seconds", "workqueue_depth"):
            assert metric in body, metric
        assert http_get(ports[follower], "/healthz")[0] == 200

        processes[leader].send_signal(signal.SIGKILL)
        processes[leader].wait()
        started = time.monotonic()
        claim(api, "second")
        until(lambda: bound(api, "second"), "the follower to take over", timeout=90)
        took = time.monotonic() - started
        assert "became leader" in logs[follower].read_text()
        print(f"takeover after SIGKILL of the leader: {took:.1f}s (lease 15s)")
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
