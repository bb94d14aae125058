"""The attachment controller on the stand-ins: real HTTP to the Kubernetes stand-in, real gRPC
to our CSI controller, Nova attaching real loop devices when root.

The stand-in's attach/detach controller makes and deletes the VolumeAttachments from pods, as
kube-controller-manager does; our loop attaches and detaches them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.loop.attacher import AttachmentController, AttachOptions
from cinder_csi.loop.protocol import ANN_VA_NODE_ID, attacher_finalizer
from cinder_csi.standins.kube import PUBLISH_PATH_ANNOTATION
from cinder_csi.standins.kube.store import Change
from tests.integration.cluster_env import DRIVER, STANDARD, ClusterEnv, cluster_env, wait_until
from tests.integration.csi_helpers import create_request

FINALIZER = attacher_finalizer(DRIVER)
ROOT = os.geteuid() == 0
Obj = dict[str, Any]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, nodes=3) as made:
        yield made


def attacher(**options: Any) -> Any:
    opts = {"attach_workers": 4, "detach_workers": 4, "reconcile_period": 0.0, **options}
    return functools.partial(AttachmentController, options=AttachOptions(**opts))


def static_volume(env: ClusterEnv, name: str, *, gib: int = 1, storage_class: str = STANDARD,
                  fs_type: str = "ext4") -> tuple[str, str]:
    """A Cinder volume made through our CSI controller, a hand-made PV naming it and a claim
    bound to that PV. Returns (volume id, PV name)."""
    response = env.csi.controller.CreateVolume(create_request(name, gib), timeout=30)
    volume_id = str(response.volume.volume_id)
    pv_name = f"static-{name}"
    env.kube.store.create("persistentvolumes", {
        "metadata": {"name": pv_name},
        "spec": {
            "capacity": {"storage": f"{gib}Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": storage_class,
            "csi": {"driver": DRIVER, "volumeHandle": volume_id, "fsType": fs_type},
            "claimRef": {"namespace": "default", "name": name},
        },
    })
    env.create_claim(name, size=f"{gib}Gi", storage_class=storage_class, volumeName=pv_name)
    env.wait_bound(name)
    return volume_id, pv_name


def attachment_of(env: ClusterEnv, pv_name: str) -> Obj | None:
    for va in env.kube.store.view("volumeattachments"):
        if ((va.get("spec") or {}).get("source") or {}).get("persistentVolumeName") == pv_name:
            return dict(va)
    return None


def wait_attached(env: ClusterEnv, pv_name: str, timeout: float = 30.0) -> Obj:
    def attached() -> Obj | None:
        va = attachment_of(env, pv_name)
        return va if va and (va.get("status") or {}).get("attached") is True else None
    return wait_until(attached, timeout=timeout, what=f"VolumeAttachment of {pv_name} attached")


def cinder(env: ClusterEnv, volume_id: str) -> Obj:
    (volume,) = [v for v in env.openstack.volumes() if v["id"] == volume_id]
    return dict(volume)


def finalizers(obj: Obj | None) -> list[str]:
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])


def test_pod_volume_is_attached_then_detached(env: ClusterEnv) -> None:
    volume_id, pv_name = static_volume(env, "data")
    if ROOT:
        env.add_kubelet("node-0")
    with env.run_loop([attacher()]) as loop:
        env.create_pod("app", ["data"], node="node-0")

        va = wait_attached(env, pv_name)
        assert va["spec"]["nodeName"] == "node-0"
        assert "DevicePath" in va["status"]["attachmentMetadata"]
        assert FINALIZER in finalizers(va)
        assert va["metadata"]["annotations"][ANN_VA_NODE_ID] == env.server_ids["node-0"]
        assert FINALIZER in finalizers(env.pv(pv_name))
        volume = cinder(env, volume_id)
        assert volume["status"] == "in-use"
        assert [a["server_id"] for a in volume["attachments"]] == [env.server_ids["node-0"]]

        if ROOT:  # the kubelet stand-in mounted it through our node plugin
            def published() -> str | None:
                pod = env.kube.store.peek("pods", "app", namespace="default") or {}
                ann = (pod.get("metadata") or {}).get("annotations") or {}
                return ann.get(PUBLISH_PATH_ANNOTATION + pv_name)
            target = Path(wait_until(published, timeout=60, what="pod volume published"))
            assert os.path.ismount(target)
            (target / "hello.txt").write_text("hi")

        env.kube.store.delete("pods", "app", namespace="default",
                              grace_period=None if ROOT else 0)

        wait_until(lambda: attachment_of(env, pv_name) is None, timeout=60,
                   what="VolumeAttachment gone")
        volume = cinder(env, volume_id)
        assert volume["status"] == "available" and volume["attachments"] == []
        wait_until(lambda: FINALIZER not in finalizers(env.pv(pv_name)), timeout=10,
                   what="PV finalizer removed")
        registry = loop.ctx.registry
        assert registry.get_sample_value("cinder_csi_attach_total", {"result": "success"}) == 1
        assert registry.get_sample_value("cinder_csi_detach_total", {"result": "success"}) == 1


def test_a_node_whose_csinode_is_gone_still_detaches(env: ClusterEnv) -> None:
    volume_id, pv_name = static_volume(env, "orphan")
    with env.run_loop([attacher()]):
        env.create_pod("app", ["orphan"], node="node-1")
        va = wait_attached(env, pv_name)
        assert va["metadata"]["annotations"][ANN_VA_NODE_ID] == env.server_ids["node-1"]

        env.kube.store.delete("csinodes", "node-1")  # the node (and its plugin) is gone
        env.kube.store.delete("pods", "app", namespace="default", grace_period=0)

        wait_until(lambda: attachment_of(env, pv_name) is None, timeout=30,
                   what="VolumeAttachment gone")
        volume = cinder(env, volume_id)
        assert volume["status"] == "available" and volume["attachments"] == []


def test_failed_attach_says_why_on_the_attachment(env: ClusterEnv) -> None:
    _, pv_name = static_volume(env, "broken")
    with env.run_loop([attacher()]):
        # No CSINode entry for our driver on node-2: attach cannot know the Nova server.
        env.kube.store.delete("csinodes", "node-2")
        env.create_pod("app", ["broken"], node="node-2")

        def errored() -> Obj | None:
            va = attachment_of(env, pv_name)
            return va if va and (va.get("status") or {}).get("attachError") else None
        va = wait_until(errored, timeout=30, what="attachError")
        assert "CSINode node-2 not found" in va["status"]["attachError"]["message"]
        event = env.wait_event(va["metadata"]["name"], "FailedAttachVolume",
                               kind="VolumeAttachment")
        assert event["type"] == "Warning"


def test_a_detach_burst_does_not_delay_an_attach(tmp_path: Path) -> None:
    # Without the stand-in's attach/detach controller the test owns the VolumeAttachments,
    # so it can delete twenty at once and submit one attach right behind them.
    controllers = ("pv", "protection", "scheduler", "namespace")
    with cluster_env(tmp_path, nodes=3, controllers=controllers) as env:
        with ThreadPoolExecutor(8) as pool:
            made = list(pool.map(lambda n: static_volume(env, n),
                                 [f"burst-{i}" for i in range(20)] + ["late"]))
        burst, (_, late_pv) = made[:20], made[20]
        with env.run_loop([attacher()]):
            for i, (_, pv_name) in enumerate(burst):
                make_attachment(env, f"va-burst-{i}", pv_name, f"node-{i % 2}")
            for _, pv_name in burst:
                wait_attached(env, pv_name, timeout=60)

            subscription = env.kube.store.subscribe()
            slow = env.openstack.faults.slow("detach", 0.5)
            try:
                for i in range(len(burst)):
                    env.kube.store.delete("volumeattachments", f"va-burst-{i}")
                make_attachment(env, "va-late", late_pv, "node-2")
                wait_until(lambda: all(attachment_of(env, p) is None for _, p in burst),
                           timeout=60, what="the burst detached")
            finally:
                slow.cancel()
            changes = drain(subscription)

    order = []
    for change in changes:
        if change.resource.plural != "volumeattachments":
            continue
        name = change.key[1]
        if change.type == "DELETED" and name.startswith("va-burst-"):
            order.append("detached")
        elif name == "va-late" and (change.object.get("status") or {}).get("attached") is True \
                and "attached" not in order:
            order.append("attached")
    assert order.count("detached") == 20 and order.count("attached") == 1
    # With one shared pool the attach would wait for all twenty detaches (0.5 s each, four at
    # a time); with its own pool it lands among the first of them.
    detached_before = order.index("attached")
    assert detached_before < 10, order


def make_attachment(env: ClusterEnv, name: str, pv_name: str, node: str) -> None:
    env.kube.store.create("volumeattachments", {
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": DRIVER, "nodeName": node,
                 "source": {"persistentVolumeName": pv_name}},
    })


def drain(subscription: Any) -> list[Change]:
    changes: list[Change] = []
    while (change := subscription.get(timeout=0)) is not None:
        changes.append(change)
    subscription.close()
    return changes


def test_reconcile_reattaches_a_volume_detached_behind_our_back(env: ClusterEnv) -> None:
    volume_id, pv_name = static_volume(env, "drift")
    with env.run_loop([attacher(reconcile_period=0.5)]):
        env.create_pod("app", ["drift"], node="node-0")
        va = wait_attached(env, pv_name)
        # Someone detaches the volume in OpenStack directly.
        request = csi_pb2.ControllerUnpublishVolumeRequest(
            volume_id=volume_id, node_id=env.server_ids["node-0"])

        def unpublished() -> bool:
            try:
                env.csi.controller.ControllerUnpublishVolume(request, timeout=30)
            except grpc.RpcError as exc:  # ABORTED while another call holds the volume
                if exc.code() != grpc.StatusCode.ABORTED:
                    raise
                return False
            return True
        wait_until(unpublished, timeout=30, what="out-of-band detach")
        assert cinder(env, volume_id)["status"] == "available"

        def reattached() -> bool:
            volume = cinder(env, volume_id)
            return volume["status"] == "in-use" and bool(volume["attachments"])
        wait_until(reattached, timeout=30, what="volume attached again")
        wait_attached(env, pv_name)
        again = attachment_of(env, pv_name)
        assert again is not None and again["metadata"]["uid"] == va["metadata"]["uid"]
        env.kube.store.delete("pods", "app", namespace="default", grace_period=0)
        wait_until(lambda: attachment_of(env, pv_name) is None, timeout=30,
                   what="VolumeAttachment gone")
