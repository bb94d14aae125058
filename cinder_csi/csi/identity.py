"""CSI Identity service: who the plugin is, what it can do, and whether it is ready."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping

import grpc
from google.protobuf import wrappers_pb2

from cinder_csi import version
from cinder_csi.csi import csi_pb2, csi_pb2_grpc

LOG = logging.getLogger(__name__)

# CSI: <= 63 characters, alphanumeric at both ends, dashes, dots and alphanumerics between.
_DRIVER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,61}[A-Za-z0-9])?")

# kubelet's liveness probe calls Probe every few seconds; one warning per reason is enough.
PROBE_LOG_INTERVAL_S = 30.0

_Service = csi_pb2.PluginCapability.Service
_Expansion = csi_pb2.PluginCapability.VolumeExpansion


def validate_driver_name(name: str) -> str:
    if not _DRIVER_NAME.fullmatch(name):
        raise ValueError(
            f"invalid CSI driver name {name!r}: at most 63 characters, alphanumeric at both "
            "ends, only alphanumerics, '-' and '.' in between"
        )
    return name


class IdentityService(csi_pb2_grpc.IdentityServicer):
    def __init__(
        self,
        driver_name: str,
        *,
        has_controller: bool,
        probe: Callable[[], str | None],
        clock: Callable[[], float] = time.monotonic,
        manifest: Mapping[str, str] | None = None,
    ) -> None:
        """`probe` returns None when the plugin is ready, else the reason it is not;
        `manifest` is GetPluginInfo's (what the plugin does beyond the spec)."""
        self.driver_name = validate_driver_name(driver_name)
        self.manifest = dict(manifest or {})
        self.has_controller = has_controller
        self._probe = probe
        self._clock = clock
        self._last_logged: dict[str, float] = {}
        self._lock = threading.Lock()

    def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self.driver_name, vendor_version=version(),
                                             manifest=self.manifest)

    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        services = [_Service.VOLUME_ACCESSIBILITY_CONSTRAINTS]
        if self.has_controller:
            services.insert(0, _Service.CONTROLLER_SERVICE)
        caps = [csi_pb2.PluginCapability(service=_Service(type=t)) for t in services]
        caps += [
            csi_pb2.PluginCapability(volume_expansion=_Expansion(type=t))
            for t in (_Expansion.ONLINE, _Expansion.OFFLINE)
        ]
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    def Probe(
        self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ProbeResponse:
        reason = self._probe()
        if reason is not None:
            self._warn_not_ready(reason)
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=reason is None))

    def _warn_not_ready(self, reason: str) -> None:
        now = self._clock()
        with self._lock:
            last = self._last_logged.get(reason)
            if last is not None and now - last < PROBE_LOG_INTERVAL_S:
                return
            self._last_logged[reason] = now
            # Reasons are few and stable; forget old ones so a churning text cannot grow this.
            if len(self._last_logged) > 64:
                cutoff = now - PROBE_LOG_INTERVAL_S
                self._last_logged = {r: t for r, t in self._last_logged.items() if t >= cutoff}
        LOG.warning("not ready: %s", reason)
