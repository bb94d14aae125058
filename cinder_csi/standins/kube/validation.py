"""Validation of the fields this project uses, with the real server's paths and messages.

Only what a client of ours could get wrong is checked; the goal is that a request the real
server would reject with 422 is rejected here too, not a full port of the API validation.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from cinder_csi.standins.kube import snapshots
from cinder_csi.standins.kube.errors import FieldError
from cinder_csi.standins.kube.quantity import is_quantity, parse_quantity
from cinder_csi.standins.kube.resources import ResourceType

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
VOLUME_MODES = ("Block", "Filesystem")
_PV_SOURCES = (
    "csi",
    "hostPath",
    "local",
    "nfs",
    "iscsi",
    "fc",
    "rbd",
    "cephfs",
    "cinder",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "vsphereVolume",
    "glusterfs",
    "flexVolume",
    "flocker",
    "quobyte",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "photonPersistentDisk",
)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def validate_name(rt: ResourceType, name: str) -> list[FieldError]:
    if rt.kind == "Namespace":
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return [FieldError("Invalid", "metadata.name", LABEL_MSG, name)]
    elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return [FieldError("Invalid", "metadata.name", SUBDOMAIN_MSG, name)]
    return []


def _qualified_name_errors(field: str, key: str) -> list[FieldError]:
    prefix, slash, name = key.rpartition("/")
    bad = not name or len(name) > 63 or not _QUALIFIED.match(name)
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        bad = True
    if bad:
        return [
            FieldError(
                "Invalid",
                field,
                "name part must consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric "
                "character",
                key,
            )
        ]
    return []


def validate_metadata(meta: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            errors.append(FieldError("Invalid", f"metadata.{field}", "must be a map", value))
            continue
        for key, item in value.items():
            errors += _qualified_name_errors(f"metadata.{field}", str(key))
            if not isinstance(item, str):
                errors.append(FieldError("Invalid", f"metadata.{field}", "must be a string", item))
            elif field == "labels" and item and (len(item) > 63 or not _QUALIFIED.match(item)):
                errors.append(
                    FieldError(
                        "Invalid",
                        "metadata.labels",
                        "a valid label must be an "
                        "empty string or consist of alphanumeric characters, "
                        "'-', '_' or '.'",
                        item,
                    )
                )
    finalizers = meta.get("finalizers")
    if finalizers is not None:
        if not isinstance(finalizers, list):
            errors.append(
                FieldError("Invalid", "metadata.finalizers", "must be a list", finalizers)
            )
        else:
            for i, fin in enumerate(finalizers):
                errors += _qualified_name_errors(f"metadata.finalizers[{i}]", str(fin))
    return errors


def _storage_request(spec: dict[str, Any], field: str) -> list[FieldError]:
    requests = _dict(_dict(spec.get("resources")).get("requests"))
    if "storage" not in requests:
        return [FieldError("Required", f"{field}[storage]", "")]
    value = requests["storage"]
    if not is_quantity(value):
        return [FieldError("Invalid", f"{field}[storage]", "must be a valid quantity", value)]
    if parse_quantity(value) <= 0:
        return [FieldError("Invalid", f"{field}[storage]", "must be greater than zero", value)]
    return []


def _access_modes(modes: Any, field: str) -> list[FieldError]:
    if not _list(modes):
        return [FieldError("Required", field, "at least 1 access mode is required")]
    errors = []
    for mode in modes:
        if mode not in ACCESS_MODES:
            errors.append(FieldError("NotSupported", field, "", mode, ACCESS_MODES))
    return errors


def _enum(value: Any, field: str, allowed: tuple[str, ...]) -> list[FieldError]:
    if value is not None and value not in allowed:
        return [FieldError("NotSupported", field, "", value, allowed)]
    return []


def _pvc(obj: dict[str, Any]) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec", "")]
    errors = _access_modes(spec.get("accessModes"), "spec.accessModes")
    errors += _storage_request(spec, "spec.resources")
    errors += _enum(spec.get("volumeMode"), "spec.volumeMode", VOLUME_MODES)
    status = _dict(obj.get("status"))
    errors += _enum(status.get("phase"), "status.phase", ("Pending", "Bound", "Lost"))
    return errors


def _pv(obj: dict[str, Any]) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec", "")]
    errors = _access_modes(spec.get("accessModes"), "spec.accessModes")
    capacity = _dict(spec.get("capacity"))
    if "storage" not in capacity:
        errors.append(FieldError("Required", "spec.capacity", "must specify a storage capacity"))
    elif not is_quantity(capacity["storage"]):
        errors.append(
            FieldError(
                "Invalid", "spec.capacity[storage]", "must be a valid quantity", capacity["storage"]
            )
        )
    sources = [s for s in _PV_SOURCES if spec.get(s) is not None]
    if not sources:
        errors.append(FieldError("Required", "spec", "must specify a volume type"))
    elif len(sources) > 1:
        errors.append(
            FieldError("Forbidden", f"spec.{sources[1]}", "may not specify more than 1 volume type")
        )
    csi = spec.get("csi")
    if csi is not None:
        csi = _dict(csi)
        if not csi.get("driver"):
            errors.append(FieldError("Required", "spec.csi.driver", ""))
        if not csi.get("volumeHandle"):
            errors.append(FieldError("Required", "spec.csi.volumeHandle", ""))
    errors += _enum(
        spec.get("persistentVolumeReclaimPolicy"),
        "spec.persistentVolumeReclaimPolicy",
        ("Delete", "Recycle", "Retain"),
    )
    errors += _enum(spec.get("volumeMode"), "spec.volumeMode", VOLUME_MODES)
    affinity = spec.get("nodeAffinity")
    if affinity is not None:
        required = _dict(affinity).get("required")
        if required is not None and not _list(_dict(required).get("nodeSelectorTerms")):
            errors.append(
                FieldError(
                    "Required",
                    "spec.nodeAffinity.required.nodeSelectorTerms",
                    "must have at least one node selector term",
                )
            )
    status = _dict(obj.get("status"))
    errors += _enum(
        status.get("phase"), "status.phase", ("Pending", "Available", "Bound", "Released", "Failed")
    )
    return errors


def _storage_class(obj: dict[str, Any]) -> list[FieldError]:
    errors = []
    if not obj.get("provisioner"):
        errors.append(FieldError("Required", "provisioner", ""))
    errors += _enum(obj.get("reclaimPolicy"), "reclaimPolicy", ("Delete", "Retain"))
    errors += _enum(
        obj.get("volumeBindingMode"), "volumeBindingMode", ("Immediate", "WaitForFirstConsumer")
    )
    return errors


def _volume_attachment(obj: dict[str, Any]) -> list[FieldError]:
    spec = _dict(obj.get("spec"))
    errors = []
    if not spec.get("attacher"):
        errors.append(FieldError("Required", "spec.attacher", ""))
    if not spec.get("nodeName"):
        errors.append(FieldError("Required", "spec.nodeName", ""))
    source = _dict(spec.get("source"))
    given = [k for k in ("persistentVolumeName", "inlineVolumeSpec") if source.get(k)]
    if not given:
        errors.append(
            FieldError(
                "Required",
                "spec.source",
                "must specify exactly one of persistentVolumeName and inlineVolumeSpec",
            )
        )
    elif len(given) > 1:
        errors.append(
            FieldError(
                "Forbidden",
                "spec.source",
                "must specify exactly one of persistentVolumeName and inlineVolumeSpec",
            )
        )
    status = obj.get("status")
    if status is not None and not isinstance(_dict(status).get("attached", False), bool):
        errors.append(
            FieldError(
                "Invalid", "status.attached", "must be a boolean", _dict(status).get("attached")
            )
        )
    return errors


def _pod(obj: dict[str, Any]) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec", "")]
    errors = []
    containers = _list(spec.get("containers"))
    if not containers:
        errors.append(FieldError("Required", "spec.containers", ""))
    seen: set[str] = set()
    for i, container in enumerate(containers):
        container = _dict(container)
        name = str(container.get("name", ""))
        if not name:
            errors.append(FieldError("Required", f"spec.containers[{i}].name", ""))
        elif not _DNS_LABEL.match(name):
            errors.append(FieldError("Invalid", f"spec.containers[{i}].name", LABEL_MSG, name))
        elif name in seen:
            errors.append(FieldError("Duplicate", f"spec.containers[{i}].name", "", name))
        seen.add(name)
        if not container.get("image"):
            errors.append(FieldError("Required", f"spec.containers[{i}].image", ""))
    volumes: set[str] = set()
    for i, volume in enumerate(_list(spec.get("volumes"))):
        volume = _dict(volume)
        name = str(volume.get("name", ""))
        if not name:
            errors.append(FieldError("Required", f"spec.volumes[{i}].name", ""))
        elif name in volumes:
            errors.append(FieldError("Duplicate", f"spec.volumes[{i}].name", "", name))
        volumes.add(name)
        claim = volume.get("persistentVolumeClaim")
        if claim is not None and not _dict(claim).get("claimName"):
            errors.append(
                FieldError("Required", f"spec.volumes[{i}].persistentVolumeClaim.claimName", "")
            )
    return errors


def _csinode(obj: dict[str, Any]) -> list[FieldError]:
    errors = []
    names: set[str] = set()
    for i, driver in enumerate(_list(_dict(obj.get("spec")).get("drivers"))):
        driver = _dict(driver)
        if not driver.get("name"):
            errors.append(FieldError("Required", f"spec.drivers[{i}].name", ""))
        elif driver["name"] in names:
            errors.append(FieldError("Duplicate", f"spec.drivers[{i}].name", "", driver["name"]))
        names.add(str(driver.get("name")))
        if not driver.get("nodeID"):
            errors.append(FieldError("Required", f"spec.drivers[{i}].nodeID", ""))
    return errors


def _lease(obj: dict[str, Any]) -> list[FieldError]:
    duration = _dict(obj.get("spec")).get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        return [
            FieldError("Invalid", "spec.leaseDurationSeconds", "must be greater than 0", duration)
        ]
    return []


_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
CONFIGMAP_MAX_BYTES = 1024 * 1024  # keys and values of data and binaryData together


def _configmap(obj: dict[str, Any]) -> list[FieldError]:
    errors = []
    size = 0
    for section in ("data", "binaryData"):
        for key, value in _dict(obj.get(section)).items():
            if not _CONFIG_KEY.match(key) or len(key) > 253:
                errors.append(FieldError(
                    "Invalid", f"{section}[{key}]", "a valid config key must consist of "
                    "alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME', "
                    "or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')", key))
            if not isinstance(value, str):
                errors.append(FieldError("Invalid", f"{section}[{key}]", "must be a string",
                                         value))
                continue
            size += len(key) + len(value.encode())
    if size > CONFIGMAP_MAX_BYTES:
        errors.append(FieldError("TooLong", "[]",
                                 f"must have at most {CONFIGMAP_MAX_BYTES} bytes"))
    return errors


_VALIDATORS: dict[str, Callable[[dict[str, Any]], list[FieldError]]] = {
    "ConfigMap": _configmap,
    "PersistentVolumeClaim": _pvc,
    "PersistentVolume": _pv,
    "StorageClass": _storage_class,
    "VolumeAttachment": _volume_attachment,
    "Pod": _pod,
    "CSINode": _csinode,
    "Lease": _lease,
    **snapshots.VALIDATORS,
}


def validate(rt: ResourceType, obj: dict[str, Any]) -> list[FieldError]:
    meta = _dict(obj.get("metadata"))
    errors = validate_name(rt, str(meta.get("name", "")))
    errors += validate_metadata(meta)
    check = _VALIDATORS.get(rt.kind)
    if check is not None:
        errors += check(obj)
    return errors


def _without(spec: dict[str, Any], *paths: str) -> dict[str, Any]:
    """A copy of ``spec`` with the dotted ``paths`` removed, for "immutable except" checks."""
    out = copy.deepcopy(spec)
    for path in paths:
        node: Any = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return out


def _pvc_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    new_spec, old_spec = _dict(new.get("spec")), _dict(old.get("spec"))
    errors = []
    fixed = ("resources.requests", "volumeName", "volumeAttributesClassName")
    immutable = FieldError(
        "Forbidden",
        "spec",
        "spec is immutable after creation except resources.requests and "
        "volumeAttributesClassName for bound claims",
    )
    if _without(new_spec, *fixed) != _without(old_spec, *fixed):
        errors.append(immutable)
    if old_spec.get("volumeName") and new_spec.get("volumeName") != old_spec.get("volumeName"):
        errors.append(immutable)
    new_req = _dict(_dict(new_spec.get("resources")).get("requests")).get("storage")
    old_req = _dict(_dict(old_spec.get("resources")).get("requests")).get("storage")
    if new_req != old_req and is_quantity(new_req) and is_quantity(old_req):
        if _dict(old.get("status")).get("phase") != "Bound":
            errors.append(
                FieldError(
                    "Forbidden",
                    "spec",
                    "spec is immutable after creation except resources.requests "
                    "and volumeAttributesClassName for bound claims",
                )
            )
        capacity = _dict(_dict(old.get("status")).get("capacity")).get("storage")
        if is_quantity(capacity) and parse_quantity(new_req) < parse_quantity(capacity):
            errors.append(
                FieldError(
                    "Forbidden",
                    "spec.resources.requests.storage",
                    "field can not be less than status.capacity",
                )
            )
    return errors


def _pv_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    new_spec, old_spec = _dict(new.get("spec")), _dict(old.get("spec"))
    errors = []
    if any(new_spec.get(s) != old_spec.get(s) for s in _PV_SOURCES):
        errors.append(
            FieldError(
                "Forbidden",
                "spec.persistentvolumesource",
                "spec.persistentvolumesource is immutable after creation",
            )
        )
    if new_spec.get("volumeMode") != old_spec.get("volumeMode"):
        errors.append(
            FieldError(
                "Invalid", "spec.volumeMode", "field is immutable", new_spec.get("volumeMode")
            )
        )
    if old_spec.get("nodeAffinity") and new_spec.get("nodeAffinity") != old_spec["nodeAffinity"]:
        errors.append(
            FieldError(
                "Invalid", "spec.nodeAffinity", "field is immutable", new_spec.get("nodeAffinity")
            )
        )
    return errors


def _sc_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errors = []
    for field in ("parameters", "provisioner", "reclaimPolicy"):
        if new.get(field) != old.get(field):
            errors.append(FieldError("Forbidden", field, f"updates to {field} are forbidden."))
    if new.get("volumeBindingMode") != old.get("volumeBindingMode"):
        errors.append(
            FieldError(
                "Invalid", "volumeBindingMode", "field is immutable", new.get("volumeBindingMode")
            )
        )
    return errors


def _va_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    if new.get("spec") != old.get("spec"):
        return [FieldError("Invalid", "spec", "field is immutable", new.get("spec"))]
    return []


_POD_MUTABLE = (
    "activeDeadlineSeconds",
    "tolerations",
    "terminationGracePeriodSeconds",
    "schedulingGates",
)


def _pod_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    def comparable(spec: dict[str, Any]) -> dict[str, Any]:
        out = _without(spec, *_POD_MUTABLE)
        for group in ("containers", "initContainers"):
            for container in _list(out.get(group)):
                if isinstance(container, dict):
                    container.pop("image", None)
        return out

    new_spec, old_spec = _dict(new.get("spec")), _dict(old.get("spec"))
    if comparable(new_spec) != comparable(old_spec):
        return [
            FieldError(
                "Forbidden",
                "spec",
                "pod updates may not change fields other than `spec.containers[*]."
                "image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                "`spec.tolerations` (only additions to existing tolerations),"
                "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it "
                "was previously negative)",
            )
        ]
    return []


def _csidriver_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    new_spec, old_spec = _dict(new.get("spec")), _dict(old.get("spec"))
    if new_spec.get("attachRequired") != old_spec.get("attachRequired"):
        return [
            FieldError(
                "Invalid",
                "spec.attachRequired",
                "field is immutable",
                new_spec.get("attachRequired"),
            )
        ]
    return []


def _csinode_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    old_ids = {
        d.get("name"): d.get("nodeID")
        for d in _list(_dict(old.get("spec")).get("drivers"))
        if isinstance(d, dict)
    }
    errors = []
    for i, driver in enumerate(_list(_dict(new.get("spec")).get("drivers"))):
        driver = _dict(driver)
        name = driver.get("name")
        if name in old_ids and driver.get("nodeID") != old_ids[name]:
            errors.append(
                FieldError(
                    "Invalid",
                    f"spec.drivers[{i}].nodeID",
                    "field is immutable",
                    driver.get("nodeID"),
                )
            )
    return errors


def _secret_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    if new.get("type") != old.get("type"):
        return [FieldError("Invalid", "type", "field is immutable", new.get("type"))]
    return []


_UPDATE_VALIDATORS: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[FieldError]]] = {
    "PersistentVolumeClaim": _pvc_update,
    "PersistentVolume": _pv_update,
    "StorageClass": _sc_update,
    "VolumeAttachment": _va_update,
    "Pod": _pod_update,
    "CSIDriver": _csidriver_update,
    "CSINode": _csinode_update,
    "Secret": _secret_update,
    **snapshots.UPDATE_VALIDATORS,
}


def validate_update(rt: ResourceType, new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errors = validate(rt, new)
    check = _UPDATE_VALIDATORS.get(rt.kind)
    if check is not None:
        errors += check(new, old)
    return errors
