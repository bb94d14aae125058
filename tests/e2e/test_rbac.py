"""RBAC from real traffic: what the watch loop asks of the API server is what the manifests grant.

The real ``WatchLoop`` (leader election on, every duty, the registry duty in both of its modes)
runs against the Kubernetes stand-in through a scenario that walks each duty: provisioning
(Immediate, WaitForFirstConsumer, a class naming secrets, a clone, a snapshot restore and one
of a missing snapshot, a selected node that does not exist), attach/detach through a pod, a resize,
Retain and Delete releases, an aggregated event, the orphan sweep and the registry claim.

Every HTTP request the loop's clients make (told apart by their User-Agent: the in-process
cluster controllers and this test use the store directly, so nobody else talks HTTP) is mapped
to the RBAC (apiGroup, resource[/subresource], verb, namespace) an API server would authorize,
and compared with what ``kubectl kustomize manifests/`` grants the controller's ServiceAccount:

- observed <= granted: anything else is a 403 in a real cluster;
- granted <= observed + UNREACHED + SIDECARS_ONLY: anything else is a grant without a caller.

The node plugin needs no grant at all: its ServiceAccount is bound to nothing and the node
process never even imports the Kubernetes client.
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from cinder_csi import TOPOLOGY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop import protocol as p
from cinder_csi.loop.context import Controller, LoopContext
from cinder_csi.loop.kube.client import KubeOptions
from cinder_csi.loop.registry import RegistryDuty, RegistrySpec
from cinder_csi.loop.runner import ALL_DUTIES, LoopOptions, WatchLoop
from tests.integration.cluster_env import ClusterEnv, cluster_env, wait_until
from tests.integration.csi_helpers import create_request
from tests.tools import require_tools

REPO = Path(__file__).resolve().parents[2]
CONTROLLER_SA = "cinder-csi-controller"
NODE_SA = "cinder-csi-node"
LOOP_AGENT = KubeOptions().user_agent  # the leader-election client adds "-leader-election"
REGISTRY_NS = "openshift-image-registry"
ROOT = os.geteuid() == 0

Obj = dict[str, Any]
Key = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)

# Granted, needed by a code path of ours that this scenario cannot reach. Each entry names it.
UNREACHED: dict[Key, str] = {}

# Grants of the base that only the upstream sidecars would use: none. The overlay adds theirs.
SIDECARS_ONLY: dict[Key, str] = {}

# Non-resource URLs: Kubernetes' default ClusterRole system:discovery (bound to every
# authenticated user) allows GET on these, so they need no grant of ours.
DISCOVERY = ("/api", "/api/*", "/apis", "/apis/*", "/version", "/version/", "/openapi/*",
             "/healthz", "/livez", "/readyz")


# --------------------------------------------------------------------------------------------
# HTTP -> RBAC


@dataclass(frozen=True, order=True)
class Access:
    """One RBAC check: ``namespace`` None for cluster-scoped objects and all-namespace calls."""

    group: str
    resource: str
    verb: str
    namespace: str | None

    @property
    def key(self) -> Key:
        return (self.group, self.resource, self.verb)


@dataclass(frozen=True)
class Request:
    agent: str
    method: str
    target: str  # path and query, as sent


def to_access(method: str, target: str) -> Access | None:
    """The authorizer's view of a request; None for a non-resource URL (discovery)."""
    url = urlsplit(target)
    parts = [part for part in url.path.split("/") if part]
    if len(parts) >= 2 and parts[0] == "api":
        group, rest = "", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None  # /api/v1, /apis/<group>/<version>: discovery
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else None
    if len(rest) > 2:
        resource += "/" + rest[2]
    if resource == "namespaces" and name is not None:
        namespace = name  # a namespace is checked in its own namespace too
    watching = parse_qs(url.query).get("watch", [""])[-1].lower() in ("1", "true")
    verb = {
        "GET": "get" if name else ("watch" if watching else "list"),
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if name else "deletecollection",
    }[method]
    return Access(group, resource, verb, namespace)


