"""A CSI Controller client over gRPC, as the sidecars use one: every call timed and counted in
``csi_sidecar_operations_seconds`` (same name and labels as the kubernetes-csi sidecars), and
``listed_volumes``, every ListVolumes entry page by page.

With leader election, ``fence`` is the leader's ``Fence.check``: every call that changes a
volume (create, delete, publish, unpublish, expand, modify) checks it before it starts, so a
replica that cannot prove it still leads sends none (``Fenced`` is raised instead)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import grpc
from prometheus_client import CollectorRegistry, Histogram

from cinder_csi import FEATURES_MANIFEST_KEY
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.metrics import OPERATION_BUCKETS, go_code_name

R = TypeVar("R")


class CSIMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.operations = Histogram(
            "csi_sidecar_operations_seconds",
            "Duration of CSI calls made by the watch loop, by method and gRPC status.",
            ["driver_name", "method_name", "grpc_status_code"],
            buckets=OPERATION_BUCKETS, registry=registry,
        )


class CSIClient:
    """Thread-safe; one channel shared by every worker."""

    def __init__(self, address: str, *, timeout: float = 180.0,
                 metrics: CSIMetrics | None = None) -> None:
        target = address if "://" in address else f"unix://{address}"
        if target.startswith("unix:///"):
            target = "unix:" + target[len("unix://"):]
        self.address = target
        self.timeout = timeout
        self.metrics = metrics
        self._channel = grpc.insecure_channel(target)
        self._controller = csi_pb2_grpc.ControllerStub(self._channel)  # type: ignore[no-untyped-call]
        self._identity = csi_pb2_grpc.IdentityStub(self._channel)  # type: ignore[no-untyped-call]
        self._driver_name: str | None = None
        self._manifest: dict[str, str] = {}
        self.fence: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()

    def driver_name(self) -> str:
        with self._lock:
            if self._driver_name is None:
                info = self._call("GetPluginInfo", self._identity.GetPluginInfo,
                                  csi_pb2.GetPluginInfoRequest(), timeout=30)
                self._driver_name = str(info.name)
                self._manifest = {str(k): str(v) for k, v in info.manifest.items()}
            return self._driver_name

    def features(self) -> frozenset[str]:
        """What the driver says it does beyond the spec (GetPluginInfo's manifest); our own
        controller names them (cinder_csi.FEATURE_*), any other driver names none."""
        self.driver_name()
        text = self._manifest.get(FEATURES_MANIFEST_KEY, "")
        return frozenset(f.strip() for f in text.split(",") if f.strip())

    def wait_ready(self, timeout: float) -> None:
        """Block until the driver answers Probe with ready (or raise the last error)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                probe = self._identity.Probe(csi_pb2.ProbeRequest(), timeout=5)
                if not probe.HasField("ready") or probe.ready.value:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"CSI driver at {self.address} is not ready")
            time.sleep(0.5)

    def controller_capabilities(self) -> set[int]:
        response = self._call("ControllerGetCapabilities",
                              self._controller.ControllerGetCapabilities,
                              csi_pb2.ControllerGetCapabilitiesRequest(), timeout=30)
        return {c.rpc.type for c in response.capabilities}

    def create_volume(self, request: csi_pb2.CreateVolumeRequest) -> Any:
        return self._call("CreateVolume", self._controller.CreateVolume, request, fenced=True)

    def delete_volume(self, request: csi_pb2.DeleteVolumeRequest) -> Any:
        return self._call("DeleteVolume", self._controller.DeleteVolume, request, fenced=True)

    def publish(self, request: csi_pb2.ControllerPublishVolumeRequest) -> Any:
        return self._call("ControllerPublishVolume", self._controller.ControllerPublishVolume,
                          request, fenced=True)

    def unpublish(self, request: csi_pb2.ControllerUnpublishVolumeRequest) -> Any:
        return self._call("ControllerUnpublishVolume",
                          self._controller.ControllerUnpublishVolume, request, fenced=True)

    def expand(self, request: csi_pb2.ControllerExpandVolumeRequest) -> Any:
        return self._call("ControllerExpandVolume", self._controller.ControllerExpandVolume,
                          request, fenced=True)

    def modify(self, request: csi_pb2.ControllerModifyVolumeRequest) -> Any:
        return self._call("ControllerModifyVolume", self._controller.ControllerModifyVolume,
                          request, fenced=True)

    def list_volumes(self, request: csi_pb2.ListVolumesRequest) -> Any:
        return self._call("ListVolumes", self._controller.ListVolumes, request)

    def get_volume(self, request: csi_pb2.ControllerGetVolumeRequest) -> Any:
        return self._call("ControllerGetVolume", self._controller.ControllerGetVolume, request)

    def _call(self, method: str, stub: Callable[..., R], request: Any,
              timeout: float | None = None, *, fenced: bool = False) -> R:
        if fenced and self.fence is not None:
            self.fence()  # raises Fenced: nothing is sent
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            return answer_of(stub, request, timeout or self.timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            raise
        finally:
            if self.metrics is not None:
                self.metrics.operations.labels(
                    driver_name=self._driver_name or "", method_name=f"/csi.v1.Controller/{method}",
                    grpc_status_code=go_code_name(code.name),
                ).observe(time.monotonic() - started)


def answer_of(stub: Callable[..., R], request: Any, timeout: float) -> R:
    """The unary call's answer (or its RpcError), waited for without polling.

    grpc's blocking call wakes every 0.1 s to look for signals; a hundred workers waiting out
    slow CreateVolumes that way cost the loop ~2 ms of CPU per claim with a 2 s cloud. Here the
    thread sleeps on an Event that the call's completion sets (cancelled calls complete too)."""
    future = cast(Any, stub).future(request, timeout=timeout)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    done.wait()
    return cast(R, future.result())


def listed_volumes(csi: CSIClient, *, page_size: int,
                   stop: threading.Event | None = None) -> Iterator[Any]:
    """Every ``ListVolumesResponse.Entry``, asking ``page_size`` at a time, until the last page
    or ``stop``. Raises grpc.RpcError from the driver."""
    token = ""
    while True:
        response = csi.list_volumes(csi_pb2.ListVolumesRequest(
            max_entries=page_size, starting_token=token))
        yield from response.entries
        token = response.next_token
        if not token or (stop is not None and stop.is_set()):
            return
