"""cinder-csi: a CSI driver and provisioner for OpenStack Cinder."""

from importlib import metadata

DEFAULT_DRIVER_NAME = "cinder.csi.openstack.org"
TOPOLOGY_KEY = "topology.cinder.csi.openstack.org/zone"
# Filesystems the node plugin makes and grows (the upstream driver's set), and the one it makes
# when a request names none.
FS_TYPES = ("ext4", "ext3", "xfs")
DEFAULT_FS_TYPE = "ext4"

# What our controller tells a watch loop through CSI alone (loop/ never imports controller/).
# ListVolumes and ControllerGetVolume report, in volume_context, the Cinder name, status and
# cluster tag of each volume, and the reclaim policy recorded on it: the loop passes that policy
# as a CreateVolume parameter (and Retain later as a ControllerModifyVolume mutable parameter),
# and the controller keeps it as volume metadata.
CLUSTER_KEY = "cinder.csi.openstack.org/cluster"
RECLAIM_POLICY_KEY = "cinder.csi.openstack.org/reclaim-policy"
LISTED_NAME_KEY = "name"
LISTED_STATUS_KEY = "status"
# GetPluginInfo manifest entry naming which of these the driver does, comma-separated, so the
# loop never relies on them with another driver (or an older one).
FEATURES_MANIFEST_KEY = "cinder.csi.openstack.org/features"
FEATURE_LISTED_NAMES = "listed-names"  # name, status and cluster in ListVolumes' volume_context
FEATURE_RECLAIM_POLICY = "reclaim-policy"  # the RECLAIM_POLICY_KEY parameter is recorded


def version() -> str:
    """The installed package version, or a marker when running from a bare tree."""
    try:
        return metadata.version("cinder-csi")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
