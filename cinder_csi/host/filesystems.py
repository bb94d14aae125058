"""Probe, create and grow filesystems; report usage.

The rule this module exists to keep: never format a device that holds data. A device is blank
only when ALL of these hold:
  * `blkid -p` (low-level probe, no cache) finds no signature at all: no TYPE, no PTTYPE, no
    PART_ENTRY_*, nothing but the device name, and its answer is not "ambivalent";
  * the first and the last MiB of the device read as zeros. blkid only knows the formats it
    knows: a volume holding something else (an unknown filesystem, a database's raw file,
    encrypted data without header, a GPT whose primary header was wiped) would otherwise look
    blank. Fresh Cinder volumes read as zeros; a backend that hands out unzeroed space is caught
    here and the operator must wipe such a volume explicitly.
mkfs.xfs runs without -f, so it refuses on its own if it sees a signature we missed. mke2fs
offers no such guard (without a terminal it formats over anything), so for ext* the probe here
is the only one.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cinder_csi import FS_TYPES
from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition, InternalError, InvalidArgument, NotFound
from cinder_csi.host.commands import CommandRunner

log = logging.getLogger(__name__)

# Exit codes of blkid(8): 2 = nothing identified, 8 = ambivalent (several signatures).
_BLKID_NOTHING = 2
_BLKID_AMBIVALENT = 8
# How much of each end of the device must be zero for it to count as blank.
ZERO_CHECK_BYTES = 1024 * 1024
# A filesystem this much smaller than its device is grown; less is rounding to blocks (and
# Cinder sizes differ by whole GiB).
GROW_THRESHOLD_BYTES = 1024 * 1024
# "data     =          bsize=4096   blocks=262144, imaxpct=25" (xfs_info);
# "Block count:  262144" and "Block size:  4096" (dumpe2fs -h).
_XFS_DATA = re.compile(r"^data\s+=\s*bsize=(\d+)\s+blocks=(\d+)", re.MULTILINE)
_EXT_BLOCK_COUNT = re.compile(r"^Block count:\s+(\d+)", re.MULTILINE)
_EXT_BLOCK_SIZE = re.compile(r"^Block size:\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True)
class Probe:
    fstype: str | None
    has_partition_table: bool
    # Everything blkid reported (minus DEVNAME); non-empty means "something is there".
    signatures: dict[str, str] = field(default_factory=dict)
    # True when blkid found nothing but the device is not all zeros at its ends.
    unknown_data: bool = False

    @property
    def blank(self) -> bool:
        return not self.signatures and not self.unknown_data

    def describe(self) -> str:
        if self.fstype:
            return f"a {self.fstype} filesystem"
        if self.has_partition_table:
            return f"a {self.signatures.get('PTTYPE', 'partition')} partition table"
        if self.signatures:
            found = ", ".join(f"{k}={v}" for k, v in sorted(self.signatures.items()))
            return f"signatures blkid recognises ({found})"
        if self.unknown_data:
            return "non-zero data of an unknown format"
        return "nothing"


@dataclass(frozen=True)
class VolumeStats:
    total_bytes: int
    available_bytes: int
    used_bytes: int
    total_inodes: int
    free_inodes: int
    used_inodes: int


def check_fstype(fstype: str) -> None:
    if fstype not in FS_TYPES:
        raise InvalidArgument(
            f"unsupported filesystem type {fstype!r}; supported: {', '.join(FS_TYPES)}"
        )


def _stat(path: Path, name: str) -> os.stat_result:
    """os.stat, failing as NotFound when ``name`` (e.g. "device /dev/vdb") does not exist."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{name} does not exist") from None
    except OSError as exc:
        raise InternalError(f"cannot stat {name}: {exc}") from exc


def _block_size_of_open(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _is_zero(fd: int, offset: int, length: int) -> bool:
    os.lseek(fd, offset, os.SEEK_SET)
    remaining = length
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 65536))
        if not chunk:
            break
        if chunk.count(0) != len(chunk):
            return False
        remaining -= len(chunk)
    return True


