"""The mount table, read from /proc/self/mountinfo (see proc(5)).

mountinfo, unlike `mount` output, is unambiguous: paths have spaces etc. octal-escaped, it gives
the root of bind mounts within their filesystem, and per-mount and per-superblock options apart.

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)    (10)         (11)
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cinder_csi.errors import InternalError

DEFAULT_MOUNTINFO = Path("/proc/self/mountinfo")


@dataclass(frozen=True)
class MountInfo:
    mount_id: int
    parent_id: int
    major_minor: str  # "8:16"; for bind mounts, the same as the mount they came from
    root: str  # path within the filesystem that is mounted here ("/" unless a bind mount)
    mount_point: str
    options: tuple[str, ...]  # per mount point: rw/ro, nosuid, noatime, ...
    optional_fields: tuple[str, ...]  # shared:N, master:N, ...
    fstype: str
    source: str
    super_options: tuple[str, ...]  # per superblock: rw/ro, errors=..., ...

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def unescape(field: str) -> str:
    """Undo the kernel's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    # Escapes stand for bytes; file names are decoded the way Python decodes them elsewhere.
    return "".join(out).encode("latin-1").decode(errors="surrogateescape")


def escape(path: str) -> str:
    """A path as mountinfo shows it: space, tab, newline and backslash octal-escaped."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def parse_line(line: str) -> MountInfo:
    fields = line.split(" ")
    try:
        sep = fields.index("-", 6)
        return MountInfo(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            major_minor=fields[2],
            root=unescape(fields[3]),
            mount_point=unescape(fields[4]),
            options=tuple(fields[5].split(",")),
            optional_fields=tuple(fields[6:sep]),
            fstype=unescape(fields[sep + 1]),
            source=unescape(fields[sep + 2]),
            super_options=tuple(fields[sep + 3].split(",")) if len(fields) > sep + 3 else (),
        )
    except (ValueError, IndexError):
        raise InternalError(f"cannot parse mountinfo line {line!r}") from None


def parse(text: str) -> list[MountInfo]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def normalize(path: str | os.PathLike[str]) -> str:
    # No symlink resolution: stat'ing below a mount whose device vanished can hang or fail,
    # and kubelet hands us canonical paths anyway.
    return os.path.normpath(os.path.abspath(os.fspath(path)))


def device_number(path: str | os.PathLike[str]) -> str | None:
    """'major:minor' of a block device node, or None if `path` is not one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


class MountTable:
    """Fresh reads of the mount table; nothing is cached because other processes mount too."""

    def __init__(self, path: Path = DEFAULT_MOUNTINFO) -> None:
        self.path = path

    def _text(self) -> str:
        try:
            return self.path.read_text(errors="surrogateescape")
        except OSError as exc:
            raise InternalError(f"cannot read the mount table {self.path}: {exc}") from exc

    def all(self) -> list[MountInfo]:
        return parse(self._text())

    def mounts_at(self, path: str | os.PathLike[str]) -> list[MountInfo]:
        """Mounts whose mount point is `path`, bottom first (the last one is visible)."""
        target = normalize(path)
        # Only lines holding the escaped path between spaces can be mounts at it: the others
        # (hundreds on a busy node) are not parsed.
        field = f" {escape(target)} "
        candidates = [parse_line(line) for line in self._text().splitlines() if field in line]
        return [m for m in candidates if m.mount_point == target]

    def is_mounted(self, path: str | os.PathLike[str]) -> bool:
        return bool(self.mounts_at(path))

    def find_by_source(self, device: str | os.PathLike[str]) -> list[MountInfo]:
        """Every mount of `device`, bind mounts included (matched by device number)."""
        number = device_number(device)
        if number is not None:
            return [m for m in self.all() if m.major_minor == number]
        wanted = {normalize(device), os.path.realpath(device)}
        return [m for m in self.all() if m.source in wanted]

    def containing(self, path: str | os.PathLike[str]) -> MountInfo | None:
        """The visible mount that holds `path` (longest mount point prefix, topmost)."""
        target = normalize(path)
        best: MountInfo | None = None
        for m in self.all():
            mp = m.mount_point
            inside = target == mp or target.startswith(mp.rstrip("/") + "/")
            if inside and (best is None or len(mp) >= len(best.mount_point)):
                best = m
        return best
