"""The orphan sweep against the stand-ins: volumes of this cluster that no PV accounts for."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from cinder_csi import RECLAIM_POLICY_KEY
from cinder_csi.loop import protocol as p
from cinder_csi.loop.claims import ClaimController
from cinder_csi.loop.deletion import VolumeController
from cinder_csi.loop.orphans import OrphanSweep
from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.integration.csi_helpers import create_request


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path) as made:
        yield made


def make_volume(env: ClusterEnv, name: str, policy: str | None = "Delete") -> str:
    """A volume as the loop makes one (reclaim policy recorded), without its PV."""
    params = {RECLAIM_POLICY_KEY: policy} if policy else {}
    return str(env.csi.controller.CreateVolume(create_request(name, 1, parameters=params),
                                               timeout=30).volume.volume_id)


def start_sweeper(env: ClusterEnv, **kw: object) -> OrphanSweep:
    """A loop with a sweep that never runs on its own (tests call sweep())."""
    factory = functools.partial(OrphanSweep, interval=3600, start_delay=3600, **kw)
    handle = env.start_loop([ClaimController, VolumeController, factory])
    sweeper = handle.controllers[2]
    assert isinstance(sweeper, OrphanSweep)
    return sweeper


def sweep(env: ClusterEnv, **kw: object) -> tuple[OrphanSweep, list[tuple[str, str]]]:
    sweeper = start_sweeper(env, **kw)
    return sweeper, sweeper.sweep()


def gauge(sweeper: OrphanSweep) -> float:
    value = sweeper.ctx.registry.get_sample_value("cinder_csi_orphaned_volumes")
    assert value is not None
    return value


def test_orphans_are_reported_not_deleted_by_default(env: ClusterEnv) -> None:
    orphan = make_volume(env, "pvc-00000000-0000-0000-0000-000000000001")
    make_volume(env, "not-a-claim-volume")  # ours, but not named like a claim's
    sweeper = start_sweeper(env, grace=0)
    env.create_claim("kept")
    pv_name = env.wait_bound("kept")["spec"]["volumeName"]
    wait_until(lambda: sweeper.ctx.informers.volumes.cache.get(pv_name), timeout=10,
               what="PV in the loop's cache")
    found = sweeper.sweep()
    assert found == [(orphan, "pvc-00000000-0000-0000-0000-000000000001")]
    event = env.wait_event("pvc-00000000-0000-0000-0000-000000000001", "OrphanedVolume",
                           kind="PersistentVolume")
    assert event["type"] == "Warning"
    assert orphan in event["message"]
    assert gauge(sweeper) == 1
    assert orphan in {v["id"] for v in env.cinder_volumes()}
    # The bound claim's volume is accounted for on every later pass too.
    assert [vid for vid, _ in sweeper.sweep()] == [orphan]


def test_grace_period_spares_fresh_volumes(env: ClusterEnv) -> None:
    now = [1000.0]
    make_volume(env, "pvc-00000000-0000-0000-0000-000000000002")
    sweeper, found = sweep(env, grace=60, clock=lambda: now[0])
    assert found == []
    assert gauge(sweeper) == 0
    now[0] += 59
    assert sweeper.sweep() == []
    now[0] += 2
    assert len(sweeper.sweep()) == 1


def test_claim_being_provisioned_is_not_an_orphan(env: ClusterEnv) -> None:
    claim = env.create_claim("pending", storage_class="nothing-yet")
    name = f"pvc-{claim['metadata']['uid']}"
    env.kube.store.patch("persistentvolumeclaims", "pending", {"metadata": {
        "annotations": {p.ANN_PROVISIONING: name}}}, namespace="default")
    make_volume(env, name)
    _, found = sweep(env, grace=0)
    assert found == []


def test_journal_entries_are_not_orphans(env: ClusterEnv) -> None:
    """Volumes named by the provisioning journal on the server (an entry this loop has not
    loaded, one it cannot read) are in the making, not orphans."""
    later, unreadable = "pvc-0f0f0f0f-0000-4000-8000-000000000001", "pvc-unreadable"
    make_volume(env, later)
    make_volume(env, unreadable)
    handle = env.start_loop([functools.partial(OrphanSweep, interval=3600, start_delay=3600,
                                               grace=0)])
    sweeper = handle.controllers[0]
    assert isinstance(sweeper, OrphanSweep)
    env.write_journal({later: "{}", unreadable: "not an entry"})  # after the loop loaded it
    assert sweeper.sweep() == []
    env.write_journal({later: None, unreadable: None})  # type: ignore[dict-item]
    assert sorted(name for _, name in sweeper.sweep()) == sorted([later, unreadable])


def test_orphans_deleted_when_asked(env: ClusterEnv) -> None:
    orphan = make_volume(env, "pvc-00000000-0000-0000-0000-000000000003")
    sweeper, found = sweep(env, grace=0, delete_orphans=True)
    assert [vid for vid, _ in found] == [orphan]
    assert orphan in {v["id"] for v in env.cinder_volumes()}  # one sighting is not enough
    assert [vid for vid, _ in sweeper.sweep()] == [orphan]
    wait_until(lambda: orphan not in {v["id"] for v in env.cinder_volumes()}, timeout=10,
               what="orphan deleted")
    assert gauge(sweeper) == 0
    env.wait_event("pvc-00000000-0000-0000-0000-000000000003", "OrphanedVolumeDeleted")


def test_sweep_runs_at_start(env: ClusterEnv) -> None:
    orphan = make_volume(env, "pvc-00000000-0000-0000-0000-000000000004")
    factory = functools.partial(OrphanSweep, grace=0)
    with env.run_loop([factory]):
        event = env.wait_event("pvc-00000000-0000-0000-0000-000000000004", "OrphanedVolume")
        assert orphan in event["message"]


def test_paged_listing_finds_every_orphan(env: ClusterEnv) -> None:
    made = {make_volume(env, f"pvc-00000000-0000-0000-0000-00000000010{i}") for i in range(5)}
    sweeper, found = sweep(env, grace=0, page_size=2)
    assert {vid for vid, _ in found} == made
    pages = sweeper.ctx.registry.get_sample_value("csi_sidecar_operations_seconds_count", {
        "driver_name": env.driver, "method_name": "/csi.v1.Controller/ListVolumes",
        "grpc_status_code": "OK"})
    assert pages is not None and pages >= 3  # five volumes, two a page
