"""The kill campaign (issue 10, build 8): ``kill -9`` of ``cinder-csi controller
--with-provisioner`` at 50 random points across provisioning, attaching and deleting; while it
is down, claims, StorageClasses, provisioner Secrets, VolumeSnapshots and pods are deleted in
random combinations; then it is restarted.

After every restart the invariant audit holds: each live Cinder volume is accounted for by a
PV or by a claim whose recorded intent names it, and no CSI name has two volumes. Every tenth
cycle, and at the end, the cluster is let settle and audited whole: every claim that can bind
is Bound (only claims whose class, Secret or snapshot went before their provisioning started
may stay Pending: an admin deletes those), every pod with a claim runs, every volume has
exactly one PV. Finally everything is deleted and nothing may be left.

Seeded: the seed is printed (``-s``) and in every failure message; ``RELIABILITY_SEED=<n>``
replays a run (``random`` explores a new one; CI runs seed 1010), ``KILL_CYCLES=<n>`` shortens
it. The kill points are times, so a replay repeats the same actions and kill delays, not the
exact interleaving.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.integration.cluster_env import ClusterEnv, cluster_env
from tests.reliability.harness import (
    LoopProcess,
    accounted,
    audit,
    delete,
    live_volumes,
    seed_from_env,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

CYCLES = int(os.environ.get("KILL_CYCLES", "50"))
SETTLE_EVERY = 10
NAMESPACE = "default"


@dataclass
class World:
    """What the campaign made (and may still exist), to pick victims from."""

    classes: dict[str, str | None] = field(default_factory=dict)  # class -> its Secret
    claims: dict[str, str] = field(default_factory=dict)  # claim -> its class
    sources: dict[str, str] = field(default_factory=dict)  # claim -> the snapshot it restores
    snapshots: set[str] = field(default_factory=set)
    pods: dict[str, str] = field(default_factory=dict)  # pod -> its claim
    serial: int = 0

    def next(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial:03d}"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path) as made:
        yield made


class Campaign:
    def __init__(self, env: ClusterEnv, seed: int) -> None:
        self.env = env
        self.seed = seed
        self.rng = random.Random(seed)
        self.world = World()
        self.controller = LoopProcess(env, timeout=15.0)
        self.kills: list[str] = []
        self.used: set[str] = set()  # claims a pod was ever given
        self.fresh: list[str] = []  # claims made in this cycle

    def say(self, text: str) -> str:
        return f"[seed {self.seed}] {text}"

    # ---- what the cluster's users do while the controller runs

    def new_class(self) -> str:
        name = self.world.next("class")
        secret = None
        params: dict[str, str] = {}
        if self.rng.random() < 0.5:
            secret = f"{name}-creds"
            self.env.kube.store.create("secrets", {
                "metadata": {"name": secret, "namespace": NAMESPACE},
                "stringData": {"token": f"campaign-secret-{self.rng.getrandbits(64):016x}"}},
                namespace=NAMESPACE)
            params = {"csi.storage.k8s.io/provisioner-secret-name": secret,
                      "csi.storage.k8s.io/provisioner-secret-namespace": NAMESPACE}
        self.env.create_class(name, parameters=params,
                              reclaim=self.rng.choice(("Delete", "Delete", "Retain")))
        self.world.classes[name] = secret
        return name

    def provision(self) -> str:
        if not self.world.classes or self.rng.random() < 0.3:
            self.new_class()
        storage_class = self.rng.choice(sorted(self.world.classes))
        for _ in range(self.rng.randint(2, 4)):
            name = self.world.next("claim")
            source = None
            if self.world.snapshots and self.rng.random() < 0.25:
                source = self.rng.choice(sorted(self.world.snapshots))
                self.world.sources[name] = source
            self.env.create_claim(name, storage_class=storage_class, data_source={
                "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot",
                "name": source} if source else None)
            self.world.claims[name] = storage_class
            self.fresh.append(name)
        return "provisioning"

    def bound(self) -> list[str]:
        return sorted(c for c in self.world.claims
                      if ((self.env.claim(c) or {}).get("status") or {}).get("phase") == "Bound")

    def attach(self) -> str:
        free = [c for c in self.bound() if c not in self.world.pods.values()]
        if not free:
            return self.provision()
        for claim in self.rng.sample(free, min(len(free), self.rng.randint(1, 3))):
            pod = self.world.next("pod")
            self.used.add(claim)
            self.env.create_pod(pod, [claim])
            self.world.pods[pod] = claim
        return "attaching"

    def remove(self) -> str:
        victims = sorted(self.world.pods) + sorted(self.world.claims)
        if not victims:
            return self.provision()
        for victim in self.rng.sample(victims, min(len(victims), self.rng.randint(1, 3))):
            self.delete_object(victim)
        return "deleting"

    def snapshot(self) -> None:
        # Of a claim no pod ever used: a snapshot taken while mkfs runs restores garbage.
        bound = [c for c in self.bound() if c not in self.used]
        if bound and len(self.world.snapshots) < 4 and self.rng.random() < 0.3:
            name = self.world.next("snap")
            self.env.make_snapshot(self.rng.choice(bound), name)
            self.world.snapshots.add(name)

    # ---- deletions, by the users or while the controller is down

    def delete_object(self, name: str) -> None:
        if name in self.world.pods:
            delete(self.env, "pods", name, NAMESPACE)
            del self.world.pods[name]
        elif name in self.world.claims:
            for pod, claim in list(self.world.pods.items()):
                if claim == name:  # the app goes with its data
                    self.delete_object(pod)
            delete(self.env, "persistentvolumeclaims", name, NAMESPACE)
            del self.world.claims[name]
            self.world.sources.pop(name, None)
        elif name in self.world.classes:
            delete(self.env, "storageclasses", name)
        elif name in self.world.snapshots:
            delete(self.env, "volumesnapshots", name, NAMESPACE)
            self.world.snapshots.discard(name)

    def while_down(self) -> list[str]:
        kinds = ["new claim", "claim", "pod", "class", "secret", "snapshot"]
        done = []
        for kind in self.rng.sample(kinds, self.rng.randint(1, 3)):
            fresh = [c for c in self.fresh if c in self.world.claims]
            if kind == "new claim" and fresh:  # one the killed process was provisioning
                victim = self.rng.choice(fresh)
            elif kind == "claim" and self.world.claims:
                victim = self.rng.choice(sorted(self.world.claims))
            elif kind == "pod" and self.world.pods:
                victim = self.rng.choice(sorted(self.world.pods))
            elif kind == "class" and self.world.classes:
                victim = self.rng.choice(sorted(self.world.classes))
            elif kind == "snapshot" and self.world.snapshots:
                victim = self.rng.choice(sorted(self.world.snapshots))
            elif kind == "secret" and any(self.world.classes.values()):
                secret = self.rng.choice(sorted(s for s in self.world.classes.values() if s))
                delete(self.env, "secrets", secret, NAMESPACE)
                done.append(f"secret {secret}")
                continue
            else:
                continue
            self.delete_object(victim)
            done.append(f"{kind} {victim}")
        return done

    # ---- the cycle

    def cycle(self, index: int) -> None:
        self.fresh = []
        self.snapshot()
        action = self.rng.choice((self.provision, self.provision, self.attach, self.remove))()
        delay = self.rng.uniform(0.05, 2.5)
        time.sleep(delay)
        self.controller.kill9()
        deleted = self.while_down()
        self.kills.append(f"cycle {index}: killed {delay:.2f}s into {action}; while down "
                          f"deleted {', '.join(deleted) or 'nothing'}")
        self.controller.start()
        result = accounted(self.env)
        assert result.clean, self.say(f"after cycle {index}: {result}\n" + self.history())

    def history(self) -> str:
        return "\n".join(self.kills[-10:])

    def settle(self, timeout: float = 120) -> None:
        """Let the loop finish; the admin deletes what cannot bind, then the whole audit."""
        def stuck_allowed(claim: str) -> bool:
            """It may never bind: its Secret is gone (CreateVolume needs it), or its class or
            snapshot went before its provisioning started (a recorded intent needs neither)."""
            cls = self.world.claims[claim]
            secret = self.world.classes.get(cls)
            store = self.env.kube.store
            started = self.env.in_the_making(claim, NAMESPACE)
            return ((secret is not None
                     and store.peek("secrets", secret, namespace=NAMESPACE) is None)
                    or (not started and store.peek("storageclasses", cls) is None)
                    or (not started and claim in self.world.sources and store.peek(
                        "volumesnapshots", self.world.sources[claim], namespace=NAMESPACE)
                        is None))

        deadline = time.monotonic() + timeout
        while True:
            pending = [c for c in self.world.claims if c not in self.bound()]
            given_up = [c for c in pending if stuck_allowed(c)]
            for claim in given_up:  # it cannot bind: the admin deletes it (and its app)
                self.delete_object(claim)
            pending = [c for c in pending if c not in given_up]
            waiting_pods = [pod for pod in self.world.pods if (
                (self.env.kube.store.peek("pods", pod, namespace=NAMESPACE) or {})
                .get("status") or {}).get("phase") != "Running"]
            terminating = [c["metadata"]["name"] for c in self.env.kube.store.view(
                "persistentvolumeclaims", namespace=NAMESPACE) if c["metadata"].get(
                    "deletionTimestamp")]
            if not pending and not waiting_pods and not terminating:
                break
            if time.monotonic() > deadline:
                raise AssertionError(self.say(
                    f"did not settle: claims pending {pending}, pods not running "
                    f"{waiting_pods}, claims terminating {terminating}\n" + self.history()))
            time.sleep(1)
        result = audit(self.env)
        assert result.clean, self.say(f"settled: {result}\n" + self.history())

    def tear_down(self) -> None:
        """Delete everything (as users and snapshot-controller would); nothing may remain."""
        for snapshot in list(self.world.snapshots):
            self.delete_object(snapshot)
        for snap in self.env.openstack.snapshots():  # snapshot-controller's part
            if snap.get("status") not in ("deleted", "deleting"):
                self.env.csi.controller.DeleteSnapshot(
                    csi_pb2.DeleteSnapshotRequest(snapshot_id=snap["id"]), timeout=30)
        for pod in list(self.world.pods):
            self.delete_object(pod)
        for claim in list(self.world.claims):
            self.delete_object(claim)

        def retained_released() -> None:
            """Retain PVs stay Released with their volumes: the admin removes both."""
            for pv in self.env.kube.store.view("persistentvolumes"):
                if (pv.get("status") or {}).get("phase") == "Released" and (
                        pv["spec"].get("persistentVolumeReclaimPolicy") == "Retain"):
                    try:
                        self.env.csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(
                            volume_id=pv["spec"]["csi"]["volumeHandle"]), timeout=60)
                    except grpc.RpcError:
                        continue  # still detaching: next round
                    delete(self.env, "persistentvolumes", pv["metadata"]["name"])

        def left() -> list[str]:
            retained_released()
            store = self.env.kube.store
            return ([f"volume {v['id']} ({v['name']}, {v['status']})"
                     for v in live_volumes(self.env)]
                    + [f"{resource} {o['metadata']['name']}" for resource in (
                        "persistentvolumes", "persistentvolumeclaims", "volumeattachments",
                        "pods") for o in store.view(resource)])

        deadline = time.monotonic() + 180
        while left() and time.monotonic() < deadline:
            time.sleep(1)
        assert left() == [], self.say("not deleted: " + ", ".join(left()))
        assert audit(self.env).clean


@pytest.mark.timeout(1200)
def test_kill_9_at_random_points_leaks_nothing(env: ClusterEnv) -> None:
    seed = seed_from_env(1010)
    print(f"kill campaign seed {seed} (replay: RELIABILITY_SEED={seed})")
    for node in ("node-0", "node-1"):
        env.add_kubelet(node)
    env.openstack.faults.slow("create", 0.5)  # kills land while Cinder creates
    campaign = Campaign(env, seed)
    started = time.monotonic()
    campaign.controller.start()
    try:
        for index in range(1, CYCLES + 1):
            campaign.cycle(index)
            if index % SETTLE_EVERY == 0:
                campaign.settle()
        campaign.settle()
        campaign.tear_down()
    finally:
        campaign.controller.stop()
    reasons = Counter(str(e.get("reason")) for e in env.kube.store.view("events"))
    print(f"kill campaign: {CYCLES} kills in {time.monotonic() - started:.0f}s; events: "
          + ", ".join(f"{r} {reasons[r]}" for r in (
              "ProvisioningSucceeded", "ProvisioningCancelled", "ProvisioningFailed",
              "VolumeFailedDelete")))
