"""A whole cluster on stand-ins, for the watch-loop controllers' integration tests.

``cluster_env`` brings up the OpenStack stand-in (servers ``node-<i>`` in alternating zones,
real loop devices when root), our CSI controller on a unix socket, and the Kubernetes
stand-in with its cluster behaviours (PV controller, protection, scheduler, attach/detach).
It registers Nodes, CSINodes (nodeID = Nova server UUID), the CSIDriver and a default
StorageClass ``standard``. Controllers of the loop run in a background thread through
``env.run_loop([...])``; each entry is a callable taking a LoopContext (a controller class,
or a ``functools.partial`` of one with options).

Cleanup always runs: loop, kubelets, Kubernetes stand-in, controller, unmounts under
tmp_path, OpenStack stand-in (which detaches its loop devices); then no loop device backed
by tmp_path may be left.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from cinder_csi import DEFAULT_DRIVER_NAME, TOPOLOGY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.csi.server import CSIServer
from cinder_csi.loop import protocol as p
from cinder_csi.loop.caches import build_informers
from cinder_csi.loop.context import Controller, LoopContext
from cinder_csi.loop.csi_client import CSIClient, CSIMetrics
from cinder_csi.loop.journal import IntentJournal, configmap_name
from cinder_csi.loop.kube.client import KubeClients, KubeOptions, build_clients
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.kube.workqueue import WorkQueueMetrics
from cinder_csi.standins.kube import DEFAULT_CONTROLLERS, Kubelet, KubeStandIn
from cinder_csi.standins.kube.client import api_client as make_api_client
from cinder_csi.standins.kube.client import wait_until
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import CLUSTER, ControllerHandle, start_controller
from tests.integration.node_env import loop_devices_backed_by, unmount_below

DRIVER = DEFAULT_DRIVER_NAME
JOURNAL_NAMESPACE = "default"  # where the runner's loop keeps it outside a pod
STANDARD = "standard"
Obj = dict[str, Any]
ControllerFactory = Callable[[LoopContext], Controller]

__all__ = [
    "CLUSTER", "DRIVER", "STANDARD", "TOPOLOGY_KEY", "ClusterEnv", "ControllerFactory",
    "LoopHandle", "cluster_env", "wait_until",
]


@dataclass
class LoopHandle:
    """A running loop: its context (queues, registry, recorder) and controllers."""

    ctx: LoopContext
    clients: KubeClients
    controllers: list[Controller]
    threads: list[threading.Thread] = field(default_factory=list)

    def kill(self, timeout: float = 15.0) -> None:
        """Like a crash: CSI calls in flight are cut (CANCELLED) before the workers stop, and
        the journal's pending removals are never written."""
        self.ctx.csi.close()
        if self.ctx.journal is not None:
            self.ctx.journal.stop(flush=False)
        self.stop(timeout)

    def stop(self, timeout: float = 15.0) -> None:
        self.ctx.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        if self.ctx.journal is not None:  # after the workers: none forgets anything later
            self.ctx.journal.stop()
        self.ctx.informers.stop()
        self.ctx.recorder.stop(timeout=2)
        self.ctx.csi.close()
        self.clients.close()
        alive = [t.name for t in self.threads if t.is_alive()]
        assert not alive, f"controllers did not stop within {timeout}s: {alive}"


