"""Claim -> CSI request pieces and the PV object, as external-provisioner builds them."""

from __future__ import annotations

from typing import Any

import pytest

from cinder_csi.csi import csi_pb2
from cinder_csi.loop import protocol as p
from cinder_csi.loop import pvspec as s
from cinder_csi.loop.errors import ParameterError

DRIVER = "cinder.csi.openstack.org"
KEY = "topology.cinder.csi.openstack.org/zone"
Mode = csi_pb2.VolumeCapability.AccessMode


def claim(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "apps", "uid": "u-1",
                         "resourceVersion": "42"},
            "spec": base}


@pytest.mark.parametrize(("text", "size"), [
    ("1Gi", 1024**3), ("1536Mi", 1536 * 1024**2), ("1G", 10**9), ("1.5Gi", 3 * 1024**3 // 2),
    ("100", 100), ("1e3", 1000), ("1500m", 2), ("2Ti", 2 * 1024**4),
])
def test_parse_quantity(text: str, size: int) -> None:
    assert s.parse_quantity(text) == size


@pytest.mark.parametrize("text", ["", "abc", "1Zi", "-1Gi", "1..2"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ParameterError):
        s.parse_quantity(text)


@pytest.mark.parametrize(("size", "text"), [
    (1024**3, "1Gi"), (5 * 1024**3, "5Gi"), (1536 * 1024**2, "1536Mi"), (1024**4, "1Ti"),
    (1000, "1000"), (2048, "2Ki"), (0, "0"),
])
def test_format_quantity(size: int, text: str) -> None:
    assert s.format_quantity(size) == text


def test_reserved_parameters_are_stripped_and_metadata_added() -> None:
    params = s.split_parameters({
        "type": "ssd", "availability": "az-a", "csi.storage.k8s.io/fstype": "xfs",
        "csi.storage.k8s.io/provisioner-secret-name": "creds-${pvc.name}",
        "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
        "csi.storage.k8s.io/node-stage-secret-name": "${pv.name}",
        "csi.storage.k8s.io/node-stage-secret-namespace": "kube-system",
    }, claim(), "pvc-u-1")
    assert params.csi == {
        "type": "ssd", "availability": "az-a",
        p.EXTRA_METADATA_PVC_NAME: "data", p.EXTRA_METADATA_PVC_NAMESPACE: "apps",
        p.EXTRA_METADATA_PV_NAME: "pvc-u-1",
    }
    assert params.fs_type == "xfs"
    assert params.provisioner_secret == s.SecretRef("creds-data", "apps")
    assert params.secrets["node-stage"] == s.SecretRef("pvc-u-1", "kube-system")


def test_default_fstype_applies_without_the_parameter() -> None:
    assert s.split_parameters({}, claim(), "pv", default_fstype="ext4").fs_type == "ext4"
    assert s.split_parameters({}, claim(), "pv").fs_type == ""


def test_unknown_reserved_parameter_is_named() -> None:
    with pytest.raises(ParameterError, match=r"csi\.storage\.k8s\.io/fs-type"):
        s.split_parameters({"csi.storage.k8s.io/fs-type": "xfs"}, claim(), "pv")


def test_secret_pair_must_be_complete() -> None:
    with pytest.raises(ParameterError, match="together"):
        s.split_parameters({"csi.storage.k8s.io/provisioner-secret-name": "x"}, claim(), "pv")


def test_secret_namespace_cannot_use_the_claim_name() -> None:
    with pytest.raises(ParameterError, match=r"\$\{pvc.name\}"):
        s.split_parameters({"csi.storage.k8s.io/provisioner-secret-name": "x",
                            "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.name}"},
                           claim(), "pv")


def test_capacity_range_from_requests_and_limits() -> None:
    rng = s.capacity_range(claim(resources={"requests": {"storage": "1Gi"},
                                            "limits": {"storage": "2Gi"}}))
    assert (rng.required_bytes, rng.limit_bytes) == (1024**3, 2 * 1024**3)
    with pytest.raises(ParameterError):
        s.capacity_range(claim(resources={}))


def test_capabilities_per_access_mode_and_volume_mode() -> None:
    caps = s.capabilities(claim(accessModes=["ReadWriteOnce", "ReadOnlyMany"]), "xfs",
                          single_node_multi_writer=False)
    assert [c.access_mode.mode for c in caps] == [Mode.SINGLE_NODE_WRITER,
                                                   Mode.MULTI_NODE_READER_ONLY]
    assert all(c.mount.fs_type == "xfs" and not c.mount.mount_flags for c in caps)
    caps = s.capabilities(claim(accessModes=["ReadWriteMany"], volumeMode="Block"), "xfs",
                          single_node_multi_writer=True)
    assert caps[0].access_mode.mode == Mode.MULTI_NODE_MULTI_WRITER
    assert caps[0].WhichOneof("access_type") == "block"
    caps = s.capabilities(claim(accessModes=["ReadWriteOnce", "ReadWriteOncePod"]), "",
                          single_node_multi_writer=True)
    assert [c.access_mode.mode for c in caps] == [Mode.SINGLE_NODE_MULTI_WRITER,
                                                   Mode.SINGLE_NODE_SINGLE_WRITER]
    with pytest.raises(ParameterError):
        s.capabilities(claim(accessModes=["Sometimes"]), "", single_node_multi_writer=False)


def test_node_affinity_one_term_per_segment() -> None:
    assert s.node_affinity([]) is None
    assert s.node_affinity([{KEY: "a"}, {KEY: "b", "rack": "r1"}]) == {"required": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": KEY, "operator": "In", "values": ["a"]}]},
            {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["r1"]},
                                  {"key": KEY, "operator": "In", "values": ["b"]}]},
        ]}}


