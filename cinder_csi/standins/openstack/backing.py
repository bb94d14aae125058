"""Sparse files that hold the bytes of volumes and snapshots."""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1024**3
_CHUNK = 4 * 1024 * 1024


def create(path: Path, size_gib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size_gib * GIB)


def grow(path: Path, size_gib: int) -> None:
    with path.open("r+b") as f:
        f.truncate(size_gib * GIB)


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def copy(source: Path, target: Path, size_gib: int) -> None:
    """Copy only the data extents of `source`, so the copy stays sparse, then size it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open("rb") as src, target.open("wb") as dst:
        end = os.fstat(src.fileno()).st_size
        offset = 0
        while offset < end:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data past offset
                break
            stop = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            _copy_range(src.fileno(), dst.fileno(), start, stop)
            offset = stop
        dst.truncate(max(size_gib * GIB, end))


def _copy_range(src: int, dst: int, start: int, stop: int) -> None:
    position = start
    while position < stop:
        chunk = os.pread(src, min(_CHUNK, stop - position), position)
        if not chunk:
            return
        os.pwrite(dst, chunk, position)
        position += len(chunk)
