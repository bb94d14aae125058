"""The orphan sweep with deletion on and no grace cannot destroy data (issue 10, build 2).

Each scenario runs several whole passes with ``delete_orphans=True`` and ``grace=0`` and ends
with the audit: what must be kept is still in Cinder. The one positive case checks that a
deletion is an Event and a log line naming the volume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from cinder_csi import RECLAIM_POLICY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop.claims import ClaimController
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.deletion import VolumeController
from cinder_csi.loop.orphans import OrphanSweep
from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.integration.csi_helpers import create_request, mount_cap
from tests.reliability.harness import live_volumes

PASSES = 3
LOOP = (ClaimController, VolumeController)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, real_devices=False) as made:
        yield made


def sweeper(env: ClusterEnv, *, explicit: bool = True, cluster: str | None = None,
            synced: bool = True) -> OrphanSweep:
    """A sweep that deletes with no grace, in a loop of its own; tests call sweep()."""
    def factory(ctx: LoopContext) -> OrphanSweep:
        ctx.cluster_explicit = explicit
        ctx.cluster = cluster or ctx.cluster
        return OrphanSweep(ctx, grace=0, delete_orphans=True, interval=3600, start_delay=3600)

    sweep = env.start_loop([factory], synced=synced).controllers[0]
    assert isinstance(sweep, OrphanSweep)
    return sweep


def sweep_passes(sweep: OrphanSweep, passes: int = PASSES) -> None:
    for _ in range(passes):
        sweep.sweep()


def ids(env: ClusterEnv) -> set[str]:
    return {v["id"] for v in live_volumes(env)}


def bound_volumes(env: ClusterEnv, names: list[str], **claim: object) -> dict[str, str]:
    """Claims made and bound by the loop; claim name -> volume id."""
    out = {}
    with env.run_loop(LOOP):
        for name in names:
            env.create_claim(name, **claim)  # type: ignore[arg-type]
        for name in names:
            pv = env.pv(env.wait_bound(name)["spec"]["volumeName"])
            assert pv is not None
            out[name] = pv["spec"]["csi"]["volumeHandle"]
    return out


def deleted_events(env: ClusterEnv) -> list[str]:
    return [str(e["message"]) for e in env.kube.store.view("events", namespace="default")
            if e.get("reason") == "OrphanedVolumeDeleted"]


def test_pv_listing_that_fails_deletes_nothing(env: ClusterEnv) -> None:
    """PV lists fail (RBAC, an overloaded API server): the cache never fills, and the sweep
    must not take the empty cache for 'no PVs'. Before the fix every volume was deleted."""
    volumes = bound_volumes(env, ["a", "b", "c"])
    env.kube.faults.fail(10**6, code=500, path="/persistentvolumes")
    sweep = sweeper(env, synced=False)
    sweep_passes(sweep)
    assert set(volumes.values()) <= ids(env)
    assert deleted_events(env) == []


def test_retain_pv_removed_by_the_admin_keeps_its_volume(env: ClusterEnv) -> None:
    env.create_class("keep", reclaim="Retain")
    volume = bound_volumes(env, ["kept"], storage_class="keep")["kept"]
    pv_name = env.claim("kept")["spec"]["volumeName"]  # type: ignore[index]
    with env.run_loop(LOOP):
        env.kube.store.delete("persistentvolumeclaims", "kept", namespace="default")
        env.kube.store.delete("persistentvolumes", pv_name)  # to re-import the volume
        wait_until(lambda: env.pv(pv_name) is None, timeout=20, what=f"PV {pv_name} gone")
    sweep_passes(sweeper(env))
    assert volume in ids(env)
    assert deleted_events(env) == []


def test_pv_switched_to_retain_then_deleted_keeps_its_volume(env: ClusterEnv) -> None:
    """The admin sets Retain and deletes the PV at once: the loop's finalizer holds the PV
    until Retain is recorded on the volume, so the sweep never takes it for a lost one."""
    volume = bound_volumes(env, ["switched"])["switched"]
    pv_name = env.claim("switched")["spec"]["volumeName"]  # type: ignore[index]
    with env.run_loop(LOOP):
        env.kube.store.patch("persistentvolumes", pv_name,
                             {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
        env.kube.store.delete("persistentvolumeclaims", "switched", namespace="default")
        env.kube.store.delete("persistentvolumes", pv_name)
        wait_until(lambda: env.pv(pv_name) is None, timeout=20, what=f"PV {pv_name} gone")
    sweep_passes(sweeper(env))
    assert volume in ids(env)
    assert deleted_events(env) == []


def test_default_cluster_never_deletes(env: ClusterEnv) -> None:
    orphan = str(env.csi.controller.CreateVolume(create_request(
        "pvc-00000000-0000-4000-8000-00000000000d", parameters={RECLAIM_POLICY_KEY: "Delete"}),
        timeout=30).volume.volume_id)
    sweep_passes(sweeper(env, explicit=False))
    assert orphan in ids(env)
    assert deleted_events(env) == []


def test_attached_or_foreign_orphans_are_kept(env: ClusterEnv) -> None:
    request = create_request("pvc-00000000-0000-4000-8000-00000000000a",
                             parameters={RECLAIM_POLICY_KEY: "Delete"})
    attached = str(env.csi.controller.CreateVolume(request, timeout=30).volume.volume_id)
    env.csi.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id=attached, node_id=env.server_ids["node-0"], volume_capability=mount_cap()),
        timeout=30)
    unmarked = str(env.csi.controller.CreateVolume(create_request(
        "pvc-00000000-0000-4000-8000-00000000000b"), timeout=30).volume.volume_id)
    sweep_passes(sweeper(env))
    sweep_passes(sweeper(env, cluster="another-cluster"))
    assert {attached, unmarked} <= ids(env)
    assert deleted_events(env) == []


def test_a_lost_volume_is_deleted_with_an_event_and_a_log_line(
        env: ClusterEnv, caplog: pytest.LogCaptureFixture) -> None:
    name = "pvc-00000000-0000-4000-8000-0000000000ff"
    lost = str(env.csi.controller.CreateVolume(create_request(
        name, parameters={RECLAIM_POLICY_KEY: "Delete"}), timeout=30).volume.volume_id)
    sweep = sweeper(env)
    sweep.sweep()
    assert lost in ids(env)  # seen once: not yet
    with caplog.at_level(logging.WARNING, logger="cinder_csi.loop.orphans"):
        sweep.sweep()
    wait_until(lambda: lost not in ids(env), timeout=10, what="lost volume deleted")
    assert any(lost in r.getMessage() and name in r.getMessage() for r in caplog.records)
    wait_until(lambda: any(lost in m for m in deleted_events(env)), timeout=10,
               what="OrphanedVolumeDeleted event")