class Filesystems:
    def __init__(self, runner: CommandRunner | None = None, *, allow_files: bool = False) -> None:
        self.runner = runner or CommandRunner()
        # Unit tests probe plain files; in production anything but a block device is refused.
        self.allow_files = allow_files

    def _check_device(self, device: Path) -> None:
        st = _stat(device, f"device {device}")
        if not stat.S_ISBLK(st.st_mode) and not (self.allow_files and stat.S_ISREG(st.st_mode)):
            raise FailedPrecondition(f"{device} is not a block device")

    def probe(self, device: Path, deadline: Deadline | None = None) -> Probe:
        # blkid also answers "nothing found" for a missing device: check it exists first.
        self._check_device(device)
        result = self.runner.run(
            ["blkid", "-p", "-o", "export", str(device)],
            deadline=deadline,
            ok_codes=(0, _BLKID_NOTHING, _BLKID_AMBIVALENT),
        )
        signatures: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and key != "DEVNAME":
                signatures[key] = value
        if result.returncode == _BLKID_AMBIVALENT:
            signatures.setdefault("AMBIVALENT", "several signatures found")
        if result.returncode == 0 and not signatures:
            # blkid said "found" but printed nothing we understand: be conservative.
            signatures["UNPARSED"] = result.stdout.strip() or "(empty)"
        unknown = False
        if not signatures:
            unknown = not self._ends_are_zero(device)
            if unknown:
                log.warning(
                    "device %s has no known signature but holds non-zero data; "
                    "it will not be formatted",
                    device,
                )
        return Probe(
            fstype=signatures.get("TYPE") or None,
            has_partition_table="PTTYPE" in signatures,
            signatures=signatures,
            unknown_data=unknown,
        )

    def _ends_are_zero(self, device: Path) -> bool:
        try:
            fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise InternalError(f"cannot open {device} to check it is blank: {exc}") from exc
        try:
            size = _block_size_of_open(fd)
            head = min(size, ZERO_CHECK_BYTES)
            tail_start = max(head, size - ZERO_CHECK_BYTES)
            return _is_zero(fd, 0, head) and _is_zero(fd, tail_start, size - tail_start)
        except OSError as exc:
            raise InternalError(f"cannot read {device} to check it is blank: {exc}") from exc
        finally:
            os.close(fd)

    def make(self, device: Path, fstype: str, deadline: Deadline | None = None) -> None:
        """Create a filesystem on a device that `probe` just reported blank; then re-probe."""
        check_fstype(fstype)
        before = self.probe(device, deadline)
        if not before.blank:
            raise FailedPrecondition(
                f"refusing to format {device} as {fstype}: it holds {before.describe()}"
            )
        if fstype == "xfs":
            # -K: no discard (slow on big volumes); no -f: refuse any existing signature.
            argv = ["mkfs.xfs", "-K", "-q", str(device)]
        else:
            # nodiscard: never TRIM the volume; lazy_itable_init: return fast on big volumes.
            argv = [f"mkfs.{fstype}", "-q", "-E", "nodiscard,lazy_itable_init=1", str(device)]
        log.info("formatting %s as %s", device, fstype)
        self.runner.run(argv, deadline=deadline)
        after = self.probe(device, deadline)
        if after.fstype != fstype:
            raise InternalError(
                f"mkfs of {device} as {fstype} succeeded but the device now holds "
                f"{after.describe()}"
            )

    def grow(
        self, device: Path, mount_point: Path, fstype: str, deadline: Deadline | None = None
    ) -> None:
        """Grow a mounted filesystem to fill its (already rescanned) device."""
        check_fstype(fstype)
        # xfs grows only while mounted, via its mount point; resize2fs grows ext3/4 online.
        argv = ["xfs_growfs", str(mount_point)] if fstype == "xfs" else ["resize2fs", str(device)]
        log.info("growing %s filesystem on %s", fstype, device)
        self.runner.run(argv, deadline=deadline)


    def size(
        self, device: Path, mount_point: Path, fstype: str, deadline: Deadline | None = None
    ) -> int:
        """Bytes the filesystem spans (not its free space): from the ext superblock, or from
        xfs_info of the mounted xfs."""
        check_fstype(fstype)
        if fstype == "xfs":
            text = self.runner.run(["xfs_info", str(mount_point)], deadline=deadline).stdout
            data = _XFS_DATA.search(text)
            parts = (data.group(1), data.group(2)) if data else None
        else:
            text = self.runner.run(["dumpe2fs", "-h", str(device)], deadline=deadline).stdout
            count, block = _EXT_BLOCK_COUNT.search(text), _EXT_BLOCK_SIZE.search(text)
            parts = (block.group(1), count.group(1)) if count and block else None
        if parts is None:
            raise InternalError(f"cannot read the size of the {fstype} filesystem on {device}")
        return int(parts[0]) * int(parts[1])

    def grow_to_device(
        self, device: Path, mount_point: Path, fstype: str, device_bytes: int,
        deadline: Deadline | None = None,
    ) -> bool:
        """Grow the mounted filesystem when the device is larger than it (a volume restored or
        cloned into a bigger one); True when it grew."""
        current = self.size(device, mount_point, fstype, deadline)
        if device_bytes - current < GROW_THRESHOLD_BYTES:
            return False
        log.info("filesystem on %s spans %d of %d bytes: growing it", device, current,
                 device_bytes)
        self.grow(device, mount_point, fstype, deadline)
        return True


def stats(path: Path) -> VolumeStats:
    """Usage of the filesystem holding `path`; for a block device, its size only."""
    st = _stat(path, str(path))
    try:
        if stat.S_ISBLK(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                size = _block_size_of_open(fd)
            finally:
                os.close(fd)
            return VolumeStats(size, 0, 0, 0, 0, 0)
        vfs = os.statvfs(path)
    except OSError as exc:
        raise InternalError(f"cannot read usage of {path}: {exc}") from exc
    return VolumeStats(
        total_bytes=vfs.f_blocks * vfs.f_frsize,
        available_bytes=vfs.f_bavail * vfs.f_frsize,
        used_bytes=(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
        total_inodes=vfs.f_files,
        free_inodes=vfs.f_ffree,
        used_inodes=vfs.f_files - vfs.f_ffree,
    )
