"""The low-level signature probe of a device: what `blkid -p -o export` reports.

Two readers give the same answer. `LibblkidSignatures` asks libblkid (the library the blkid
program is a front end of) in this process, with the probing the program's -p mode sets up:
superblocks (label, UUID, type, secondary type, usage, version) and partition tables with entry
details, through blkid_do_safeprobe, which also reports "ambivalent" when several signatures
compete. It asks one more thing than the program: to report superblocks whose checksum is bad
(a damaged filesystem still holds data), so it finds at least what `blkid -p` finds. It saves
the program's fork and exec, which cost more than mkfs itself on a loaded node.
`BlkidCommandSignatures` runs the program; it is used where libblkid cannot be loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition, InternalError, NotFound
from cinder_csi.host.commands import CommandRunner

log = logging.getLogger(__name__)

# blkid.h: superblock chain flags.
_SUBLKS_LABEL = 1 << 1
_SUBLKS_UUID = 1 << 3
_SUBLKS_TYPE = 1 << 5
_SUBLKS_SECTYPE = 1 << 6
_SUBLKS_USAGE = 1 << 7
_SUBLKS_VERSION = 1 << 8
_SUBLKS_BADCSUM = 1 << 10
SUPERBLOCK_FLAGS = (_SUBLKS_LABEL | _SUBLKS_UUID | _SUBLKS_TYPE | _SUBLKS_SECTYPE
                    | _SUBLKS_USAGE | _SUBLKS_VERSION | _SUBLKS_BADCSUM)
# blkid.h: partition chain flag for PART_ENTRY_* values.
PARTITION_FLAGS = 1 << 2
# blkid_do_safeprobe's answers.
_FOUND, _NOTHING, _AMBIVALENT = 0, 1, -2
# Exit codes of blkid(8): 2 = nothing identified, 8 = ambivalent (several signatures).
_BLKID_NOTHING = 2
_BLKID_AMBIVALENT = 8


@dataclass(frozen=True)
class Found:
    """Every NAME=value the probe reported (without DEVNAME), and whether it was ambivalent."""

    values: dict[str, str] = field(default_factory=dict)
    ambivalent: bool = False
    # The probe said "found" but gave no value: something is there all the same.
    unexplained: str | None = None


class SignatureReader(Protocol):
    def read(self, device: Path, deadline: Deadline | None = None) -> Found: ...


class BlkidCommandSignatures:
    """`blkid -p -o export <device>`."""

    def __init__(self, runner: CommandRunner) -> None:
        self.runner = runner

    def read(self, device: Path, deadline: Deadline | None = None) -> Found:
        result = self.runner.run(
            ["blkid", "-p", "-o", "export", str(device)],
            deadline=deadline,
            ok_codes=(0, _BLKID_NOTHING, _BLKID_AMBIVALENT),
        )
        values: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep and key != "DEVNAME":
                values[key] = value
        unexplained = None
        if result.returncode == 0 and not values:
            unexplained = result.stdout.strip() or "(empty)"
        return Found(values, result.returncode == _BLKID_AMBIVALENT, unexplained)


class LibblkidSignatures:
    """libblkid's low-level probe, in this process (see the module's docstring)."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self.lib = library
        lib = library
        lib.blkid_new_probe_from_filename.restype = ctypes.c_void_p
        lib.blkid_new_probe_from_filename.argtypes = [ctypes.c_char_p]
        for name in ("blkid_probe_enable_superblocks", "blkid_probe_set_superblocks_flags",
                     "blkid_probe_enable_partitions", "blkid_probe_set_partitions_flags"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_int]
        for name in ("blkid_do_safeprobe", "blkid_probe_numof_values"):
            getattr(lib, name).restype = ctypes.c_int
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        lib.blkid_probe_get_value.restype = ctypes.c_int
        lib.blkid_probe_get_value.argtypes = [
            ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
        lib.blkid_free_probe.restype = None
        lib.blkid_free_probe.argtypes = [ctypes.c_void_p]

    @classmethod
    def load(cls) -> LibblkidSignatures | None:
        """The reader, or None when libblkid (or a function it needs) is not there."""
        name = ctypes.util.find_library("blkid") or "libblkid.so.1"
        try:
            return cls(ctypes.CDLL(name, use_errno=True))
        except (OSError, AttributeError) as exc:
            log.info("libblkid not usable (%s); probing devices with the blkid program", exc)
            return None

    def read(self, device: Path, deadline: Deadline | None = None) -> Found:
        lib = self.lib
        probe = lib.blkid_new_probe_from_filename(os.fsencode(device))
        if not probe:
            code = ctypes.get_errno()
            if code == errno.ENOENT:
                raise NotFound(f"device {device} does not exist")
            raise FailedPrecondition(f"cannot open {device} to probe it: {os.strerror(code)}")
        try:
            for setup, argument in ((lib.blkid_probe_enable_superblocks, 1),
                                    (lib.blkid_probe_set_superblocks_flags, SUPERBLOCK_FLAGS),
                                    (lib.blkid_probe_enable_partitions, 1),
                                    (lib.blkid_probe_set_partitions_flags, PARTITION_FLAGS)):
                if setup(probe, argument) != 0:
                    raise InternalError(f"libblkid refused to set up a probe of {device}")
            answer = lib.blkid_do_safeprobe(probe)
            if answer not in (_FOUND, _NOTHING, _AMBIVALENT):
                raise FailedPrecondition(
                    f"cannot probe {device} for signatures (libblkid error {answer}); is the "
                    "device readable?")
            values = self._values(probe)
        finally:
            lib.blkid_free_probe(probe)
        unexplained = "(no value)" if answer == _FOUND and not values else None
        return Found(values, answer == _AMBIVALENT, unexplained)

    def _values(self, probe: int) -> dict[str, str]:
        values: dict[str, str] = {}
        name, data, size = ctypes.c_char_p(), ctypes.c_char_p(), ctypes.c_size_t()
        for index in range(self.lib.blkid_probe_numof_values(probe)):
            if self.lib.blkid_probe_get_value(probe, index, ctypes.byref(name),
                                              ctypes.byref(data), ctypes.byref(size)) != 0:
                continue
            key = (name.value or b"").decode(errors="replace")
            values[key] = (data.value or b"").decode(errors="replace")
        return values


def default_reader(runner: CommandRunner) -> SignatureReader:
    """libblkid in this process when it loads, else the blkid program."""
    return LibblkidSignatures.load() or BlkidCommandSignatures(runner)
