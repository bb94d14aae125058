"""The driver's processes as a cluster runs them, one child process each, so that a benchmark
reads each one's CPU and memory apart: a node plugin, the OpenStack stand-in, a controller."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.standins.openstack.standin import ADMIN_PASSWORD, ADMIN_PROJECT, ADMIN_USER

NODE_ID = "bench-node-0"
ZONE = "az-a"


class Child:
    """A child process with its log in ``root``; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, command: list[str], root: Path) -> None:
        self.name = name
        self.log = root / f"{name}.log"
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=open(root / f"{name}.stderr", "wb"),  # noqa: SIM115
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cinder_csi.cli", *args]


def wait_for_socket(child: Child, socket: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.process.returncode}; see "
                               f"{child.log.with_suffix('.stderr')}")
        if socket.exists():
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                try:
                    csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(  # type: ignore[no-untyped-call]
                        csi_pb2.GetPluginInfoRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not answer on {socket}")
        time.sleep(0.05)


def start_node(root: Path, log_level: str = "INFO", *, node_id: str = NODE_ID
               ) -> tuple[Child, Path]:
    """A node plugin told its node ID and zone (as on bare metal: no metadata service); its
    devices appear in ``root/by-id`` and its kubelet directory is ``root/kubelet``."""
    socket = root / "node.sock"
    (root / "kubelet").mkdir(exist_ok=True)
    (root / "by-id").mkdir(exist_ok=True)
    child = Child("node", cli(
        "node", "--endpoint", f"unix://{socket}", "--node-id", node_id,
        "--availability-zone", ZONE, "--kubelet-root", str(root / "kubelet"),
        "--by-id-dir", str(root / "by-id"), "--log-level", log_level,
        "--log-file", str(root / "node.log")), root)
    wait_for_socket(child, socket)
    return child, socket


def start_openstack(root: Path) -> tuple[Child, Path]:
    """The OpenStack stand-in as a child; returns it and a cloud.conf for its admin user."""
    child = Child("openstack", [sys.executable, "-m", "cinder_csi.standins.openstack",
                                "--state-dir", str(root / "openstack"),
                                "--availability-zones", ZONE], root)
    assert child.process.stdout is not None
    auth_url = child.process.stdout.readline().decode().strip()
    if not auth_url.startswith("http"):
        child.stop()
        raise RuntimeError(f"OpenStack stand-in did not start; see {root}/openstack.stderr")
    conf = root / "cloud.conf"
    conf.write_text(f"[Global]\nauth-url = {auth_url}\nusername = {ADMIN_USER}\n"
                    f"password = {ADMIN_PASSWORD}\ntenant-name = {ADMIN_PROJECT}\n"
                    "domain-name = Default\nregion = RegionOne\n")
    conf.chmod(0o600)
    return child, conf


def start_loop(root: Path, csi_socket: Path, kubeconfig: Path, *flags: str,
               log_level: str = "INFO", timeout: float = 300.0) -> Child:
    """``cinder-csi provisioner`` against ``csi_socket``; returns once its informers synced
    and its workers run (its log says "watch loop running")."""
    log = root / "loop.log"
    log.unlink(missing_ok=True)
    child = Child("loop", cli(
        "provisioner", "--csi-address", f"unix://{csi_socket}", "--kubeconfig",
        str(kubeconfig), "--log-file", str(log), "--log-level", log_level, *flags), root)
    deadline = time.monotonic() + timeout
    while not (log.exists() and "watch loop running" in log.read_text(errors="replace")):
        if child.process.poll() is not None or time.monotonic() > deadline:
            child.stop()
            raise RuntimeError(f"the loop did not start; see {log}")
        time.sleep(0.1)
    return child


def start_controller(root: Path, conf: Path, log_level: str = "INFO") -> tuple[Child, Path]:
    socket = root / "controller.sock"
    child = Child("controller", cli(
        "controller", "--endpoint", f"unix://{socket}", "--cloud-config", str(conf),
        "--cluster", "bench", "--log-level", log_level,
        "--log-file", str(root / "controller.log")), root)
    wait_for_socket(child, socket)
    return child, socket
