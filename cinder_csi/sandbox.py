"""`cinder-csi sandbox`: a whole deployment on local stand-ins, for trying and testing.

It runs the OpenStack stand-in in this process, and the controller and one node plugin per
simulated node as child processes (as they run in a cluster), then prints ``ready`` and serves
until SIGINT/SIGTERM, when it stops the children and lets the stand-in detach every loop device
it made.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.errors import CinderCSIError
from cinder_csi.host import Mounter, MountTable
from cinder_csi.testing.openstack_api import OpenStackStandIn

ZONES = ("az-a", "az-b")
START_TIMEOUT_S = 60.0
SANDBOX_USER = "cinder-csi"
SANDBOX_PROJECT = "demo"


@dataclass
class Sandbox:
    state_dir: Path
    nodes: int = 2
    log_level: str = "INFO"
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

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        self.openstack = OpenStackStandIn(self.state_dir / "openstack", availability_zones=ZONES)
        self.openstack.start()
        self.openstack.add_user(SANDBOX_USER, self.password, SANDBOX_PROJECT)
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
        self._write_configs()
        self._spawn("controller", [
            "controller", "--endpoint", f"unix://{self.controller_socket}",
            "--cloud-config", str(self.state_dir / "cloud.conf"), "--cluster", "sandbox",
        ])
        for index, server_id in enumerate(self.server_ids):
            self._spawn(f"node-{index}", [
                "node", "--endpoint", f"unix://{self.node_socket(index)}",
                "--cloud-config", str(self.state_dir / "cloud.conf"),
                "--kubelet-root", str(self.kubelet_root),
                "--by-id-dir", str(self.state_dir / "nodes" / f"node-{index}" / "by-id"),
                "--metadata-url", self.openstack.metadata_url(server_id),
            ])
        self._wait_ready()

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
        )
        conf.chmod(0o600)
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
        self._unmount_leftovers()
        if self.openstack is not None:
            self.openstack.stop()
            self.openstack = None


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
    sandbox = Sandbox(state_dir.resolve(), nodes=args.nodes, log_level=args.log_level)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"state directory: {sandbox.state_dir}", flush=True)
    try:
        sandbox.start()
        assert sandbox.openstack is not None
        print(f"openstack stand-in: {sandbox.openstack.auth_url}", flush=True)
        print(f"controller: unix://{sandbox.controller_socket}", flush=True)
        for index in range(sandbox.nodes):
            print(f"node-{index}: unix://{sandbox.node_socket(index)} "
                  f"(server {sandbox.server_ids[index]}, zone {ZONES[index % len(ZONES)]})",
                  flush=True)
        print("ready", flush=True)
        stop.wait()
    finally:
        print("stopping", flush=True)
        sandbox.stop()
    return 0
