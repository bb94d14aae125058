"""CSIServer over a real gRPC channel on a unix socket: codes, logs, metrics, lifecycle."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cinder_csi import errors
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.csi.call_context import current_request_id, deadline_from
from cinder_csi.csi.identity import IdentityService
from cinder_csi.csi.server import CSIServer
from cinder_csi.deadline import DEFAULT_TIMEOUT_S
from cinder_csi.metrics import Metrics

SECRET = "s3cr3t-Pa55w0rd"
SECRETS = {"password": SECRET, "username": "admin"}


class FakeController(csi_pb2_grpc.ControllerServicer):
    """CreateVolume does whatever `self.behavior` says; other methods are unimplemented."""

    def __init__(self) -> None:
        self.behavior: Callable[[Any, grpc.ServicerContext], Any] = lambda req, ctx: (
            csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(volume_id="vol-new"))
        )
        self.entered = threading.Event()
        self.release = threading.Event()

    def CreateVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self.behavior(request, context)

    def ControllerPublishVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        return csi_pb2.ControllerPublishVolumeResponse(publish_context={"devicePath": "/dev/vdb"})


class FakeNode(csi_pb2_grpc.NodeServicer):
    def NodeStageVolume(self, request: Any, context: grpc.ServicerContext) -> Any:
        return csi_pb2.NodeStageVolumeResponse()


class Harness:
    def __init__(self, tmp_path: Path, metrics: Metrics | None = None) -> None:
        self.sock = tmp_path / "plugin" / "csi.sock"
        self.controller = FakeController()
        self.server = CSIServer(
            f"unix://{self.sock}",
            identity=IdentityService("cinder.csi.openstack.org", has_controller=True,
                                     probe=lambda: None),
            controller=self.controller,
            node=FakeNode(),
            max_workers=8,
            grace_seconds=2.0,
            metrics=metrics,
        )
        self.server.start()
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.ctrl = csi_pb2_grpc.ControllerStub(self.channel)
        self.node = csi_pb2_grpc.NodeStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.controller.release.set()
        self.channel.close()
        self.server.stop(grace=0)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


def create(h: Harness, **kwargs: Any) -> csi_pb2.CreateVolumeResponse:
    request = csi_pb2.CreateVolumeRequest(name="pvc-1", secrets=SECRETS)
    return h.ctrl.CreateVolume(request, timeout=5, **kwargs)


def call_error(h: Harness) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        create(h)
    return info.value


# ------------------------------------------------------------------ lifecycle


def test_identity_and_health(harness: Harness) -> None:
    info = harness.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=5)
    assert info.name == "cinder.csi.openstack.org"
    for service in ("", "csi.v1.Identity", "csi.v1.Controller", "csi.v1.Node"):
        reply = harness.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_socket_mode_is_0660(harness: Harness) -> None:
    mode = os.stat(harness.sock).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "plugin" / "csi.sock"
    path.parent.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # leaves the socket file, nobody listening
    h = Harness(tmp_path)
    try:
        assert h.identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value
    finally:
        h.close()
    assert not path.exists()  # stop() removes its socket


def test_refuses_to_delete_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "csi.sock"
    path.write_text("precious")
    server = CSIServer(f"unix://{path}", identity=IdentityService(
        "x.example.com", has_controller=False, probe=lambda: None))
    with pytest.raises(FileExistsError, match="not a socket"):
        server.start()
    assert path.read_text() == "precious"


def test_refuses_a_socket_in_use(harness: Harness) -> None:
    other = CSIServer(f"unix://{harness.sock}", identity=IdentityService(
        "x.example.com", has_controller=False, probe=lambda: None))
    with pytest.raises(FileExistsError, match="in use"):
        other.start()
    assert harness.identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value


def test_tcp_endpoint(tmp_path: Path) -> None:
    server = CSIServer("tcp://127.0.0.1:0", identity=IdentityService(
        "x.example.com", has_controller=False, probe=lambda: None))
    server.start()
    try:
        assert server.port
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            reply = csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(
                csi_pb2.GetPluginInfoRequest(), timeout=5)
        assert reply.name == "x.example.com"
    finally:
        server.stop(grace=0)


def test_graceful_stop_lets_in_flight_call_finish(harness: Harness) -> None:
    def slow(req: Any, ctx: grpc.ServicerContext) -> Any:
        harness.controller.entered.set()
        harness.controller.release.wait(5)
        return csi_pb2.CreateVolumeResponse(volume=csi_pb2.Volume(volume_id="vol-slow"))

    harness.controller.behavior = slow
    call = harness.ctrl.CreateVolume.future(csi_pb2.CreateVolumeRequest(name="x"), timeout=5)
    assert harness.controller.entered.wait(5)
    stopper = threading.Thread(target=harness.server.stop, kwargs={"grace": 5.0})
    stopper.start()
    time.sleep(0.2)  # stop() is now draining: the in-flight call must survive it
    assert stopper.is_alive()
    harness.controller.release.set()
    assert call.result(timeout=5).volume.volume_id == "vol-slow"
    stopper.join(5)
    assert not stopper.is_alive()
    assert harness.server.wait(0)
    with pytest.raises(grpc.RpcError) as info:
        harness.identity.Probe(csi_pb2.ProbeRequest(), timeout=1)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


def test_grace_period_is_bounded(harness: Harness) -> None:
    def stuck(req: Any, ctx: grpc.ServicerContext) -> Any:
        harness.controller.entered.set()
        harness.controller.release.wait(10)
        return csi_pb2.CreateVolumeResponse()

    harness.controller.behavior = stuck
    call = harness.ctrl.CreateVolume.future(csi_pb2.CreateVolumeRequest(name="x"), timeout=10)
    assert harness.controller.entered.wait(5)
    start = time.monotonic()
    harness.server.stop(grace=0.3)
    assert time.monotonic() - start < 3
    with pytest.raises(grpc.RpcError):
        call.result(timeout=5)


def test_run_until_signal_stops_gracefully(tmp_path: Path) -> None:
    sock = tmp_path / "csi.sock"
    server = CSIServer(f"unix://{sock}", identity=IdentityService(
        "x.example.com", has_controller=False, probe=lambda: None), grace_seconds=1.0)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert server.run_until_signal() is signal.SIGTERM
    finally:
        timer.cancel()
    assert server.wait(0)
    assert not sock.exists()


# ------------------------------------------------------------------ error mapping


@pytest.mark.parametrize(
    ("error_class", "code_name"), sorted(errors.GRPC_CODE_NAMES.items(), key=lambda i: i[1])
)
def test_project_errors_map_to_their_code(
    harness: Harness, error_class: type[errors.CinderCSIError], code_name: str
) -> None:
    def fail(req: Any, ctx: grpc.ServicerContext) -> Any:
        raise error_class("volume vol-1 boom", request_id="req-abc")

    harness.controller.behavior = fail
    err = call_error(harness)
    assert err.code() is grpc.StatusCode[code_name]
    assert err.details() == "volume vol-1 boom (request id req-abc)"


def test_unexpected_exception_is_internal_without_traceback(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def fail(req: Any, ctx: grpc.ServicerContext) -> Any:
        raise ValueError("unexpected detail")

    harness.controller.behavior = fail
    caplog.set_level(logging.INFO, logger="cinder_csi.csi.interceptors")
    err = call_error(harness)
    assert err.code() is grpc.StatusCode.INTERNAL
    assert "Traceback" not in err.details() and "unexpected detail" not in err.details()
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert tracebacks and tracebacks[0].exc_info[0] is ValueError  # type: ignore[index]


def test_servicer_abort_and_set_code_pass_through(harness: Harness) -> None:
    def abort(req: Any, ctx: grpc.ServicerContext) -> Any:
        ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "no")

    harness.controller.behavior = abort
    err = call_error(harness)
    assert (err.code(), err.details()) == (grpc.StatusCode.PERMISSION_DENIED, "no")

    def set_code(req: Any, ctx: grpc.ServicerContext) -> Any:
        ctx.set_code(grpc.StatusCode.ALREADY_EXISTS)
        ctx.set_details("exists")
        return csi_pb2.CreateVolumeResponse()

    harness.controller.behavior = set_code
    err = call_error(harness)
    assert (err.code(), err.details()) == (grpc.StatusCode.ALREADY_EXISTS, "exists")


def test_unimplemented_method(harness: Harness) -> None:
    with pytest.raises(grpc.RpcError) as info:
        harness.ctrl.ListSnapshots(csi_pb2.ListSnapshotsRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


# ------------------------------------------------------------------ logging


def call_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    out = []
    for record in caplog.records:
        if record.name == "cinder_csi.csi.interceptors" and record.getMessage().startswith("{"):
            out.append(json.loads(record.getMessage()))
    return out


def test_one_log_line_per_call(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cinder_csi.csi.interceptors")
    create(harness, metadata=(("x-request-id", "rid-42"),))
    harness.ctrl.ControllerPublishVolume(
        csi_pb2.ControllerPublishVolumeRequest(volume_id="vol-1", node_id="node-1"), timeout=5)
    harness.controller.behavior = lambda req, ctx: (_ for _ in ()).throw(
        errors.NotFound("volume vol-9 not found"))
    call_error(harness)

    first, second, third = call_records(caplog)
    assert first["method"] == "/csi.v1.Controller/CreateVolume"
    assert (first["code"], first["request_id"], first["name"]) == ("OK", "rid-42", "pvc-1")
    assert first["volume_id"] == "vol-new"  # from the response
    assert isinstance(first["duration_ms"], float)
    assert (second["volume_id"], second["node_id"]) == ("vol-1", "node-1")
    assert len(second["request_id"]) == 12  # generated
    assert (third["code"], third["error"]) == ("NOT_FOUND", "volume vol-9 not found")
    assert "request" not in first  # the request body is a DEBUG-only detail


def test_request_id_visible_to_servicer(harness: Harness) -> None:
    seen: list[str | None] = []

    def record(req: Any, ctx: grpc.ServicerContext) -> Any:
        seen.append(current_request_id())
        return csi_pb2.CreateVolumeResponse()

    harness.controller.behavior = record
    create(harness, metadata=(("x-request-id", "abc"),))
    assert seen == ["abc"]


def test_secrets_never_logged(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    create(harness)
    harness.ctrl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
        volume_id="vol-1", node_id="n", secrets=SECRETS), timeout=5)
    harness.node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(
        volume_id="vol-1", staging_target_path="/s", secrets=SECRETS,
        volume_capability=csi_pb2.VolumeCapability(
            mount=csi_pb2.VolumeCapability.MountVolume(fs_type="ext4"))), timeout=5)
    harness.controller.behavior = lambda req, ctx: (_ for _ in ()).throw(
        RuntimeError("crash"))
    call_error(harness)

    assert SECRET not in caplog.text
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    requests = [rec["request"] for rec in call_records(caplog) if "request" in rec]
    assert len(requests) == 4
    assert all(req["secrets"] == "***" for req in requests)
    assert requests[2]["volume_capability"]["mount"]["fs_type"] == "ext4"


# ------------------------------------------------------------------ deadline, metrics


def test_deadline_from_context(harness: Harness) -> None:
    seen: list[float] = []

    def record(req: Any, ctx: grpc.ServicerContext) -> Any:
        seen.append(deadline_from(ctx).remaining())
        return csi_pb2.CreateVolumeResponse()

    harness.controller.behavior = record
    harness.ctrl.CreateVolume(csi_pb2.CreateVolumeRequest(), timeout=7)
    harness.ctrl.CreateVolume(csi_pb2.CreateVolumeRequest())
    assert 5 < seen[0] < 7.5  # wall-clock vs monotonic skew of a few ms
    assert DEFAULT_TIMEOUT_S - 5 < seen[1] <= DEFAULT_TIMEOUT_S  # no deadline: default


def test_metrics_observed(tmp_path: Path) -> None:
    metrics = Metrics("cinder.csi.openstack.org")
    h = Harness(tmp_path, metrics=metrics)
    try:
        create(h)
        h.controller.behavior = lambda req, ctx: (_ for _ in ()).throw(
            errors.Timeout("slow"))
        call_error(h)
    finally:
        h.close()

    def count(code: str) -> float | None:
        return metrics.registry.get_sample_value("csi_plugin_operations_seconds_count", {
            "driver_name": "cinder.csi.openstack.org",
            "method_name": "/csi.v1.Controller/CreateVolume",
            "grpc_status_code": code,
        })

    assert count("OK") == 1
    assert count("DeadlineExceeded") == 1
