"""What a claim asks for, in CSI terms, and the PV that records what was made.

Pure functions (no I/O) shared by the claim controller and its tests:

- StorageClass parameters: the reserved ``csi.storage.k8s.io/`` keys are taken out (fstype,
  secret references with their ``${pvc.name}``-style templates), an unknown reserved key is an
  error, and the extra-create-metadata keys are added;
- capacities and capabilities from the claim;
- the PersistentVolume exactly as external-provisioner writes it, so either side can manage
  what the other made.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cinder_csi.csi import csi_pb2
from cinder_csi.loop import protocol as p
from cinder_csi.loop.errors import ParameterError, QuantityError
from cinder_csi.loop.kube import quantity
from cinder_csi.loop.kube.objects import Obj

# Which PV spec.csi field each secret-reference parameter pair fills (the provisioner's own
# secret is used for CreateVolume/DeleteVolume and recorded in annotations instead).
SECRET_OPERATIONS = ("provisioner", "controller-publish", "node-stage", "node-publish",
                     "controller-expand", "node-expand")
PV_SECRET_FIELDS = {
    "controller-publish": "controllerPublishSecretRef",
    "node-stage": "nodeStageSecretRef",
    "node-publish": "nodePublishSecretRef",
    "controller-expand": "controllerExpandSecretRef",
    "node-expand": "nodeExpandSecretRef",
}
_TEMPLATE = re.compile(r"\$\{([^}]*)\}")
_ACCESS_MODES = {
    "ReadOnlyMany": csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY,
    "ReadWriteMany": csi_pb2.VolumeCapability.AccessMode.MULTI_NODE_MULTI_WRITER,
}


# ---------------------------------------------------------------- quantities


def parse_quantity(text: Any) -> int:
    """Bytes in a Kubernetes quantity ("1Gi", "500M", "1.5Gi", "1e9"), rounded up."""
    try:
        return quantity.parse_bytes(text)
    except QuantityError as exc:
        raise ParameterError(str(exc)) from None


def format_quantity(size: int) -> str:
    """Bytes as the largest exact binary unit ("1Gi", "1536Mi"), else plain bytes."""
    return quantity.format_bytes(size)


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "namespace": self.namespace}


@dataclass(frozen=True)
class Parameters:
    """A class's parameters taken apart for one claim."""

    csi: dict[str, str]  # what CreateVolume gets
    fs_type: str
    secrets: dict[str, SecretRef] = field(default_factory=dict)  # by operation

    @property
    def provisioner_secret(self) -> SecretRef | None:
        return self.secrets.get("provisioner")