def storage_class(**extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "fast"}, "provisioner": DRIVER, "reclaimPolicy": "Delete",
            **extra}


def test_build_pv_exactly() -> None:
    params = s.split_parameters({
        "csi.storage.k8s.io/fstype": "xfs",
        "csi.storage.k8s.io/provisioner-secret-name": "p",
        "csi.storage.k8s.io/provisioner-secret-namespace": "ns",
        "csi.storage.k8s.io/controller-publish-secret-name": "cp",
        "csi.storage.k8s.io/controller-publish-secret-namespace": "ns",
    }, claim(), "pvc-u-1")
    pv = s.build_pv(
        name="pvc-u-1", driver=DRIVER, claim=claim(),
        storage_class=storage_class(mountOptions=["noatime"]),
        volume=s.CreatedVolume("vol-1", 0, {"k": "v"}, [{KEY: "az-a"}]),
        requested_bytes=1024**3, params=params, provisioner_identity="id-1",
    )
    assert pv == {
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": "pvc-u-1",
            "annotations": {p.ANN_PROVISIONED_BY: DRIVER, p.ANN_DELETION_SECRET_NAME: "p",
                            p.ANN_DELETION_SECRET_NAMESPACE: "ns"},
            "finalizers": [p.FINALIZER_PV_DELETION],
        },
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "capacity": {"storage": "1Gi"},  # the request, since the driver said 0
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": "apps", "name": "data", "uid": "u-1",
                         "resourceVersion": "42"},
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": "fast",
            "volumeMode": "Filesystem",
            "mountOptions": ["noatime"],
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": KEY, "operator": "In", "values": ["az-a"]}]}]}},
            "csi": {"driver": DRIVER, "volumeHandle": "vol-1", "fsType": "xfs",
                    "volumeAttributes": {"k": "v", p.PROVISIONER_IDENTITY_KEY: "id-1"},
                    "controllerPublishSecretRef": {"name": "cp", "namespace": "ns"}},
        },
    }


def test_build_pv_retain_block_no_topology() -> None:
    pv = s.build_pv(
        name="pvc-u-1", driver=DRIVER, claim=claim(volumeMode="Block"),
        storage_class=storage_class(reclaimPolicy="Retain"),
        volume=s.CreatedVolume("vol-1", 2 * 1024**3), requested_bytes=1024**3,
        params=s.split_parameters({}, claim(), "pvc-u-1", default_fstype="ext4"),
        provisioner_identity="id-1",
    )
    assert "finalizers" not in pv["metadata"]
    assert pv["metadata"]["annotations"][p.ANN_DELETION_SECRET_NAME] == ""
    assert pv["metadata"]["annotations"][p.ANN_DELETION_SECRET_NAMESPACE] == ""
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["volumeMode"] == "Block"
    assert pv["spec"]["capacity"] == {"storage": "2Gi"}
    assert "fsType" not in pv["spec"]["csi"]
    assert "nodeAffinity" not in pv["spec"]
    assert "mountOptions" not in pv["spec"]


def test_created_volume_from_csi() -> None:
    vol = csi_pb2.Volume(volume_id="v", capacity_bytes=5, volume_context={"a": "b"},
                         accessible_topology=[csi_pb2.Topology(segments={KEY: "z"})])
    assert s.CreatedVolume.from_csi(vol) == s.CreatedVolume("v", 5, {"a": "b"}, [{KEY: "z"}])
