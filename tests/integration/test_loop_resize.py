"""The resize controller on the stand-ins: a claim grows from 1Gi to 2Gi.

Cinder grows through our CSI controller over real gRPC; the claim and PV move through the
Kubernetes stand-in over real HTTP. As root, with a pod running on the kubelet stand-in and our
node plugin on real loop devices, the mounted filesystem grows too and the claim's capacity
follows.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cinder_csi.loop.attacher import AttachmentController, AttachOptions
from cinder_csi.loop.resizer import ResizeController
from cinder_csi.standins.kube import PUBLISH_PATH_ANNOTATION
from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.integration.test_loop_attach import cinder, static_volume, wait_attached

ROOT = os.geteuid() == 0
CAP_SYS_RESOURCE = 24
GIB = 1 << 30
Obj = dict[str, Any]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, nodes=1) as made:
        yield made


def loop_factories() -> list[Any]:
    attach = functools.partial(AttachmentController, options=AttachOptions(
        attach_workers=2, detach_workers=2, reconcile_period=0.0))
    return [attach, ResizeController]


def grow(env: ClusterEnv, claim: str, size: str) -> None:
    env.kube.store.patch("persistentvolumeclaims", claim,
                         {"spec": {"resources": {"requests": {"storage": size}}}},
                         namespace="default")


def conditions(env: ClusterEnv, claim: str) -> list[str]:
    status = (env.claim(claim) or {}).get("status") or {}
    return [c["type"] for c in status.get("conditions") or []]


def test_offline_claim_grows_and_waits_for_the_node(env: ClusterEnv) -> None:
    volume_id, pv_name = static_volume(env, "grow")
    with env.run_loop(loop_factories()):
        grow(env, "grow", "2Gi")

        wait_until(lambda: "FileSystemResizePending" in conditions(env, "grow"), timeout=30,
                   what="FileSystemResizePending")
        assert cinder(env, volume_id)["size"] == 2
        pv = env.pv(pv_name) or {}
        assert pv["spec"]["capacity"]["storage"] == "2Gi"
        status = (env.claim("grow") or {})["status"]
        assert status["capacity"]["storage"] == "1Gi"  # the filesystem has not grown yet
        assert status["allocatedResources"]["storage"] == "2Gi"
        (pending,) = [c for c in status["conditions"] if c["type"] == "FileSystemResizePending"]
        assert pending["message"] == ("Waiting for user to (re-)start a pod to finish file "
                                      "system resize of volume on node.")
        env.wait_event("grow", "Resizing")
        env.wait_event("grow", "FileSystemResizeRequired")


def test_class_without_expansion_gets_a_warning(env: ClusterEnv) -> None:
    env.create_class("fixed", expansion=True)
    volume_id, _ = static_volume(env, "fixed", storage_class="fixed")
    # Admission let the resize in while the class allowed it; then it was turned off, all
    # before our loop came up.
    grow(env, "fixed", "2Gi")
    env.kube.store.patch("storageclasses", "fixed", {"allowVolumeExpansion": False})
    with env.run_loop(loop_factories()):
        event = env.wait_event("fixed", "VolumeResizeFailed")
        assert "does not allow expansion" in event["message"]
        assert event["type"] == "Warning"
        assert cinder(env, volume_id)["size"] == 1


def has_capability(bit: int) -> bool:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def growable_fs_type() -> str | None:
    """A filesystem this host can grow online: xfs needs xfsprogs; the ext4 resize ioctl
    needs CAP_SYS_RESOURCE, which some sandboxes drop."""
    if shutil.which("mkfs.xfs") and shutil.which("xfs_growfs"):
        return "xfs"
    return "ext4" if has_capability(CAP_SYS_RESOURCE) else None


@pytest.mark.skipif(not ROOT, reason="mounting loop devices needs root")
def test_mounted_filesystem_grows_with_the_claim(env: ClusterEnv) -> None:
    fs_type = growable_fs_type()
    if fs_type is None:
        pytest.skip("no filesystem can be grown online here (no xfsprogs, no CAP_SYS_RESOURCE)")
    volume_id, pv_name = static_volume(env, "live", fs_type=fs_type)
    env.add_kubelet("node-0")
    with env.run_loop(loop_factories()):
        env.create_pod("app", ["live"], node="node-0")
        wait_attached(env, pv_name)

        def published() -> str | None:
            pod = env.kube.store.peek("pods", "app", namespace="default") or {}
            ann = (pod.get("metadata") or {}).get("annotations") or {}
            return ann.get(PUBLISH_PATH_ANNOTATION + pv_name)
        target = Path(wait_until(published, timeout=60, what="pod volume published"))
        before = os.statvfs(target)
        assert before.f_blocks * before.f_frsize < 1.1 * GIB

        grow(env, "live", "2Gi")

        def finished() -> Obj | None:
            status = (env.claim("live") or {}).get("status") or {}
            done = (status.get("capacity") or {}).get("storage") == "2Gi"
            return status if done else None
        status = wait_until(finished, timeout=60, what="claim capacity 2Gi")
        assert "FileSystemResizePending" not in conditions(env, "live")
        assert "storage" not in (status.get("allocatedResourceStatuses") or {})
        assert cinder(env, volume_id)["size"] == 2
        after = os.statvfs(target)
        assert after.f_blocks * after.f_frsize > 1.8 * GIB
