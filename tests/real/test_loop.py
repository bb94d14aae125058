"""The watch loop end to end on the real cloud: `cinder-csi controller --with-provisioner`
against real Keystone, Cinder and Nova, and the Kubernetes stand-in (PV controller, scheduler,
attach/detach controller; no kubelet, since the fake virt driver makes no device to mount).

50 claims are provisioned and bound, pods on node-0 get them attached through real Nova (the
VolumeAttachments attached, Nova and Cinder agreeing), then detached and deleted. The
controller is killed with SIGKILL once while provisioning and once while attaching, and
restarted; afterwards every Cinder volume of the cluster is one PV's, and none is left at the
end.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cinder_csi import DEFAULT_DRIVER_NAME, TOPOLOGY_KEY
from cinder_csi.controller.create_or_adopt import CLUSTER_METADATA_KEY
from cinder_csi.standins.kube import KubeStandIn
from tests.real.cloud_check import Cloud, until
from tests.real.conftest import Session
from tests.real.controller_process import ControllerProcess
from tests.real.env import RealEnv

pytestmark = pytest.mark.real

CLAIMS = 50
CLAIMS_PER_POD = 5
STORAGE_CLASS = "standard"
NAMESPACE = "default"
Obj = dict[str, Any]


@dataclass
class LoopCluster:
    kube: KubeStandIn
    controller: ControllerProcess
    cloud: Cloud
    cluster: str
    server_ids: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    crashes: dict[str, int] = field(default_factory=dict)  # when -> progress at the kill

    # ---- reads of the Kubernetes stand-in

    def claims(self) -> list[Obj]:
        return list(self.kube.store.view("persistentvolumeclaims", namespace=NAMESPACE))

    def bound(self) -> list[Obj]:
        return [c for c in self.claims() if (c.get("status") or {}).get("phase") == "Bound"]

    def pvs(self) -> list[Obj]:
        return [pv for pv in self.kube.store.view("persistentvolumes")
                if ((pv.get("spec") or {}).get("csi") or {}).get("driver") == DEFAULT_DRIVER_NAME]

    def attachments(self) -> list[Obj]:
        return list(self.kube.store.view("volumeattachments"))

    def attached(self) -> list[Obj]:
        return [va for va in self.attachments()
                if (va.get("status") or {}).get("attached") is True]

    # ---- reads of Cinder

    def volumes(self) -> list[Any]:
        return [v for v in self.cloud.volumes()
                if (v.metadata or {}).get(CLUSTER_METADATA_KEY) == self.cluster]

    # ---- steps

    def phase(self, name: str, probe: Callable[[], bool], timeout: float) -> None:
        start = time.monotonic()
        until(lambda: True if probe() else None, name, timeout, interval=0.5)
        self.timings[name] = round(time.monotonic() - start, 1)

    def crash_and_restart(self, when: str, progress: int) -> None:
        """SIGKILL mid-flight (``progress`` of CLAIMS done), then start again."""
        assert progress < CLAIMS, f"too late to crash during {when}: all {CLAIMS} done"
        self.controller.kill()
        self.crashes[when] = progress
        self.controller.start()


def _register_node(kube: KubeStandIn, name: str, zone: str, server_id: str) -> None:
    node = kube.add_node(name, {TOPOLOGY_KEY: zone})
    kube.store.create("csinodes", {
        "metadata": {"name": name, "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
        "spec": {"drivers": [{"name": DEFAULT_DRIVER_NAME, "nodeID": server_id,
                              "topologyKeys": [TOPOLOGY_KEY],
                              "allocatable": {"count": 128}}]},
    })


@pytest.fixture
def loop_cluster(real: RealEnv, cloud: Cloud, session: Session,
                 tmp_path: Path) -> Iterator[LoopCluster]:
    cluster = f"{session.cluster}-loop"
    kube = KubeStandIn(bookmark_interval=1.0, event_window=20000).start()
    controller: ControllerProcess | None = None
    try:
        servers = {name: real.server_id(name) for name in ("node-0", "node-1")}
        for name, server_id in servers.items():
            zone = cloud.user.compute.get_server(server_id).availability_zone
            _register_node(kube, name, zone, server_id)
        kube.store.create("csidrivers", {
            "metadata": {"name": DEFAULT_DRIVER_NAME},
            "spec": {"attachRequired": True, "podInfoOnMount": False,
                     "volumeLifecycleModes": ["Persistent"]}})
        kube.store.create("storageclasses", {
            "metadata": {"name": STORAGE_CLASS, "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": DEFAULT_DRIVER_NAME, "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate", "allowVolumeExpansion": True})
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        # Every claim goes to node-0 (and its root disk is attached too): lift our default
        # per-node limit of 25, as an operator of such nodes would.
        limits = tmp_path / "attach-limit.conf"
        limits.write_text("[BlockStorage]\nnode-volume-attach-limit = 64\n")
        controller = ControllerProcess(tmp_path, [
            "--cloud-config", str(real.cloud_conf), "--cloud-config", str(limits),
            "--cluster", cluster, "--with-provisioner", "--kubeconfig", str(kubeconfig),
            # A handful of workers: a burst of 16 parallel creates took the rig's MariaDB past
            # its 200 connections, and Cinder lost a create (stuck 'creating') in the middle.
            "--worker-threads", "4", "--timeout", "300", "--log-level", "INFO",
        ], name="loop-controller")
        controller.start()
        made = LoopCluster(kube=kube, controller=controller, cloud=cloud, cluster=cluster,
                           server_ids=servers)
        yield made
        (session.workdir / "loop-timings.json").write_text(
            json.dumps({"seconds": made.timings, "crashed at": made.crashes}, indent=1))
    finally:
        if controller is not None:
            controller.stop()
        kube.stop()
        cloud.sweep(prefixes=(cluster,))


def claim(index: int) -> Obj:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"data-{index:02d}", "namespace": NAMESPACE},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": STORAGE_CLASS,
                     "resources": {"requests": {"storage": "1Gi"}}}}


def pod(index: int, claims: list[str]) -> Obj:
    return {"metadata": {"name": f"app-{index:02d}", "namespace": NAMESPACE},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": "node-0"},
                     "containers": [{"name": "app", "image": "busybox"}],
                     "volumes": [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                                 for i, c in enumerate(claims)]}}


def audit_volumes_match_pvs(cluster: LoopCluster) -> list[str]:
    """Every Cinder volume of the cluster belongs to exactly one PV, and the other way round."""
    volumes = cluster.volumes()
    names = Counter(v.name for v in volumes)
    assert [n for n, count in names.items() if count > 1] == [], "a claim got two volumes"
    handles = [pv["spec"]["csi"]["volumeHandle"] for pv in cluster.pvs()]
    assert len(handles) == len(set(handles)), "two PVs share a volume"
    assert {v.id for v in volumes} == set(handles), "a Cinder volume without a PV, or back"
    by_id = {v.id: v for v in volumes}
    for pv in cluster.pvs():
        assert by_id[pv["spec"]["csi"]["volumeHandle"]].name == pv["metadata"]["name"]
    return handles


@pytest.mark.timeout(1800)
def test_fifty_claims_bound_attached_detached_deleted_through_crashes(
        loop_cluster: LoopCluster) -> None:
    cluster = loop_cluster
    store = cluster.kube.store
    node0 = cluster.server_ids["node-0"]

    for index in range(CLAIMS):
        store.create("persistentvolumeclaims", claim(index), namespace=NAMESPACE)
    cluster.phase("first claims bound", lambda: len(cluster.bound()) >= CLAIMS // 5, 300)
    cluster.crash_and_restart("provisioning", len(cluster.bound()))
    cluster.phase(f"{CLAIMS} claims bound", lambda: len(cluster.bound()) == CLAIMS, 300)
    handles = audit_volumes_match_pvs(cluster)
    assert len(handles) == CLAIMS
    for volume in cluster.volumes():
        assert volume.status == "available" and volume.size == 1

    names = sorted(c["metadata"]["name"] for c in cluster.claims())
    for index in range(CLAIMS // CLAIMS_PER_POD):
        store.create("pods", pod(index, names[index * CLAIMS_PER_POD:
                                               (index + 1) * CLAIMS_PER_POD]),
                     namespace=NAMESPACE)
    cluster.phase("first attachments", lambda: len(cluster.attached()) >= CLAIMS // 5, 600)
    cluster.crash_and_restart("attaching", len(cluster.attached()))
    cluster.phase(f"{CLAIMS} attached", lambda: len(cluster.attached()) == CLAIMS, 900)

    # Nova and Cinder agree with the VolumeAttachments.
    assert {va["spec"]["nodeName"] for va in cluster.attachments()} == {"node-0"}
    assert set(handles) <= cluster.cloud.server_volume_ids(node0)
    for volume in cluster.volumes():
        assert volume.status == "in-use", (volume.id, volume.status)
        assert cluster.cloud.attached_servers(volume) == {node0}
    assert sorted(audit_volumes_match_pvs(cluster)) == sorted(handles)

    for index in range(CLAIMS // CLAIMS_PER_POD):
        store.delete("pods", f"app-{index:02d}", namespace=NAMESPACE, grace_period=0)
    cluster.phase("all detached", lambda: not cluster.attachments(), 900)
    assert not set(handles) & cluster.cloud.server_volume_ids(node0)
    assert {v.status for v in cluster.volumes()} == {"available"}

    for name in names:
        store.delete("persistentvolumeclaims", name, namespace=NAMESPACE)
    cluster.phase("all deleted", lambda: not cluster.pvs() and not cluster.volumes(), 900)
    assert not cluster.claims()
    # Nothing of the cluster is left in Cinder, not even a volume a crash made twice.
    assert [v.id for v in cluster.volumes()] == []
    assert cluster.controller.starts == 3
    # The restarts picked up half-done work without refusing any of it.
    refused = [line for line in cluster.controller.log_text().splitlines()
               if '"code": "FAILED_PRECONDITION"' in line or '"code": "INTERNAL"' in line]
    assert refused == []
