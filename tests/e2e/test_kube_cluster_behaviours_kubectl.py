"""kubectl against the stand-in: apply, get -o yaml, get --watch and delete, with its defaults.

No ``--validate=false``: kubectl's default (strict, server-side) validation has to work, which
needs the OpenAPI v3 documents the stand-in serves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import wait_until

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.tools("kubectl")

DRIVER = "cinder.csi.openstack.org"

MANIFEST = """
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: cinder
provisioner: cinder.csi.openstack.org
volumeBindingMode: Immediate
allowVolumeExpansion: true
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: static-1
  labels: {tier: gold}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  storageClassName: cinder
  persistentVolumeReclaimPolicy: Retain
  csi: {driver: cinder.csi.openstack.org, volumeHandle: vol-1, fsType: ext4}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: cinder
  volumeName: static-1
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata:
  name: app
  labels: {app: demo}
spec:
  containers:
  - name: app
    image: busybox:1.36
    volumeMounts: [{name: data, mountPath: /data}]
  volumes:
  - name: data
    persistentVolumeClaim: {claimName: data}
"""


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn() as standin:
        standin.add_node("node-a")
        yield standin


@pytest.fixture
def env(kube: KubeStandIn, tmp_path: Path) -> dict[str, str]:
    config = kube.write_kubeconfig(tmp_path / "kubeconfig")
    # A private HOME keeps kubectl's discovery cache out of the real one.
    return {**os.environ, "KUBECONFIG": str(config), "HOME": str(tmp_path)}


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    assert KUBECTL is not None
    done = subprocess.run(
        [KUBECTL, *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    assert "error" not in done.stderr.lower(), done.stderr
    return done.stdout


def test_apply_get_and_delete(kube: KubeStandIn, env: dict[str, str], tmp_path: Path) -> None:
    manifest = tmp_path / "app.yaml"
    manifest.write_text(MANIFEST)
    out = kubectl(env, "apply", "-f", str(manifest))
    assert out.split("\n")[:4] == [
        "storageclass.storage.k8s.io/cinder created",
        "persistentvolume/static-1 created",
        "persistentvolumeclaim/data created",
        "pod/app created",
    ]
    assert "unchanged" in kubectl(env, "apply", "-f", str(manifest)).split("\n")[0]

    # Client-side apply again with a change: a strategic merge patch through the server.
    manifest.write_text(
        MANIFEST.replace("busybox:1.36", "busybox:1.37").replace(
            "labels: {app: demo}", "labels: {app: demo, env: test}"
        )
    )
    out = kubectl(env, "apply", "-f", str(manifest))
    assert "pod/app configured" in out
    pod = yaml.safe_load(kubectl(env, "get", "pod", "app", "-o", "yaml"))
    assert pod["spec"]["containers"][0]["image"] == "busybox:1.37"
    assert pod["metadata"]["labels"] == {"app": "demo", "env": "test"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in pod["metadata"]["annotations"]

    wait_until(
        lambda: (
            yaml.safe_load(kubectl(env, "get", "pvc", "data", "-o", "yaml"))["status"]["phase"]
            == "Bound"
        ),
        what="the claim to bind",
        timeout=10,
    )
    pv = yaml.safe_load(kubectl(env, "get", "pv", "static-1", "-o", "yaml"))
    assert pv["status"]["phase"] == "Bound" and pv["spec"]["claimRef"]["name"] == "data"
    sc = yaml.safe_load(kubectl(env, "get", "storageclass", "cinder", "-o", "yaml"))
    assert sc["reclaimPolicy"] == "Delete" and sc["volumeBindingMode"] == "Immediate"
    wait_until(
        lambda: kubectl(env, "get", "pod", "app", "-o", "jsonpath={.spec.nodeName}"),
        what="scheduling",
        timeout=10,
    )

    single = kubectl(env, "get", "pvc", "data").split("\n")
    assert single[0].split()[:3] == ["NAME", "STATUS", "VOLUME"]  # server-side Table
    assert single[1].split()[:3] == ["data", "Bound", "static-1"]
    table = kubectl(env, "get", "pvc,pv,sc,pods")
    assert "persistentvolumeclaim/data" in table and "Bound" in table
    assert "pod/app" in table and "storageclass.storage.k8s.io/cinder" in table
    assert (
        kubectl(env, "get", "pv", "-l", "tier=gold", "-o", "name") == "persistentvolume/static-1\n"
    )

    # A scheduled pod is deleted gracefully: without a kubelet it stays Terminating.
    kubectl(env, "delete", "pod", "app", "--wait=false")
    assert kubectl(env, "get", "pod", "app", "-o", "jsonpath={.metadata.deletionTimestamp}")
    kubectl(env, "delete", "pod", "app", "--grace-period=0", "--force")
    out = kubectl(env, "delete", "-f", str(manifest), "--ignore-not-found")
    assert 'persistentvolumeclaim "data" deleted' in out
    wait_until(
        lambda: kubectl(env, "get", "pvc,pv,sc,pods", "-o", "name") == "",
        what="everything to be gone",
        timeout=10,
    )


def _watch(
    env: dict[str, str], resource: str, stop_after: int
) -> tuple[subprocess.Popen[str], list[dict[str, Any]], threading.Thread]:
    assert KUBECTL is not None
    proc = subprocess.Popen(
        [KUBECTL, "get", resource, "--watch", "-o", "json", "--output-watch-events"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[dict[str, Any]] = []

    def read() -> None:
        assert proc.stdout is not None
        decoder = json.JSONDecoder()
        buffer = ""
        for line in proc.stdout:
            buffer += line
            try:
                event, _ = decoder.raw_decode(buffer.strip())
            except json.JSONDecodeError:
                continue
            buffer = ""
            events.append(event)
            if len(events) >= stop_after:
                break

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return proc, events, thread


@pytest.mark.parametrize(
    "resource", ["persistentvolumeclaims", "persistentvolumes", "storageclasses", "pods"]
)
def test_get_watch(kube: KubeStandIn, env: dict[str, str], resource: str) -> None:
    bodies = {
        "persistentvolumeclaims": {
            "metadata": {"name": "w"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
        "persistentvolumes": {
            "metadata": {"name": "w"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "csi": {"driver": DRIVER, "volumeHandle": "h"},
            },
        },
        "storageclasses": {"metadata": {"name": "w"}, "provisioner": DRIVER},
        "pods": {
            "metadata": {"name": "w"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    }
    kube.store.create(resource, bodies[resource])
    proc, events, reader = _watch(env, resource, stop_after=100)
    try:
        wait_until(lambda: len(events) >= 1, what="the initial event", timeout=10)
        kube.store.patch(resource, "w", {"metadata": {"labels": {"seen": "yes"}}})
        kube.store.mutate(resource, "w", lambda o: o["metadata"].update(finalizers=[]))
        kube.store.delete(resource, "w", grace_period=0)
        wait_until(lambda: events and events[-1]["type"] == "DELETED", what="DELETED", timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    types = [e["type"] for e in events]
    assert types[0] == "ADDED" and "MODIFIED" in types and types[-1] == "DELETED"
    assert events[1]["object"]["metadata"]["labels"] == {"seen": "yes"}


def test_table_watch_prints_rows(kube: KubeStandIn, env: dict[str, str]) -> None:
    assert KUBECTL is not None
    kube.store.create("storageclasses", {"metadata": {"name": "a"}, "provisioner": DRIVER})
    proc = subprocess.Popen(
        [KUBECTL, "get", "sc", "--watch"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(iter(proc.stdout.readline, ""))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: len(lines) >= 2, what="the first row", timeout=10)
        kube.store.create("storageclasses", {"metadata": {"name": "b"}, "provisioner": DRIVER})
        wait_until(lambda: len(lines) >= 3, what="the watched row", timeout=10)
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(10)
        assert proc.stdout is not None and proc.stderr is not None
        err = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert lines[0].split()[:3] == ["NAME", "PROVISIONER", "RECLAIMPOLICY"]
    assert [line.split()[0] for line in lines[1:]] == ["a", "b"]
    assert "error" not in err.lower()