def test_to_access_mapping() -> None:
    cases = {
        ("GET", "/api/v1/persistentvolumes?watch=true&resourceVersion=5"):
            Access("", "persistentvolumes", "watch", None),
        ("GET", "/api/v1/persistentvolumeclaims?limit=500"):
            Access("", "persistentvolumeclaims", "list", None),
        ("PATCH", "/api/v1/namespaces/ns/persistentvolumeclaims/c/status"):
            Access("", "persistentvolumeclaims/status", "patch", "ns"),
        ("PUT", "/apis/coordination.k8s.io/v1/namespaces/x/leases/l"):
            Access("coordination.k8s.io", "leases", "update", "x"),
        ("POST", "/api/v1/namespaces/ns/events"): Access("", "events", "create", "ns"),
        ("GET", "/api/v1/namespaces/openshift-image-registry"):
            Access("", "namespaces", "get", "openshift-image-registry"),
        ("DELETE", "/api/v1/persistentvolumes/pv"): Access("", "persistentvolumes", "delete",
                                                           None),
        ("DELETE", "/apis/storage.k8s.io/v1/volumeattachments"):
            Access("storage.k8s.io", "volumeattachments", "deletecollection", None),
    }
    for (method, target), expected in cases.items():
        assert to_access(method, target) == expected, target
    assert to_access("GET", "/apis/snapshot.storage.k8s.io/v1") is None
    assert to_access("GET", "/version") is None


def traffic(env: ClusterEnv) -> list[Request]:
    """Every request the Kubernetes stand-in received so far, with its User-Agent and query."""
    return [Request(r.user_agent, r.method, r.target) for r in env.kube.requests()]


# --------------------------------------------------------------------------------------------
# what the manifests grant


@dataclass(frozen=True)
class Grant:
    group: str
    resource: str
    verb: str
    namespace: str | None  # None: cluster-wide (a ClusterRole through a ClusterRoleBinding)
    via: str

    @property
    def key(self) -> Key:
        return (self.group, self.resource, self.verb)

    def covers(self, access: Access) -> bool:
        return (self.key == access.key
                and (self.namespace is None or self.namespace == access.namespace))


def kustomize() -> list[Obj]:
    require_tools("kubectl")  # its built-in kustomize
    done = subprocess.run(["kubectl", "kustomize", str(REPO / "manifests")], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"kubectl kustomize manifests/ failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def bindings_of(objs: list[Obj], account: str, namespace: str) -> list[Obj]:
    subject = {"kind": "ServiceAccount", "name": account, "namespace": namespace}
    return [o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")
            and any({k: s.get(k) for k in subject} == subject for s in o.get("subjects", []))]


def grants_of(objs: list[Obj], account: str, namespace: str) -> list[Grant]:
    out = []
    for binding in bindings_of(objs, account, namespace):
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role = one(objs, ref["kind"], ref["name"])
        if ref["kind"] == "Role":
            assert role["metadata"]["namespace"] == scope, "a RoleBinding names its own Role"
        via = f"{binding['kind']}/{binding['metadata']['name']} -> {ref['kind']}/{ref['name']}"
        for rule in role.get("rules") or []:
            assert not {"resourceNames", "nonResourceURLs"} & set(rule), rule
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{via}: wildcard {field} in {rule}"
            out += [Grant(group, resource, verb, scope, via)
                    for group in rule["apiGroups"] for resource in rule["resources"]
                    for verb in rule["verbs"]]
    return out


def render(items: Any) -> str:
    return "\n".join(f"  {item}" for item in sorted(items, key=str)) or "  (none)"


# --------------------------------------------------------------------------------------------
# the scenario


@pytest.fixture
def manifests() -> list[Obj]:
    return kustomize()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path, nodes=2) as made:
        yield made


def secret_class_parameters() -> dict[str, str]:
    params = {}
    for operation in ("provisioner", "controller-publish", "controller-expand"):
        params[f"csi.storage.k8s.io/{operation}-secret-name"] = "cinder-creds"
        params[f"csi.storage.k8s.io/{operation}-secret-namespace"] = "default"
    return params


