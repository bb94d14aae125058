"""The internal image registry's volume: a claim that exists, is Bound, and is never deleted.

Two ways, as the OpenShift installer offers them:
- dynamic: the claim (``image-registry-storage`` in ``openshift-image-registry`` by default) is
  created with the registry annotation and provisioned by the StorageClass;
- pre-created: ``volume_id`` names an existing Cinder volume; it is checked in Cinder (exists,
  free or attached only to our nodes, in a zone where we have nodes), then adopted with a static
  PV pre-bound to the claim.

Either way the PV is forced to ``Retain``: registry data is never deleted by us. ``ensure`` is
idempotent and changes nothing when the input is bad; it reports each step as an Event and
returns a status that ``cinder-csi registry status`` prints.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException

from cinder_csi import DEFAULT_DRIVER_NAME, TOPOLOGY_KEY
from cinder_csi.cloud.connection import Cloud
from cinder_csi.deadline import Deadline
from cinder_csi.errors import CinderCSIError
from cinder_csi.loop.context import LoopContext
from cinder_csi.loop.errors import QuantityError, RegistryInvalid
from cinder_csi.loop.kube.client import KubeRest
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.kube.informer import Handlers
from cinder_csi.loop.kube.quantity import parse_bytes

log = logging.getLogger(__name__)

REGISTRY_ANNOTATION = "imageregistry.openshift.io"
DEFAULT_NAMESPACE = "openshift-image-registry"
DEFAULT_CLAIM = "image-registry-storage"
DEFAULT_SIZE = "100Gi"
DEFAULT_FSTYPE = "xfs"  # the OpenShift 3.x registry default
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"

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


class RegistryVolume:
    def __init__(
        self,
        rest: KubeRest,
        spec: RegistrySpec,
        *,
        cloud: Cloud | None = None,
        recorder: EventRecorder | None = None,
        deadline: Callable[[], Deadline] = lambda: Deadline.after(60.0),
    ) -> None:
        self.rest = rest
        self.spec = spec
        self.cloud = cloud
        self.recorder = recorder
        self._deadline = deadline

    # -- paths --------------------------------------------------------------------------------

    @property
    def _claim_path(self) -> str:
        return f"/api/v1/namespaces/{self.spec.namespace}/persistentvolumeclaims/{self.spec.claim}"

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.rest.get(path)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- status -------------------------------------------------------------------------------

    def status(self) -> RegistryStatus:
        status = RegistryStatus(mode="pre-created" if self.spec.volume_id else "dynamic")
        claim = self._get(self._claim_path)
        if claim is None:
            status.problems.append(f"claim {self.spec.namespace}/{self.spec.claim} is missing")
            return status
        status.phase = str((claim.get("status") or {}).get("phase") or "Pending")
        status.volume_name = str((claim.get("spec") or {}).get("volumeName") or "")
        if status.volume_name:
            pv = self._get(f"/api/v1/persistentvolumes/{status.volume_name}")
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
            if self._get(f"/api/v1/namespaces/{self.spec.namespace}") is None:
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
        if self._get(self._claim_path) is not None:
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
        classes = self.rest.get("/apis/storage.k8s.io/v1/storageclasses").get("items") or []
        for sc in classes:
            annotations = (sc.get("metadata") or {}).get("annotations") or {}
            if annotations.get(DEFAULT_CLASS_ANNOTATION) == "true":
                return str(sc["metadata"]["name"])
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
            self.rest.create(
                f"/api/v1/namespaces/{self.spec.namespace}/persistentvolumeclaims", body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _ensure_precreated(self, status: RegistryStatus) -> None:
        volume_id = str(self.spec.volume_id)
        pv = self._get(f"/api/v1/persistentvolumes/{self.spec.pv_name}")
        if pv is not None:
            handle = ((pv.get("spec") or {}).get("csi") or {}).get("volumeHandle")
            if handle != volume_id:
                raise RegistryInvalid(
                    f"PV {self.spec.pv_name} exists with volume {handle}, not {volume_id}")
            self._rebind_released(pv, status)
        else:
            size_gib, zone = self._check_cinder_volume(volume_id)
            self.rest.create("/api/v1/persistentvolumes", self._static_pv(size_gib, zone))
            status.steps.append(f"created PV {self.spec.pv_name} for Cinder volume {volume_id}")
            self._event("Normal", "RegistryVolumeAdopted",
                        f"adopted Cinder volume {volume_id} ({size_gib} GiB, zone {zone}) as "
                        f"PV {self.spec.pv_name}")
        claim = self._get(self._claim_path)
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
        claim = self._get(self._claim_path)
        if claim is not None and claim["metadata"].get("uid") == ref.get("uid"):
            return
        self.rest.patch(f"/api/v1/persistentvolumes/{self.spec.pv_name}", {
            "spec": {"claimRef": {"uid": None, "resourceVersion": None}}})
        status.steps.append(f"released PV {self.spec.pv_name} for the new claim")

    def _check_cinder_volume(self, volume_id: str) -> tuple[int, str]:
        if self.cloud is None:
            raise RegistryInvalid("a pre-created volume needs --cloud-config to check it")
        try:
            volume = self.cloud.volumes.find(volume_id, self._deadline())
        except CinderCSIError as exc:
            raise RegistryInvalid(f"cannot check Cinder volume {volume_id}: {exc}") from None
        if volume is None:
            raise RegistryInvalid(f"Cinder volume {volume_id} does not exist")
        ours, zones = self._our_nodes()
        foreign = [s for s in volume.attached_servers if s not in ours]
        if foreign:
            raise RegistryInvalid(
                f"Cinder volume {volume_id} is attached to server {foreign[0]}, which is not a "
                "node of this cluster; detach it there first")
        if volume.status not in ("available", "in-use"):
            raise RegistryInvalid(
                f"Cinder volume {volume_id} is {volume.status!r}, not available")
        zone = volume.availability_zone or ""
        if zones and zone not in zones:
            raise RegistryInvalid(
                f"Cinder volume {volume_id} is in zone {zone!r}, where this cluster has no "
                f"node (zones: {', '.join(sorted(zones))}); the registry pod could not use it")
        return volume.size_gib, zone

    def _our_nodes(self) -> tuple[set[str], set[str]]:
        """Nova server ids of our CSINodes, and the zones our nodes are in."""
        servers: set[str] = set()
        for csinode in self.rest.get("/apis/storage.k8s.io/v1/csinodes").get("items") or []:
            for driver in (csinode.get("spec") or {}).get("drivers") or []:
                if driver.get("name") == self.spec.driver and driver.get("nodeID"):
                    servers.add(str(driver["nodeID"]))
        zones = {
            str(labels[TOPOLOGY_KEY])
            for node in self.rest.get("/api/v1/nodes").get("items") or []
            if TOPOLOGY_KEY in (labels := (node.get("metadata") or {}).get("labels") or {})
        }
        return servers, zones

    def _static_pv(self, size_gib: int, zone: str) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "capacity": {"storage": f"{size_gib}Gi"},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "volumeMode": "Filesystem",
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                         "namespace": self.spec.namespace, "name": self.spec.claim},
            "csi": {"driver": self.spec.driver, "volumeHandle": self.spec.volume_id,
                    "fsType": self.spec.fstype},
        }
        if zone:
            spec["nodeAffinity"] = {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": TOPOLOGY_KEY, "operator": "In", "values": [zone]}]}]}}
        return {"apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": self.spec.pv_name,
                             "annotations": {REGISTRY_ANNOTATION: "true"}},
                "spec": spec}

    def _force_retain(self, status: RegistryStatus) -> None:
        claim = self._get(self._claim_path)
        volume_name = (claim or {}).get("spec", {}).get("volumeName") if claim else None
        if not volume_name:
            return
        pv = self._get(f"/api/v1/persistentvolumes/{volume_name}")
        if pv is None or (pv.get("spec") or {}).get("persistentVolumeReclaimPolicy") == "Retain":
            return
        self.rest.patch(f"/api/v1/persistentvolumes/{volume_name}",
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
        claim = self._get(self._claim_path)
        target = claim or {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                           "metadata": {"name": self.spec.claim,
                                        "namespace": self.spec.namespace}}
        self.recorder.event(target, type_, reason, message)


class RegistryDuty:
    """The watch loop's registry duty: re-ensure on any event touching the claim or its PV,
    and every ``interval`` seconds, so a deleted claim or PV comes back."""

    name = "registry"

    def __init__(self, ctx: LoopContext, spec: RegistrySpec, *, cloud: Cloud | None,
                 interval: float = 60.0) -> None:
        self.ctx = ctx
        self.spec = spec
        self.volume = RegistryVolume(ctx.rest, spec, cloud=cloud, recorder=ctx.recorder)
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
            except (ApiException, CinderCSIError, OSError) as exc:
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
