"""The Kubernetes fault matrix (issue 10, build 8): a 200-claim run with pods while the API
server misbehaves, one kind of fault per run, re-armed every second through the first
``CHAOS_S`` seconds of the run (the storm), then gone: the run must then complete. (Faults
re-armed forever starve the last few writers: with conflicts injected into every write, no
client can ever finish; that is not a fault of the loop.)

The loop under test is ``cinder-csi controller --with-provisioner`` as a real process against
the stand-ins; 20 of the 200 claims are used by pods on two nodes (real Nova attach through our
attacher, mkfs and mount by our node plugin on loop devices). Each run ends with the audit:
every claim Bound and every pod Running, each Cinder volume accounted for by exactly one PV, no
duplicates; then everything is deleted and nothing may be left: no volume, PV, attachment.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cinder_csi.standins.kube import Faults
from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.reliability.harness import LoopProcess, audit, live_volumes, wait_clean

pytestmark = [pytest.mark.root, pytest.mark.slow]

CLAIMS, PODS, NODES = 200, 20, ("node-0", "node-1")
CHAOS_S = 20.0


def expired_watches(env: ClusterEnv, faults: Faults) -> None:
    faults.expire_watches(3)
    env.kube.store.compact()  # resuming from an old resourceVersion is 410 Gone too


def conflicts(env: ClusterEnv, faults: Faults) -> None:
    for resource in ("persistentvolumeclaims", "persistentvolumes", "volumeattachments"):
        faults.conflict_on_update(resource, None, count=3)


# What each run does to the API server every second while it lasts.
FAULTS: dict[str, Callable[[ClusterEnv, Faults], None]] = {
    "watch-drops": lambda env, faults: faults.drop_watches(3, after_events=2),
    "expired-watches-410": expired_watches,
    "conflicts-409": conflicts,
    "throttled-429": lambda env, faults: faults.throttle(8, retry_after=1),
    "slow-api-server": lambda env, faults: faults.slow(0.2, count=100),
}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path) as made:
        yield made


class Chaos:
    """Re-arms one fault every second for ``CHAOS_S`` seconds (or until stopped), then clears
    every fault."""

    def __init__(self, env: ClusterEnv, arm: Callable[[ClusterEnv, Faults], None]) -> None:
        self.env, self.arm = env, arm
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def _run(self) -> None:
        ends = time.monotonic() + CHAOS_S
        while time.monotonic() < ends and not self.stop.is_set():
            self.arm(self.env, self.env.kube.faults)
            self.stop.wait(1.0)
        self.env.kube.faults.clear()

    def __enter__(self) -> Chaos:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        self.env.kube.faults.clear()


def phase(env: ClusterEnv, resource: str, wanted: str) -> list[str]:
    """Names of the objects of ``resource`` not in phase ``wanted``."""
    return [str(o["metadata"]["name"]) for o in env.kube.store.view(resource)
            if (o.get("status") or {}).get("phase") != wanted]


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_kubernetes_faults_during_a_run_with_pods(env: ClusterEnv, fault: str) -> None:
    for node in NODES:
        env.add_kubelet(node)
    controller = LoopProcess(env).start()
    try:
        with Chaos(env, FAULTS[fault]):
            for i in range(CLAIMS):
                env.create_claim(f"data-{i:03d}")
            for i in range(PODS):
                env.create_pod(f"app-{i:02d}", [f"data-{i:03d}"])  # the scheduler picks
            wait_until(lambda: not phase(env, "persistentvolumeclaims", "Bound")
                       and not phase(env, "pods", "Running"), timeout=240,
                       what=f"every claim Bound and every pod Running under {fault}")
        result = wait_clean(env, timeout=30)
        assert result.clean and result.volumes == result.pvs == CLAIMS, str(result)

        for i in range(PODS):
            env.kube.store.delete("pods", f"app-{i:02d}", namespace="default")
        wait_until(lambda: not env.kube.store.view("pods")
                   and not env.kube.store.view("volumeattachments"), timeout=120,
                   what="pods gone and volumes detached")
        for i in range(CLAIMS):
            env.kube.store.delete("persistentvolumeclaims", f"data-{i:03d}",
                                  namespace="default")
        wait_until(lambda: not live_volumes(env) and not env.kube.store.view(
            "persistentvolumes") and not env.kube.store.view("persistentvolumeclaims"),
            timeout=180, what="every claim, PV and volume gone")
        assert audit(env).clean
    finally:
        controller.stop()
