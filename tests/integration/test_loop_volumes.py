"""The volume controller against the stand-ins: release, deletion, finalizers; PVs made by us
and PVs made the way external-provisioner makes them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.loop import protocol as p
from cinder_csi.loop.claims import ClaimController
from cinder_csi.loop.deletion import VolumeController
from tests.integration.cluster_env import DRIVER, ClusterEnv, cluster_env, wait_until
from tests.integration.csi_helpers import create_request, mount_cap

LOOP = (ClaimController, VolumeController)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path) as made:
        yield made


def volume_ids(env: ClusterEnv) -> set[str]:
    return {str(v["id"]) for v in env.cinder_volumes()}


def upstream_style_pv(env: ClusterEnv, claim: dict[str, Any], volume_id: str, *,
                      reclaim: str = "Delete", provisioned: bool = True,
                      secret: tuple[str, str] = ("", "")) -> dict[str, Any]:
    """A PV exactly as external-provisioner v5 writes it (or a static one: no annotations)."""
    meta = claim["metadata"]
    pv: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": f"pvc-{meta['uid']}"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": meta["namespace"], "name": meta["name"],
                         "uid": meta["uid"], "resourceVersion": meta["resourceVersion"]},
            "csi": {"driver": DRIVER, "volumeHandle": volume_id, "fsType": "ext4",
                    "volumeAttributes": {
                        "storage.kubernetes.io/csiProvisionerIdentity":
                            "1699999999999-9999-cinder.csi.openstack.org"}},
            "persistentVolumeReclaimPolicy": reclaim,
            "storageClassName": "manual",
            "volumeMode": "Filesystem",
        },
    }
    if provisioned:
        pv["metadata"]["annotations"] = {
            p.ANN_PROVISIONED_BY: DRIVER,
            p.ANN_DELETION_SECRET_NAME: secret[0],
            p.ANN_DELETION_SECRET_NAMESPACE: secret[1],
        }
        if reclaim == "Delete":
            pv["metadata"]["finalizers"] = [p.FINALIZER_PV_DELETION]
    return env.kube.store.create("persistentvolumes", pv)


def bound_foreign_pv(env: ClusterEnv, claim_name: str, **kw: Any) -> tuple[str, str]:
    """A claim of a class with no provisioner, bound to a hand-made PV over a real volume."""
    if env.kube.store.peek("storageclasses", "manual") is None:
        env.create_class("manual", provisioner="kubernetes.io/no-provisioner")
    claim = env.create_claim(claim_name, storage_class="manual")
    name = f"pvc-{claim['metadata']['uid']}"
    volume_id = str(env.csi.controller.CreateVolume(create_request(name, 1), timeout=30)
                    .volume.volume_id)
    upstream_style_pv(env, claim, volume_id, **kw)
    env.wait_bound(claim_name)
    return name, volume_id


def test_upstream_made_pv_is_deleted_by_our_loop(env: ClusterEnv) -> None:
    name, volume_id = bound_foreign_pv(env, "theirs")
    with env.run_loop(LOOP):
        env.core.delete_namespaced_persistent_volume_claim("theirs", "default")
        wait_until(lambda: env.pv(name) is None, timeout=20, what="PV deleted")
        assert volume_id not in volume_ids(env)


def test_static_pv_gets_finalizer_and_is_deleted(env: ClusterEnv) -> None:
    name, volume_id = bound_foreign_pv(env, "static", provisioned=False)
    with env.run_loop(LOOP):
        wait_until(lambda: p.FINALIZER_PV_DELETION in
                   (env.pv(name) or {})["metadata"].get("finalizers", []),
                   timeout=10, what="deletion finalizer on the static PV")
        env.core.delete_namespaced_persistent_volume_claim("static", "default")
        wait_until(lambda: env.pv(name) is None, timeout=20, what="PV deleted")
        assert volume_id not in volume_ids(env)


def test_retain_drops_the_finalizer_and_keeps_the_volume(env: ClusterEnv) -> None:
    with env.run_loop(LOOP):
        env.create_claim("keep")
        name = env.wait_bound("keep")["spec"]["volumeName"]
        pv = env.pv(name)
        assert pv is not None
        volume_id = pv["spec"]["csi"]["volumeHandle"]
        env.core.patch_persistent_volume(name, {"spec": {
            "persistentVolumeReclaimPolicy": "Retain"}})
        wait_until(lambda: p.FINALIZER_PV_DELETION not in
                   (env.pv(name) or {})["metadata"].get("finalizers", []),
                   timeout=10, what="finalizer removed")
        env.core.delete_namespaced_persistent_volume_claim("keep", "default")
        wait_until(lambda: (env.pv(name) or {}).get("status", {}).get("phase") == "Released",
                   timeout=10, what="PV Released")
        time.sleep(0.5)
        assert volume_id in volume_ids(env)


def test_no_deletion_while_a_volume_attachment_names_the_pv(env: ClusterEnv) -> None:
    with env.run_loop(LOOP):
        env.create_claim("held")
        name = env.wait_bound("held")["spec"]["volumeName"]
        pv = env.pv(name)
        assert pv is not None
        volume_id = pv["spec"]["csi"]["volumeHandle"]
        # The attacher's finalizer keeps it (detach pending) when the cluster deletes it.
        env.kube.store.create("volumeattachments", {
            "metadata": {"name": "csi-held", "finalizers": [p.attacher_finalizer(DRIVER)]},
            "spec": {"attacher": DRIVER, "nodeName": "node-0",
                     "source": {"persistentVolumeName": name}},
        })
        env.core.delete_namespaced_persistent_volume_claim("held", "default")
        wait_until(lambda: (env.pv(name) or {}).get("status", {}).get("phase") == "Released",
                   timeout=10, what="PV Released")
        time.sleep(1.0)
        assert env.pv(name) is not None
        assert volume_id in volume_ids(env)
        env.kube.store.patch("volumeattachments", "csi-held", {"metadata": {
            "finalizers": None}})
        if env.kube.store.peek("volumeattachments", "csi-held") is not None:
            env.storage.delete_volume_attachment("csi-held")
        wait_until(lambda: env.pv(name) is None, timeout=20, what="PV deleted after detach")
        assert volume_id not in volume_ids(env)


def test_failed_delete_is_reported_and_retried(env: ClusterEnv) -> None:
    with env.run_loop(LOOP):
        env.create_claim("busy")
        name = env.wait_bound("busy")["spec"]["volumeName"]
        pv = env.pv(name)
        assert pv is not None
        volume_id = pv["spec"]["csi"]["volumeHandle"]
        zone = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0][
            "matchExpressions"][0]["values"][0]
        server = env.server_ids[next(n for n, z in env.zones.items() if z == zone)]
        # Attached behind Kubernetes' back: Cinder refuses to delete it.
        env.csi.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=server, volume_capability=mount_cap()), timeout=30)
        env.core.delete_namespaced_persistent_volume_claim("busy", "default")
        event = env.wait_event(name, "VolumeFailedDelete", kind="PersistentVolume", timeout=20)
        assert event["type"] == "Warning"
        assert "code = FailedPrecondition desc = " in event["message"], event["message"]
        assert env.pv(name) is not None
        env.csi.controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume_id, node_id=server), timeout=30)
        wait_until(lambda: env.pv(name) is None, timeout=30, what="PV deleted on retry")
        assert volume_id not in volume_ids(env)


def test_missing_deletion_secret_deletes_without_and_says_so(env: ClusterEnv) -> None:
    """The deletion Secret went (with its class, say): DeleteVolume is sent without secrets,
    and an Event says so. Before, the volume stayed until someone restored the Secret."""
    name, volume_id = bound_foreign_pv(env, "secretive", secret=("gone", "default"))
    with env.run_loop(LOOP):
        env.core.delete_namespaced_persistent_volume_claim("secretive", "default")
        event = env.wait_event(name, "VolumeFailedDelete", kind="PersistentVolume", timeout=20)
        assert 'provisioner secret "default/gone" is gone' in event["message"]
        assert volume_id in event["message"]
        wait_until(lambda: env.pv(name) is None, timeout=30, what="PV deleted")
        assert volume_id not in volume_ids(env)


def test_other_drivers_pvs_are_left_alone(env: ClusterEnv) -> None:
    env.create_class("manual", provisioner="kubernetes.io/no-provisioner")
    claim = env.create_claim("foreign", storage_class="manual")
    meta = claim["metadata"]
    env.kube.store.create("persistentvolumes", {
        "metadata": {"name": "foreign-pv", "annotations": {p.ANN_PROVISIONED_BY: "other.csi"},
                     "finalizers": [p.FINALIZER_PV_DELETION]},
        "spec": {"accessModes": ["ReadWriteOnce"], "capacity": {"storage": "1Gi"},
                 "claimRef": {"namespace": "default", "name": "foreign", "uid": meta["uid"]},
                 "csi": {"driver": "other.csi", "volumeHandle": "x"},
                 "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "manual"},
    })
    env.wait_bound("foreign")
    with env.run_loop(LOOP):
        env.core.delete_namespaced_persistent_volume_claim("foreign", "default")
        wait_until(lambda: (env.pv("foreign-pv") or {}).get("status", {}).get("phase")
                   == "Released", timeout=10, what="Released")
        time.sleep(0.5)
        pv = env.pv("foreign-pv")
        assert pv is not None
        assert pv["metadata"]["finalizers"] == [p.FINALIZER_PV_DELETION,
                                                 "kubernetes.io/pv-protection"] or \
            p.FINALIZER_PV_DELETION in pv["metadata"]["finalizers"]
