"""Resident memory of each process, idle, and of the watch loop with a large cluster cached.

- the controller (``cinder-csi controller`` against the OpenStack stand-in), idle;
- the node plugin (``cinder-csi node``), idle;
- the watch loop (``cinder-csi provisioner``, every duty) on an empty cluster, and with N
  bound claims and their PVs in its caches (made directly in the Kubernetes stand-in's store,
  shaped as the loop writes them; the loop lists and watches them like any others).

Each is a process of its own; RSS and its peak (VmHWM) come from /proc after a settling pause.
For the loop, the note also gives its thread count and what their stacks hold resident.
Targets: the loop at most 100 MB with 10,000 claims and PVs, the node plugin at most 50 MB.

Usage: python -m bench memory [--claims 10000] [--settle 5] [--runs 2]
"""

from __future__ import annotations

import argparse
import re
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.processes import start_controller, start_loop, start_node, start_openstack
from bench.procstat import sample
from bench.results import GO_SIDECAR, Report, spread
from cinder_csi.standins.kube import KubeStandIn

DRIVER = "cinder.csi.openstack.org"
TARGET_LOOP_MB = 100.0
TARGET_NODE_MB = 50.0


def populate(kube: KubeStandIn, claims: int) -> None:
    """``claims`` Bound claims in namespace default, each with its PV, as the loop makes them."""
    store = kube.store
    for i in range(claims):
        name = f"bench-{i}"
        claim = store.create("persistentvolumeclaims", {
            "metadata": {"name": name, "namespace": "default", "annotations": {
                "volume.kubernetes.io/storage-provisioner": DRIVER,
                "volume.beta.kubernetes.io/storage-provisioner": DRIVER,
                "pv.kubernetes.io/bind-completed": "yes",
                "pv.kubernetes.io/bound-by-controller": "yes"},
                "finalizers": ["kubernetes.io/pvc-protection"]},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                     "resources": {"requests": {"storage": "1Gi"}}}})
        uid = claim["metadata"]["uid"]
        pv_name = f"pvc-{uid}"
        store.create("persistentvolumes", {
            "metadata": {"name": pv_name, "annotations": {
                "pv.kubernetes.io/provisioned-by": DRIVER,
                "volume.kubernetes.io/provisioner-deletion-secret-name": "",
                "volume.kubernetes.io/provisioner-deletion-secret-namespace": ""},
                "finalizers": ["kubernetes.io/pv-protection",
                               "external-provisioner.volume.kubernetes.io/finalizer"]},
            "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                  "namespace": "default", "name": name, "uid": uid},
                     "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": "standard", "volumeMode": "Filesystem",
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [{
                         "key": "topology.cinder.csi.openstack.org/zone", "operator": "In",
                         "values": ["az-a"]}]}]}},
                     "csi": {"driver": DRIVER, "fsType": "ext4",
                             "volumeHandle": f"00000000-0000-4000-8000-{i:012d}",
                             "volumeAttributes": {
                                 "storage.kubernetes.io/csiProvisionerIdentity":
                                     f"1700000000000-8081-{DRIVER}"}}}})
        store.mutate("persistentvolumeclaims", name, lambda c, pv=pv_name: c["spec"].update(
            volumeName=pv), namespace="default")
        store.mutate("persistentvolumeclaims", name, lambda c: c.setdefault(
            "status", {}).update(phase="Bound", accessModes=["ReadWriteOnce"],
                                 capacity={"storage": "1Gi"}),
            namespace="default", subresource="status")
        store.mutate("persistentvolumes", pv_name, lambda v: v.setdefault(
            "status", {}).update(phase="Bound"), subresource="status")


def thread_stacks(pid: int) -> tuple[int, float]:
    """(threads, MB their stacks hold resident): the anonymous mappings of exactly the
    default stack size (``ulimit -s``), which is what glibc gives each new thread."""
    threads = len(list(Path(f"/proc/{pid}/task").iterdir()))
    stack_kb = resource.getrlimit(resource.RLIMIT_STACK)[0] // 1024
    resident_kb = 0
    size_kb, anonymous = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \S+\s*(\S*)", line)
        if head:
            size_kb = (int(head[2], 16) - int(head[1], 16)) // 1024
            anonymous = not head[3]
        elif line.startswith("Rss:") and anonymous and size_kb == stack_kb:
            resident_kb += int(line.split()[1])
    return threads, resident_kb / 1024


def loop_rss(root: Path, kube: KubeStandIn, controller_socket: Path, settle: float
             ) -> tuple[float, float, int, float]:
    """(RSS, peak RSS, threads, MB of thread stacks) of a fresh loop once its caches are
    filled and it has settled."""
    loop = start_loop(root, controller_socket, kube.write_kubeconfig(root / "kubeconfig"))
    try:
        time.sleep(settle)
        found = sample(loop.pid)
        return (found.rss_mb, found.peak_rss_mb, *thread_stacks(loop.pid))
    finally:
        loop.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench memory", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=10_000)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds to let a process settle before reading its memory")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    report = Report("memory", ["process", "state", "RSS MB (runs)", "peak RSS MB",
                               "target", "ratio to target"])
    figures: dict[str, Any] = {}
    threads: list[tuple[int, float]] = []
    rows: dict[tuple[str, str, float | None], list[tuple[float, float]]] = {}

    def keep(process: str, state: str, target: float | None, rss: float, peak: float) -> None:
        rows.setdefault((process, state, target), []).append((rss, peak))

    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        children = []
        try:
            node, _ = start_node(root)
            children.append(node)
            openstack, conf = start_openstack(root)
            children.append(openstack)
            controller, socket = start_controller(root, conf)
            children.append(controller)
            for _ in range(args.runs):
                time.sleep(args.settle)
                got = sample(node.pid)
                keep("node plugin", "idle", TARGET_NODE_MB, got.rss_mb, got.peak_rss_mb)
                got = sample(controller.pid)
                keep("controller", "idle", None, got.rss_mb, got.peak_rss_mb)
            for _ in range(args.runs):
                with KubeStandIn(controllers=(), event_window=5 * args.claims + 1000) as kube:
                    empty = loop_rss(root, kube, socket, args.settle)
                    keep("loop", "empty cluster", None, *empty[:2])
                    populate(kube, args.claims)
                    full = loop_rss(root, kube, socket, args.settle)
                    keep("loop", f"{args.claims} claims + PVs cached", TARGET_LOOP_MB, *full[:2])
                    threads.append((full[2], full[3]))
        finally:
            for child in reversed(children):
                child.stop()
    for (process, state, target), values in rows.items():
        rss = [v[0] for v in values]
        report.add(process, state, spread(rss), max(v[1] for v in values),
                   f"{target:.0f} MB" if target else "-",
                   f"{max(rss) / target:.2f}x" if target else "-")
        figures[f"{process}/{state}"] = {"rss_mb": rss, "peak_mb": [v[1] for v in values]}
    figures["loop/threads"] = [{"threads": n, "stacks_mb": mb} for n, mb in threads]
    report.figures = figures
    report.note(f"RSS read {args.settle:.0f} s after start (the loop: after its caches "
                f"synced); {args.runs} runs; reference: Go external-provisioner "
                f"{GO_SIDECAR['rss_mb_after_run']} MB after 300 claims (quoted)")
    if threads:
        report.note(f"the loop's threads: {threads[-1][0]}, their stacks "
                    f"{max(mb for _, mb in threads):.1f} MB resident")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
