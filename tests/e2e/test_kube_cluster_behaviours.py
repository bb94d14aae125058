"""The stand-in cluster's own controllers, driven by hand as a real cluster would be driven.

The tests play the external provisioner (create the PV when the claim is annotated) and the
external attacher (finalizer and status on the VolumeAttachment), through the real ``kubernetes``
client over HTTP, and check that binding, scheduling, attach/detach and release happen as in a
real cluster.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import api_client, wait_until

DRIVER = "cinder.csi.openstack.org"
ZONE = "topology.cinder.csi.openstack.org/zone"
ATTACHER_FINALIZER = "external-attacher/cinder-csi-openstack-org"


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn() as standin:
        standin.add_node("node-a", {ZONE: "nova-a"})
        standin.add_node("node-b", {ZONE: "nova-b"})
        yield standin


@pytest.fixture
def api(kube: KubeStandIn, tmp_path: Path) -> Iterator[Any]:
    api = api_client(kube.write_kubeconfig(tmp_path / "kubeconfig"))
    yield api
    api.close()


@pytest.fixture
def core(api: Any) -> Any:
    return client.CoreV1Api(api)


@pytest.fixture
def storage(api: Any) -> Any:
    return client.StorageV1Api(api)


def storage_class(name: str, mode: str = "Immediate", reclaim: str = "Delete") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "provisioner": DRIVER,
        "reclaimPolicy": reclaim,
        "volumeBindingMode": mode,
        "allowVolumeExpansion": True,
    }


def claim(name: str, class_name: str, volume_name: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": class_name,
        "resources": {"requests": {"storage": "1Gi"}},
    }
    if volume_name:
        spec["volumeName"] = volume_name
    return {"metadata": {"name": name}, "spec": spec}


def volume(
    name: str,
    class_name: str,
    *,
    handle: str,
    zone: str | None = None,
    claim_ref: dict[str, Any] | None = None,
    reclaim: str = "Delete",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteOnce"],
        "persistentVolumeReclaimPolicy": reclaim,
        "storageClassName": class_name,
        "volumeMode": "Filesystem",
        "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "ext4"},
    }
    if zone:
        spec["nodeAffinity"] = {
            "required": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": ZONE, "operator": "In", "values": [zone]}]}
                ]
            }
        }
    if claim_ref:
        spec["claimRef"] = claim_ref
    return {
        "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": DRIVER}},
        "spec": spec,
    }


def pod(name: str, claim_name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "busybox:1.36",
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name}}],
        },
    }


def annotations(obj: Any) -> dict[str, str]:
    return dict(obj.metadata.annotations or {})


def gone(read: Any, *args: Any) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def provision(core: Any, pvc: Any, *, zone: str | None = None, reclaim: str = "Delete") -> str:
    """Do what the external provisioner does once the claim names our driver."""
    name = f"pvc-{pvc.metadata.uid}"
    ref = {
        "kind": "PersistentVolumeClaim",
        "apiVersion": "v1",
        "namespace": "default",
        "name": pvc.metadata.name,
        "uid": pvc.metadata.uid,
        "resourceVersion": pvc.metadata.resource_version,
    }
    core.create_persistent_volume(
        volume(
            name,
            pvc.spec.storage_class_name,
            handle=f"vol-{name}",
            zone=zone,
            claim_ref=ref,
            reclaim=reclaim,
        )
    )
    return name


def test_immediate_claim_binding_scheduling_attach_detach_and_release(
    kube: KubeStandIn, core: Any, storage: Any
) -> None:
    storage.create_storage_class(storage_class("cinder"))
    core.create_namespaced_persistent_volume_claim("default", claim("data", "cinder"))

    pvc = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("data", "default"))
            and annotations(p).get("volume.kubernetes.io/storage-provisioner")
            and p
        ),
        what="the storage-provisioner annotation",
    )
    assert annotations(pvc)["volume.beta.kubernetes.io/storage-provisioner"] == DRIVER
    assert pvc.metadata.finalizers == ["kubernetes.io/pvc-protection"]

    pv_name = provision(core, pvc, zone="nova-b")
    bound = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("data", "default")).status.phase
            == "Bound"
            and p
        ),
        what="the claim to bind",
    )
    assert bound.spec.volume_name == pv_name
    assert annotations(bound)["pv.kubernetes.io/bind-completed"] == "yes"
    assert annotations(bound)["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert bound.status.capacity == {"storage": "1Gi"}
    assert bound.status.access_modes == ["ReadWriteOnce"]
    pv = wait_until(
        lambda: (v := core.read_persistent_volume(pv_name)).status.phase == "Bound" and v,
        what="the volume to be Bound",
    )
    assert "pv.kubernetes.io/bound-by-controller" not in annotations(pv)  # the provisioner bound it
    assert pv.metadata.finalizers == ["kubernetes.io/pv-protection"]

    core.create_namespaced_pod("default", pod("app", "data"))
    scheduled = wait_until(
        lambda: (p := core.read_namespaced_pod("app", "default")).spec.node_name and p,
        what="the pod to be scheduled",
    )
    assert scheduled.spec.node_name == "node-b"  # the only node in the PV's zone

    handle = f"vol-{pv_name}"
    va_name = "csi-" + hashlib.sha256(f"{handle}{DRIVER}node-b".encode()).hexdigest()
    va = wait_until(
        lambda: (
            not gone(storage.read_volume_attachment, va_name)
            and storage.read_volume_attachment(va_name)
        ),
        what="the VolumeAttachment",
    )
    assert (va.spec.attacher, va.spec.node_name) == (DRIVER, "node-b")
    assert va.spec.source.persistent_volume_name == pv_name
    assert va.status.attached is False

    # The test is the external attacher now.
    storage.patch_volume_attachment(va_name, {"metadata": {"finalizers": [ATTACHER_FINALIZER]}})
    storage.patch_volume_attachment_status(
        va_name, {"status": {"attached": True, "attachmentMetadata": {"devicePath": "/dev/vdb"}}}
    )
    unique = f"kubernetes.io/csi/{DRIVER}^{handle}"
    wait_until(
        lambda: (
            [v.name for v in core.read_node("node-b").status.volumes_attached or []] == [unique]
        ),
        what="volumesAttached on the node",
    )

    # A claim in use is protected: deleting it only marks it.
    core.delete_namespaced_persistent_volume_claim("data", "default")
    time.sleep(0.2)
    marked = core.read_namespaced_persistent_volume_claim("data", "default")
    assert marked.metadata.deletion_timestamp is not None
    assert core.read_persistent_volume(pv_name).status.phase == "Bound"

    core.delete_namespaced_pod("app", "default", grace_period_seconds=0)
    wait_until(
        lambda: storage.read_volume_attachment(va_name).metadata.deletion_timestamp,
        what="the VolumeAttachment to be deleted",
    )
    storage.patch_volume_attachment(va_name, {"metadata": {"finalizers": None}})  # detached
    wait_until(lambda: gone(storage.read_volume_attachment, va_name), what="the VA to go")

    wait_until(
        lambda: gone(core.read_namespaced_persistent_volume_claim, "data", "default"),
        what="the claim to go once unused",
    )
    released = wait_until(
        lambda: (v := core.read_persistent_volume(pv_name)).status.phase == "Released" and v,
        what="the volume to be Released",
    )
    assert released.spec.claim_ref.uid == pvc.metadata.uid  # kept for the provisioner
    time.sleep(0.2)
    assert core.read_persistent_volume(pv_name).status.phase == "Released"  # Delete is not ours

    core.delete_persistent_volume(pv_name)  # what the provisioner does after DeleteVolume
    wait_until(lambda: gone(core.read_persistent_volume, pv_name), what="the volume to go")


def test_wait_for_first_consumer_selects_a_node_first(
    kube: KubeStandIn, core: Any, storage: Any
) -> None:
    storage.create_storage_class(storage_class("late", mode="WaitForFirstConsumer"))
    core.create_namespaced_persistent_volume_claim("default", claim("data", "late"))
    time.sleep(0.3)
    waiting = core.read_namespaced_persistent_volume_claim("data", "default")
    assert "volume.kubernetes.io/storage-provisioner" not in annotations(waiting)
    assert waiting.status.phase == "Pending"

    core.create_namespaced_pod("default", pod("app", "data"))
    pvc = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("data", "default"))
            and annotations(p).get("volume.kubernetes.io/storage-provisioner")
            and p
        ),
        what="the storage-provisioner annotation",
    )
    selected = annotations(pvc)["volume.kubernetes.io/selected-node"]
    assert selected in ("node-a", "node-b")
    assert not core.read_namespaced_pod("app", "default").spec.node_name  # waits for binding

    provision(core, pvc, zone={"node-a": "nova-a", "node-b": "nova-b"}[selected])
    scheduled = wait_until(
        lambda: (p := core.read_namespaced_pod("app", "default")).spec.node_name and p,
        what="the pod to be scheduled",
    )
    assert scheduled.spec.node_name == selected
    assert any(c.type == "PodScheduled" and c.status == "True" for c in scheduled.status.conditions)


def test_static_binding_by_volume_name_and_by_claim_ref(core: Any) -> None:
    core.create_persistent_volume(volume("static-1", "", handle="h1"))
    wait_until(
        lambda: core.read_persistent_volume("static-1").status.phase == "Available",
        what="the volume to be Available",
    )
    core.create_namespaced_persistent_volume_claim("default", claim("by-name", "", "static-1"))
    bound = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("by-name", "default")).status.phase
            == "Bound"
            and p
        ),
        what="binding by volumeName",
    )
    assert "pv.kubernetes.io/bound-by-controller" not in annotations(bound)
    pv = core.read_persistent_volume("static-1")
    assert pv.spec.claim_ref.uid == bound.metadata.uid
    assert annotations(pv)["pv.kubernetes.io/bound-by-controller"] == "yes"

    core.create_persistent_volume(
        volume("static-2", "", handle="h2", claim_ref={"namespace": "default", "name": "by-ref"})
    )
    core.create_namespaced_persistent_volume_claim("default", claim("by-ref", ""))
    bound = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("by-ref", "default")).status.phase
            == "Bound"
            and p
        ),
        what="binding by claimRef",
    )
    assert bound.spec.volume_name == "static-2"
    assert annotations(bound)["pv.kubernetes.io/bound-by-controller"] == "yes"
    assert core.read_persistent_volume("static-2").spec.claim_ref.uid == bound.metadata.uid


def test_static_match_by_class_and_size(core: Any) -> None:
    small = volume("small", "manual", handle="s")
    small["spec"]["capacity"] = {"storage": "512Mi"}
    core.create_persistent_volume(small)
    core.create_persistent_volume(volume("fits", "manual", handle="f"))
    core.create_namespaced_persistent_volume_claim("default", claim("data", "manual"))
    bound = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("data", "default")).status.phase
            == "Bound"
            and p
        ),
        what="a static match",
    )
    assert bound.spec.volume_name == "fits"


def test_retain_keeps_the_volume_released(kube: KubeStandIn, core: Any, storage: Any) -> None:
    storage.create_storage_class(storage_class("keep", reclaim="Retain"))
    core.create_namespaced_persistent_volume_claim("default", claim("data", "keep"))
    pvc = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("data", "default"))
            and annotations(p).get("volume.kubernetes.io/storage-provisioner")
            and p
        ),
        what="the storage-provisioner annotation",
    )
    pv_name = provision(core, pvc, reclaim="Retain")
    wait_until(lambda: core.read_persistent_volume(pv_name).status.phase == "Bound", what="binding")
    core.delete_namespaced_persistent_volume_claim("data", "default")
    wait_until(
        lambda: core.read_persistent_volume(pv_name).status.phase == "Released", what="release"
    )
    time.sleep(0.2)
    assert core.read_persistent_volume(pv_name).status.phase == "Released"
    core.patch_persistent_volume(pv_name, {"spec": {"claimRef": None}})  # the admin reuses it
    wait_until(
        lambda: core.read_persistent_volume(pv_name).status.phase == "Available",
        what="the volume to be Available again",
    )


def test_no_attachment_when_the_driver_needs_none(
    kube: KubeStandIn, core: Any, storage: Any
) -> None:
    storage.create_csi_driver({"metadata": {"name": DRIVER}, "spec": {"attachRequired": False}})
    storage.create_storage_class(storage_class("cinder"))
    core.create_namespaced_persistent_volume_claim("default", claim("data", "cinder"))
    pvc = wait_until(
        lambda: (
            (p := core.read_namespaced_persistent_volume_claim("data", "default"))
            and annotations(p).get("volume.kubernetes.io/storage-provisioner")
            and p
        ),
        what="the storage-provisioner annotation",
    )
    provision(core, pvc)
    core.create_namespaced_pod("default", pod("app", "data"))
    wait_until(lambda: core.read_namespaced_pod("app", "default").spec.node_name, what="scheduling")
    time.sleep(0.2)
    assert storage.list_volume_attachment().items == []


def test_unbound_immediate_claim_keeps_the_pod_pending(core: Any, storage: Any) -> None:
    storage.create_storage_class(storage_class("cinder"))
    core.create_namespaced_persistent_volume_claim("default", claim("data", "cinder"))
    core.create_namespaced_pod("default", pod("app", "data"))
    condition = wait_until(
        lambda: next(
            (
                c
                for c in core.read_namespaced_pod("app", "default").status.conditions or []
                if c.type == "PodScheduled"
            ),
            None,
        ),
        what="the PodScheduled condition",
    )
    assert (condition.status, condition.reason) == ("False", "Unschedulable")
    assert "unbound immediate PersistentVolumeClaims" in condition.message


def test_deleting_a_namespace_deletes_its_content(core: Any) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_persistent_volume_claim("team", claim("data", ""))
    core.delete_namespace("team")
    wait_until(lambda: gone(core.read_namespace, "team"), what="the namespace to go")
    assert gone(core.read_namespaced_persistent_volume_claim, "data", "team")


def test_controllers_are_switchable(tmp_path: Path) -> None:
    with KubeStandIn(controllers=("pv",)) as kube:
        kube.add_node("node-a")
        kube.store.create("storageclasses", storage_class("cinder"))
        made = kube.store.create("persistentvolumeclaims", claim("data", "cinder"))
        assert "finalizers" not in made["metadata"]  # no protection admission
        wait_until(
            lambda: annotations_of(
                kube.store.get("persistentvolumeclaims", "data", namespace="default")
            ).get("volume.kubernetes.io/storage-provisioner"),
            what="the pv controller",
        )
        kube.store.create("pods", pod("app", "data"))
        time.sleep(0.2)
        assert not kube.store.get("pods", "app", namespace="default")["spec"].get("nodeName")
    with pytest.raises(ValueError):
        KubeStandIn(controllers=("nope",))


def annotations_of(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("annotations") or {})


def test_wait_for_first_consumer_binds_a_static_volume_on_the_chosen_node(
    kube: KubeStandIn, core: Any, storage: Any
) -> None:
    storage.create_storage_class(
        {
            "metadata": {"name": "local"},
            "provisioner": "kubernetes.io/no-provisioner",
            "volumeBindingMode": "WaitForFirstConsumer",
        }
    )
    core.create_persistent_volume(volume("local-b", "local", handle="lb", zone="nova-b"))
    core.create_namespaced_persistent_volume_claim("default", claim("data", "local"))
    time.sleep(0.2)
    assert core.read_namespaced_persistent_volume_claim("data", "default").status.phase == "Pending"
    core.create_namespaced_pod("default", pod("app", "data"))
    scheduled = wait_until(
        lambda: (p := core.read_namespaced_pod("app", "default")).spec.node_name and p,
        what="the pod to be scheduled",
    )
    assert scheduled.spec.node_name == "node-b"  # where the only matching volume lives
    bound = core.read_namespaced_persistent_volume_claim("data", "default")
    assert bound.spec.volume_name == "local-b"
    assert "volume.kubernetes.io/storage-provisioner" not in annotations(bound)
