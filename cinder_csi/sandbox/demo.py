"""`cinder-csi sandbox --demo`: a PVC and a pod through the whole flow, narrated with timings.

Everything goes through the Kubernetes API over HTTP with the real client, as kubectl would:
claim → Bound (Cinder volume) → pod on node-0 (Nova attach, mkfs, mount) → write a file → pod
deleted (unmount, detach) → pod on node-1 → the file is there → clean-up (volume deleted).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cinder_csi.standins.kube import PUBLISH_PATH_ANNOTATION
from cinder_csi.standins.kube.client import api_client

T = TypeVar("T")
NAMESPACE = "default"
CLAIM = "demo-data"
STEP_TIMEOUT_S = 120.0


class _DemoFailed(Exception):
    """A step did not end as it should; the demo stops there and says which."""


@dataclass(frozen=True)
class DemoTarget:
    """What the demo works against."""

    kubeconfig: Path  # the cluster, reached through its API as kubectl would
    cinder_volumes: Callable[[], list[dict[str, Any]]]  # the cloud's volumes, to watch Cinder
    logs: Path  # named when a step fails


class Narrator:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.step_started = self.started
        self.count = 0

    def step(self, text: str) -> None:
        self.count += 1
        self.step_started = time.monotonic()
        print(f"[{self.count}] {text}", flush=True)

    def done(self, text: str) -> None:
        took = time.monotonic() - self.step_started
        print(f"    ok ({took:.1f}s): {text}", flush=True)


def wait(probe: Callable[[], T | None], what: str, stop: threading.Event) -> T:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while time.monotonic() < deadline:
        if stop.is_set():
            raise _DemoFailed("interrupted")
        result = probe()
        if result is not None:
            return result
        time.sleep(0.2)
    raise _DemoFailed(f"timed out after {STEP_TIMEOUT_S:.0f}s waiting for {what}")


def _missing(call: Callable[[], Any]) -> bool:
    try:
        call()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def pod_body(name: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.example.com/busybox:1.36",
                            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": CLAIM}}],
        },
    }


def run_demo(target: DemoTarget, stop: threading.Event) -> int:
    if os.geteuid() != 0:
        print("the demo needs root: the stand-in Nova attaches volumes as loop devices and the "
              "node plugin formats and mounts them. Run it with sudo.", flush=True)
        return 2
    try:
        _demo(target, stop)
    except _DemoFailed as exc:
        print(f"demo failed: {exc}; logs are in {target.logs}", flush=True)
        return 1
    return 0


def _demo(target: DemoTarget, stop: threading.Event) -> None:
    volumes = target.cinder_volumes
    core: Any = k8s.CoreV1Api(api_client(target.kubeconfig))
    say = Narrator()
    print(f"demo: kubeconfig {target.kubeconfig}, two nodes in two zones", flush=True)

    say.step(f"create PVC {CLAIM} (1Gi, StorageClass standard)")
    core.create_namespaced_persistent_volume_claim(NAMESPACE, {
        "metadata": {"name": CLAIM},
        "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "standard",
                 "resources": {"requests": {"storage": "1Gi"}}}})
    def bound() -> Any:
        found = core.read_namespaced_persistent_volume_claim(CLAIM, NAMESPACE)
        return found if found.status.phase == "Bound" else None

    claim = wait(bound, "the claim to be Bound", stop)
    pv_name = claim.spec.volume_name
    handle = core.read_persistent_volume(pv_name).spec.csi.volume_handle
    say.done(f"Bound to {pv_name}, Cinder volume {handle}")

    path = _run_pod(core, "demo-writer", "node-0", pv_name, say, stop)
    say.step("write /data/hello.txt in the pod's volume")
    (path / "hello.txt").write_text("written on node-0\n")
    say.done(f"{path / 'hello.txt'} = {(path / 'hello.txt').read_text().strip()!r}")
    _delete_pod(core, "demo-writer", handle, volumes, say, stop)

    path = _run_pod(core, "demo-reader", "node-1", pv_name, say, stop)
    say.step("read /data/hello.txt on node-1")
    text = (path / "hello.txt").read_text().strip()
    if text != "written on node-0":
        raise _DemoFailed(f"the file says {text!r}")
    say.done(f"the data moved with the volume: {text!r}")
    _delete_pod(core, "demo-reader", handle, volumes, say, stop)

    say.step(f"delete PVC {CLAIM} (reclaimPolicy Delete)")
    core.delete_namespaced_persistent_volume_claim(CLAIM, NAMESPACE)
    wait(lambda: _missing(lambda: core.read_persistent_volume(pv_name)) or None,
         f"PV {pv_name} to go", stop)
    wait(lambda: all(v["id"] != handle for v in volumes()) or None,
         f"Cinder volume {handle} to be deleted", stop)
    say.done(f"PV {pv_name} and Cinder volume {handle} deleted")
    print(f"demo complete in {time.monotonic() - say.started:.1f}s", flush=True)


def _run_pod(core: Any, name: str, node: str, pv_name: str, say: Narrator,
             stop: threading.Event) -> Path:
    say.step(f"start pod {name} on {node}")
    core.create_namespaced_pod(NAMESPACE, pod_body(name, node))
    def running() -> Any:
        found = core.read_namespaced_pod(name, NAMESPACE)
        return found if found.status.phase == "Running" else None

    pod = wait(running, f"pod {name} to run", stop)
    path = Path(pod.metadata.annotations[PUBLISH_PATH_ANNOTATION + pv_name])
    say.done(f"attached by Nova, mounted by the node plugin at {path}")
    return path


def _delete_pod(core: Any, name: str, handle: str,
                volumes: Callable[[], list[dict[str, Any]]], say: Narrator,
                stop: threading.Event) -> None:
    say.step(f"delete pod {name}")
    core.delete_namespaced_pod(name, NAMESPACE)
    wait(lambda: _missing(lambda: core.read_namespaced_pod(name, NAMESPACE)) or None,
         f"pod {name} to go", stop)
    wait(lambda: any(v["id"] == handle and v["status"] == "available"
                     for v in volumes()) or None,
         f"volume {handle} to be detached", stop)
    say.done("unmounted and detached (Cinder volume available)")