def finalizers(obj: Obj | None) -> list[str]:
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])


def annotations_of(obj: Obj | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def attachment_of(env: ClusterEnv, pv_name: str) -> Obj | None:
    for va in env.kube.store.view("volumeattachments"):
        if ((va.get("spec") or {}).get("source") or {}).get("persistentVolumeName") == pv_name:
            return dict(va)
    return None


def event_count(env: ClusterEnv, name: str, reason: str, namespace: str = "default") -> int:
    return max((int(e.get("count") or 1) for e in env.events_for(name, namespace,
                                                                  reason=reason)), default=0)


def prepare(env: ClusterEnv, lease_namespace: str) -> tuple[str, str]:
    """Objects the cluster has before the loop starts; returns (orphan, registry volume) ids."""
    for namespace in {lease_namespace, REGISTRY_NS}:
        if env.kube.store.peek("namespaces", namespace) is None:
            env.create_namespace(namespace)
    env.kube.store.create("secrets", {
        "metadata": {"name": "cinder-creds", "namespace": "default"}, "type": "Opaque",
        "data": {"password": base64.b64encode(b"not-a-real-password").decode()},
    }, namespace="default")
    env.create_class("with-secrets", parameters=secret_class_parameters())
    env.create_class("keep", reclaim="Retain")
    env.create_class("late", binding="WaitForFirstConsumer")
    orphan = env.csi.controller.CreateVolume(
        create_request("pvc-00000000-0000-4000-8000-0000000000aa"), timeout=30).volume.volume_id
    in_zone = csi_pb2.TopologyRequirement(
        requisite=[csi_pb2.Topology(segments={TOPOLOGY_KEY: env.zones["node-0"]})])
    adopted = env.csi.controller.CreateVolume(
        create_request("registry-data", accessibility_requirements=in_zone),
        timeout=30).volume.volume_id
    return str(orphan), str(adopted)


def exercise(env: ClusterEnv, orphan: str) -> None:
    """Walk every duty; each step waits for the loop to have done its part."""
    env.create_claim("plain")
    env.create_claim("secret", storage_class="with-secrets")
    env.create_claim("kept", storage_class="keep")
    env.create_claim("late", storage_class="late")
    # A selected node that does not exist: a cache miss, a GET, then back to the scheduler.
    env.create_claim("ghost", storage_class="late",
                     annotations={p.ANN_SELECTED_NODE: "node-that-left"})
    # A restore of a snapshot that does not exist: the same warning, retried.
    env.create_claim("restored", data_source={
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"})

    plain_pv = env.wait_bound("plain")["spec"]["volumeName"]
    secret_pv = env.wait_bound("secret")["spec"]["volumeName"]
    kept_pv = env.wait_bound("kept")["spec"]["volumeName"]

    # Snapshot restore: the VolumeSnapshot and its content are read, and the snapshot carries
    # the source-protection finalizer while the restore is in flight.
    env.make_snapshot("kept", "kept-snap")
    env.create_claim("from-snap", data_source={
        "apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "kept-snap"})
    env.wait_bound("from-snap")
    wait_until(lambda: p.FINALIZER_SNAPSHOT_SOURCE not in finalizers(env.kube.store.peek(
        "volumesnapshots", "kept-snap", namespace="default")),
        timeout=30, what="snapshot-source finalizer removed from the snapshot")

    # Clone: the source gets the cloning-protection finalizer, and loses it once done.
    env.create_claim("clone", data_source={"kind": "PersistentVolumeClaim", "name": "plain"})
    env.wait_bound("clone")
    wait_until(lambda: p.FINALIZER_CLONE_SOURCE not in finalizers(env.claim("plain")),
               timeout=30, what="clone-source finalizer removed from the source")

    # Attach / detach: a pod makes the scheduler pick a node for the WaitForFirstConsumer
    # claim, the attach/detach controller makes the VolumeAttachment, our loop attaches.
    if ROOT:
        env.add_kubelet("node-0")
    env.create_pod("app", ["late"], node="node-0")
    late_pv = env.wait_bound("late", timeout=60)["spec"]["volumeName"]
    wait_until(lambda: ((attachment_of(env, late_pv) or {}).get("status") or {})
               .get("attached") is True, timeout=60, what="VolumeAttachment attached")

    # Resize (with the class's controller-expand secret).
    env.kube.store.patch("persistentvolumeclaims", "secret",
                         {"spec": {"resources": {"requests": {"storage": "2Gi"}}}},
                         namespace="default")
    wait_until(lambda: ((env.pv(secret_pv) or {}).get("spec") or {}).get("capacity", {})
               .get("storage") == "2Gi", timeout=30, what="PV grown to 2Gi")
    wait_until(lambda: ((env.claim("secret") or {}).get("status") or {})
               .get("allocatedResources", {}).get("storage") == "2Gi",
               timeout=30, what="claim status allocatedResources 2Gi")

    env.kube.store.delete("pods", "app", namespace="default", grace_period=None if ROOT else 0)
    wait_until(lambda: attachment_of(env, late_pv) is None, timeout=60,
               what="VolumeAttachment detached and gone")

    # Releases: Delete (plain; secret, whose deletion secret is read) and Retain (kept).
    for name in ("clone", "from-snap", "plain", "secret", "kept"):
        env.kube.store.delete("persistentvolumeclaims", name, namespace="default")
    def gone(pv: str) -> bool:
        return env.pv(pv) is None

    for pv in (plain_pv, secret_pv):
        wait_until(functools.partial(gone, pv), timeout=60, what=f"PV {pv} deleted")
    wait_until(lambda: ((env.pv(kept_pv) or {}).get("status") or {}).get("phase") == "Released"
               and p.FINALIZER_PV_DELETION not in finalizers(env.pv(kept_pv)),
               timeout=30, what="Retain PV released without our deletion finalizer")

    # Aggregation: the same warning twice is one Event whose count is patched.
    wait_until(lambda: event_count(env, "restored", "ProvisioningFailed") >= 2, timeout=30,
               what="repeated ProvisioningFailed aggregated into one Event")
    wait_until(lambda: p.ANN_SELECTED_NODE not in annotations_of(env.claim("ghost")), timeout=30,
               what="selected-node of a missing node removed")
    wait_until(lambda: env.events_for("pvc-00000000-0000-4000-8000-0000000000aa",
                                      reason="OrphanedVolume"),
               timeout=30, what=f"orphan {orphan} reported")

    # Registry duty: the dynamic claim and the adopted pre-created volume, both kept Retain.
    def retained(pv: str) -> bool:
        return ((env.pv(pv) or {}).get("spec") or {}).get("persistentVolumeReclaimPolicy") \
            == "Retain"

    for claim in ("image-registry-storage", "registry-adopted"):
        volume = env.wait_bound(claim, namespace=REGISTRY_NS, timeout=60)["spec"]["volumeName"]
        wait_until(functools.partial(retained, volume), timeout=30,
                   what=f"registry PV {volume} Retain")


def watch_loop(env: ClusterEnv, lease_namespace: str, adopted: str) -> WatchLoop:
    dynamic = RegistrySpec(namespace=REGISTRY_NS, size="1Gi")
    precreated = RegistrySpec(namespace=REGISTRY_NS, claim="registry-adopted", size="1Gi",
                              volume_id=adopted)

    def dynamic_duty(ctx: LoopContext) -> Controller:
        return RegistryDuty(ctx, dynamic, interval=5.0)

    def precreated_duty(ctx: LoopContext) -> Controller:
        return RegistryDuty(ctx, precreated, interval=5.0)

    options = LoopOptions(
        csi_address=f"unix://{env.socket}", kubeconfig=str(env.kubeconfig), workers=8,
        kube_qps=500.0, kube_burst=1000, leader_election=True,
        leader_election_namespace=lease_namespace, duties=ALL_DUTIES, cluster=env.cluster,
        orphan_grace=0.0, extra=(dynamic_duty, precreated_duty),
    )
    return WatchLoop(options)


def test_controller_rbac_matches_the_loops_traffic(
    manifests: list[Obj], env: ClusterEnv,
) -> None:
    account = one(manifests, "ServiceAccount", CONTROLLER_SA)
    namespace = account["metadata"]["namespace"]
    deploy = one(manifests, "Deployment", "cinder-csi-controller")
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == CONTROLLER_SA
    granted = grants_of(manifests, CONTROLLER_SA, namespace)
    assert granted, "the controller's ServiceAccount is bound to nothing"

    orphan, adopted = prepare(env, namespace)
    loop = watch_loop(env, namespace, adopted)
    stop = threading.Event()
    result: list[int] = []

    def run() -> None:
        result.append(loop.run(stop))

    thread = threading.Thread(target=run, name="watch-loop", daemon=True)
    thread.start()
    try:
        assert loop.ready.wait(60), "the watch loop did not start leading"
        exercise(env, orphan)
        lease = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/"
        wait_until(lambda: any(r.method == "PUT" and lease in r.target
                               for r in traffic(env)),
                   timeout=30, what="the lease renewed")
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "the watch loop did not stop"
    assert result == [0], "the loop lost its lease"

    requests = traffic(env)
    foreign = {r.agent for r in requests if not r.agent.startswith(LOOP_AGENT)}
    assert not foreign, f"requests from other clients than the loop's: {foreign}"
    observed: set[Access] = set()
    for request in requests:
        access = to_access(request.method, request.target)
        if access is None:
            path = urlsplit(request.target).path
            assert request.method == "GET" and any(
                fnmatch.fnmatchcase(path, pattern) for pattern in DISCOVERY), request
        else:
            observed.add(access)

    denied = {a for a in observed if not any(g.covers(a) for g in granted)}
    assert not denied, ("the loop made requests the manifests do not grant (403 in a real "
                        f"cluster):\n{render(denied)}")

    observed_keys = {a.key for a in observed}
    for allowed, name in ((UNREACHED, "UNREACHED"), (SIDECARS_ONLY, "SIDECARS_ONLY")):
        stale = set(allowed) & observed_keys
        assert not stale, f"{name} entries the loop did use; drop them:\n{render(stale)}"
        unknown = set(allowed) - {g.key for g in granted}
        assert not unknown, f"{name} entries the manifests do not grant:\n{render(unknown)}"
    unused = {(g.key, g.namespace or "*", g.via) for g in granted
              if not any(g.covers(a) for a in observed)
              and g.key not in UNREACHED and g.key not in SIDECARS_ONLY}
    assert not unused, f"grants no request of the loop used:\n{render(unused)}"


# --------------------------------------------------------------------------------------------
# the node plugin


def test_node_service_account_is_bound_to_nothing(manifests: list[Obj]) -> None:
    account = one(manifests, "ServiceAccount", NODE_SA)
    assert account.get("automountServiceAccountToken") is False
    assert grants_of(manifests, NODE_SA, account["metadata"]["namespace"]) == []
    assert not [o for o in manifests if o["kind"].endswith("Binding")
                and any(s.get("name") == NODE_SA for s in o.get("subjects", []))]
    daemonset = one(manifests, "DaemonSet", "cinder-csi-node")
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == NODE_SA


def imports_kubernetes(code: str) -> list[str]:
    probe = textwrap.dedent(code) + textwrap.dedent("""
        import sys
        print("\\n".join(sorted(m for m in sys.modules if m.split(".")[0] == "kubernetes")))
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_node_plugin_module_never_imports_the_kubernetes_client() -> None:
    assert imports_kubernetes("import cinder_csi.node.wiring") == []


def test_node_process_never_imports_the_kubernetes_client() -> None:
    loaded = imports_kubernetes("""
        from cinder_csi import cli
        args = cli.build_parser().parse_args(["node", "--endpoint=unix:///tmp/csi.sock"])
        assert args.run is cli.run_node
        import cinder_csi.node.wiring
    """)
    assert loaded == []
