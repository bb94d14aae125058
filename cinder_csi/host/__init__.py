"""Everything that touches the node's OS: commands, block devices, mounts, filesystems, metadata.

Never imports openstack or grpc: errors are the project's own (cinder_csi.errors).

    commands.py     run a program (argv, timeout, C locale); its failure as a project error
    devices.py      a volume's block device: find it, prove it is that volume, size, rescan
    identity.py     what a device says it is (serial, SCSI VPD pages, udev), and whether that
                    proves it is a given volume
    signatures.py   the low-level signature probe of `blkid -p`, through libblkid in-process
    filesystems.py  blank check (signatures + zeroed ends), mkfs, grow, usage
    refusals.py     a mount or grow the OS refuses, as FailedPrecondition saying why
    mounter.py      idempotent mount, bind-mount, remount read-only, unmount
    mountcall.py    mount(2) through libc for the plain mounts it can express; else `mount`
    parallel.py     independent read-only checks at once, all finished before anything acts
    mountinfo.py    /proc/self/mountinfo, parsed
    metadata.py     this node's server UUID and zone: flags, config drive, metadata service
"""

from cinder_csi.host.commands import CommandResult, CommandRunner
from cinder_csi.host.devices import DeviceFinder, check_volume_id
from cinder_csi.host.filesystems import Filesystems, Probe, VolumeStats, stats
from cinder_csi.host.metadata import MetadataSource, NodeMetadata, parse_search_order
from cinder_csi.host.mounter import Mounter
from cinder_csi.host.mountinfo import MountInfo, MountTable

__all__ = [
    "CommandResult",
    "CommandRunner",
    "DeviceFinder",
    "Filesystems",
    "MetadataSource",
    "MountInfo",
    "MountTable",
    "Mounter",
    "NodeMetadata",
    "Probe",
    "VolumeStats",
    "check_volume_id",
    "parse_search_order",
    "stats",
]
