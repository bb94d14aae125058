"""Pods to mounted volumes through the whole attach path, with a slow Nova attach.

The sandbox (``Sandbox(loop=False)``: stand-ins in this process, controller and node plugins
as child processes, real loop devices as root) with M nodes, and our loop as its own process
(``cinder-csi provisioner``). Every Nova attach takes ``--attach-seconds`` (3 s) in the
OpenStack stand-in. N claims are provisioned first; then N pods, one claim each, spread over
the nodes, are created at once. Reported: from pod to Running (kubelet staged and published
the volume) p50/p99 and its ratio to the attach latency, and how long after Cinder marked the
volume in-use ControllerPublish returned (the controller's log line against the stand-in's
attach time), p50/max (target: within 0.5 s).

Usage: python -m bench attach [--pods 20] [--nodes 2] [--attach-seconds 3] [--runs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.milestones import Milestones, any_change, gone, phase_is
from bench.processes import start_loop
from bench.results import Report, mean, percentile, spread
from cinder_csi.sandbox.environment import Sandbox

TARGET_LATE_S = 0.5
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ \S+ (\{.*\})$")


def publish_returns(controller_log: Path) -> dict[str, float]:
    """volume id -> wall time its first successful ControllerPublishVolume returned."""
    out: dict[str, float] = {}
    for line in controller_log.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if not match or "ControllerPublishVolume" not in line:
            continue
        record = json.loads(match.group(2))
        if record.get("code") != "OK" or "volume_id" not in record:
            continue
        stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.setdefault(str(record["volume_id"]), stamp)
    return out


def run_once(pods: int, nodes: int, attach_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-attach-") as tmp:
        sandbox = Sandbox(Path(tmp), nodes=nodes, loop=False)
        loop = None
        try:
            sandbox.start()
            assert sandbox.kube is not None and sandbox.openstack is not None
            sandbox.openstack.faults.slow("attach", attach_seconds)
            loop = start_loop(sandbox.state_dir / "logs", sandbox.controller_socket,
                              sandbox.kubeconfig, "--cluster", "sandbox",
                              "--duties", "claims,volumes,attachments")
            marks = Milestones(sandbox.kube, {
                "bound": ("persistentvolumeclaims", phase_is("Bound")),
                "pod created": ("pods", any_change),
                "running": ("pods", phase_is("Running")),
                "pod gone": ("pods", gone),
                "claim gone": ("persistentvolumeclaims", gone),
            })
            store = sandbox.kube.store
            for i in range(pods):
                store.create("persistentvolumeclaims", {
                    "metadata": {"name": f"data-{i}", "namespace": "default"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                             "resources": {"requests": {"storage": "1Gi"}}}})
            marks.wait("bound", pods, 300)
            for i in range(pods):
                store.create("pods", {
                    "metadata": {"name": f"app-{i}", "namespace": "default"},
                    "spec": {"containers": [{"name": "app", "image": "busybox"}],
                             "nodeSelector": {"kubernetes.io/hostname": f"node-{i % nodes}"},
                             "volumes": [{"name": "data", "persistentVolumeClaim": {
                                 "claimName": f"data-{i}"}}]}})
            marks.wait("running", pods, 120 + pods * attach_seconds)
            to_running = marks.durations("pod created", "running")
            attached_at = {a["volume_id"]: a["attached_at"]
                           for v in sandbox.openstack.volumes() for a in v["attachments"]
                           if a.get("attached_at")}
            returned = publish_returns(sandbox.state_dir / "logs" / "controller.log")
            late = [returned[v] - t for v, t in attached_at.items() if v in returned]
            for i in range(pods):
                store.delete("pods", f"app-{i}", namespace="default")
            marks.wait("pod gone", pods, 300)
            for i in range(pods):
                store.delete("persistentvolumeclaims", f"data-{i}", namespace="default")
            marks.wait("claim gone", pods, 300)
            marks.close()
            return {"to_running_s": to_running, "publish_after_in_use_s": late}
        finally:
            if loop is not None:
                loop.stop()
            sandbox.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench attach", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--attach-seconds", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("attach needs root (the stand-in attaches loop devices); nothing measured")
        return 2
    report = Report("attach", ["pods / nodes", "pod to Running p50 s (runs)", "p99 s",
                               f"p50 / {args.attach_seconds:g} s attach",
                               "Publish after in-use p50 s", "max s",
                               f"target <= {TARGET_LATE_S} s"])
    runs = [run_once(args.pods, args.nodes, args.attach_seconds) for _ in range(args.runs)]
    p50 = [percentile(r["to_running_s"], 0.5) for r in runs]
    late = [x for r in runs for x in r["publish_after_in_use_s"]]
    report.add(f"{args.pods} / {args.nodes}", spread(p50),
               mean([percentile(r["to_running_s"], 0.99) for r in runs]),
               f"{max(p50) / args.attach_seconds:.2f}x", percentile(late, 0.5), max(late),
               "met" if max(late) <= TARGET_LATE_S else "missed")
    report.figures = {"runs": runs, "attach_seconds": args.attach_seconds}
    report.note(f"every Nova attach takes {args.attach_seconds:g} s; {args.runs} runs; "
                "Publish-after-in-use compares the controller's log time (ms) with the "
                "stand-in's attach time, over every volume of every run")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
