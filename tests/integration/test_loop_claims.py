"""The claim controller against the stand-ins: real HTTP, real gRPC, the cluster's own PV
controller and scheduler binding what we make."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cinder_csi.loop import protocol as p
from cinder_csi.loop.claims import ClaimController
from cinder_csi.loop.deletion import VolumeController
from cinder_csi.loop.intent import Intent
from cinder_csi.loop.journal import JournalEntry
from tests.integration.cluster_env import (
    CLUSTER,
    DRIVER,
    TOPOLOGY_KEY,
    ClusterEnv,
    LoopHandle,
    cluster_env,
    wait_until,
)
from tests.integration.csi_helpers import create_request

LOOP = (ClaimController, VolumeController)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path) as made:
        yield made


def live_volumes(env: ClusterEnv, name: str | None = None) -> list[dict[str, Any]]:
    return [v for v in env.cinder_volumes() if name is None or v["name"] == name]


def test_claim_bound_to_one_volume_with_every_pv_field(env: ClusterEnv) -> None:
    env.create_class("fast", parameters={"csi.storage.k8s.io/fstype": "xfs"},
                     mount_options=["noatime"])
    with env.run_loop(LOOP) as loop:
        claim = env.create_claim("data", size="1Gi", storage_class="fast")
        bound = env.wait_bound("data")
        uid = claim["metadata"]["uid"]
        name = f"pvc-{uid}"
        assert bound["spec"]["volumeName"] == name
        volumes = live_volumes(env, name)
        assert len(volumes) == 1
        volume = volumes[0]
        assert volume["metadata"]["cinder.csi.openstack.org/cluster"] == CLUSTER
        assert volume["metadata"]["csi.storage.k8s.io/pvc/name"] == "data"
        assert volume["metadata"]["csi.storage.k8s.io/pvc/namespace"] == "default"
        assert volume["metadata"]["csi.storage.k8s.io/pv/name"] == name
        pv = env.pv(name)
        assert pv is not None
        meta, spec = pv["metadata"], pv["spec"]
        assert meta["annotations"][p.ANN_PROVISIONED_BY] == DRIVER
        assert meta["annotations"][p.ANN_DELETION_SECRET_NAME] == ""
        assert meta["annotations"][p.ANN_DELETION_SECRET_NAMESPACE] == ""
        assert p.FINALIZER_PV_DELETION in meta["finalizers"]
        ref = spec["claimRef"]
        assert (ref["apiVersion"], ref["kind"], ref["namespace"], ref["name"], ref["uid"]) == (
            "v1", "PersistentVolumeClaim", "default", "data", uid)
        assert ref["resourceVersion"]
        assert spec["persistentVolumeReclaimPolicy"] == "Delete"
        assert spec["storageClassName"] == "fast"
        assert spec["mountOptions"] == ["noatime"]
        assert spec["accessModes"] == ["ReadWriteOnce"]
        assert spec["volumeMode"] == "Filesystem"
        assert spec["capacity"] == {"storage": "1Gi"}
        terms = spec["nodeAffinity"]["required"]["nodeSelectorTerms"]
        assert terms == [{"matchExpressions": [{"key": TOPOLOGY_KEY, "operator": "In",
                                                "values": [volume["availability_zone"]]}]}]
        csi = spec["csi"]
        assert csi["driver"] == DRIVER
        assert csi["volumeHandle"] == volume["id"]
        assert csi["fsType"] == "xfs"
        assert csi["volumeAttributes"][p.PROVISIONER_IDENTITY_KEY] == \
            loop.ctx.provisioner_identity
        # The intent went to the journal: the claim itself is never written by the loop.
        current = env.claim("data")
        assert current is not None
        assert p.ANN_PROVISIONING not in (current["metadata"].get("annotations") or {})
        assert p.FINALIZER_PROVISIONING not in current["metadata"].get("finalizers", [])
        assert not loop.ctx.journal.has(name)  # done with, at once; off the server below
        env.wait_event("data", "ProvisioningSucceeded")
        assert pv["status"]["phase"] == "Bound"
        # The pv finalizer is not re-added or duplicated by the volume controller.
        time.sleep(0.3)
        again = env.pv(name)
        assert again is not None
        assert again["metadata"]["finalizers"].count(p.FINALIZER_PV_DELETION) == 1
    assert env.journal() == {}  # its removal was written when the loop stopped


def test_slow_provisioning_is_announced_while_it_lasts(env: ClusterEnv) -> None:
    env.openstack.faults.slow("create", 4)
    with env.run_loop(LOOP):
        env.create_claim("slow")
        started = env.wait_event("slow", "Provisioning", timeout=15)
        assert started["type"] == "Normal"
        assert env.claim("slow")["status"].get("phase") != "Bound"  # written while it lasted
        assert started["message"] == ('External provisioner is provisioning volume for claim '
                                      '"default/slow"')
        env.wait_bound("slow", timeout=30)
        env.wait_event("slow", "ProvisioningSucceeded")


def test_block_claim_has_no_fstype(env: ClusterEnv) -> None:
    with env.run_loop(LOOP):
        env.create_claim("raw", volume_mode="Block")
        bound = env.wait_bound("raw")
        pv = env.pv(bound["spec"]["volumeName"])
        assert pv is not None
        assert pv["spec"]["volumeMode"] == "Block"
        assert "fsType" not in pv["spec"]["csi"]


def test_wait_for_first_consumer_uses_selected_node_zone(env: ClusterEnv) -> None:
    env.create_class("late", binding="WaitForFirstConsumer")
    with env.run_loop(LOOP):
        env.create_claim("late-claim", storage_class="late")
        time.sleep(0.5)
        pending = env.claim("late-claim")
        assert pending is not None
        assert not pending["spec"].get("volumeName")
        assert not live_volumes(env)  # nothing before a consumer exists
        env.create_pod("consumer", ["late-claim"], node="node-1")
        bound = env.wait_bound("late-claim")
        selected = bound["metadata"]["annotations"][p.ANN_SELECTED_NODE]
        assert selected == "node-1"
        [volume] = live_volumes(env, bound["spec"]["volumeName"])
        assert volume["availability_zone"] == env.zones["node-1"] == "az-b"


@pytest.mark.parametrize("policy", ["Delete", "Retain"])
def test_claim_deletion_follows_reclaim_policy(env: ClusterEnv, policy: str) -> None:
    env.create_class("c", reclaim=policy)
    with env.run_loop(LOOP):
        env.create_claim("gone", storage_class="c")
        name = env.wait_bound("gone")["spec"]["volumeName"]
        pv = env.pv(name)
        assert pv is not None
        assert (p.FINALIZER_PV_DELETION in pv["metadata"].get("finalizers", [])) == (
            policy == "Delete")
        env.core.delete_namespaced_persistent_volume_claim("gone", "default")
        if policy == "Delete":
            wait_until(lambda: env.pv(name) is None, timeout=20, what="PV deleted")
            assert not live_volumes(env, name)
        else:
            wait_until(lambda: (env.pv(name) or {}).get("status", {}).get("phase")
                       == "Released", timeout=20, what="PV Released")
            time.sleep(0.5)
            assert len(live_volumes(env, name)) == 1
            assert env.pv(name) is not None


def test_many_claims_at_once_all_bound_one_volume_each(env: ClusterEnv) -> None:
    count = 50
    with env.run_loop(LOOP, workers=32):
        for i in range(count):
            env.create_claim(f"bulk-{i}")
        for i in range(count):
            env.wait_bound(f"bulk-{i}", timeout=60)
    names = [v["name"] for v in live_volumes(env)]
    assert len(names) == count
    assert len(set(names)) == count


def test_clone_protects_its_source(env: ClusterEnv) -> None:
    with env.run_loop(LOOP):
        env.create_claim("origin")
        origin = env.wait_bound("origin")
        env.openstack.faults.slow("create", 2)
        env.create_claim("copy", data_source={"kind": "PersistentVolumeClaim",
                                              "name": "origin"})
        wait_until(lambda: p.FINALIZER_CLONE_SOURCE in
                   (env.claim("origin") or {})["metadata"].get("finalizers", []),
                   timeout=10, what="clone protection on the source")
        copy = env.wait_bound("copy", timeout=30)
        wait_until(lambda: p.FINALIZER_CLONE_SOURCE not in
                   (env.claim("origin") or {})["metadata"].get("finalizers", []),
                   timeout=10, what="clone protection released")
        volumes = {v["name"]: v for v in live_volumes(env)}
        source_id = volumes[origin["spec"]["volumeName"]]["id"]
        assert volumes[copy["spec"]["volumeName"]]["source_volid"] == source_id


def snapshot_finalizers(env: ClusterEnv, name: str) -> list[str]:
    snapshot = env.kube.store.peek("volumesnapshots", name, namespace="default")
    return list((snapshot or {}).get("metadata", {}).get("finalizers") or [])


def test_snapshot_source_is_protected_and_survives_its_deletion(env: ClusterEnv) -> None:
    """The VolumeSnapshot carries the protection finalizer while a restore from it is in
    flight; deleted meanwhile (with the loop down), it stays until the restore is done."""
    with env.run_loop(LOOP):
        env.create_claim("origin")
        snapshot_id = env.make_snapshot("origin", "snap")
    env.openstack.faults.slow("create", 3)
    loop = env.start_loop(LOOP)
    env.create_claim("restored", data_source={
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"})
    wait_until(lambda: intent_recorded(env, "restored"), timeout=10, what="intent recorded")
    assert p.FINALIZER_SNAPSHOT_SOURCE in snapshot_finalizers(env, "snap")
    env.stop_loop(loop, kill=True)
    env.kube.store.delete("volumesnapshots", "snap", namespace="default")
    assert snapshot_finalizers(env, "snap")  # terminating, held by the protection
    with env.run_loop(LOOP):
        restored = env.wait_bound("restored", timeout=30)
        wait_until(lambda: env.kube.store.peek("volumesnapshots", "snap",
                                               namespace="default") is None,
                   timeout=10, what="the deleted snapshot released once restored")
    volume = live_volumes(env, restored["spec"]["volumeName"])
    assert [v["snapshot_id"] for v in volume] == [snapshot_id]


def test_loop_secret_is_passed_and_recorded(env: ClusterEnv) -> None:
    env.kube.store.create("secrets", {
        "metadata": {"name": "creds-data", "namespace": "default"},
        "stringData": {"token": "s3cr3t-value"},
    }, namespace="default")
    env.create_class("secret-class", parameters={
        "csi.storage.k8s.io/provisioner-secret-name": "creds-${pvc.name}",
        "csi.storage.k8s.io/provisioner-secret-namespace": "${pvc.namespace}",
    })
    with env.run_loop(LOOP):
        env.create_claim("data", storage_class="secret-class")
        pv = env.pv(env.wait_bound("data")["spec"]["volumeName"])
        assert pv is not None
        ann = pv["metadata"]["annotations"]
        assert ann[p.ANN_DELETION_SECRET_NAME] == "creds-data"
        assert ann[p.ANN_DELETION_SECRET_NAMESPACE] == "default"
    for event in env.kube.store.view("events"):
        assert "s3cr3t-value" not in event.get("message", "")


def intent_recorded(env: ClusterEnv, name: str) -> dict[str, Any] | None:
    """The claim, when the API server has an intent recorded for it (journal or claim)."""
    return env.claim(name) if env.in_the_making(name) else None


def wait_intent_done(env: ClusterEnv, loop: LoopHandle, claim_name: str) -> None:
    """Until the loop is done with the claim's intent: on the claim, the server shows it;
    in the journal, the loop's view does (the removal is written with the next write, or
    when the loop stops)."""
    claim = env.claim(claim_name)
    assert claim is not None
    journal = loop.ctx.journal
    name = f"pvc-{claim['metadata']['uid']}"
    wait_until(lambda: (not journal.has(name)) if journal is not None
               else intent_recorded(env, claim_name) is None, timeout=10, what="intent done")


# Where the loop records intents: the journal (what the runner does), or each claim (when the
# journal cannot be used). Every crash-safety test runs with both.
RECORDING = pytest.mark.parametrize("journal", [True, False], ids=["journal", "on-claim"])


@RECORDING
def test_restart_mid_flight_resumes(env: ClusterEnv, journal: bool) -> None:
    env.openstack.faults.slow("create", 3)
    loop = env.start_loop(LOOP, journal=journal)
    env.create_claim("resume")
    claim = wait_until(lambda: intent_recorded(env, "resume"), timeout=10,
                       what="intent recorded")
    name = f"pvc-{claim['metadata']['uid']}"
    if journal:
        assert name in env.journal()
        assert p.FINALIZER_PROVISIONING not in claim["metadata"].get("finalizers", [])
    else:
        assert claim["metadata"]["annotations"][p.ANN_PROVISIONING] == name
        assert p.FINALIZER_PROVISIONING in claim["metadata"]["finalizers"]
    time.sleep(0.3)  # CreateVolume is under way in the cloud
    env.stop_loop(loop, kill=True)  # its CreateVolume is cut off, as by a crash
    assert env.pv(name) is None
    assert intent_recorded(env, "resume")
    with env.run_loop(LOOP, journal=journal) as again:
        bound = env.wait_bound("resume", timeout=30)
        assert bound["spec"]["volumeName"] == name
        wait_intent_done(env, again, "resume")
    assert intent_recorded(env, "resume") is None
    assert len(live_volumes(env, name)) == 1


def crashed_after_create(env: ClusterEnv, claim_name: str, journal: bool) -> tuple[str, str]:
    """The state a crash right after CreateVolume leaves: the intent recorded (in the journal
    or on the claim), a volume, no PV."""
    claim = env.create_claim(claim_name)
    name = f"pvc-{claim['metadata']['uid']}"
    request = create_request(name, 1)
    if journal:
        entry = JournalEntry("default", claim_name, claim["metadata"]["uid"], Intent(
            request=request, storage_class="standard", reclaim_policy="Delete",
            fs_type="ext4"))
        env.write_journal({name: entry.encode()})
    else:
        env.kube.store.patch("persistentvolumeclaims", claim_name, {"metadata": {
            "annotations": {p.ANN_PROVISIONING: name},
            "finalizers": [*claim["metadata"].get("finalizers", []), p.FINALIZER_PROVISIONING],
        }}, namespace="default")
    volume = env.csi.controller.CreateVolume(request, timeout=30).volume
    return name, str(volume.volume_id)


@RECORDING
def test_restart_adopts_volume_made_before_the_crash(env: ClusterEnv, journal: bool) -> None:
    name, volume_id = crashed_after_create(env, "adopt", journal)
    with env.run_loop(LOOP, journal=journal) as loop:
        bound = env.wait_bound("adopt")
        wait_intent_done(env, loop, "adopt")
        pv = env.pv(name)
        assert pv is not None
        assert bound["spec"]["volumeName"] == name
        assert pv["spec"]["csi"]["volumeHandle"] == volume_id
    assert intent_recorded(env, "adopt") is None
    assert [v["id"] for v in live_volumes(env, name)] == [volume_id]


@RECORDING
def test_restart_with_pv_made_only_cleans_up(env: ClusterEnv, journal: bool) -> None:
    name, volume_id = crashed_after_create(env, "almost", journal)
    claim = env.claim("almost")
    assert claim is not None
    env.kube.store.create("persistentvolumes", {
        "metadata": {"name": name, "annotations": {p.ANN_PROVISIONED_BY: DRIVER}},
        "spec": {
            "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "standard",
            "claimRef": {"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                         "namespace": "default", "name": "almost",
                         "uid": claim["metadata"]["uid"]},
            "csi": {"driver": DRIVER, "volumeHandle": volume_id},
        },
    })
    creates_before = sum(1 for r in env.openstack.requests()
                         if r.method == "POST" and r.path.endswith("/volumes"))
    with env.run_loop(LOOP, journal=journal) as loop:
        env.wait_bound("almost")
        wait_intent_done(env, loop, "almost")
    assert intent_recorded(env, "almost") is None
    creates_after = sum(1 for r in env.openstack.requests()
                        if r.method == "POST" and r.path.endswith("/volumes"))
    assert creates_after == creates_before
    assert [v["id"] for v in live_volumes(env, name)] == [volume_id]


@RECORDING
def test_claim_deleted_mid_provisioning_leaks_nothing(env: ClusterEnv, journal: bool) -> None:
    env.openstack.faults.slow("create", 3)
    with env.run_loop(LOOP, journal=journal):
        env.create_claim("short-lived")
        wait_until(lambda: intent_recorded(env, "short-lived"), timeout=10,
                   what="intent recorded")
        env.core.delete_namespaced_persistent_volume_claim("short-lived", "default")
        wait_until(lambda: env.claim("short-lived") is None, timeout=30, what="claim gone")
        wait_until(lambda: not live_volumes(env) and not env.kube.store.view(
            "persistentvolumes"), timeout=30, what="volume and PV gone")
    assert env.journal() == {}, f"left in the journal: {list(env.journal())}"


@RECORDING
def test_claim_deleted_while_the_loop_is_down_leaks_nothing(env: ClusterEnv,
                                                           journal: bool) -> None:
    """The crash-safety case: killed after CreateVolume went out, the claim and its class
    deleted before the loop is back. Its volume is deleted from the recorded intent alone."""
    env.create_class("gone-class")
    env.openstack.faults.slow("create", 2)
    loop = env.start_loop(LOOP, journal=journal)
    claim = env.create_claim("doomed", storage_class="gone-class")
    name = f"pvc-{claim['metadata']['uid']}"
    wait_until(lambda: intent_recorded(env, "doomed"), timeout=10, what="intent recorded")
    time.sleep(0.3)  # CreateVolume is under way in the cloud
    env.stop_loop(loop, kill=True)
    env.core.delete_namespaced_persistent_volume_claim("doomed", "default")
    env.kube.store.delete("storageclasses", "gone-class")
    if journal:  # nothing holds the claim: the journal remembers it
        wait_until(lambda: env.claim("doomed") is None, timeout=10, what="claim gone")
    wait_until(lambda: live_volumes(env, name), timeout=30, what="the volume made meanwhile")
    with env.run_loop(LOOP, journal=journal):
        wait_until(lambda: not live_volumes(env, name) and env.claim("doomed") is None,
                   timeout=60, what="volume deleted, claim gone")
        env.wait_event("doomed", "ProvisioningCancelled", timeout=10)
    assert env.journal() == {}, f"left in the journal: {list(env.journal())}"
    assert env.pv(name) is None


# ---------------------------------------------------------------- user errors


def failure_message(env: ClusterEnv, claim: str, timeout: float = 30.0) -> str:
    event = env.wait_event(claim, "ProvisioningFailed", timeout=timeout)
    assert event["type"] == "Warning"
    return str(event["message"])


def test_unknown_reserved_parameter_is_reported(env: ClusterEnv) -> None:
    env.create_class("typo", parameters={"csi.storage.k8s.io/fs-type": "xfs"})
    with env.run_loop(LOOP):
        claim = env.create_claim("bad", storage_class="typo")
        message = failure_message(env, "bad")
        assert "csi.storage.k8s.io/fs-type" in message
        assert f"pvc-{claim['metadata']['uid']}" in message
        assert not live_volumes(env)


def test_unknown_driver_parameter_is_reported(env: ClusterEnv) -> None:
    env.create_class("odd", parameters={"flavour": "vanilla"})
    with env.run_loop(LOOP):
        env.create_claim("bad")
        env.create_claim("odd-claim", storage_class="odd")
        message = failure_message(env, "odd-claim")
        assert "flavour" in message
        assert "InvalidArgument" in message or "INVALID_ARGUMENT" in message
        env.wait_bound("bad")  # other claims are not held up


def test_quota_exhausted_is_reported(env: ClusterEnv) -> None:
    env.openstack.set_quota("demo", gigabytes=1)
    with env.run_loop(LOOP):
        env.create_claim("big", size="5Gi")
        message = failure_message(env, "big")
        assert "quota" in message.lower(), message
        assert not live_volumes(env)


def test_unknown_zone_is_reported(env: ClusterEnv) -> None:
    env.create_class("nowhere", parameters={"availability": "nowhere"})
    with env.run_loop(LOOP):
        env.create_claim("lost", storage_class="nowhere")
        message = failure_message(env, "lost")
        assert "nowhere" in message, message


def test_rwx_on_non_multiattach_type_is_reported(env: ClusterEnv) -> None:
    with env.run_loop(LOOP):
        env.create_claim("shared", modes=("ReadWriteMany",), volume_mode="Block")
        message = failure_message(env, "shared")
        assert "multiattach" in message, message
        assert not live_volumes(env)


def test_selector_is_refused(env: ClusterEnv) -> None:
    with env.run_loop(LOOP):
        env.create_claim("picky", selector={"matchLabels": {"tier": "gold"}})
        assert "claim Selector is not supported" in failure_message(env, "picky")


def test_quota_on_selected_node_reschedules(env: ClusterEnv) -> None:
    env.create_class("late", binding="WaitForFirstConsumer")
    env.openstack.set_quota("demo", gigabytes=1)
    with env.run_loop([functools.partial(ClaimController)]):
        env.create_claim("late-big", storage_class="late", size="5Gi")
        env.create_pod("consumer", ["late-big"])
        message = failure_message(env, "late-big")
        assert "quota" in message.lower()
        assert "scheduler" in message
