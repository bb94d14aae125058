"""`cinder-csi sandbox`: a whole deployment on local stand-ins, for trying and testing.

In this process: the OpenStack stand-in, the Kubernetes stand-in with its cluster behaviours
(PV controller, scheduler, attach/detach controller) and one kubelet per simulated node. As
child processes, as they run in a cluster: the controller (with the in-process watch loop
unless ``--no-loop``) and one node plugin per node. It applies the objects of ``manifests/``
that mean something to the stand-in, prints ``ready``, and serves until SIGINT/SIGTERM, when it
stops the children, unmounts what pods left, and lets the stand-in detach every loop device.

Cinder and Nova share the zones az-a/az-b, and cloud.conf sets ``ignore-volume-az``: volumes
are created in the zone the topology asks for, but PVs are not pinned to it, so a pod can
move to a node in the other zone (Nova's default ``cross_az_attach``), as on many clouds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from cinder_csi import TOPOLOGY_KEY
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.errors import CinderCSIError
from cinder_csi.host import Mounter, MountTable
from cinder_csi.logs import setup_logging
from cinder_csi.sandbox.demo import DemoTarget, run_demo
from cinder_csi.signals import SignalStop
from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.openstack import OpenStackStandIn

ZONES = ("az-a", "az-b")  # where the nodes are
# Cinder also has a zone without nodes, and Nova a server that is no Kubernetes node (a
# bastion), as real projects do: volumes there are what the registry must refuse to adopt.
STORAGE_ONLY_ZONE = "az-c"
BASTION = "bastion"
START_TIMEOUT_S = 60.0
SANDBOX_USER = "cinder-csi"
SANDBOX_PROJECT = "demo"
# Kinds from manifests/ that mean something to the stand-in; the rest (RBAC, workloads) would
# only run our own processes, which the sandbox starts itself.
APPLIED_KINDS = ("Namespace", "CSIDriver", "StorageClass", "PersistentVolumeClaim")
MANIFEST_PARTS = ("driver", "registry")


# The build ships manifests/ inside the package under this name (see setup.py).
MANIFESTS_PACKAGE = "cinder_csi.manifests"


def manifests_dir() -> Path | None:
    """The deployment manifests: those shipped with the installed package, else (running from
    a bare checkout) the manifests/ beside the package."""
    try:
        spec = importlib.util.find_spec(MANIFESTS_PACKAGE)
    except ModuleNotFoundError:
        spec = None
    places = list(spec.submodule_search_locations or ()) if spec is not None else []
    places.append(str(Path(__file__).resolve().parents[2] / "manifests"))  # checkout root
    for place in places:
        if (Path(place) / "kustomization.yaml").exists():
            return Path(place)
    return None


def manifest_objects(root: Path) -> list[dict[str, object]]:
    """The objects of the kustomize parts we apply, with each part's namespace filled in."""
    objects: list[dict[str, object]] = []
    for part in MANIFEST_PARTS:
        kustomization = yaml.safe_load((root / part / "kustomization.yaml").read_text())
        namespace = kustomization.get("namespace")
        for resource in kustomization.get("resources") or []:
            for obj in yaml.safe_load_all((root / part / resource).read_text()):
                if not isinstance(obj, dict) or obj.get("kind") not in APPLIED_KINDS:
                    continue
                metadata = obj.setdefault("metadata", {})
                if obj["kind"] == "PersistentVolumeClaim" and namespace:
                    metadata.setdefault("namespace", namespace)
                objects.append(obj)
    return objects


