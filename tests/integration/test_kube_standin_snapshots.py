"""The snapshot.storage.k8s.io/v1 CRDs of the Kubernetes stand-in, through the real client:
served like custom resources (discovery, schema checks, immutable sources, finalizers, no
strategic merge patch), so the loop's snapshot-source protection meets a strict server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import api_client

GROUP, VERSION = "snapshot.storage.k8s.io", "v1"


@pytest.fixture
def custom(tmp_path: Path) -> Iterator[Any]:
    with KubeStandIn(controllers=()) as kube:
        api = api_client(kube.write_kubeconfig(tmp_path / "kubeconfig"))
        try:
            yield client.CustomObjectsApi(api)
        finally:
            api.close()


def snapshot(name: str, **source: str) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeSnapshot",
            "metadata": {"name": name},
            "spec": {"source": source or {"persistentVolumeClaimName": "data"}}}


def content(name: str, **spec: Any) -> dict[str, Any]:
    body = {"deletionPolicy": "Delete", "driver": "cinder.csi.openstack.org",
            "source": {"snapshotHandle": "snap-1"},
            "volumeSnapshotRef": {"name": "snap", "namespace": "default"}, **spec}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeSnapshotContent",
            "metadata": {"name": name}, "spec": body}


def status_of(call: Any) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


def test_discovery_and_crud(custom: Any) -> None:
    resources = client.ApisApi(custom.api_client).get_api_versions()
    assert GROUP in [g.name for g in resources.groups]
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default",
                                                     "volumesnapshots", snapshot("snap"))
    assert created["metadata"]["uid"] and "status" not in created
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", "volumesnapshots", "snap",
        {"status": {"boundVolumeSnapshotContentName": "content-1", "readyToUse": True}})
    got = custom.get_namespaced_custom_object(GROUP, VERSION, "default", "volumesnapshots",
                                              "snap")
    assert got["status"]["readyToUse"] is True
    custom.create_cluster_custom_object(GROUP, VERSION, "volumesnapshotcontents",
                                        content("content-1"))
    assert custom.list_cluster_custom_object(
        GROUP, VERSION, "volumesnapshotcontents")["items"][0]["metadata"]["name"] == "content-1"


def test_schema_checks(custom: Any) -> None:
    both = snapshot("two", persistentVolumeClaimName="a", volumeSnapshotContentName="b")
    error = status_of(lambda: custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", "volumesnapshots", both))
    assert error.status == 422
    assert "VolumeSnapshot.snapshot.storage.k8s.io" in error.body
    error = status_of(lambda: custom.create_cluster_custom_object(
        GROUP, VERSION, "volumesnapshotcontents", content("c", deletionPolicy="Keep")))
    assert error.status == 422 and "deletionPolicy" in error.body
    error = status_of(lambda: custom.create_cluster_custom_object(
        GROUP, VERSION, "volumesnapshotcontents",
        content("c", volumeSnapshotRef={"name": "snap"})))
    assert error.status == 422
    error = status_of(lambda: custom.create_cluster_custom_object(
        GROUP, VERSION, "volumesnapshotclasses",
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "VolumeSnapshotClass",
         "metadata": {"name": "cls"}, "driver": "x"}))
    assert error.status == 422 and "deletionPolicy" in error.body


def test_source_is_immutable_and_finalizers_hold_deletion(custom: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "volumesnapshots",
                                           snapshot("snap"))
    error = status_of(lambda: custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", "volumesnapshots", "snap",
        {"spec": {"source": {"persistentVolumeClaimName": "other"}}}))
    assert error.status == 422 and "immutable" in error.body
    finalizer = "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection"
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", "volumesnapshots", "snap",
                                          {"metadata": {"finalizers": [finalizer]}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", "volumesnapshots", "snap")
    held = custom.get_namespaced_custom_object(GROUP, VERSION, "default", "volumesnapshots",
                                               "snap")
    assert held["metadata"]["deletionTimestamp"]
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", "volumesnapshots", "snap",
                                          {"metadata": {"finalizers": None}})
    assert status_of(lambda: custom.get_namespaced_custom_object(
        GROUP, VERSION, "default", "volumesnapshots", "snap")).status == 404


def test_no_strategic_merge_patch_on_custom_resources(custom: Any) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "volumesnapshots",
                                           snapshot("snap"))
    host = custom.api_client.configuration.host
    request = urllib.request.Request(
        f"{host}/apis/{GROUP}/{VERSION}/namespaces/default/volumesnapshots/snap",
        data=json.dumps({"metadata": {"labels": {"a": "b"}}}).encode(), method="PATCH",
        headers={"Content-Type": "application/strategic-merge-patch+json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 415
