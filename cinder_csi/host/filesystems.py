"""Probe, create and grow filesystems; report usage.

The rule this module exists to keep: never format a device that holds data. A device is blank
only when ALL of these hold:
  * the low-level probe of `blkid -p` (libblkid, no cache; host/signatures.py) finds no
    signature at all: no TYPE, no PTTYPE, no PART_ENTRY_*, nothing but the device name, and its
    answer is not "ambivalent";
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cinder_csi import FS_TYPES
from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition, InternalError, InvalidArgument, NotFound
from cinder_csi.host.commands import CommandRunner
from cinder_csi.host.refusals import GROW_REASONS, explaining
from cinder_csi.host.signatures import SignatureReader, default_reader

log = logging.getLogger(__name__)

# How much of each end of the device must be zero for it to count as blank.
ZERO_CHECK_BYTES = 1024 * 1024
# Read in pieces, so that a device holding data is told apart after its first piece.
_ZERO_CHUNK = 128 * 1024
# The superblock magic mkfs writes: "XFSB" at byte 0 (xfs); 0xEF53, little-endian, at byte
# 1080 (ext2/3/4: 1024 + s_magic's offset 56).
_XFS_MAGIC = (0, b"XFSB")
_EXT_MAGIC = (1080, b"\x53\xef")
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
    block_device: bool = False  # then only total_bytes is known


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
    except OSError as exc:  # permission, I/O error, a loop of links: the node's to fix
        raise FailedPrecondition(f"cannot stat {name}: {exc}") from exc


def _block_size_of_open(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _is_zero(fd: int, offset: int, length: int) -> bool:
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(end - offset, _ZERO_CHUNK), offset)
        if not chunk:
            break
        if chunk != bytes(len(chunk)):
            return False
        offset += len(chunk)
    return True


@contextmanager
def cache_kept(device: Path) -> Iterator[None]:
    """Keep `device` open, read-only and not exclusively, while the block runs: the kernel
    drops a block device's page cache at its last close, so what the blank check read stays
    in memory for mkfs, whose own look at the device (mke2fs probes it too) reads it again.
    mkfs's exclusive open is not hindered; its writes go through the same page cache (or, if
    direct, invalidate what is cached), so nothing stale is ever read."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield  # the checks inside the block say what is wrong with the device
        return
    try:
        yield
    finally:
        os.close(fd)


def _superblock_magic(fstype: str) -> tuple[int, bytes]:
    """Where mkfs writes the magic of `fstype`, and what it is."""
    return _XFS_MAGIC if fstype == "xfs" else _EXT_MAGIC


class Filesystems:
    def __init__(
        self, runner: CommandRunner | None = None, *, allow_files: bool = False,
        signatures: SignatureReader | None = None,
    ) -> None:
        self.runner = runner or CommandRunner()
        # Unit tests probe plain files; in production anything but a block device is refused.
        self.allow_files = allow_files
        self.signatures = signatures or default_reader(self.runner)

    def _check_device(self, device: Path) -> None:
        st = _stat(device, f"device {device}")
        if not stat.S_ISBLK(st.st_mode) and not (self.allow_files and stat.S_ISREG(st.st_mode)):
            raise FailedPrecondition(f"{device} is not a block device")

    def probe(self, device: Path, deadline: Deadline | None = None) -> Probe:
        # blkid also answers "nothing found" for a missing device: check it exists first.
        self._check_device(device)
        # The zero check comes first and its descriptor stays open during the signature probe:
        # the kernel drops a block device's page cache at its last close, and kept, the probe
        # reads from memory most of what the zero check has just read. (Run at once, the two
        # queue behind each other's cold reads and take longer.)
        fd = self._open(device)
        try:
            ends_are_zero = self._ends_are_zero(fd, device)
            found = self.signatures.read(device, deadline)
        finally:
            os.close(fd)
        signatures = dict(found.values)
        if found.ambivalent:
            signatures.setdefault("AMBIVALENT", "several signatures found")
        if found.unexplained is not None and not signatures:
            # The probe said "found" but reported nothing we understand: be conservative.
            signatures["UNPARSED"] = found.unexplained
        unknown = not signatures and not ends_are_zero
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

    @staticmethod
    def _open(device: Path) -> int:
        try:
            return os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"device {device} does not exist") from None
        except OSError as exc:
            raise FailedPrecondition(f"cannot open {device} to read it: {exc}") from exc

    @staticmethod
    def _ends_are_zero(fd: int, device: Path) -> bool:
        try:
            size = _block_size_of_open(fd)
            head = min(size, ZERO_CHECK_BYTES)
            tail_start = max(head, size - ZERO_CHECK_BYTES)
            # Ask for both ends at once: the device reads them side by side instead of one
            # readahead window after the other.
            os.posix_fadvise(fd, 0, head, os.POSIX_FADV_WILLNEED)
            os.posix_fadvise(fd, tail_start, size - tail_start, os.POSIX_FADV_WILLNEED)
            return _is_zero(fd, 0, head) and _is_zero(fd, tail_start, size - tail_start)
        except OSError as exc:
            raise FailedPrecondition(
                f"cannot read {device} to check it is blank: {exc}"
            ) from exc

    def _holds_magic(self, device: Path, fstype: str) -> bool:
        offset, magic = _superblock_magic(fstype)
        fd = self._open(device)
        try:
            return os.pread(fd, len(magic), offset) == magic
        except OSError as exc:
            raise FailedPrecondition(f"cannot read {device} after mkfs: {exc}") from exc
        finally:
            os.close(fd)

    def make(
        self, device: Path, fstype: str, deadline: Deadline | None = None, *,
        probed: Probe | None = None,
    ) -> None:
        """Create a filesystem on a blank device, then check that mkfs made it. `probed` is the
        caller's probe of the device, taken just before under the same per-volume lock; without
        one, the device is probed here."""
        check_fstype(fstype)
        before = probed if probed is not None else self.probe(device, deadline)
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
        # mkfs said it succeeded; its superblock's magic says it really wrote (a full probe
        # would cost as much as mkfs itself).
        if not self._holds_magic(device, fstype):
            raise InternalError(
                f"mkfs of {device} as {fstype} succeeded but the device holds no {fstype} "
                "superblock afterwards"
            )

    def grow(
        self, device: Path, mount_point: Path, fstype: str, deadline: Deadline | None = None
    ) -> None:
        """Grow a mounted filesystem to fill its (already rescanned) device."""
        check_fstype(fstype)
        # xfs grows only while mounted, via its mount point; resize2fs grows ext3/4 online.
        argv = ["xfs_growfs", str(mount_point)] if fstype == "xfs" else ["resize2fs", str(device)]
        log.info("growing %s filesystem on %s", fstype, device)
        with explaining(doing=f"grow the {fstype} filesystem on {device}", device=device,
                        fstype=fstype, reasons=GROW_REASONS):
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
            return VolumeStats(size, 0, 0, 0, 0, 0, block_device=True)
        vfs = os.statvfs(path)
    except OSError as exc:  # an I/O error of a failing or detached disk, say
        raise FailedPrecondition(f"cannot read usage of {path}: {exc}") from exc
    return VolumeStats(
        total_bytes=vfs.f_blocks * vfs.f_frsize,
        available_bytes=vfs.f_bavail * vfs.f_frsize,
        used_bytes=(vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize,
        total_inodes=vfs.f_files,
        free_inodes=vfs.f_ffree,
        used_inodes=vfs.f_files - vfs.f_ffree,
    )
