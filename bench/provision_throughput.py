"""Claims provisioned per second by the watch loop, with upstream's client defaults and ours.

The whole chain runs on the stand-ins: the Kubernetes stand-in (PV controller binding), the
loop (WatchLoop, claims + volumes duties) over real HTTP, our CSI controller over gRPC, the
OpenStack stand-in with Cinder-like latency (status changes take 0.2-0.6 s). Each run creates
N claims at once and measures until all are Bound, then deletes them and waits until every
Cinder volume is gone.

Usage: python -m bench.provision_throughput [--claims 200]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from cinder_csi.loop.runner import LoopOptions, WatchLoop
from tests.integration.cluster_env import cluster_env

PROFILES = {
    # name: (worker threads, kube-api-qps, kube-api-burst)
    "upstream defaults (100 workers, 5 qps / 10 burst)": (100, 5.0, 10),
    "cinder-csi defaults (100 workers, 50 qps / 100 burst)": (100, 50.0, 100),
}


def wait(probe: Any, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark run did not converge")
        time.sleep(0.2)


def run(claims: int, workers: int, qps: float, burst: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp, cluster_env(Path(tmp), real_devices=False) as env:
        env.openstack.faults.slow("create", 0.4)
        env.openstack.faults.slow("delete", 0.4)
        core: Any = k8s.CoreV1Api(env.api_client)
        stop = threading.Event()
        loop = WatchLoop(LoopOptions(
            csi_address=f"unix://{env.csi.socket}", kubeconfig=str(env.kubeconfig),
            workers=workers, kube_qps=qps, kube_burst=burst, duties=("claims", "volumes")))
        thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        thread.start()
        wait(loop.ready.is_set, 60)
        body = {"spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                         "resources": {"requests": {"storage": "1Gi"}}}}
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: core.create_namespaced_persistent_volume_claim(
                "default", {**body, "metadata": {"name": f"bench-{i}"}}), range(claims)))
        wait(lambda: sum(1 for c in env.kube.store.items("persistentvolumeclaims")
                         if (c.get("status") or {}).get("phase") == "Bound") == claims)
        bound = time.monotonic() - started
        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: core.delete_namespaced_persistent_volume_claim(
                f"bench-{i}", "default"), range(claims)))
        wait(lambda: not [v for v in env.openstack.volumes() if v["name"].startswith("pvc-")])
        deleted = time.monotonic() - started
        stop.set()
        thread.join(timeout=60)
        return bound, deleted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--claims", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.claims} claims created at once; seconds until all Bound, and until every "
          "Cinder volume is deleted after the claims are")
    results = {}
    for name, (workers, qps, burst) in PROFILES.items():
        bound, deleted = run(args.claims, workers, qps, burst)
        results[name] = bound
        print(f"  {name:<55} bound {bound:6.1f}s ({args.claims / bound:5.1f}/s)   "
              f"deleted {deleted:6.1f}s ({args.claims / deleted:5.1f}/s)")
    slow, fast = results.values()
    print(f"  speed-up of our defaults to all-Bound: {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
