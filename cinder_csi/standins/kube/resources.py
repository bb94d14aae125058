"""The resource types the stand-in serves, with the per-type facts the real registry encodes."""

from __future__ import annotations

from dataclasses import dataclass

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = False
    # Types whose registry sets ReturnDeletedObject answer DELETE with the object, others a Status.
    delete_returns_object: bool = True
    # PUT to a missing object creates it (Leases and Events allow this on the real server).
    create_on_update: bool = False
    # Field selectors beyond metadata.name / metadata.namespace that the real server accepts.
    fields: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Served from a CustomResourceDefinition: JSON and merge patches only, messages name the
    # kind with its group.
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``plural.group`` as the real server writes it in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"


_POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)

RESOURCES: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "Namespace",
        "namespaces",
        False,
        ("ns",),
        has_status=True,
        fields=("status.phase",),
    ),
    ResourceType(
        "",
        "v1",
        "Node",
        "nodes",
        False,
        ("no",),
        has_status=True,
        delete_returns_object=False,
        fields=("spec.unschedulable",),
    ),
    ResourceType(
        "", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",), has_status=True
    ),
    ResourceType(
        "", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",), has_status=True
    ),
    ResourceType(
        "",
        "v1",
        "Pod",
        "pods",
        True,
        ("po",),
        has_status=True,
        fields=_POD_FIELDS,
        categories=("all",),
    ),
    ResourceType(
        "",
        "v1",
        "Event",
        "events",
        True,
        ("ev",),
        delete_returns_object=False,
        create_on_update=True,
        fields=_EVENT_FIELDS,
    ),
    ResourceType(
        "", "v1", "Secret", "secrets", True, delete_returns_object=False, fields=("type",)
    ),
    ResourceType("", "v1", "ConfigMap", "configmaps", True, ("cm",), delete_returns_object=False),
    ResourceType("storage.k8s.io", "v1", "StorageClass", "storageclasses", False, ("sc",)),
    ResourceType(
        "storage.k8s.io", "v1", "VolumeAttachment", "volumeattachments", False, has_status=True
    ),
    ResourceType("storage.k8s.io", "v1", "CSINode", "csinodes", False),
    ResourceType("storage.k8s.io", "v1", "CSIDriver", "csidrivers", False),
    ResourceType(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        True,
        delete_returns_object=False,
        create_on_update=True,
    ),
    # external-snapshotter's CRDs (their checks are in ``snapshots``).
    ResourceType("snapshot.storage.k8s.io", "v1", "VolumeSnapshot", "volumesnapshots", True,
                 ("vs",), has_status=True, custom=True),
    ResourceType("snapshot.storage.k8s.io", "v1", "VolumeSnapshotContent",
                 "volumesnapshotcontents", False, ("vsc", "vscs"), has_status=True, custom=True),
    ResourceType("snapshot.storage.k8s.io", "v1", "VolumeSnapshotClass",
                 "volumesnapshotclasses", False, ("vsclass", "vsclasses"), custom=True),
)


def groups() -> list[tuple[str, str]]:
    """(group, version) pairs served under /apis, in a stable order."""
    seen: list[tuple[str, str]] = []
    for rt in RESOURCES:
        if rt.group and (rt.group, rt.version) not in seen:
            seen.append((rt.group, rt.version))
    return seen


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    for rt in RESOURCES:
        if rt.group == group and rt.version == version and rt.plural == plural:
            return rt
    return None
