"""The driver side's reliability harness.

- the OpenStack stand-in in this process, so a test switches its faults while calls run;
- the real `cinder-csi controller` and `cinder-csi node` as child processes on unix sockets,
  talking to the stand-in with the real openstacksdk;
- the audit every scenario ends with: each Cinder volume accounted for, no two with one name,
  no attachment that should not be there.

Every process started here is stopped by its context manager, even when the test fails.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.standins.kube.client import wait_until as poll_until
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.processes import ServingProcess

T = TypeVar("T")
C = grpc.StatusCode
# The stand-in's transitions (creating -> available, ...) in tens of milliseconds: the suite
# waits on faults, not on a simulated backend.
FAST_TRANSITIONS = (0.02, 0.06)
# Answers that name what happened. UNKNOWN and INTERNAL mean a bug or a lost exception.
UNSPECIFIC = frozenset({C.UNKNOWN, C.INTERNAL})
CLUSTER = "reliability"


@contextmanager
def openstack_standin(state_dir: Path, **kwargs: Any) -> Iterator[OpenStackStandIn]:
    kwargs.setdefault("availability_zones", ("az-a", "az-b"))
    kwargs.setdefault("transition_delay", FAST_TRANSITIONS)
    standin = OpenStackStandIn(state_dir, **kwargs)
    standin.start()
    try:
        yield standin
    finally:
        standin.faults.reset()
        standin.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PluginProcess(ServingProcess):
    """One `cinder-csi controller|node` child process, serving on a unix socket."""

    stop_grace = 20.0

    def __init__(self, argv: Sequence[str], socket_path: Path, log_path: Path,
                 env: Mapping[str, str] | None = None, http_port: int | None = None) -> None:
        self.argv = list(argv)
        self.socket = socket_path
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.http_port = http_port
        super().__init__()

    def start(self, timeout: float = 60.0) -> PluginProcess:
        if self.socket.exists():
            self.socket.unlink()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cinder_csi.cli", *self.argv,
                 "--endpoint", f"unix://{self.socket}", "--log-level", "DEBUG"],
                stdout=log, stderr=subprocess.STDOUT, env=self.env,
            )
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited {self.process.returncode}:\n"
                                     + self.log_tail())
            try:
                self.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=1)
                return self
            except grpc.RpcError:
                time.sleep(0.1)
        self.kill()
        raise AssertionError(f"{self.argv[0]} did not serve within {timeout}s:\n"
                             + self.log_tail())

    @property
    def identity(self) -> csi_pb2_grpc.IdentityStub:
        assert self.channel is not None
        return csi_pb2_grpc.IdentityStub(self.channel)

    @property
    def controller(self) -> csi_pb2_grpc.ControllerStub:
        assert self.channel is not None
        return csi_pb2_grpc.ControllerStub(self.channel)

    @property
    def node(self) -> csi_pb2_grpc.NodeStub:
        assert self.channel is not None
        return csi_pb2_grpc.NodeStub(self.channel)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        assert self.http_port is not None, "started without --http-endpoint"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}",
                                        timeout=timeout) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextmanager
def controller_process(
    workdir: Path, standin: OpenStackStandIn, *extra: str, cluster: str = CLUSTER,
    http: bool = False,
) -> Iterator[PluginProcess]:
    """`cinder-csi controller` against the stand-in, with its cloud.conf."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "cloud.conf"
    conf.write_text(standin.cloud_conf())
    port = free_port() if http else None
    argv = ["controller", "--cloud-config", str(conf), "--cluster", cluster, *extra]
    if port is not None:
        argv += ["--http-endpoint", f"127.0.0.1:{port}"]
    plugin = PluginProcess(argv, workdir / "controller.sock", workdir / "controller.log",
                           http_port=port)
    try:
        yield plugin.start()
    finally:
        plugin.stop()


def node_argv(node_id: str, by_id: Path, kubelet: Path, *extra: str) -> list[str]:
    return ["node", "--node-id", node_id, "--availability-zone", "az-a",
            "--by-id-dir", str(by_id), "--kubelet-root", str(kubelet), *extra]


@contextmanager
def node_process(
    workdir: Path, node_id: str, by_id: Path, kubelet: Path, *extra: str,
    env: Mapping[str, str] | None = None,
) -> Iterator[PluginProcess]:
    """`cinder-csi node` for the stand-in server `node_id` (no metadata service needed)."""
    workdir.mkdir(parents=True, exist_ok=True)
    plugin = PluginProcess(node_argv(node_id, by_id, kubelet, *extra), workdir / "node.sock",
                           workdir / "node.log", env=env)
    try:
        yield plugin.start()
    finally:
        plugin.stop()


# ---- calls ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    response: Any = None

    @property
    def ok(self) -> bool:
        return self.code == C.OK


def outcome(call: Callable[[], Any]) -> Outcome:
    """How an RPC ended: its code and details (or its response)."""
    try:
        return Outcome(C.OK, "", call())
    except grpc.RpcError as error:
        return Outcome(error.code(), error.details() or "")


