"""Names shared with the Kubernetes side: annotations, finalizers, keys, parameter prefixes.

They are the external-provisioner's, external-attacher's and kube-controller-manager's own, so
objects made by the upstream sidecars are handled here and the other way round; plus our own
crash-safe intent on a claim, and ``in_flight``, whether a claim carries it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cinder_csi.loop.kube.objects import annotations_of, finalizers_of

# PVC annotations set by the PV controller / scheduler.
ANN_STORAGE_PROVISIONER = "volume.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_PROVISIONER = "volume.beta.kubernetes.io/storage-provisioner"
ANN_BETA_STORAGE_CLASS = "volume.beta.kubernetes.io/storage-class"
ANN_SELECTED_NODE = "volume.kubernetes.io/selected-node"
ANN_BIND_COMPLETED = "pv.kubernetes.io/bind-completed"

# PV annotations and finalizers of external-provisioner.
ANN_PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"
ANN_DELETION_SECRET_NAME = "volume.kubernetes.io/provisioner-deletion-secret-name"
ANN_DELETION_SECRET_NAMESPACE = "volume.kubernetes.io/provisioner-deletion-secret-namespace"
FINALIZER_PV_DELETION = "external-provisioner.volume.kubernetes.io/finalizer"
FINALIZER_CLONE_SOURCE = "provisioner.storage.kubernetes.io/cloning-protection"
FINALIZER_SNAPSHOT_SOURCE = "provisioner.storage.kubernetes.io/volumesnapshot-as-source-protection"
PROVISIONER_IDENTITY_KEY = "storage.kubernetes.io/csiProvisionerIdentity"

# Our own crash-safe intent: set on the PVC before CreateVolume, cleared once the PV exists.
# The finalizer keeps a PVC deleted mid-provisioning around until its volume is accounted for
# (external-provisioner forgets such volumes: kubernetes-csi/external-provisioner#486).
ANN_PROVISIONING = "cinder.csi.openstack.org/provisioning"
FINALIZER_PROVISIONING = "cinder.csi.openstack.org/provisioning-protection"
# Everything resolved for the claim (loop/intent.py), written in the same patch as the two
# above, so that the claim can be finished without resolving anything again.
ANN_PROVISIONING_REQUEST = "cinder.csi.openstack.org/provisioning-request"

# On a PV of ours: the reclaim policy the driver has recorded on its volume (loop/deletion.py).
# "Retain" once recorded; the orphan sweep never deletes a volume marked so.
ANN_RECLAIM_RECORDED = "cinder.csi.openstack.org/reclaim-policy-recorded"

# external-attacher.
ANN_VA_NODE_ID = "csi.alpha.kubernetes.io/node-id"

# external-resizer / kubelet conditions on the PVC.
PVC_CONDITION_RESIZING = "Resizing"
PVC_CONDITION_FS_RESIZE_PENDING = "FileSystemResizePending"

# StorageClass parameters: the csi.storage.k8s.io/ prefix is reserved for the sidecars.
CSI_PARAMETER_PREFIX = "csi.storage.k8s.io/"
PARAM_FSTYPE = CSI_PARAMETER_PREFIX + "fstype"
SECRET_PARAMETERS = tuple(
    f"{CSI_PARAMETER_PREFIX}{op}-secret-{part}"
    for op in ("provisioner", "controller-publish", "node-stage", "node-publish",
               "controller-expand", "node-expand")
    for part in ("name", "namespace")
)
EXTRA_METADATA_PVC_NAME = CSI_PARAMETER_PREFIX + "pvc/name"
EXTRA_METADATA_PVC_NAMESPACE = CSI_PARAMETER_PREFIX + "pvc/namespace"
EXTRA_METADATA_PV_NAME = CSI_PARAMETER_PREFIX + "pv/name"


def attacher_finalizer(driver: str) -> str:
    """``external-attacher/<driver with . and / replaced by ->``."""
    return "external-attacher/" + driver.replace(".", "-").replace("/", "-")


def pv_name_for(pvc_uid: str, prefix: str = "pvc") -> str:
    """The PV and CSI volume name of a claim: ``pvc-<uid>``, which makes provisioning
    idempotent."""
    return f"{prefix}-{pvc_uid}"


def in_flight(claim: Mapping[str, Any]) -> bool:
    """The claim carries our intent: provisioning started and is not yet cleaned up."""
    return (ANN_PROVISIONING in annotations_of(claim)
            or FINALIZER_PROVISIONING in finalizers_of(claim))