@dataclass
class Sandbox:
    state_dir: Path
    nodes: int = 2
    log_level: str = "INFO"
    loop: bool = True  # False: everything but our watch loop (compare other provisioners)
    progress: bool = False  # print each step as it happens
    kube: KubeStandIn | None = None
    # A fresh secret per run, so a test can prove it never reaches a log line.
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    openstack: OpenStackStandIn | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    server_ids: list[str] = field(default_factory=list)

    @property
    def controller_socket(self) -> Path:
        return self.state_dir / "controller.sock"

    def node_socket(self, index: int) -> Path:
        return self.state_dir / f"node-{index}.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.state_dir / "kubelet"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def _say(self, text: str) -> None:
        if self.progress:
            print(f"  {text}", flush=True)

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self.openstack = OpenStackStandIn(self.state_dir / "openstack",
                                          availability_zones=(*ZONES, STORAGE_ONLY_ZONE))
        self.openstack.start()
        self.openstack.add_user(SANDBOX_USER, self.password, SANDBOX_PROJECT)
        self._say(f"OpenStack stand-in up at {self.openstack.auth_url}")
        real_devices = os.geteuid() == 0
        for index in range(self.nodes):
            by_id = self.state_dir / "nodes" / f"node-{index}" / "by-id"
            by_id.mkdir(parents=True, exist_ok=True)
            self.server_ids.append(
                self.openstack.add_server(
                    f"node-{index}", ZONES[index % len(ZONES)],
                    by_id_dir=by_id if real_devices else None,
                )
            )
        self.openstack.add_server(BASTION, ZONES[0])
        self._write_configs()
        self.kube = KubeStandIn(event_window=50000).start()
        self.kube.write_kubeconfig(self.kubeconfig)
        self._say(f"Kubernetes stand-in up at {self.kube.url}")
        for index in range(self.nodes):
            self.kube.add_node(f"node-{index}", {TOPOLOGY_KEY: ZONES[index % len(ZONES)]})
        self._apply_manifests()
        controller_args = [
            "controller", "--endpoint", f"unix://{self.controller_socket}",
            "--cloud-config", str(self.state_dir / "cloud.conf"), "--cluster", "sandbox",
        ]
        if self.loop:
            controller_args += ["--with-provisioner", "--kubeconfig", str(self.kubeconfig),
                                "--registry", "--registry-storage-class", "standard",
                                "--registry-size", "10Gi"]
        self._spawn("controller", controller_args)
        for index, server_id in enumerate(self.server_ids):
            self._spawn(f"node-{index}", [
                "node", "--endpoint", f"unix://{self.node_socket(index)}",
                # As deployed: the node plugin gets settings, never the credentials.
                "--cloud-config", str(self.state_dir / "node.conf"),
                "--kubelet-root", str(self.kubelet_root),
                "--by-id-dir", str(self.state_dir / "nodes" / f"node-{index}" / "by-id"),
                "--metadata-url", self.openstack.metadata_url(server_id),
            ])
        self._wait_ready()
        self._say("controller and node plugins answer on their sockets")
        for index in range(self.nodes):
            self.kube.add_kubelet(f"node-{index}", str(self.node_socket(index)),
                                  str(self.kubelet_root / f"node-{index}"))
        self._say(f"{self.nodes} kubelets registered the driver (CSINode objects exist)")

    def _apply_manifests(self) -> None:
        assert self.kube is not None
        root = manifests_dir()
        if root is None:
            raise RuntimeError(
                f"the deployment manifests are missing: neither the package {MANIFESTS_PACKAGE} "
                "nor a manifests/ beside it exists; reinstall cinder-csi (its CSIDriver and "
                "StorageClasses are what the sandbox applies)"
            )
        self._say(f"applying the CSIDriver, StorageClasses and registry claim of {root}")
        for obj in manifest_objects(root):
            kind = str(obj["kind"])
            if kind == "PersistentVolumeClaim" and not self.loop:
                continue  # nobody would provision it
            if kind == "PersistentVolumeClaim":
                spec = obj.setdefault("spec", {})
                assert isinstance(spec, dict)
                spec.setdefault("resources", {})["requests"] = {"storage": "10Gi"}
            store = self.kube.store
            if store.try_get(_plural(kind), _name(obj), namespace=_namespace(obj)) is None:
                store.create(_plural(kind), obj)
            self._say(f"applied {kind} {_name(obj)}")

    def _write_configs(self) -> None:
        assert self.openstack is not None
        conf = self.state_dir / "cloud.conf"
        conf.write_text(
            "[Global]\n"
            f"auth-url = {self.openstack.auth_url}\n"
            f"username = {SANDBOX_USER}\n"
            f"password = {self.password}\n"
            f"tenant-name = {SANDBOX_PROJECT}\n"
            "domain-name = Default\n"
            f"region = {self.openstack.region}\n"
            "\n[BlockStorage]\n"
            "# Volumes follow the pod across zones (Nova cross_az_attach); see the module doc.\n"
            "ignore-volume-az = true\n"
        )
        conf.chmod(0o600)
        (self.state_dir / "node.conf").write_text(
            "[BlockStorage]\nignore-volume-az = true\n[Metadata]\nsearch-order = metadataService\n")
        clouds = self.state_dir / "clouds.yaml"
        cloud = {"auth": {
            "auth_url": self.openstack.auth_url, "username": SANDBOX_USER,
            "password": self.password, "project_name": SANDBOX_PROJECT,
            "user_domain_name": "Default", "project_domain_name": "Default",
        }, "region_name": self.openstack.region, "identity_api_version": 3}
        clouds.write_text(yaml.safe_dump({"clouds": {"sandbox": cloud}}))
        clouds.chmod(0o600)

    def _spawn(self, name: str, args: list[str]) -> None:
        log_file = self.state_dir / "logs" / f"{name}.log"
        command = [sys.executable, "-m", "cinder_csi.cli", *args, "--log-file", str(log_file),
                   "--log-level", self.log_level]
        self.children[name] = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.state_dir / "logs" / f"{name}.stderr", "wb"),  # noqa: SIM115
        )

    def _wait_ready(self) -> None:
        sockets = {"controller": self.controller_socket}
        sockets.update({f"node-{i}": self.node_socket(i) for i in range(self.nodes)})
        deadline = time.monotonic() + START_TIMEOUT_S
        for name, socket in sockets.items():
            while True:
                process = self.children[name]
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode}; see "
                        f"{self.state_dir / 'logs' / (name + '.stderr')}"
                    )
                if socket.exists() and _probe(socket):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not come up on {socket}")
                time.sleep(0.1)

    def stop(self) -> None:
        for process in self.children.values():
            if process.poll() is None:
                process.terminate()
        for process in self.children.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.children.clear()
        if self.kube is not None:
            self.kube.stop()
            self.kube = None
        self._unmount_leftovers()
        if self.openstack is not None:
            self.openstack.stop()
            self.openstack = None


    def leftovers(self) -> list[str]:
        """Mounts under the state directory and loop devices over its files, if any remain."""
        prefix = str(self.state_dir) + "/"
        found = [f"mount {m.mount_point}" for m in MountTable().all()
                 if m.mount_point.startswith(prefix)]
        backing = Path("/sys/block")
        if backing.is_dir():
            for loop in sorted(backing.glob("loop*")):
                try:
                    target = (loop / "loop" / "backing_file").read_text().strip()
                except OSError:
                    continue
                if target.startswith(prefix):
                    found.append(f"loop device /dev/{loop.name} over {target}")
        return found

    def _unmount_leftovers(self) -> None:
        """What pods left mounted under the state directory comes off before the loop devices
        go, as a node's shutdown would do; newest mount first so stacks unwind."""
        prefix = str(self.state_dir) + "/"
        mounter = Mounter()
        for mount in reversed(MountTable().all()):
            if mount.mount_point.startswith(prefix):
                try:
                    mounter.unmount(Path(mount.mount_point))
                except CinderCSIError as exc:
                    print(f"could not unmount {mount.mount_point}: {exc}", file=sys.stderr)


