"""Two replicas of ``cinder-csi controller --with-provisioner --leader-election``, one with its
wall clock a minute ahead, under a provisioning storm: never two leaders, never a duplicate
volume (issue 10, build 6).

Phase 1, skew: the skewed replica starts right after the leader renewed. Before the fix it
took the lease over as soon as it saw one retry period without a renewal (the lease looked
stale by its clock) while the leader went on provisioning: both created the same names. Now
lease age is measured only with each replica's monotonic clock.

Phase 2, fencing: every Lease write fails for a while. The leader stops starting volume calls
``renew_deadline`` after its last renewal began, then steps down (and exits); the other takes
over only a whole lease after it last saw the lease change, once writes work again. The storm
goes on throughout; every claim ends Bound to one volume.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.reliability.harness import LoopProcess, audit, wait_clean

LEASE = "cinder-csi-openstack-org"
ELECTION = ("--leader-election", "--leader-election-namespace", "default",
            "--leader-election-lease-duration", "15s", "--leader-election-renew-deadline", "10s")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, real_devices=False) as made:
        yield made


def lease(env: ClusterEnv) -> dict[str, Any]:
    found = env.kube.store.peek("leases", LEASE, namespace="default")
    return (found or {}).get("spec") or {}


def storm(env: ClusterEnv, prefix: str, count: int, every: float) -> threading.Thread:
    def make() -> None:
        for i in range(count):
            env.create_claim(f"{prefix}-{i:03d}")
            time.sleep(every)

    thread = threading.Thread(target=make, name=f"storm-{prefix}", daemon=True)
    thread.start()
    return thread


def all_bound(env: ClusterEnv) -> bool:
    claims = env.kube.store.view("persistentvolumeclaims", namespace="default")
    return all((c.get("status") or {}).get("phase") == "Bound" for c in claims)


def leaders_seen(replica: LoopProcess) -> int:
    return replica.output().count("became leader")


def test_skewed_replica_never_takes_a_live_lease_and_no_volume_is_doubled(
        env: ClusterEnv) -> None:
    # Cinder answers each create 1.5 s late: two leaders would both find no volume by name.
    env.openstack.faults.delay(1.5, service="volume", method="POST", path=r"/volumes$")
    first = LoopProcess(env, name="replica-a", extra=(
        *ELECTION, "--leader-election-retry-period", "6s"))
    skewed = LoopProcess(env, name="replica-b", extra=(
        *ELECTION, "--leader-election-retry-period", "1s",
        "--leader-election-clock-skew", "60"))
    try:
        first.start()
        holder = lease(env).get("holderIdentity")
        assert holder, "replica-a leads"
        # Phase 1: the skewed replica starts right after a renewal, while claims pour in.
        renewed = lease(env).get("renewTime")
        wait_until(lambda: lease(env).get("renewTime") != renewed, timeout=20,
                   what="a renewal by the leader")
        claims = storm(env, "skew", 40, 0.1)
        skewed.start(wait=False)
        time.sleep(12)  # several renewals of the leader, many looks of the skewed replica
        assert lease(env).get("holderIdentity") == holder, "the skewed replica took over"
        assert leaders_seen(skewed) == 0
        claims.join()
        result = wait_clean(env, timeout=60, until=lambda: all_bound(env))
        assert result.clean and all_bound(env), str(result)

        # Phase 2: no Lease write succeeds for 20 s, while the storm goes on.
        env.kube.faults.fail(10**6, code=500, path="/leases", method="PUT")
        failing_since = time.monotonic()
        claims = storm(env, "fence", 30, 0.2)
        wait_until(lambda: first.process is not None and first.process.poll() is not None,
                   timeout=30, what="the leader stepping down and exiting")
        assert leaders_seen(skewed) == 0  # nobody may lead while the lease cannot be written
        time.sleep(max(0.0, 20 - (time.monotonic() - failing_since)))
        env.kube.faults.clear()
        wait_until(lambda: leaders_seen(skewed) == 1, timeout=40, what="the other taking over")
        claims.join()
        result = wait_clean(env, timeout=90, until=lambda: all_bound(env))
        assert result.clean and all_bound(env), str(result)
        assert audit(env).duplicated == []
    finally:
        first.stop()
        skewed.stop()
