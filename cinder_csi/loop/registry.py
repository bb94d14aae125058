"""The internal image registry's volume: a claim that exists, is Bound, and is never deleted.

Two ways, as the OpenShift installer offers them:
- dynamic: the claim (``image-registry-storage`` in ``openshift-image-registry`` by default) is
  created with the registry annotation and provisioned by the StorageClass;
- pre-created: ``volume_id`` names an existing Cinder volume; it is checked through the CSI
  driver, as the rest of the loop talks to Cinder (it exists, is not abnormal, is published
  only to our nodes, and is accessible where we have nodes: ControllerGetVolume, else the
  driver's ListVolumes entry), then adopted with a static PV pre-bound to the claim.

Either way the PV is forced to ``Retain``: registry data is never deleted by us. ``ensure`` is
idempotent and changes nothing when the input is bad; it reports each step as an Event and
returns a status that ``cinder-csi registry status`` prints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import grpc

from cinder_csi import DEFAULT_DRIVER_NAME, TOPOLOGY_KEY
from cinder_csi.csi import csi_pb2
from cinder_csi.loop.capabilities import RPC, DriverCapabilities
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.csi_client import CSIClient, listed_volumes
from cinder_csi.loop.errors import QuantityError, RegistryInvalid, rpc_code, rpc_error_text
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import API_ERRORS, KubeRest
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.kube.informer import Handlers
from cinder_csi.loop.kube.objects import (
    CSI_NODES_PATH,
    NODES_PATH,
    PV_PATH,
    STORAGE_CLASSES_PATH,
    Obj,
    annotations_of,
    claim_path,
    claims_path,
    get_or_none,
    name_of,
    namespace_path,
    pv_path,
)
from cinder_csi.loop.kube.quantity import format_bytes, parse_bytes
from cinder_csi.loop.pvspec import node_affinity

log = logging.getLogger(__name__)

REGISTRY_ANNOTATION = "imageregistry.openshift.io"
DEFAULT_NAMESPACE = "openshift-image-registry"
DEFAULT_CLAIM = "image-registry-storage"
DEFAULT_SIZE = "100Gi"
DEFAULT_FSTYPE = "xfs"  # the OpenShift 3.x registry default
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"
CHECK_TIMEOUT_S = 60.0  # how long one CSI call checking a pre-created volume may take
LIST_PAGE_SIZE = 500  # ListVolumes entries per page, for a driver without GET_VOLUME

Segment = dict[str, str]


@dataclass(frozen=True)
class RegistrySpec:
    namespace: str = DEFAULT_NAMESPACE
    claim: str = DEFAULT_CLAIM
    size: str = DEFAULT_SIZE
    storage_class: str | None = None  # None: the cluster's default StorageClass
    volume_id: str | None = None  # a pre-created Cinder volume to adopt
    fstype: str = DEFAULT_FSTYPE
    driver: str = DEFAULT_DRIVER_NAME

    @property
    def pv_name(self) -> str:
        """The static PV of a pre-created volume."""
        return f"registry-{self.volume_id}"


@dataclass
class RegistryStatus:
    mode: str  # "dynamic" or "pre-created"
    ready: bool = False
    phase: str = "Unknown"
    volume_name: str = ""
    volume_handle: str = ""
    problems: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [f"mode: {self.mode}", f"ready: {str(self.ready).lower()}",
                 f"claim phase: {self.phase}"]
        if self.volume_name:
            lines.append(f"persistent volume: {self.volume_name}")
        if self.volume_handle:
            lines.append(f"cinder volume: {self.volume_handle}")
        lines += [f"step: {s}" for s in self.steps]
        lines += [f"problem: {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(frozen=True)
class DriverVolume:
    """What the CSI driver reports about a volume."""

    capacity_bytes: int
    segments: list[Segment]  # accessible_topology: where it can be used (none: anywhere)
    published_node_ids: list[str]
    abnormal: str | None  # the driver's message when it says the volume is abnormal

    @classmethod
    def from_csi(cls, volume: Any, status: Any) -> DriverVolume:
        """From a ``Volume`` and the ``VolumeStatus`` of ControllerGetVolume or ListVolumes."""
        condition = status.volume_condition if status.HasField("volume_condition") else None
        return cls(
            capacity_bytes=int(volume.capacity_bytes),
            segments=[{str(k): str(v) for k, v in t.segments.items()}
                      for t in volume.accessible_topology],
            published_node_ids=[str(n) for n in status.published_node_ids],
            abnormal=str(condition.message) if condition is not None and condition.abnormal
            else None,
        )


def describe_place(segment: Mapping[str, str]) -> str:
    """A topology segment in words: ``zone 'az-a'``, else its ``key=value`` pairs."""
    if list(segment) == [TOPOLOGY_KEY]:
        return f"zone {segment[TOPOLOGY_KEY]!r}"
    return ", ".join(f"{k}={v}" for k, v in sorted(segment.items()))


@dataclass(eq=False)
class RegistryVolume:
    """``ensure`` and ``status`` of the registry's claim. ``csi`` (the driver's controller)
    is needed only to check a pre-created volume."""

    rest: KubeRest
    spec: RegistrySpec
    _: KW_ONLY
    csi: CSIClient | None = None
    capabilities: DriverCapabilities | None = None
    recorder: EventRecorder | None = None

    def __post_init__(self) -> None:
        if self.capabilities is None and self.csi is not None:
            self.capabilities = DriverCapabilities(self.csi)

    @property
    def _claim_path(self) -> str:
        return claim_path(self.spec.namespace, self.spec.claim)

    def _claim(self) -> Obj | None:
        return get_or_none(self.rest, self._claim_path)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> RegistryStatus:
        status = RegistryStatus(mode="pre-created" if self.spec.volume_id else "dynamic")
        claim = self._claim()
        if claim is None:
            status.problems.append(f"claim {self.spec.namespace}/{self.spec.claim} is missing")
            return status
        status.phase = str((claim.get("status") or {}).get("phase") or "Pending")
        status.volume_name = str((claim.get("spec") or {}).get("volumeName") or "")
        if status.volume_name:
            pv = get_or_none(self.rest, pv_path(status.volume_name))
            if pv is not None:
                status.volume_handle = str(((pv.get("spec") or {}).get("csi") or {}).get(
                    "volumeHandle") or "")
                if (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") != "Retain":
                    status.problems.append(f"PV {status.volume_name} is not Retain")
        status.ready = status.phase == "Bound" and not status.problems
        return status

    # -- ensure -------------------------------------------------------------------------------

    def ensure(self) -> RegistryStatus:
        """Make the claim exist and be bound; on bad input change nothing and say why."""
        status = RegistryStatus(mode="pre-created" if self.spec.volume_id else "dynamic")
        try:
            if get_or_none(self.rest, namespace_path(self.spec.namespace)) is None:
                raise RegistryInvalid(f"namespace {self.spec.namespace} does not exist")
            if self.spec.volume_id:
                self._ensure_precreated(status)
            else:
                self._ensure_dynamic(status)
            self._force_retain(status)
        except RegistryInvalid as exc:
            status.problems.append(str(exc))
            self._event("Warning", "RegistryVolumeInvalid", str(exc))
            return status
        final = self.status()
        final.steps = status.steps
        if final.ready and status.steps:
            self._event("Normal", "RegistryVolumeReady",
                        f"registry claim bound to {final.volume_name} ({final.volume_handle})")
        return final

    def _ensure_dynamic(self, status: RegistryStatus) -> None:
        if self._claim() is not None:
            return
        try:
            parse_bytes(self.spec.size)
        except QuantityError:
            raise RegistryInvalid(f"size {self.spec.size!r} is not a quantity like 100Gi") from None
        storage_class = self.spec.storage_class or self._default_class()
        self._create_claim(storage_class=storage_class, volume_name=None)
        status.steps.append(f"created claim {self.spec.claim} ({self.spec.size}, "
                            f"class {storage_class})")
        self._event("Normal", "RegistryClaimCreated",
                    f"created claim {self.spec.namespace}/{self.spec.claim} of {self.spec.size} "
                    f"in class {storage_class}")

    def _default_class(self) -> str:
        for sc in self.rest.get(STORAGE_CLASSES_PATH).get("items") or []:
            if annotations_of(sc).get(DEFAULT_CLASS_ANNOTATION) == "true":
                return name_of(sc)
        raise RegistryInvalid("no StorageClass is marked default; pass --storage-class")

    def _create_claim(self, *, storage_class: str, volume_name: str | None) -> None:
        spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": self.spec.size}},
            "storageClassName": storage_class,
            "volumeMode": "Filesystem",
        }
        if volume_name:
            spec["volumeName"] = volume_name
        body = {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": self.spec.claim, "namespace": self.spec.namespace,
                         "annotations": {REGISTRY_ANNOTATION: "true"},
                         "labels": {"app.kubernetes.io/part-of": "cinder-csi-registry"}},
            "spec": spec,
        }
        try:
            self.rest.create(claims_path(self.spec.namespace), body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _ensure_precreated(self, status: RegistryStatus) -> None:
        volume_id = str(self.spec.volume_id)
        pv = get_or_none(self.rest, pv_path(self.spec.pv_name))
        if pv is not None:
            handle = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle")
            if handle != volume_id:
                raise RegistryInvalid(
                    f"PV {self.spec.pv_name} exists with volume {handle}, not {volume_id}")
            self._rebind_released(pv, status)
        else:
            volume = self._check_volume(volume_id)
            size = format_bytes(volume.capacity_bytes) if volume.capacity_bytes \
                else self.spec.size
            self.rest.create(PV_PATH, self._static_pv(size, volume.segments))
            status.steps.append(f"created PV {self.spec.pv_name} for Cinder volume {volume_id}")
            where = " or ".join(describe_place(s) for s in volume.segments) or "any zone"
            self._event("Normal", "RegistryVolumeAdopted",
                        f"adopted Cinder volume {volume_id} ({size}, {where}) as "
                        f"PV {self.spec.pv_name}")
        claim = self._claim()
        if claim is None:
            self._create_claim(storage_class="", volume_name=self.spec.pv_name)
            status.steps.append(f"created claim {self.spec.claim} bound to {self.spec.pv_name}")
        elif (claim.get("spec") or {}).get("volumeName") not in (None, "", self.spec.pv_name):
            raise RegistryInvalid(
                f"claim {self.spec.claim} is bound to {claim['spec']['volumeName']}, not to "
                f"{self.spec.pv_name}; delete it to adopt volume {volume_id}")

    def _rebind_released(self, pv: dict[str, Any], status: RegistryStatus) -> None:
        """A Released registry PV (its claim was deleted) is made Available to the new claim."""
        phase = (pv.get("status") or {}).get("phase")
        ref = (pv.get("spec") or {}).get("claimRef") or {}
        if phase != "Released" or not ref.get("uid"):
            return
        claim = self._claim()
        if claim is not None and claim["metadata"].get("uid") == ref.get("uid"):
            return
        self.rest.patch(pv_path(self.spec.pv_name), {
            "spec": {"claimRef": {"uid": None, "resourceVersion": None}}})
        status.steps.append(f"released PV {self.spec.pv_name} for the new claim")

    # -- the pre-created volume, as the driver reports it --------------------------------------

    def _check_volume(self, volume_id: str) -> DriverVolume:
        if self.csi is None or self.capabilities is None:
            raise RegistryInvalid("a pre-created volume needs --csi-address (the CSI "
                                  "controller's socket) to check it")
        try:
            volume = self._driver_volume(self.csi, self.capabilities, volume_id)
        except grpc.RpcError as exc:
            raise RegistryInvalid(
                f"cannot check Cinder volume {volume_id}: {rpc_error_text(exc)}") from None
        if volume is None:
            raise RegistryInvalid(f"Cinder volume {volume_id} does not exist")
        servers, node_labels = self._our_nodes()
        foreign = [s for s in volume.published_node_ids if s not in servers]
        if foreign:
            raise RegistryInvalid(
                f"Cinder volume {volume_id} is attached to server {foreign[0]}, which is not a "
                "node of this cluster; detach it there first")
        if volume.abnormal is not None:
            raise RegistryInvalid(f"Cinder volume {volume_id} cannot be used: {volume.abnormal}")
        self._check_reachable(volume_id, volume.segments, node_labels)
        return volume

    @staticmethod
    def _driver_volume(csi: CSIClient, capabilities: DriverCapabilities,
                       volume_id: str) -> DriverVolume | None:
        """ControllerGetVolume, else the volume's ListVolumes entry; None when it is not there.

        The published node IDs must be trustworthy: from ControllerGetVolume they are (a driver
        that attaches must report them), from ListVolumes only with LIST_VOLUMES_PUBLISHED_NODES.
        """
        caps = capabilities.get()
        if RPC.GET_VOLUME in caps:
            try:
                response = csi.get_volume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id))
            except grpc.RpcError as exc:
                if rpc_code(exc) == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            return DriverVolume.from_csi(response.volume, response.status)
        attaches = RPC.PUBLISH_UNPUBLISH_VOLUME in caps
        if RPC.LIST_VOLUMES in caps and (RPC.LIST_VOLUMES_PUBLISHED_NODES in caps
                                         or not attaches):
            for entry in listed_volumes(csi, page_size=LIST_PAGE_SIZE):
                if entry.volume.volume_id == volume_id:
                    return DriverVolume.from_csi(entry.volume, entry.status)
            return None
        raise RegistryInvalid(
            f"cannot check Cinder volume {volume_id}: the CSI driver offers neither "
            "ControllerGetVolume nor ListVolumes with published nodes")

    @staticmethod
    def _check_reachable(volume_id: str, segments: Sequence[Segment],
                         node_labels: Sequence[Mapping[str, str]]) -> None:
        """Some node must be in one of the volume's segments, unless no node is labelled with
        their keys at all (a cluster without topology labels)."""
        keys = {k for segment in segments for k in segment}
        places = {describe_place({k: labels[k] for k in sorted(keys) if k in labels})
                  for labels in node_labels if keys & labels.keys()}
        if not places:
            return
        if any(all(labels.get(k) == v for k, v in segment.items())
               for segment in segments for labels in node_labels):
            return
        where = " or ".join(describe_place(s) for s in segments)
        raise RegistryInvalid(
            f"Cinder volume {volume_id} is in {where}, where this cluster has no node (nodes "
            f"are in {', '.join(sorted(places))}); the registry pod could not use it")

    def _our_nodes(self) -> tuple[set[str], list[dict[str, str]]]:
        """The CSI node IDs (Nova server ids) of our CSINodes, and every Node's labels."""
        servers: set[str] = set()
        for csinode in self.rest.get(CSI_NODES_PATH).get("items") or []:
            for driver in (csinode.get("spec") or {}).get("drivers") or []:
                if driver.get("name") == self.spec.driver and driver.get("nodeID"):
                    servers.add(str(driver["nodeID"]))
        labels = [{str(k): str(v) for k, v in
                   ((node.get("metadata") or {}).get("labels") or {}).items()}
                  for node in self.rest.get(NODES_PATH).get("items") or []]
        return servers, labels

    def _static_pv(self, size: str, segments: Sequence[Segment]) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": self.spec.namespace, "name": self.spec.claim},
            "csi": {"driver": self.spec.driver, "volumeHandle": self.spec.volume_id,
                    "fsType": self.spec.fstype},
        }
        affinity = node_affinity(segments)
        if affinity is not None:
            spec["nodeAffinity"] = affinity
        return {"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": self.spec.pv_name,
                             "annotations": {REGISTRY_ANNOTATION: "true"}},
                "spec": spec}

    # -- both ways ----------------------------------------------------------------------------

    def _force_retain(self, status: RegistryStatus) -> None:
        claim = self._claim()
        volume_name = (claim.get("spec") or {}).get("volumeName") if claim else None
        if not volume_name:
            return
        pv = get_or_none(self.rest, pv_path(volume_name))
        if pv is None or (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") == "Retain":
            return
        self.rest.patch(pv_path(volume_name),
                        {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
        status.steps.append(f"set PV {volume_name} to Retain: registry data is never deleted")
        self._event("Normal", "RegistryVolumeRetained",
                    f"PV {volume_name} set to reclaimPolicy Retain")

    def _event(self, type_: str, reason: str, message: str) -> None:
        log.info("registry: %s: %s", reason, message)
        if self.recorder is None:
            return
        # The claim, even before it exists: the Event then lands in the registry's namespace,
        # where an admin looks (`kubectl get events -n openshift-image-registry`).
        target = self._claim() or {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": self.spec.claim, "namespace": self.spec.namespace}}
        self.recorder.event(target, type_, reason, message)


class RegistryDuty:
    """The watch loop's registry duty: re-ensure on any event touching the claim or its PV,
    and every ``interval`` seconds, so a deleted claim or PV comes back. A pre-created volume
    is checked through the loop's CSI client."""

    name = "registry"

    def __init__(self, ctx: LoopContext, spec: RegistrySpec, *, interval: float = 60.0) -> None:
        self.ctx = ctx
        self.spec = spec
        self.volume = RegistryVolume(ctx.rest, spec, csi=ctx.csi,
                                     capabilities=ctx.capabilities, recorder=ctx.recorder)
        self.interval = interval
        self._kick = threading.Event()

    def register(self) -> None:
        handlers = Handlers(on_add_func=self._maybe_kick,
                            on_update_func=lambda _old, new: self._maybe_kick(new),
                            on_delete_func=self._maybe_kick)
        self.ctx.informers.claims.add_handler(handlers)
        self.ctx.informers.volumes.add_handler(handlers)

    def _maybe_kick(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        ref = (obj.get("spec") or {}).get("claimRef") or {}
        ours = (meta.get("namespace"), meta.get("name")) == (self.spec.namespace, self.spec.claim)
        bound = (ref.get("namespace"), ref.get("name")) == (self.spec.namespace, self.spec.claim)
        if ours or bound:
            self._kick.set()

    def run(self) -> None:
        while not self.ctx.stop.is_set():
            self._kick.clear()
            try:
                status = self.volume.ensure()
                if status.problems:
                    log.warning("registry volume: %s", "; ".join(status.problems))
            except API_ERRORS as exc:
                log.warning("registry volume: ensure failed, retrying: %s", exc)
            if self._wait():
                return

    def _wait(self) -> bool:
        """Sleep until kicked, the interval passes, or the loop stops (True)."""
        deadline = time.monotonic() + self.interval
        while time.monotonic() < deadline:
            if self.ctx.stop.wait(0.2):
                return True
            if self._kick.is_set():
                time.sleep(0.2)  # let a burst of related events settle
                return False
        return False
