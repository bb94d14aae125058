"""200 PVCs at once while the provisioner process is killed with SIGKILL at random moments.

The sandbox runs everything but the loop (--no-loop); the test runs `cinder-csi provisioner`
as separate processes against the sandbox's controller socket and kubeconfig, kills them
mid-flight, and restarts. Afterwards every claim is Bound, every Cinder volume has exactly
one PV, and no name was provisioned twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openstack.config
import openstack.connection
import pytest
from kubernetes import client as k8s

from cinder_csi.standins.kube.client import api_client
from tests.e2e.sandbox_helpers import RunningSandbox, running_sandbox

CLAIMS = 200
KILLS = 4


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[RunningSandbox]:
    with running_sandbox(tmp_path, "--no-loop") as running:
        yield running


def provisioner(state: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cinder_csi.cli", "provisioner",
         "--csi-address", f"unix://{state / 'controller.sock'}",
         "--kubeconfig", str(state / "kubeconfig"), "--cluster", "sandbox",
         "--duties", "claims,volumes", "--worker-threads", "50", "--log-file", str(log)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def claim_body(index: int) -> dict[str, Any]:
    return {"metadata": {"name": f"data-{index:03d}"},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                     "resources": {"requests": {"storage": "1Gi"}}}}


def settled(claim: Any) -> bool:
    """Bound, and our crash-safe provisioning intent cleared."""
    finalizers = claim.metadata.finalizers or []
    annotations = claim.metadata.annotations or {}
    return (claim.status.phase == "Bound"
            and "cinder.csi.openstack.org/provisioning-protection" not in finalizers
            and "cinder.csi.openstack.org/provisioning" not in annotations)


def cinder_volumes(state: Path) -> list[Any]:
    config = openstack.config.OpenStackConfig(config_files=[str(state / "clouds.yaml")],
                                              load_envvars=False)
    conn = openstack.connection.Connection(config=config.get_one(cloud="sandbox"))
    return list(conn.block_storage.volumes())


def test_kill_9_during_200_claims_leaks_nothing(sandbox: RunningSandbox, tmp_path: Path) -> None:
    state = sandbox.state_dir
    core: Any = k8s.CoreV1Api(api_client(state / "kubeconfig"))
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda i: core.create_namespaced_persistent_volume_claim(
            "default", claim_body(i)), range(CLAIMS)))

    rng = random.Random(int(os.environ.get("CRASH_SEED", "7")))
    for attempt in range(KILLS):
        process = provisioner(state, tmp_path / f"provisioner-{attempt}.log")
        time.sleep(rng.uniform(0.5, 3.0))
        process.send_signal(signal.SIGKILL)
        process.wait()

    final = provisioner(state, tmp_path / "provisioner-final.log")
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            claims = core.list_namespaced_persistent_volume_claim("default").items
            if all(settled(c) for c in claims):
                break
            time.sleep(1)
        claims = core.list_namespaced_persistent_volume_claim("default").items
        assert sorted(c.status.phase for c in claims) == ["Bound"] * CLAIMS
        assert [c.metadata.name for c in claims if not settled(c)] == []

        pvs = core.list_persistent_volume().items
        handles = [pv.spec.csi.volume_handle for pv in pvs if pv.spec.csi]
        assert len(handles) == len(set(handles)) == CLAIMS
        volumes = [v for v in cinder_volumes(state) if v.name.startswith("pvc-")]
        names = Counter(v.name for v in volumes)
        assert [n for n, count in names.items() if count > 1] == []  # no duplicates
        assert {v.id for v in volumes} == set(handles)  # no Cinder volume without a PV
        assert {pv.metadata.name for pv in pvs} == {f"pvc-{c.metadata.uid}" for c in claims}
    finally:
        final.send_signal(signal.SIGTERM)
        try:
            final.wait(timeout=30)
        except subprocess.TimeoutExpired:
            final.kill()
