"""The mount(2) system call through libc, for the plain mounts whose options it can express.

The `mount` program costs a fork and exec (3 - 6 ms) around the one system call it makes for a
plain ext4/xfs mount. `plan` translates mount options the way libmount does (flags such as ro,
nosuid, noatime become MS_* bits, in order, so that "ro,rw" is read-write; filesystem options
become the data string) and answers None for anything it does not know: an option libmount
handles in userspace (nofail, x-*, _netdev, user, loop, helper=, comment=, ...), an SELinux
context, a filesystem option outside the known lists. The caller then runs the program, as it
does for a device that is not a block device, a filesystem with a mount helper
(/sbin/mount.<type>), and every mount the kernel refuses: the program's own words explain the
refusal (host/refusals.py) and it retries a write-protected device read-only, as before.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# linux/mount.h
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1 << 10
MS_NODIRATIME = 1 << 11
MS_SILENT = 1 << 15
MS_RELATIME = 1 << 21
MS_I_VERSION = 1 << 23
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

# option -> (flag, set it?), as libmount's table of Linux mount flags has them.
_FLAG_OPTIONS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True), "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True), "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True), "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True), "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True), "nostrictatime": (MS_STRICTATIME, False),
    "lazytime": (MS_LAZYTIME, True), "nolazytime": (MS_LAZYTIME, False),
    "iversion": (MS_I_VERSION, True), "noiversion": (MS_I_VERSION, False),
    "silent": (MS_SILENT, True), "loud": (MS_SILENT, False),
}
# libmount maps "defaults" to no flag at all (rw, suid, dev, exec, async are the kernel's).
_NO_FLAG_OPTIONS = frozenset({"defaults"})
# Filesystem options the kernel itself parses (Documentation/filesystems/ext4.rst, xfs.rst),
# by name before any "="; passed on as the data string, as mount(8) does.
_DATA_OPTIONS: dict[str, frozenset[str]] = {
    "ext4": frozenset({
        "acl", "noacl", "user_xattr", "nouser_xattr", "errors", "data", "data_err", "barrier",
        "nobarrier", "commit", "discard", "nodiscard", "journal_checksum",
        "nojournal_checksum", "journal_async_commit", "noload", "norecovery", "delalloc",
        "nodelalloc", "auto_da_alloc", "noauto_da_alloc", "stripe", "max_batch_time",
        "min_batch_time", "journal_ioprio", "dioread_nolock", "dioread_lock",
        "block_validity", "noblock_validity", "inode_readahead_blks", "quota", "noquota",
        "usrquota", "grpquota", "prjquota", "jqfmt", "usrjquota", "grpjquota", "resuid",
        "resgid", "init_itable", "noinit_itable", "i_version", "dax", "nombcache", "grpid",
        "bsdgroups", "nogrpid", "sysvgroups", "bsddf", "minixdf",
    }),
    "xfs": frozenset({
        "nouuid", "allocsize", "attr2", "noattr2", "discard", "nodiscard", "grpid",
        "bsdgroups", "nogrpid", "sysvgroups", "filestreams", "ikeep", "noikeep", "inode32",
        "inode64", "largeio", "nolargeio", "logbufs", "logbsize", "noalign", "norecovery",
        "quota", "usrquota", "uquota", "uqnoenforce", "qnoenforce", "gquota", "grpquota",
        "gqnoenforce", "pquota", "prjquota", "pqnoenforce", "noquota", "sunit", "swidth",
        "swalloc", "wsync", "dax",
    }),
}
# Where libmount looks for a mount helper (/sbin/mount.<type>): it would run that instead.
HELPER_DIRS = ("/sbin", "/sbin/fs.d", "/sbin/fs")


@dataclass(frozen=True)
class MountPlan:
    flags: int
    data: str  # comma-separated filesystem options; "" for none


def plan(fstype: str, options: Sequence[str]) -> MountPlan | None:
    """The flags and data mount(8) would hand the kernel for a plain mount of `fstype` with
    `options`; None when an option is not one this module knows to be the kernel's."""
    known_data = _DATA_OPTIONS.get(fstype)
    if known_data is None:
        return None
    flags = 0
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            flag, on = _FLAG_OPTIONS[option]
            flags = flags | flag if on else flags & ~flag
        elif option in _NO_FLAG_OPTIONS:
            continue
        elif option.partition("=")[0] in known_data:
            data.append(option)
        else:
            return None
    return MountPlan(flags, ",".join(data))


def has_helper(fstype: str, dirs: Sequence[str] = HELPER_DIRS) -> bool:
    return any(os.path.exists(os.path.join(d, f"mount.{fstype}")) for d in dirs)


def is_block_device(path: str) -> bool:
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False


class MountCall:
    """libc's mount(2)."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._mount = libc.mount
        self._mount.restype = ctypes.c_int
        self._mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_char_p]

    @classmethod
    def load(cls) -> MountCall | None:
        """The call, or None where libc has no mount() (the program is used then)."""
        try:
            return cls(ctypes.CDLL(None, use_errno=True))
        except (OSError, AttributeError) as exc:
            log.info("mount(2) not callable (%s); mounting with the mount program", exc)
            return None

    def mount(self, source: str, target: str, fstype: str, plan: MountPlan) -> None:
        """One mount(2); OSError with the kernel's errno when it refuses."""
        data = plan.data.encode() if plan.data else None
        if self._mount(os.fsencode(source), os.fsencode(target), fstype.encode(), plan.flags,
                       data) != 0:
            code = ctypes.get_errno() or errno.EIO
            raise OSError(code, os.strerror(code), target)


def try_mount(call: MountCall | None, device: Path, target: Path, fstype: str,
              options: Sequence[str], *, helper_dirs: Sequence[str] = HELPER_DIRS) -> bool:
    """Mount with the system call when it can express the mount and the kernel takes it; False
    when the caller must run the `mount` program instead (nothing was mounted then)."""
    if call is None:
        return False
    steps = plan(fstype, options)
    # mount(8) canonicalises both paths; the mount table then shows the same source.
    source, where = os.path.realpath(device), os.path.realpath(target)
    if steps is None or not is_block_device(source) or has_helper(fstype, helper_dirs):
        return False
    try:
        call.mount(source, where, fstype, steps)
    except OSError as exc:
        log.info("mount(2) of %s (%s) at %s refused: %s; trying the mount program", source,
                 fstype, where, exc.strerror)
        return False
    return True