@dataclass
class ClusterEnv:
    tmp_path: Path
    kube: KubeStandIn
    openstack: OpenStackStandIn
    csi: ControllerHandle
    kubeconfig: Path
    api_client: Any
    server_ids: dict[str, str]  # node name -> Nova server UUID
    zones: dict[str, str]  # node name -> availability zone
    by_id: dict[str, Path]  # node name -> its /dev/disk/by-id stand-in (real devices only)
    driver: str = DRIVER
    cluster: str = CLUSTER
    _loops: list[LoopHandle] = field(default_factory=list)
    node_servers: list[CSIServer] = field(default_factory=list)

    @property
    def core(self) -> Any:
        return k8s.CoreV1Api(self.api_client)

    @property
    def storage(self) -> Any:
        return k8s.StorageV1Api(self.api_client)

    @property
    def socket(self) -> Path:
        return self.csi.socket

    # ---- the loop

    def loop_context(self, stop: threading.Event | None = None, *, workers: int = 16,
                     qps: float = 500.0, burst: int = 1000,
                     journal: bool = True) -> tuple[LoopContext, KubeClients]:
        """A fresh LoopContext with its own clients, informers, recorder and registry; with
        ``journal``, intents go to the provisioning journal (as the runner's loop does), else
        on each claim.

        The caller registers handlers, starts informers and recorder and loads the journal
        (run_loop does all that).
        """
        clients = build_clients(KubeOptions(kubeconfig=str(self.kubeconfig), qps=qps,
                                            burst=burst))
        registry = CollectorRegistry()
        rest = clients.rest()
        ctx = LoopContext(
            driver=self.driver,
            csi=CSIClient(str(self.socket), timeout=60.0, metrics=CSIMetrics(registry)),
            rest=rest,
            informers=build_informers(clients.rest(), resync_period=30.0),
            recorder=EventRecorder(rest, "cinder-csi-provisioner", host="test"),
            registry=registry,
            queue_metrics=WorkQueueMetrics(registry),
            workers=workers,
            provisioner_identity="1700000000000-8081-" + self.driver,
            stop=stop if stop is not None else threading.Event(),
            cluster=self.cluster, cluster_explicit=True,
        )
        if journal:
            ctx.journal = IntentJournal(rest, JOURNAL_NAMESPACE, configmap_name(self.driver))
        return ctx, clients

    def start_loop(self, factories: Sequence[ControllerFactory], *, synced: bool = True,
                   **kw: Any) -> LoopHandle:
        """``synced=False``: start the controllers without waiting for the caches."""
        ctx, clients = self.loop_context(**kw)
        controllers = [factory(ctx) for factory in factories]
        handle = LoopHandle(ctx, clients, controllers)
        self._loops.append(handle)
        for controller in controllers:
            controller.register()
        ctx.informers.start()
        if synced:
            assert ctx.informers.wait_for_sync(20), "informers did not sync"
        if ctx.journal is not None:
            ctx.journal.load()
        ctx.recorder.start()
        for controller in controllers:
            thread = threading.Thread(target=controller.run, name=f"loop-{controller.name}",
                                      daemon=True)
            handle.threads.append(thread)
            thread.start()
        return handle

    def stop_loop(self, handle: LoopHandle, *, kill: bool = False) -> None:
        if handle in self._loops:
            self._loops.remove(handle)
            if kill:
                handle.kill()
            else:
                handle.stop()

    @contextmanager
    def run_loop(self, factories: Sequence[ControllerFactory], **kw: Any) -> Iterator[LoopHandle]:
        handle = self.start_loop(factories, **kw)
        try:
            yield handle
        finally:
            self.stop_loop(handle)

    # ---- cluster objects

    def create_class(self, name: str, *, parameters: dict[str, str] | None = None,
                     reclaim: str = "Delete", binding: str = "Immediate",
                     expansion: bool = True, mount_options: list[str] | None = None,
                     allowed_topologies: list[Obj] | None = None,
                     provisioner: str | None = None) -> Obj:
        body: Obj = {
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": name},
            "provisioner": provisioner or self.driver,
            "reclaimPolicy": reclaim,
            "volumeBindingMode": binding,
            "allowVolumeExpansion": expansion,
        }
        if parameters:
            body["parameters"] = parameters
        if mount_options:
            body["mountOptions"] = mount_options
        if allowed_topologies:
            body["allowedTopologies"] = allowed_topologies
        return self.kube.store.create("storageclasses", body)

    def create_namespace(self, name: str) -> Obj:
        return self.kube.store.create("namespaces", {"metadata": {"name": name}})

    def create_claim(self, name: str, *, namespace: str = "default", size: str = "1Gi",
                     storage_class: str | None = STANDARD,
                     modes: Sequence[str] = ("ReadWriteOnce",),
                     volume_mode: str | None = None, data_source: Obj | None = None,
                     annotations: dict[str, str] | None = None, **spec: Any) -> Obj:
        body: Obj = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": size}},
                     **spec},
        }
        if storage_class is not None:
            body["spec"]["storageClassName"] = storage_class
        if volume_mode:
            body["spec"]["volumeMode"] = volume_mode
        if data_source:
            body["spec"]["dataSource"] = data_source
        if annotations:
            body["metadata"]["annotations"] = annotations
        return self.kube.store.create("persistentvolumeclaims", body, namespace=namespace)

    def create_pod(self, name: str, claims: Sequence[str], *, namespace: str = "default",
                   node: str | None = None) -> Obj:
        spec: Obj = {
            "containers": [{"name": "app", "image": "busybox"}],
            "volumes": [{"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                        for i, c in enumerate(claims)],
        }
        if node:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        return self.kube.store.create(
            "pods", {"metadata": {"name": name, "namespace": namespace}, "spec": spec},
            namespace=namespace)

    def claim(self, name: str, namespace: str = "default") -> Obj | None:
        return self.kube.store.peek("persistentvolumeclaims", name, namespace=namespace)

    def pv(self, name: str) -> Obj | None:
        return self.kube.store.peek("persistentvolumes", name)

    def journal(self) -> dict[str, str]:
        """The provisioning journal as the API server holds it: CSI name -> entry."""
        configmap = self.kube.store.peek("configmaps", configmap_name(self.driver),
                                         namespace=JOURNAL_NAMESPACE)
        return dict((configmap or {}).get("data") or {})

    def write_journal(self, entries: dict[str, str]) -> None:
        """Entries in the provisioning journal, as an earlier run of the loop left them."""
        name = configmap_name(self.driver)
        if self.kube.store.peek("configmaps", name, namespace=JOURNAL_NAMESPACE) is None:
            self.kube.store.create("configmaps", {
                "metadata": {"name": name, "namespace": JOURNAL_NAMESPACE}, "data": entries},
                namespace=JOURNAL_NAMESPACE)
        else:
            self.kube.store.patch("configmaps", name, {"data": entries},
                                  namespace=JOURNAL_NAMESPACE)

    def in_the_making(self, name: str, namespace: str = "default") -> bool:
        """The claim has an intent recorded, in the journal or on itself."""
        claim = self.claim(name, namespace)
        if claim is None:
            return False
        annotations = claim["metadata"].get("annotations") or {}
        return (p.ANN_PROVISIONING in annotations
                or p.pv_name_for(claim["metadata"]["uid"]) in self.journal())

    def wait_bound(self, name: str, namespace: str = "default", timeout: float = 30.0) -> Obj:
        def bound() -> Obj | None:
            claim = self.claim(name, namespace)
            if claim and (claim.get("status") or {}).get("phase") == "Bound":
                return claim
            return None
        return wait_until(bound, timeout=timeout, what=f"claim {namespace}/{name} Bound")

    def events_for(self, name: str, namespace: str = "default", *, reason: str | None = None,
                   kind: str | None = None) -> list[Obj]:
        found = []
        for event in self.kube.store.view("events", namespace=namespace):
            ref = event.get("involvedObject") or {}
            if ref.get("name") != name or (kind and ref.get("kind") != kind):
                continue
            if reason is None or event.get("reason") == reason:
                found.append(event)
        return found

    def wait_event(self, name: str, reason: str, namespace: str = "default",
                   timeout: float = 30.0, kind: str | None = None) -> Obj:
        def last() -> Obj | None:
            found = self.events_for(name, namespace, reason=reason, kind=kind)
            return found[-1] if found else None
        return wait_until(last, timeout=timeout, what=f"event {reason} on {namespace}/{name}")

    def make_snapshot(self, claim: str, name: str, namespace: str = "default") -> str:
        """A Cinder snapshot of ``claim``'s volume and the VolumeSnapshot objects naming it, as
        snapshot-controller and csi-snapshotter would leave them; returns the snapshot id."""
        pv = self.pv(self.wait_bound(claim, namespace)["spec"]["volumeName"])
        assert pv is not None
        made = self.csi.controller.CreateSnapshot(csi_pb2.CreateSnapshotRequest(
            name=f"snapshot-{namespace}-{name}",
            source_volume_id=pv["spec"]["csi"]["volumeHandle"]), timeout=30).snapshot
        content = f"content-{namespace}-{name}"
        store = self.kube.store
        store.create("volumesnapshotcontents", {
            "metadata": {"name": content},
            "spec": {"deletionPolicy": "Delete", "driver": self.driver,
                     "source": {"snapshotHandle": made.snapshot_id},
                     "volumeSnapshotRef": {"name": name, "namespace": namespace}}})
        store.patch("volumesnapshotcontents", content,
                    {"status": {"snapshotHandle": made.snapshot_id, "readyToUse": True}},
                    subresource="status")
        store.create("volumesnapshots", {
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"persistentVolumeClaimName": claim}}}, namespace=namespace)
        store.patch("volumesnapshots", name, {"status": {
            "boundVolumeSnapshotContentName": content, "readyToUse": True}},
            namespace=namespace, subresource="status")
        return str(made.snapshot_id)

    def cinder_volumes(self, *, live: bool = True) -> list[Obj]:
        """Volumes in the OpenStack stand-in; ``live`` leaves out deleted/deleting ones."""
        vols = self.openstack.volumes()
        if live:
            vols = [v for v in vols if v.get("status") not in ("deleted", "deleting")]
        return vols

    # ---- kubelets (node plugins), for attach/mount flows

    def add_kubelet(self, node: str) -> Kubelet:
        """Start our node plugin for ``node`` and a kubelet stand-in driving it."""
        from cinder_csi.csi.identity import IdentityService
        from cinder_csi.host import DeviceFinder, MetadataSource, Mounter
        from cinder_csi.node.service import NodeOptions, NodeService

        root = self.tmp_path / "kubelet" / node
        root.mkdir(parents=True, exist_ok=True)
        by_id = self.by_id.get(node) or self.tmp_path / "by-id" / node
        by_id.mkdir(parents=True, exist_ok=True)
        service = NodeService(
            metadata=MetadataSource(node_id=self.server_ids[node],
                                    availability_zone=self.zones[node]),
            finder=DeviceFinder(by_id_dir=by_id),
            mounter=Mounter(),
            options=NodeOptions(kubelet_root=root),
        )
        identity = IdentityService(self.driver, has_controller=False, probe=service.probe)
        sock = self.tmp_path / f"node-{node}.sock"
        server = CSIServer(f"unix://{sock}", identity=identity, node=service, grace_seconds=2)
        server.start()
        self.node_servers.append(server)
        return self.kube.add_kubelet(node, sock, root)

    def close(self) -> None:
        for handle in list(self._loops):
            with contextlib.suppress(AssertionError):
                self.stop_loop(handle)


