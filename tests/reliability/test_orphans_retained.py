"""Retain and registry volumes are never deleted, neither by deletion nor by the orphan sweep,
even with ``--delete-orphans`` on and no grace (issue 10, build 8 data safety, loop part).

``cinder-csi controller --with-provisioner --registry --delete-orphans --orphan-grace 0`` with a
sweep every second runs while an admin does what admins do: a claim of a Retain class is
deleted and then its PV (to re-import the volume elsewhere); a Delete PV is switched to Retain
and deleted at once with its claim; the image registry's claim and PV are deleted (its duty
adopts the pre-created volume again). A volume that really is lost (made with reclaim policy
Delete, no PV, no claim) is the control: the sweep deletes it, so it was running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cinder_csi import RECLAIM_POLICY_KEY
from cinder_csi.csi import csi_pb2
from tests.integration.cluster_env import TOPOLOGY_KEY, ClusterEnv, cluster_env, wait_until
from tests.integration.csi_helpers import create_request
from tests.reliability.harness import LoopProcess, live_volumes

REGISTRY_NS = "openshift-image-registry"
REGISTRY_CLAIM = "image-registry-storage"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, real_devices=False) as made:
        yield made


def volume_of(env: ClusterEnv, claim: str, namespace: str = "default") -> tuple[str, str]:
    """(PV name, volume id) of a bound claim."""
    pv_name = env.wait_bound(claim, namespace, timeout=60)["spec"]["volumeName"]
    pv = env.pv(pv_name)
    assert pv is not None
    return pv_name, pv["spec"]["csi"]["volumeHandle"]


def gone(env: ClusterEnv, resource: str, name: str, namespace: str | None = None) -> bool:
    return env.kube.store.peek(resource, name, namespace=namespace) is None


def test_retain_and_registry_volumes_survive_deletion_and_the_sweep(env: ClusterEnv) -> None:
    env.create_namespace(REGISTRY_NS)
    in_zone = csi_pb2.TopologyRequirement(
        requisite=[csi_pb2.Topology(segments={TOPOLOGY_KEY: env.zones["node-0"]})])
    registry = str(env.csi.controller.CreateVolume(
        create_request("registry-data", accessibility_requirements=in_zone),
        timeout=30).volume.volume_id)
    lost_name = "pvc-00000000-0000-4000-8000-00000000abcd"
    lost = str(env.csi.controller.CreateVolume(create_request(
        lost_name, parameters={RECLAIM_POLICY_KEY: "Delete"}), timeout=30).volume.volume_id)
    env.create_class("keep", reclaim="Retain")
    controller = LoopProcess(env, extra=(
        "--registry", "--registry-volume-id", registry, "--registry-size", "1Gi",
        "--delete-orphans", "--orphan-grace", "0", "--orphan-sweep-interval", "1")).start()
    try:
        env.create_claim("kept", storage_class="keep")
        env.create_claim("switched")
        kept_pv, kept = volume_of(env, "kept")
        switched_pv, switched = volume_of(env, "switched")
        registry_pv, adopted = volume_of(env, REGISTRY_CLAIM, REGISTRY_NS)
        assert adopted == registry

        env.kube.store.delete("persistentvolumeclaims", "kept", namespace="default")
        env.kube.store.delete("persistentvolumes", kept_pv)
        env.kube.store.patch("persistentvolumes", switched_pv,
                             {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
        env.kube.store.delete("persistentvolumeclaims", "switched", namespace="default")
        env.kube.store.delete("persistentvolumes", switched_pv)
        env.kube.store.delete("persistentvolumeclaims", REGISTRY_CLAIM, namespace=REGISTRY_NS)
        env.kube.store.delete("persistentvolumes", registry_pv)
        for pv in (kept_pv, switched_pv):
            wait_until(lambda pv=pv: gone(env, "persistentvolumes", pv), timeout=30,
                       what=f"PV {pv} gone")

        wait_until(lambda: lost not in {v["id"] for v in live_volumes(env)}, timeout=30,
                   what="the sweep deleting the lost volume (so it runs and deletes)")
        for pv in (kept_pv, switched_pv):  # a PV's name is its volume's name
            wait_until(lambda pv=pv: env.events_for(pv, reason="OrphanedVolume",
                                                    kind="PersistentVolume"),
                       timeout=30, what=f"volume {pv} reported as an orphan")
        env.wait_bound(REGISTRY_CLAIM, REGISTRY_NS, timeout=60)  # adopted again
        time.sleep(3)  # three more sweeps
        survivors = {v["id"] for v in live_volumes(env)}
        assert {kept, switched, registry} <= survivors
        assert [e for e in env.kube.store.view("events")
                if e.get("reason") == "OrphanedVolumeDeleted"
                and any(v in str(e.get("message")) for v in (kept, switched, registry))] == []
    finally:
        controller.stop()
