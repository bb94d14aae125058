"""The Kubernetes stand-in's API semantics, through the real ``kubernetes`` client over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import api_client

DRIVER = "cinder.csi.openstack.org"


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with KubeStandIn(controllers=()) as standin:
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


def claim(name: str, size: str = "1Gi", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
            "storageClassName": "standard",
        },
    }


def volume(name: str, handle: str = "vol-1") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "standard",
            "csi": {"driver": DRIVER, "volumeHandle": handle, "fsType": "ext4"},
        },
    }


def attachment(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "attacher": DRIVER,
            "nodeName": "node-1",
            "source": {"persistentVolumeName": "pv-1"},
        },
    }


def status_of(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    body = json.loads(exc.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert body["code"] == exc.value.status
    return dict(body)


# ---------------------------------------------------------------- create / get / errors


def test_create_sets_system_fields_and_one_global_resource_version(core: Any, storage: Any) -> None:
    first = core.create_namespaced_persistent_volume_claim("default", claim("a"))
    second = core.create_persistent_volume(volume("pv-a"))
    third = storage.create_volume_attachment(attachment("va-a"))
    versions = [int(o.metadata.resource_version) for o in (first, second, third)]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert first.metadata.uid and first.metadata.creation_timestamp is not None
    assert first.status.phase == "Pending" and second.status.phase == "Pending"
    assert third.status.attached is False
    assert first.spec.volume_mode == "Filesystem"
    assert second.spec.persistent_volume_reclaim_policy == "Delete"


def test_generate_name(core: Any) -> None:
    body = claim("")
    body["metadata"] = {"generateName": "data-"}
    made = core.create_namespaced_persistent_volume_claim("default", body)
    assert made.metadata.name.startswith("data-") and len(made.metadata.name) == len("data-") + 5
    assert made.metadata.generate_name == "data-"


def test_not_found_and_already_exists_are_real_statuses(core: Any, storage: Any) -> None:
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_persistent_volume_claim("nope", "default")
    body = status_of(exc)
    assert exc.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == 'persistentvolumeclaims "nope" not found'
    assert body["details"] == {"name": "nope", "kind": "persistentvolumeclaims"}

    storage.create_storage_class({"metadata": {"name": "sc"}, "provisioner": DRIVER})
    with pytest.raises(ApiException) as exc:
        storage.create_storage_class({"metadata": {"name": "sc"}, "provisioner": DRIVER})
    body = status_of(exc)
    assert exc.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["message"] == 'storageclasses.storage.k8s.io "sc" already exists'
    assert body["details"]["group"] == "storage.k8s.io"


def test_namespaced_create_needs_the_namespace(core: Any) -> None:
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_persistent_volume_claim("missing", claim("a"))
    body = status_of(exc)
    assert exc.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == 'namespaces "missing" not found'
    core.create_namespace({"metadata": {"name": "missing"}})
    core.create_namespaced_persistent_volume_claim("missing", claim("a"))


def test_validation_of_the_fields_we_use(core: Any) -> None:
    bad = claim("a")
    del bad["spec"]["accessModes"]
    del bad["spec"]["resources"]
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_persistent_volume_claim("default", bad)
    body = status_of(exc)
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    fields = {c["field"] for c in body["details"]["causes"]}
    assert fields == {"spec.accessModes", "spec.resources[storage]"}
    assert body["details"]["kind"] == "PersistentVolumeClaim"

    with pytest.raises(ApiException) as exc:
        core.create_namespaced_persistent_volume_claim("default", claim("Bad_Name"))
    assert exc.value.status == 422

    no_source = volume("pv-x")
    del no_source["spec"]["csi"]
    with pytest.raises(ApiException) as exc:
        core.create_persistent_volume(no_source)
    assert "must specify a volume type" in status_of(exc)["message"]


def test_immutable_fields_are_invalid(core: Any, storage: Any) -> None:
    pv = core.create_persistent_volume(volume("pv-1"))
    pv.spec.csi.volume_handle = "other"
    with pytest.raises(ApiException) as exc:
        core.replace_persistent_volume("pv-1", pv)
    assert exc.value.status == 422 and status_of(exc)["reason"] == "Invalid"

    pvc = core.create_namespaced_persistent_volume_claim("default", claim("a"))
    pvc.spec.access_modes = ["ReadWriteMany"]
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_persistent_volume_claim("a", "default", pvc)
    assert exc.value.status == 422
    # Growing the request of an unbound claim is refused too; binding (volumeName) is allowed.
    pvc = core.read_namespaced_persistent_volume_claim("a", "default")
    pvc.spec.volume_name = "pv-1"
    core.replace_namespaced_persistent_volume_claim("a", "default", pvc)

    storage.create_volume_attachment(attachment("va-1"))
    with pytest.raises(ApiException) as exc:
        storage.patch_volume_attachment("va-1", {"spec": {"nodeName": "node-2"}})
    assert exc.value.status == 422


def test_stale_update_is_a_conflict(core: Any) -> None:
    core.create_namespaced_persistent_volume_claim("default", claim("a"))
    first = core.read_namespaced_persistent_volume_claim("a", "default")
    second = core.read_namespaced_persistent_volume_claim("a", "default")
    first.metadata.labels = {"x": "1"}
    core.replace_namespaced_persistent_volume_claim("a", "default", first)
    second.metadata.labels = {"x": "2"}
    with pytest.raises(ApiException) as exc:
        core.replace_namespaced_persistent_volume_claim("a", "default", second)
    body = status_of(exc)
    assert exc.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    assert core.read_namespaced_persistent_volume_claim("a", "default").metadata.labels == {
        "x": "1"
    }


def test_noop_update_makes_no_new_version(core: Any) -> None:
    made = core.create_namespaced_persistent_volume_claim("default", claim("a"))
    again = core.replace_namespaced_persistent_volume_claim("a", "default", made)
    assert again.metadata.resource_version == made.metadata.resource_version


# ---------------------------------------------------------------- status subresource


def test_main_resource_put_ignores_status_and_status_put_ignores_spec(core: Any) -> None:
    core.create_namespaced_persistent_volume_claim("default", claim("a"))
    pvc = core.read_namespaced_persistent_volume_claim("a", "default")
    pvc.status.phase = "Bound"
    pvc.metadata.labels = {"seen": "yes"}
    updated = core.replace_namespaced_persistent_volume_claim("a", "default", pvc)
    assert updated.status.phase == "Pending" and updated.metadata.labels == {"seen": "yes"}

    updated.status.phase = "Bound"
    updated.status.capacity = {"storage": "1Gi"}
    updated.spec.resources.requests = {"storage": "5Gi"}
    updated.metadata.labels = {"seen": "no"}
    after = core.replace_namespaced_persistent_volume_claim_status("a", "default", updated)
    assert after.status.phase == "Bound" and after.status.capacity == {"storage": "1Gi"}
    assert after.spec.resources.requests == {"storage": "1Gi"}
    assert after.metadata.labels == {"seen": "yes"}


def test_volume_attachment_status(storage: Any) -> None:
    storage.create_volume_attachment(attachment("va-1"))
    ignored = storage.patch_volume_attachment("va-1", {"status": {"attached": True}})
    assert ignored.status.attached is False
    done = storage.patch_volume_attachment_status(
        "va-1", {"status": {"attached": True, "attachmentMetadata": {"devicePath": "/dev/vdb"}}}
    )
    assert done.status.attached is True
    assert done.status.attachment_metadata == {"devicePath": "/dev/vdb"}
    assert done.spec.node_name == "node-1"


def test_pv_status_records_phase_transitions(core: Any) -> None:
    core.create_persistent_volume(volume("pv-1"))
    after = core.patch_persistent_volume_status("pv-1", {"status": {"phase": "Available"}})
    assert after.status.phase == "Available"
    assert after.status.last_phase_transition_time is not None


# ---------------------------------------------------------------- finalizers and deletion


def test_finalizer_blocks_deletion_until_removed(core: Any) -> None:
    body = claim("a")
    body["metadata"]["finalizers"] = ["example.com/hold"]
    core.create_namespaced_persistent_volume_claim("default", body)
    marked = core.delete_namespaced_persistent_volume_claim("a", "default")
    assert marked.metadata.deletion_timestamp is not None
    still = core.read_namespaced_persistent_volume_claim("a", "default")
    assert still.metadata.finalizers == ["example.com/hold"]

    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_persistent_volume_claim(
            "a", "default", {"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}
        )
    assert exc.value.status == 422 and "no new finalizers" in status_of(exc)["message"]

    core.patch_namespaced_persistent_volume_claim(
        "a", "default", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as exc:
        core.read_namespaced_persistent_volume_claim("a", "default")
    assert exc.value.status == 404


def test_delete_preconditions(core: Any) -> None:
    core.create_namespaced_persistent_volume_claim("default", claim("a"))
    with pytest.raises(ApiException) as exc:
        core.delete_namespaced_persistent_volume_claim(
            "a", "default", body={"preconditions": {"uid": "not-the-uid"}}
        )
    assert exc.value.status == 409


def test_deletecollection(core: Any) -> None:
    for name, tier in (("a", "gold"), ("b", "gold"), ("c", "bronze")):
        core.create_namespaced_persistent_volume_claim("default", claim(name, labels={"t": tier}))
    core.delete_collection_namespaced_persistent_volume_claim("default", label_selector="t=gold")
    left = core.list_namespaced_persistent_volume_claim("default")
    assert [p.metadata.name for p in left.items] == ["c"]


def test_pod_graceful_deletion_only_once_scheduled(core: Any, kube: KubeStandIn) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    core.create_namespaced_pod("default", pod)
    core.delete_namespaced_pod("p", "default")  # not scheduled: goes at once
    core.create_namespaced_pod("default", pod)
    kube.store.bind_pod("default", "p", "node-1")
    marked = core.delete_namespaced_pod("p", "default")
    assert marked.metadata.deletion_grace_period_seconds == 30
    core.delete_namespaced_pod("p", "default", grace_period_seconds=0)
    with pytest.raises(ApiException):
        core.read_namespaced_pod("p", "default")


# ---------------------------------------------------------------- patch flavours


def test_patch_flavours(core: Any) -> None:
    body = claim("a")
    body["metadata"]["finalizers"] = ["example.com/one"]
    core.create_namespaced_persistent_volume_claim("default", body)
    merged = core.patch_namespaced_persistent_volume_claim(
        "a",
        "default",
        {"metadata": {"labels": {"k": "v"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels == {"k": "v"}
    # Strategic merge: finalizers is a merged set, conditions merge by type.
    smp = core.patch_namespaced_persistent_volume_claim(
        "a",
        "default",
        {"metadata": {"finalizers": ["example.com/two"]}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert smp.metadata.finalizers == ["example.com/one", "example.com/two"]
    core.patch_namespaced_persistent_volume_claim_status(
        "a",
        "default",
        {
            "status": {
                "conditions": [
                    {"type": "Resizing", "status": "True"},
                    {"type": "FileSystemResizePending", "status": "True"},
                ]
            }
        },
    )
    after = core.patch_namespaced_persistent_volume_claim_status(
        "a",
        "default",
        {"status": {"conditions": [{"type": "Resizing", "status": "False"}]}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert [(c.type, c.status) for c in after.status.conditions] == [
        ("Resizing", "False"),
        ("FileSystemResizePending", "True"),
    ]
    ops = [
        {"op": "replace", "path": "/metadata/labels/k", "value": "w"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}},
    ]
    patched = core.patch_namespaced_persistent_volume_claim(
        "a", "default", ops, _content_type="application/json-patch+json"
    )
    assert patched.metadata.labels == {"k": "w"} and patched.metadata.annotations == {"a": "b"}
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_persistent_volume_claim(
            "a",
            "default",
            [{"op": "test", "path": "/metadata/labels/k", "value": "nope"}],
            _content_type="application/json-patch+json",
        )
    assert exc.value.status == 422


def test_patch_with_stale_resource_version_conflicts(core: Any) -> None:
    made = core.create_namespaced_persistent_volume_claim("default", claim("a"))
    core.patch_namespaced_persistent_volume_claim(
        "a", "default", {"metadata": {"labels": {"a": "1"}}}
    )
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_persistent_volume_claim(
            "a",
            "default",
            {"metadata": {"labels": {"a": "2"}, "resourceVersion": made.metadata.resource_version}},
        )
    assert exc.value.status == 409


# ---------------------------------------------------------------- list: paging and selectors


def test_limit_and_continue_page_a_consistent_snapshot(core: Any) -> None:
    for i in range(7):
        core.create_namespaced_persistent_volume_claim("default", claim(f"c{i}"))
    page = core.list_namespaced_persistent_volume_claim("default", limit=3)
    names = [p.metadata.name for p in page.items]
    assert page.metadata.remaining_item_count == 4
    version = page.metadata.resource_version
    core.create_namespaced_persistent_volume_claim("default", claim("c9"))  # after the snapshot
    core.delete_namespaced_persistent_volume_claim("c6", "default")
    while page.metadata._continue:
        page = core.list_namespaced_persistent_volume_claim(
            "default", limit=3, _continue=page.metadata._continue
        )
        assert page.metadata.resource_version == version
        names += [p.metadata.name for p in page.items]
    assert names == [f"c{i}" for i in range(7)]


def test_expired_continue_token_is_gone() -> None:
    with KubeStandIn(controllers=(), event_window=3) as kube:
        for i in range(4):
            kube.store.create("secrets", {"metadata": {"name": f"s{i}"}})
        page = kube.store.list("secrets", namespace="default", limit=2)
        for i in range(5):
            kube.store.create("secrets", {"metadata": {"name": f"t{i}"}})
        with pytest.raises(Exception) as exc:
            kube.store.list(
                "secrets", namespace="default", limit=2, continue_token=page.continue_token
            )
        assert getattr(exc.value, "code", None) == 410


def test_label_and_field_selectors(core: Any, kube: KubeStandIn) -> None:
    for name, labels in (("a", {"app": "db", "tier": "1"}), ("b", {"app": "web"}), ("c", {})):
        core.create_namespaced_persistent_volume_claim("default", claim(name, labels=labels))

    def names(**kwargs: Any) -> list[str]:
        items = core.list_namespaced_persistent_volume_claim("default", **kwargs).items
        return [p.metadata.name for p in items]

    assert names(label_selector="app=db") == ["a"]
    assert names(label_selector="app!=db") == ["b", "c"]
    assert names(label_selector="app in (db,web)") == ["a", "b"]
    assert names(label_selector="app notin (db)") == ["b", "c"]
    assert names(label_selector="tier") == ["a"]
    assert names(label_selector="!app") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    with pytest.raises(ApiException) as exc:
        names(label_selector="app in db")
    assert exc.value.status == 400
    with pytest.raises(ApiException) as exc:
        names(field_selector="spec.volumeName=x")
    assert exc.value.status == 400 and "field label not supported" in status_of(exc)["message"]

    for pod, node in (("p1", "node-1"), ("p2", "node-2")):
        core.create_namespaced_pod(
            "default",
            {
                "metadata": {"name": pod},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        )
        kube.store.bind_pod("default", pod, node)
    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-2")
    assert [p.metadata.name for p in on_node.items] == ["p2"]

    core.create_namespaced_event(
        "default",
        {
            "metadata": {"name": "e1"},
            "involvedObject": {
                "kind": "PersistentVolumeClaim",
                "name": "a",
                "namespace": "default",
            },
            "reason": "Provisioning",
            "message": "m",
            "type": "Normal",
        },
    )
    events = core.list_namespaced_event(
        "default", field_selector="involvedObject.name=a,involvedObject.kind=PersistentVolumeClaim"
    )
    assert [e.metadata.name for e in events.items] == ["e1"]


def test_cluster_scoped_and_leases(api: Any, storage: Any) -> None:
    coordination = client.CoordinationV1Api(api)
    lease = coordination.create_namespaced_lease(
        "kube-system",
        {
            "metadata": {"name": "cinder-csi-openstack-org"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        },
    )
    lease.spec.holder_identity = "b"
    assert (
        coordination.replace_namespaced_lease(
            "cinder-csi-openstack-org", "kube-system", lease
        ).spec.holder_identity
        == "b"
    )
    storage.create_csi_driver({"metadata": {"name": DRIVER}, "spec": {}})
    assert storage.read_csi_driver(DRIVER).spec.attach_required is True
    storage.create_csi_node(
        {
            "metadata": {"name": "node-1"},
            "spec": {
                "drivers": [
                    {
                        "name": DRIVER,
                        "nodeID": "abc",
                        "topologyKeys": ["topology.cinder.csi.openstack.org/zone"],
                        "allocatable": {"count": 25},
                    }
                ]
            },
        }
    )
    assert storage.read_csi_node("node-1").spec.drivers[0].node_id == "abc"


def test_growing_a_claim_needs_a_bound_claim_and_an_expandable_class(
    core: Any, storage: Any
) -> None:
    storage.create_storage_class({"metadata": {"name": "standard"}, "provisioner": DRIVER})
    core.create_namespaced_persistent_volume_claim("default", claim("a"))
    grow = {"spec": {"resources": {"requests": {"storage": "2Gi"}}}}
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_persistent_volume_claim("a", "default", grow)
    assert exc.value.status == 422  # not bound yet
    core.patch_namespaced_persistent_volume_claim_status(
        "a", "default", {"status": {"phase": "Bound", "capacity": {"storage": "1Gi"}}}
    )
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_persistent_volume_claim("a", "default", grow)
    body = status_of(exc)
    assert exc.value.status == 403 and body["reason"] == "Forbidden"
    assert "storageclass that provisions the pvc must support resize" in body["message"]
    storage.delete_storage_class("standard")
    storage.create_storage_class(
        {"metadata": {"name": "standard"}, "provisioner": DRIVER, "allowVolumeExpansion": True}
    )
    grown = core.patch_namespaced_persistent_volume_claim("a", "default", grow)
    assert grown.spec.resources.requests == {"storage": "2Gi"}
    shrink = {"spec": {"resources": {"requests": {"storage": "512Mi"}}}}
    with pytest.raises(ApiException) as exc:
        core.patch_namespaced_persistent_volume_claim("a", "default", shrink)
    assert exc.value.status == 422


def test_no_new_content_in_a_terminating_namespace(core: Any) -> None:
    core.create_namespace({"metadata": {"name": "going"}})
    core.create_namespaced_secret("going", {"metadata": {"name": "s"}})
    core.delete_namespace("going")  # no namespace controller here: it stays Terminating
    assert core.read_namespace("going").status.phase == "Terminating"
    with pytest.raises(ApiException) as exc:
        core.create_namespaced_secret("going", {"metadata": {"name": "t"}})
    assert exc.value.status == 403 and "being terminated" in status_of(exc)["message"]


def test_request_counts_by_client_method_and_resource(kube: KubeStandIn, core: Any,
                                                      api: Any) -> None:
    api.user_agent = "counted-client"
    core.create_namespaced_persistent_volume_claim("default", claim("c1"))
    core.patch_namespaced_persistent_volume_claim_status(
        "c1", "default", {"status": {"phase": "Pending"}})
    core.read_namespaced_persistent_volume_claim("c1", "default")
    core.read_namespaced_persistent_volume_claim("c1", "default")
    core.list_persistent_volume(watch=True, timeout_seconds=1, _preload_content=False).read()
    counts = {(method, what): n for (agent, method, what), n in kube.request_counts().items()
              if agent == "counted-client"}
    assert counts == {
        ("POST", "persistentvolumeclaims"): 1,
        ("PATCH", "persistentvolumeclaims/status"): 1,
        ("GET", "persistentvolumeclaims"): 2,
        ("GET", "persistentvolumes (watch)"): 1,
    }