def _plural(kind: str) -> str:
    return {"Namespace": "namespaces", "CSIDriver": "csidrivers",
            "StorageClass": "storageclasses",
            "PersistentVolumeClaim": "persistentvolumeclaims"}[kind]


def _name(obj: dict[str, object]) -> str:
    metadata = obj.get("metadata")
    return str(metadata.get("name")) if isinstance(metadata, dict) else ""


def _namespace(obj: dict[str, object]) -> str | None:
    metadata = obj.get("metadata")
    found = metadata.get("namespace") if isinstance(metadata, dict) else None
    return str(found) if found else None


def _probe(socket: Path) -> bool:
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        try:
            stub = csi_pb2_grpc.IdentityStub(channel)  # type: ignore[no-untyped-call]
            stub.Probe(csi_pb2.ProbeRequest(), timeout=2)
        except grpc.RpcError:
            return False
    return True


def run(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="cinder-csi-sandbox-"))
    sandbox = Sandbox(state_dir.resolve(), nodes=args.nodes, log_level=args.log_level,
                      loop=not args.no_loop, progress=True)
    # The terminal shows progress; the stand-ins' own logs go next to the children's.
    setup_logging(args.log_level, args.log_file or sandbox.state_dir / "logs" / "sandbox.log")
    stop = threading.Event()
    on_signal = SignalStop(stop)
    print(f"state directory: {sandbox.state_dir}", flush=True)
    code = 0
    try:
        try:
            sandbox.start()
        except RuntimeError as exc:  # what could not start, and where its log is
            print(f"cinder-csi sandbox: {exc}", file=sys.stderr, flush=True)
            return 1
        assert sandbox.openstack is not None and sandbox.kube is not None
        print(f"openstack stand-in: {sandbox.openstack.auth_url}", flush=True)
        print(f"kubernetes stand-in: {sandbox.kube.url} (kubeconfig {sandbox.kubeconfig})",
              flush=True)
        print(f"controller: unix://{sandbox.controller_socket}"
              + ("" if sandbox.loop else " (no watch loop: --no-loop)"), flush=True)
        for index in range(sandbox.nodes):
            print(f"node-{index}: unix://{sandbox.node_socket(index)} "
                  f"(server {sandbox.server_ids[index]}, zone {ZONES[index % len(ZONES)]})",
                  flush=True)
        print("ready", flush=True)
        if args.demo:
            target = DemoTarget(kubeconfig=sandbox.kubeconfig,
                                cinder_volumes=sandbox.openstack.volumes,
                                logs=sandbox.state_dir / "logs")
            code = run_demo(target, stop)
        else:
            stop.wait()
    finally:
        print("stopping", flush=True)
        sandbox.stop()  # a second Ctrl-C meanwhile changes nothing
        on_signal.restore()
        left = sandbox.leftovers()
        if left:
            print("stopped, but these are left: " + "; ".join(left), flush=True)
            code = code or 1
        else:
            print("stopped: no mounts or loop devices left behind", flush=True)
    return code
