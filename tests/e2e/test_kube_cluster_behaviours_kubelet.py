"""The kubelet stand-in against a fake CSI node plugin on a unix socket.

The fake plugin only records what it is asked (and makes the target directory, as a real one
would); the tests check that the kubelet registers the driver, stages and publishes with the
paths and contexts the real kubelet uses, expands on FileSystemResizePending, and tears down.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import wait_until

DRIVER = "cinder.csi.openstack.org"
ZONE = "topology.cinder.csi.openstack.org/zone"
NODE_ID = "9a1f0c7e-0000-4000-8000-000000000001"


class FakeNodePlugin(csi_pb2_grpc.IdentityServicer, csi_pb2_grpc.NodeServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.lock = threading.Lock()

    def _record(self, name: str, request: Any) -> None:
        with self.lock:
            self.calls.append((name, request))

    def named(self, name: str) -> list[Any]:
        with self.lock:
            return [r for n, r in self.calls if n == name]

    def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return csi_pb2.GetPluginInfoResponse(name=DRIVER, vendor_version="test")

    def NodeGetInfo(self, request: Any, context: Any) -> Any:
        return csi_pb2.NodeGetInfoResponse(
            node_id=NODE_ID,
            max_volumes_per_node=25,
            accessible_topology=csi_pb2.Topology(segments={ZONE: "nova-a"}),
        )

    def NodeGetCapabilities(self, request: Any, context: Any) -> Any:
        rpc = csi_pb2.NodeServiceCapability.RPC
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(rpc=rpc(type=t))
                for t in (rpc.STAGE_UNSTAGE_VOLUME, rpc.EXPAND_VOLUME)
            ]
        )

    def NodeStageVolume(self, request: Any, context: Any) -> Any:
        assert Path(request.staging_target_path).is_dir()  # the CO makes the staging dir
        self._record("NodeStageVolume", request)
        return csi_pb2.NodeStageVolumeResponse()

    def NodePublishVolume(self, request: Any, context: Any) -> Any:
        target = Path(request.target_path)
        assert target.parent.is_dir()  # the CO makes the parent, the plugin the target
        if request.volume_capability.HasField("block"):
            target.touch()
        else:
            target.mkdir(exist_ok=True)
        self._record("NodePublishVolume", request)
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(self, request: Any, context: Any) -> Any:
        target = Path(request.target_path)
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        self._record("NodeUnpublishVolume", request)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeUnstageVolume(self, request: Any, context: Any) -> Any:
        self._record("NodeUnstageVolume", request)
        return csi_pb2.NodeUnstageVolumeResponse()

    def NodeExpandVolume(self, request: Any, context: Any) -> Any:
        self._record("NodeExpandVolume", request)
        return csi_pb2.NodeExpandVolumeResponse(
            capacity_bytes=request.capacity_range.required_bytes
        )


@pytest.fixture
def plugin() -> Iterator[tuple[FakeNodePlugin, Path]]:
    workdir = Path(tempfile.mkdtemp(prefix="kubelet-", dir="/tmp"))  # unix socket paths are short
    fake = FakeNodePlugin()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    csi_pb2_grpc.add_IdentityServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    csi_pb2_grpc.add_NodeServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix://{workdir}/csi.sock")
    server.start()
    yield fake, workdir
    server.stop(None).wait()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def kube(plugin: tuple[FakeNodePlugin, Path]) -> Iterator[KubeStandIn]:
    _, workdir = plugin
    with KubeStandIn() as standin:
        standin.add_node("node-a")
        standin.add_kubelet("node-a", workdir / "csi.sock", workdir / "kubelet")
        yield standin


def bound_claim(kube: KubeStandIn, name: str, *, block: bool = False) -> dict[str, Any]:
    """A claim bound to a CSI volume, made the way the provisioner would."""
    store = kube.store
    if store.peek("storageclasses", "cinder") is None:
        store.create(
            "storageclasses",
            {"metadata": {"name": "cinder"}, "provisioner": DRIVER, "allowVolumeExpansion": True},
        )
    mode = "Block" if block else "Filesystem"
    claim = store.create(
        "persistentvolumeclaims",
        {
            "metadata": {"name": name},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "cinder",
                "volumeMode": mode,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    csi: dict[str, Any] = {
        "driver": DRIVER,
        "volumeHandle": f"handle-{name}",
        "volumeAttributes": {"storage.kubernetes.io/csiProvisionerIdentity": "x"},
    }
    if not block:
        csi["fsType"] = "ext4"
    store.create(
        "persistentvolumes",
        {
            "metadata": {"name": f"pv-{name}"},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteOnce"],
                "volumeMode": mode,
                "storageClassName": "cinder",
                "persistentVolumeReclaimPolicy": "Delete",
                "mountOptions": ["noatime"],
                "csi": csi,
                "claimRef": {"namespace": "default", "name": name, "uid": claim["metadata"]["uid"]},
            },
        },
    )
    return wait_until(
        lambda: (
            (c := store.get("persistentvolumeclaims", name))["status"].get("phase") == "Bound" and c
        ),
        what="binding",
    )


def run_pod(kube: KubeStandIn, name: str, claim: str) -> None:
    kube.store.create(
        "pods",
        {
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": "app", "image": "busybox:1.36"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
            },
        },
    )


def attach(kube: KubeStandIn, pv: str, handle: str) -> str:
    """Play the external attacher for the VolumeAttachment the A/D controller makes."""
    name = "csi-" + hashlib.sha256(f"{handle}{DRIVER}node-a".encode()).hexdigest()
    wait_until(lambda: kube.store.peek("volumeattachments", name), what="the VolumeAttachment")
    kube.store.patch(
        "volumeattachments",
        name,
        {"status": {"attached": True, "attachmentMetadata": {"devicePath": "/dev/vdb"}}},
        subresource="status",
    )
    assert kube.store.get("volumeattachments", name)["spec"]["source"] == {
        "persistentVolumeName": pv
    }
    return name


def test_registration_writes_csinode_and_node_labels(kube: KubeStandIn) -> None:
    csinode = kube.store.get("csinodes", "node-a")
    assert csinode["spec"]["drivers"] == [
        {"name": DRIVER, "nodeID": NODE_ID, "topologyKeys": [ZONE], "allocatable": {"count": 25}}
    ]
    assert csinode["metadata"]["ownerReferences"][0]["kind"] == "Node"
    node = kube.store.get("nodes", "node-a")
    assert node["metadata"]["labels"][ZONE] == "nova-a"
    assert node["metadata"]["annotations"]["csi.volume.kubernetes.io/nodeid"] == (
        f'{{"{DRIVER}": "{NODE_ID}"}}'
    )


def test_stage_publish_expand_and_tear_down(
    kube: KubeStandIn, plugin: tuple[FakeNodePlugin, Path]
) -> None:
    fake, workdir = plugin
    root = workdir / "kubelet"
    bound_claim(kube, "data")
    run_pod(kube, "app", "data")
    assert kube.store.get("pods", "app")["status"]["phase"] == "Pending"
    va = attach(kube, "pv-data", "handle-data")

    pod = wait_until(
        lambda: (p := kube.store.get("pods", "app"))["status"]["phase"] == "Running" and p,
        what="the pod to run",
    )
    uid = pod["metadata"]["uid"]
    [stage] = fake.named("NodeStageVolume")
    digest = hashlib.sha256(b"handle-data").hexdigest()
    assert stage.staging_target_path == str(
        root / "plugins/kubernetes.io/csi" / DRIVER / digest / "globalmount"
    )
    assert stage.volume_id == "handle-data"
    assert dict(stage.publish_context) == {"devicePath": "/dev/vdb"}
    assert stage.volume_capability.mount.fs_type == "ext4"
    assert list(stage.volume_capability.mount.mount_flags) == ["noatime"]
    assert stage.volume_capability.access_mode.mode == (
        csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    )
    [publish] = fake.named("NodePublishVolume")
    target = root / "pods" / uid / "volumes/kubernetes.io~csi/pv-data/mount"
    assert publish.target_path == str(target)
    assert publish.staging_target_path == stage.staging_target_path
    assert dict(publish.volume_context) == {"storage.kubernetes.io/csiProvisionerIdentity": "x"}
    annotation = pod["metadata"]["annotations"]["sandbox.cinder-csi/publish-path-pv-data"]
    assert annotation == str(target)
    (Path(annotation) / "hello.txt").write_text("hi")  # tests can write into the volume
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    unique = f"kubernetes.io/csi/{DRIVER}^handle-data"
    assert kube.store.get("nodes", "node-a")["status"]["volumesInUse"] == [unique]

    # Play the external-resizer: grow the volume, then ask for the filesystem resize.
    kube.store.patch("persistentvolumes", "pv-data", {"spec": {"capacity": {"storage": "2Gi"}}})
    kube.store.patch(
        "persistentvolumeclaims",
        "data",
        {"status": {"conditions": [{"type": "FileSystemResizePending", "status": "True"}]}},
        subresource="status",
    )
    claim = wait_until(
        lambda: (
            (c := kube.store.get("persistentvolumeclaims", "data"))["status"]["capacity"]["storage"]
            == "2Gi"
            and c
        ),
        what="the resize to finish",
    )
    assert "conditions" not in claim["status"]
    [expand] = fake.named("NodeExpandVolume")
    assert expand.capacity_range.required_bytes == 2 * 1024**3
    assert expand.volume_path == str(target)

    # A graceful delete: unpublish, unstage, then the pod goes and the volume is detached.
    kube.store.delete("pods", "app")
    wait_until(lambda: kube.store.peek("pods", "app") is None, what="the pod to go")
    assert [r.target_path for r in fake.named("NodeUnpublishVolume")] == [str(target)]
    assert [r.staging_target_path for r in fake.named("NodeUnstageVolume")] == [
        stage.staging_target_path
    ]
    assert not target.exists()
    assert "volumesInUse" not in kube.store.get("nodes", "node-a")["status"]
    wait_until(
        lambda: (
            (a := kube.store.peek("volumeattachments", va)) is None
            or a["metadata"].get("deletionTimestamp")
        ),
        what="the detach",
    )


def test_block_volume_paths_and_shared_staging(
    kube: KubeStandIn, plugin: tuple[FakeNodePlugin, Path]
) -> None:
    fake, workdir = plugin
    root = workdir / "kubelet"
    bound_claim(kube, "raw", block=True)
    run_pod(kube, "one", "raw")
    attach(kube, "pv-raw", "handle-raw")
    wait_until(
        lambda: kube.store.get("pods", "one")["status"]["phase"] == "Running",
        what="the first pod to run",
    )
    run_pod(kube, "two", "raw")
    second = wait_until(
        lambda: (p := kube.store.get("pods", "two"))["status"]["phase"] == "Running" and p,
        what="the second pod to run",
    )
    [stage] = fake.named("NodeStageVolume")  # staged once for both pods
    assert stage.staging_target_path == str(
        root / "plugins/kubernetes.io/csi/volumeDevices/staging/pv-raw"
    )
    assert stage.volume_capability.HasField("block")
    targets = [r.target_path for r in fake.named("NodePublishVolume")]
    assert targets[1] == str(
        root / "plugins/kubernetes.io/csi/volumeDevices/publish/pv-raw" / second["metadata"]["uid"]
    )

    kube.store.delete("pods", "one")
    wait_until(lambda: kube.store.peek("pods", "one") is None, what="the first pod to go")
    assert fake.named("NodeUnstageVolume") == []  # the second pod still uses it
    kube.store.delete("pods", "two", grace_period=0)
    wait_until(lambda: kube.store.peek("pods", "two") is None, what="the second pod to go")
    wait_until(lambda: len(fake.named("NodeUnstageVolume")) == 1, what="the unstage")
