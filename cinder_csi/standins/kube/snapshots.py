"""external-snapshotter's CRDs (snapshot.storage.k8s.io/v1), served as the API server serves
custom resources: VolumeSnapshot (namespaced), VolumeSnapshotContent and VolumeSnapshotClass.

What the real server enforces for them comes from the CRDs' OpenAPI schema and CEL rules, so
that is what is checked here: required fields, enums, "exactly one of" sources, both halves of
the snapshot reference, and immutable sources. Custom resources take JSON and merge patches
only (a strategic merge patch is 415). No snapshot-controller runs: a test plays its part and
fills in ``status`` through the ``/status`` subresource. The types are in ``resources``.
"""

from __future__ import annotations

from typing import Any

from cinder_csi.standins.kube.errors import FieldError

DELETION_POLICIES = ("Delete", "Retain")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _one_of(source: dict[str, Any], field: str, keys: tuple[str, ...]) -> list[FieldError]:
    if sum(1 for k in keys if source.get(k)) != 1:
        return [FieldError("Invalid", field, f"exactly one of {' or '.join(keys)} must be set",
                           source)]
    return []


def _deletion_policy(value: Any, field: str) -> list[FieldError]:
    if value is None:
        return [FieldError("Required", field)]
    if value not in DELETION_POLICIES:
        return [FieldError("NotSupported", field, value=value, supported=DELETION_POLICIES)]
    return []


def volume_snapshot(obj: dict[str, Any]) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    source = spec.get("source")
    if not isinstance(source, dict):
        return [FieldError("Required", "spec.source")]
    errors = _one_of(source, "spec.source",
                     ("persistentVolumeClaimName", "volumeSnapshotContentName"))
    if spec.get("volumeSnapshotClassName") == "":
        errors.append(FieldError("Invalid", "spec.volumeSnapshotClassName",
                                 "volumeSnapshotClassName must not be the empty string when "
                                 "set", ""))
    return errors


def volume_snapshot_content(obj: dict[str, Any]) -> list[FieldError]:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    errors = _deletion_policy(spec.get("deletionPolicy"), "spec.deletionPolicy")
    if not spec.get("driver"):
        errors.append(FieldError("Required", "spec.driver"))
    source = spec.get("source")
    if not isinstance(source, dict):
        errors.append(FieldError("Required", "spec.source"))
    else:
        errors += _one_of(source, "spec.source", ("volumeHandle", "snapshotHandle"))
    ref = spec.get("volumeSnapshotRef")
    if not isinstance(ref, dict):
        errors.append(FieldError("Required", "spec.volumeSnapshotRef"))
    elif not (ref.get("name") and ref.get("namespace")):
        errors.append(FieldError("Invalid", "spec.volumeSnapshotRef",
                                 "both spec.volumeSnapshotRef.name and "
                                 "spec.volumeSnapshotRef.namespace must be set", ref))
    return errors


def volume_snapshot_class(obj: dict[str, Any]) -> list[FieldError]:
    errors = _deletion_policy(obj.get("deletionPolicy"), "deletionPolicy")
    if not obj.get("driver"):
        errors.append(FieldError("Required", "driver"))
    return errors


def _immutable_source(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    new_source = _dict(new.get("spec")).get("source")
    if new_source != _dict(old.get("spec")).get("source"):
        return [FieldError("Invalid", "spec.source", "spec.source is immutable", new_source)]
    return []


def volume_snapshot_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    errors = _immutable_source(new, old)
    old_class = _dict(old.get("spec")).get("volumeSnapshotClassName")
    if old_class and _dict(new.get("spec")).get("volumeSnapshotClassName") != old_class:
        errors.append(FieldError("Invalid", "spec.volumeSnapshotClassName",
                                 "volumeSnapshotClassName is immutable once set",
                                 _dict(new.get("spec")).get("volumeSnapshotClassName")))
    return errors


def volume_snapshot_content_update(new: dict[str, Any], old: dict[str, Any]) -> list[FieldError]:
    return _immutable_source(new, old)


VALIDATORS = {
    "VolumeSnapshot": volume_snapshot,
    "VolumeSnapshotContent": volume_snapshot_content,
    "VolumeSnapshotClass": volume_snapshot_class,
}
UPDATE_VALIDATORS = {
    "VolumeSnapshot": volume_snapshot_update,
    "VolumeSnapshotContent": volume_snapshot_content_update,
}