def specific(result: Outcome, what: str = "") -> Outcome:
    """The outcome, asserting it names what happened (never UNKNOWN or INTERNAL)."""
    assert result.code not in UNSPECIFIC, f"{what}: {result.code.name}: {result.details}"
    return result


def wait_until(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    """The stand-ins' poll (``standins.kube.client.wait_until``), as these scenarios call it."""
    return poll_until(probe, timeout=timeout, what=what, interval=0.05)


# ---- the audit --------------------------------------------------------------------------------

def audit(
    standin: OpenStackStandIn,
    expected: Mapping[str, int],
    *,
    attachments: Collection[tuple[str, str]] = (),
    settle: float = 10.0,
) -> list[dict[str, Any]]:
    """Every Cinder volume in the stand-in is accounted for.

    ``expected`` maps each volume name a scenario may leave to how many volumes of that name
    must exist (1, or 0 for "none"); any other volume is a leak, two of one name a duplicate.
    ``attachments`` lists the (volume name, server id) pairs that may remain attached.
    Volumes still in a transition get ``settle`` seconds to finish first.
    """
    deadline = time.monotonic() + settle
    while True:
        volumes = standin.volumes()
        problems = _problems(standin, volumes, expected, attachments)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not problems, "audit failed:\n  " + "\n  ".join(problems)
    return volumes


def _problems(
    standin: OpenStackStandIn, volumes: list[dict[str, Any]], expected: Mapping[str, int],
    attachments: Collection[tuple[str, str]],
) -> list[str]:
    problems = []
    names = Counter(str(v["name"]) for v in volumes)
    for name, count in sorted(names.items()):
        if count > 1:
            problems.append(f"duplicate: {count} volumes named {name}")
        if expected.get(name, 0) == 0:
            found = [f"{v['id']} ({v['status']})" for v in volumes if v["name"] == name]
            problems.append(f"leaked: volume {name}: {', '.join(found)}")
    for name, count in sorted(expected.items()):
        if count and names[name] == 0:
            problems.append(f"missing: volume {name} should exist")
    by_id = {v["id"]: str(v["name"]) for v in volumes}
    allowed = set(attachments)
    for item in standin.attachments():
        key = (by_id.get(item["volume_id"], item["volume_id"]), item["server_id"])
        if key not in allowed:
            problems.append(f"attachment left: volume {key[0]} on server {key[1]} "
                            f"({item['status']})")
    return problems


def wipe(standin: OpenStackStandIn, controller: csi_pb2_grpc.ControllerStub,
         timeout: float = 30.0) -> None:
    """Remove every snapshot, attachment and volume through the driver, so the next scenario
    starts from an empty cloud (and the clean-up path itself is exercised)."""
    standin.faults.reset()
    for snap in standin.snapshots():
        controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snap["id"]),
                                  timeout=timeout)
    for volume in standin.volumes():
        for server in {a["server_id"] for a in volume["attachments"]}:
            controller.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
                volume_id=volume["id"], node_id=server), timeout=timeout)
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume["id"]),
                                timeout=timeout)
    wait_until(lambda: not standin.volumes() and not standin.snapshots(), timeout,
               "an empty cloud")


def concurrently(calls: Mapping[str, Callable[[], Any]], join: float = 60.0
                 ) -> dict[str, Outcome]:
    """Run each RPC in its own thread at once; their outcomes by name."""
    results: dict[str, Outcome] = {}

    def run(name: str, call: Callable[[], Any]) -> None:
        results[name] = outcome(call)

    workers = [threading.Thread(target=run, args=item, daemon=True) for item in calls.items()]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(join)
    missing = sorted(set(calls) - set(results))
    assert not missing, f"calls still running after {join}s: {missing}"
    return results


# ---- fixtures shared by the driver's modules ------------------------------------------------


def module_standin(label: str, *, volume_types: Sequence[str] = ()) -> Any:
    """A module-scoped fixture `standin`: the OpenStack stand-in for one test module."""

    @pytest.fixture(scope="module", name="standin")
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenStackStandIn]:
        with openstack_standin(tmp_path_factory.mktemp(label) / "openstack") as running:
            for name in volume_types:
                running.add_volume_type(name)
            yield running

    return fixture


def module_controller(label: str, *extra: str, http: bool = False) -> Any:
    """A module-scoped fixture `plugin`: `cinder-csi controller` against `standin`."""

    @pytest.fixture(scope="module", name="plugin")
    def fixture(standin: OpenStackStandIn, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[PluginProcess]:
        workdir = tmp_path_factory.mktemp(f"{label}-controller")
        with controller_process(workdir, standin, *extra, http=http) as running:
            yield running

    return fixture


def empty_cloud_after_each() -> Any:
    """An autouse fixture: after each test, everything the test left is removed through the
    driver (`wipe`), so each test's audit sees only its own volumes."""

    @pytest.fixture(autouse=True, name="empty_cloud")
    def fixture(standin: OpenStackStandIn, plugin: PluginProcess) -> Iterator[None]:
        yield
        wipe(standin, plugin.controller)

    return fixture
