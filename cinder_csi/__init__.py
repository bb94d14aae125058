"""cinder-csi: a CSI driver and provisioner for OpenStack Cinder."""

from importlib import metadata

DEFAULT_DRIVER_NAME = "cinder.csi.openstack.org"
TOPOLOGY_KEY = "topology.cinder.csi.openstack.org/zone"
# Filesystems the node plugin makes and grows (the upstream driver's set), and the one it makes
# when a request names none.
FS_TYPES = ("ext4", "ext3", "xfs")
DEFAULT_FS_TYPE = "ext4"


def version() -> str:
    """The installed package version, or a marker when running from a bare tree."""
    try:
        return metadata.version("cinder-csi")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"