def _resolve(template: str, values: Mapping[str, str], what: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            allowed = ", ".join("${" + k + "}" for k in values)
            raise ParameterError(f"{what} {template!r}: ${{{key}}} is not supported here "
                                 f"(allowed: {allowed})")
        return values[key]

    return _TEMPLATE.sub(substitute, template)


def secret_ref(operation: str, params: Mapping[str, str], claim: Mapping[str, Any],
               pv_name: str) -> SecretRef | None:
    """The secret reference for one operation, templates resolved (None when not set)."""
    name_key = f"{p.CSI_PARAMETER_PREFIX}{operation}-secret-name"
    ns_key = f"{p.CSI_PARAMETER_PREFIX}{operation}-secret-namespace"
    name, namespace = params.get(name_key), params.get(ns_key)
    if name is None and namespace is None:
        return None
    if not name or not namespace:
        raise ParameterError(f"StorageClass parameters {name_key} and {ns_key} must be set "
                             "together")
    meta = claim.get("metadata") or {}
    # As upstream: the namespace may depend on the PV name and the claim's namespace only; the
    # name may also use the claim's name.
    ns_values = {"pv.name": pv_name, "pvc.namespace": str(meta.get("namespace", ""))}
    name_values = {**ns_values, "pvc.name": str(meta.get("name", ""))}
    return SecretRef(_resolve(name, name_values, name_key),
                     _resolve(namespace, ns_values, ns_key))


def split_parameters(params: Mapping[str, str], claim: Mapping[str, Any], pv_name: str,
                     *, default_fstype: str = "") -> Parameters:
    """Take the class's reserved keys out; raises ParameterError naming a bad key."""
    reserved = {k: v for k, v in params.items() if k.startswith(p.CSI_PARAMETER_PREFIX)}
    known = {p.PARAM_FSTYPE, *p.SECRET_PARAMETERS}
    unknown = sorted(set(reserved) - known)
    if unknown:
        raise ParameterError(
            f"StorageClass has unknown parameter {unknown[0]!r}: keys with the prefix "
            f"{p.CSI_PARAMETER_PREFIX} are reserved (known: fstype and the *-secret-name/"
            "-namespace pairs); remove it from the class"
        )
    secrets = {}
    for operation in SECRET_OPERATIONS:
        ref = secret_ref(operation, reserved, claim, pv_name)
        if ref is not None:
            secrets[operation] = ref
    meta = claim.get("metadata") or {}
    csi_params = {k: str(v) for k, v in params.items() if k not in reserved}
    csi_params[p.EXTRA_METADATA_PVC_NAME] = str(meta.get("name", ""))
    csi_params[p.EXTRA_METADATA_PVC_NAMESPACE] = str(meta.get("namespace", ""))
    csi_params[p.EXTRA_METADATA_PV_NAME] = pv_name
    fs_type = str(reserved.get(p.PARAM_FSTYPE) or default_fstype)
    return Parameters(csi_params, fs_type, secrets)


# ---------------------------------------------------------------- claim -> CSI request


def is_block(claim: Mapping[str, Any]) -> bool:
    return (claim.get("spec") or {}).get("volumeMode") == "Block"


def capacity_range(claim: Mapping[str, Any]) -> csi_pb2.CapacityRange:
    resources = (claim.get("spec") or {}).get("resources") or {}
    request = (resources.get("requests") or {}).get("storage")
    if request is None:
        raise ParameterError("the claim has no spec.resources.requests.storage")
    limit = (resources.get("limits") or {}).get("storage")
    return csi_pb2.CapacityRange(
        required_bytes=parse_quantity(request),
        limit_bytes=parse_quantity(limit) if limit is not None else 0,
    )


def capabilities(claim: Mapping[str, Any], fs_type: str, *,
                 single_node_multi_writer: bool) -> list[csi_pb2.VolumeCapability]:
    """One capability per access mode; mount flags are not sent (they are the node's)."""
    modes = (claim.get("spec") or {}).get("accessModes") or []
    if not modes:
        raise ParameterError("the claim has no spec.accessModes")
    access = csi_pb2.VolumeCapability.AccessMode
    caps = []
    for mode in dict.fromkeys(str(m) for m in modes):
        if mode == "ReadWriteOnce":
            value = (access.SINGLE_NODE_MULTI_WRITER if single_node_multi_writer
                     else access.SINGLE_NODE_WRITER)
        elif mode == "ReadWriteOncePod":
            value = (access.SINGLE_NODE_SINGLE_WRITER if single_node_multi_writer
                     else access.SINGLE_NODE_WRITER)
        elif mode in _ACCESS_MODES:
            value = _ACCESS_MODES[mode]
        else:
            raise ParameterError(f"the claim asks for unknown access mode {mode!r}")
        cap = csi_pb2.VolumeCapability(access_mode=access(mode=value))
        if is_block(claim):
            cap.block.SetInParent()
        else:
            cap.mount.fs_type = fs_type
        caps.append(cap)
    return caps


# ---------------------------------------------------------------- the PV


@dataclass(frozen=True)
class CreatedVolume:
    """What CreateVolume answered, in plain values."""

    volume_id: str
    capacity_bytes: int
    volume_context: dict[str, str] = field(default_factory=dict)
    accessible_topology: list[dict[str, str]] = field(default_factory=list)

    @classmethod
    def from_csi(cls, volume: Any) -> CreatedVolume:
        return cls(
            volume_id=str(volume.volume_id),
            capacity_bytes=int(volume.capacity_bytes),
            volume_context={str(k): str(v) for k, v in volume.volume_context.items()},
            accessible_topology=[{str(k): str(v) for k, v in t.segments.items()}
                                 for t in volume.accessible_topology],
        )


def node_affinity(topology: Sequence[Mapping[str, str]]) -> Obj | None:
    """One nodeSelectorTerm per accessible segment (terms are ORed, expressions ANDed)."""
    terms = [
        {"matchExpressions": [{"key": k, "operator": "In", "values": [segment[k]]}
                              for k in sorted(segment)]}
        for segment in topology if segment
    ]
    return {"required": {"nodeSelectorTerms": terms}} if terms else None


def build_pv(*, name: str, driver: str, claim: Mapping[str, Any], storage_class: Mapping[str, Any],
             volume: CreatedVolume, requested_bytes: int, params: Parameters,
             provisioner_identity: str) -> Obj:
    """The PersistentVolume for ``volume``, bound (claimRef) to ``claim``."""
    meta = claim.get("metadata") or {}
    spec = claim.get("spec") or {}
    reclaim = str(storage_class.get("reclaimPolicy") or "Delete")
    deletion = params.provisioner_secret
    block = is_block(claim)
    csi: Obj = {
        "driver": driver,
        "volumeHandle": volume.volume_id,
        "volumeAttributes": {**volume.volume_context,
                             p.PROVISIONER_IDENTITY_KEY: provisioner_identity},
    }
    if params.fs_type and not block:
        csi["fsType"] = params.fs_type
    for operation, field_name in PV_SECRET_FIELDS.items():
        ref = params.secrets.get(operation)
        if ref is not None:
            csi[field_name] = ref.as_dict()
    capacity = volume.capacity_bytes or requested_bytes
    pv_spec: Obj = {
        "accessModes": list(spec.get("accessModes") or []),
        "capacity": {"storage": format_quantity(capacity)},
        "claimRef": {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": meta.get("namespace"),
            "name": meta.get("name"),
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "persistentVolumeReclaimPolicy": reclaim,
        "storageClassName": str((storage_class.get("metadata") or {}).get("name", "")),
        "volumeMode": "Block" if block else "Filesystem",
        "csi": csi,
    }
    if storage_class.get("mountOptions"):
        pv_spec["mountOptions"] = list(storage_class["mountOptions"])
    affinity = node_affinity(volume.accessible_topology)
    if affinity is not None:
        pv_spec["nodeAffinity"] = affinity
    pv_meta: Obj = {
        "name": name,
        "annotations": {
            p.ANN_PROVISIONED_BY: driver,
            p.ANN_DELETION_SECRET_NAME: deletion.name if deletion else "",
            p.ANN_DELETION_SECRET_NAMESPACE: deletion.namespace if deletion else "",
        },
    }
    if reclaim == "Delete":
        pv_meta["finalizers"] = [p.FINALIZER_PV_DELETION]
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": pv_meta,
            "spec": pv_spec}