def _register_node(kube: KubeStandIn, driver: str, name: str, zone: str, server_id: str) -> None:
    node = kube.add_node(name, {TOPOLOGY_KEY: zone})
    kube.store.create("csinodes", {
        "metadata": {
            "name": name,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                                 "uid": node["metadata"]["uid"]}],
        },
        "spec": {"drivers": [{"name": driver, "nodeID": server_id,
                              "topologyKeys": [TOPOLOGY_KEY]}]},
    })


@contextmanager
def cluster_env(
    tmp_path: Path,
    *,
    nodes: int = 2,
    zones: Sequence[str] = ("az-a", "az-b"),
    real_devices: bool | None = None,
    controllers: Sequence[str] = DEFAULT_CONTROLLERS,
    cluster: str = CLUSTER,
) -> Iterator[ClusterEnv]:
    """See the module docstring. ``real_devices`` defaults to "when root"."""
    if real_devices is None:
        real_devices = os.geteuid() == 0
    openstack = OpenStackStandIn(tmp_path / "openstack", availability_zones=tuple(zones))
    kube = KubeStandIn(controllers=controllers, bookmark_interval=1.0, event_window=20000)
    server: CSIServer | None = None
    handle: ControllerHandle | None = None
    env: ClusterEnv | None = None
    api_client: Any = None
    openstack.start()
    try:
        server_ids: dict[str, str] = {}
        node_zones: dict[str, str] = {}
        by_ids: dict[str, Path] = {}
        for i in range(nodes):
            name, zone = f"node-{i}", zones[i % len(zones)]
            by_id = None
            if real_devices:
                by_id = tmp_path / "by-id" / name
                by_id.mkdir(parents=True)
                by_ids[name] = by_id
            server_ids[name] = openstack.add_server(name, zone, by_id_dir=by_id)
            node_zones[name] = zone
        conf = tmp_path / "cloud.conf"
        conf.write_text(openstack.cloud_conf())
        server, handle = start_controller(conf, tmp_path / "controller.sock", cluster=cluster)
        kube.start()
        for name, zone in node_zones.items():
            _register_node(kube, DEFAULT_DRIVER_NAME, name, zone, server_ids[name])
        kube.store.create("csidrivers", {
            "metadata": {"name": DEFAULT_DRIVER_NAME},
            "spec": {"attachRequired": True, "podInfoOnMount": False,
                     "volumeLifecycleModes": ["Persistent"]},
        })
        kube.store.create("storageclasses", {
            "metadata": {"name": STANDARD, "annotations": {
                "storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": DEFAULT_DRIVER_NAME,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "Immediate",
            "allowVolumeExpansion": True,
        })
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        api_client = make_api_client(kubeconfig)
        env = ClusterEnv(tmp_path=tmp_path, kube=kube, openstack=openstack, csi=handle,
                         kubeconfig=kubeconfig, api_client=api_client, server_ids=server_ids,
                         zones=node_zones, by_id=by_ids, cluster=cluster)
        yield env
    finally:
        if env is not None:
            env.close()
        kube.stop()
        if env is not None:
            for node_server in env.node_servers:
                node_server.stop(0)
        if api_client is not None:
            api_client.close()
        if handle is not None:
            handle.channel.close()
        if server is not None:
            server.stop(0)
        unmount_below(tmp_path)
        openstack.stop()
        leaked = loop_devices_backed_by(tmp_path)
        assert not leaked, f"loop devices leaked: {leaked}"
