from __future__ import annotations

import os
from pathlib import Path

import pytest

from cinder_csi.errors import (
    CommandFailed,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
)
from cinder_csi.host.filesystems import Filesystems, Probe, stats
from tests.unit.host_fakes import FakeRunner

MIB = 1024 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    with path.open("wb") as f:
        f.truncate(8 * MIB)
    return path


def blkid(rc: int, out: str = "") -> FakeRunner:
    return FakeRunner(lambda argv: (rc, out, "") if argv[0] == "blkid" else None)


def test_blank_device(disk: Path) -> None:
    found = Filesystems(blkid(2), allow_files=True).probe(disk)
    assert found == Probe(fstype=None, has_partition_table=False)
    assert found.blank


def test_filesystem(disk: Path) -> None:
    out = f"DEVNAME={disk}\nUUID=1234\nTYPE=ext4\nUSAGE=filesystem\n"
    found = Filesystems(blkid(0, out), allow_files=True).probe(disk)
    assert found.fstype == "ext4" and not found.has_partition_table and not found.blank
    assert "DEVNAME" not in found.signatures


def test_partition_table(disk: Path) -> None:
    found = Filesystems(blkid(0, "PTUUID=ab\nPTTYPE=gpt\n"), allow_files=True).probe(disk)
    assert found.fstype is None and found.has_partition_table and not found.blank
    assert "gpt partition table" in found.describe()


@pytest.mark.parametrize("out", ["PART_ENTRY_SCHEME=dos\n", "UUID=x\n", "garbage\n"])
def test_any_signature_is_not_blank(disk: Path, out: str) -> None:
    assert not Filesystems(blkid(0, out), allow_files=True).probe(disk).blank


def test_ambivalent_is_not_blank(disk: Path) -> None:
    found = Filesystems(blkid(8), allow_files=True).probe(disk)
    assert not found.blank and "AMBIVALENT" in found.signatures


def test_blkid_error_is_not_mistaken_for_blank(disk: Path) -> None:
    with pytest.raises(CommandFailed, match="exit code 4"):
        Filesystems(blkid(4), allow_files=True).probe(disk)


@pytest.mark.parametrize("offset", [0, 512 * 1024, 8 * MIB - 1])
def test_unknown_data_at_either_end_is_not_blank(disk: Path, offset: int) -> None:
    with disk.open("r+b") as f:
        f.seek(offset)
        f.write(b"\x01")
    found = Filesystems(blkid(2), allow_files=True).probe(disk)
    assert found.unknown_data and not found.blank
    assert "unknown format" in found.describe()


def test_missing_device_is_not_found_not_blank(tmp_path: Path) -> None:
    runner = blkid(2)
    with pytest.raises(NotFound):
        Filesystems(runner, allow_files=True).probe(tmp_path / "nope")
    assert runner.calls == []


def test_regular_file_refused_in_production(disk: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not a block device"):
        Filesystems(blkid(2)).probe(disk)


class Mkfs:
    """blkid answers blank until mkfs ran, then the new type."""

    def __init__(self, result_type: str) -> None:
        self.made = False
        self.result_type = result_type
        self.runner = FakeRunner(self.handle)

    def handle(self, argv: tuple[str, ...]) -> tuple[int, str, str] | None:
        if argv[0] == "blkid":
            return (0, f"TYPE={self.result_type}\n", "") if self.made else (2, "", "")
        if argv[0].startswith("mkfs."):
            self.made = True
        return None


@pytest.mark.parametrize(
    ("fstype", "argv"),
    [
        ("ext4", "mkfs.ext4 -q -E nodiscard,lazy_itable_init=1 {d}"),
        ("ext3", "mkfs.ext3 -q -E nodiscard,lazy_itable_init=1 {d}"),
        ("xfs", "mkfs.xfs -K -q {d}"),
    ],
)
def test_make_runs_mkfs_without_discard_or_force(disk: Path, fstype: str, argv: str) -> None:
    fake = Mkfs(fstype)
    Filesystems(fake.runner, allow_files=True).make(disk, fstype)
    assert [c for c in fake.runner.commands() if c.startswith("mkfs")] == [argv.format(d=disk)]
    assert fake.runner.commands()[-1].startswith("blkid")  # confirmed afterwards


def test_make_refuses_a_device_that_is_not_blank(disk: Path) -> None:
    runner = blkid(0, "TYPE=ext4\n")
    with pytest.raises(FailedPrecondition, match=r"refusing to format.*ext4"):
        Filesystems(runner, allow_files=True).make(disk, "xfs")
    assert not any(c[0].startswith("mkfs") for c in runner.calls)


def test_make_notices_mkfs_that_did_nothing(disk: Path) -> None:
    with pytest.raises(InternalError, match="now holds"):
        Filesystems(Mkfs("swap").runner, allow_files=True).make(disk, "ext4")


@pytest.mark.parametrize("fstype", ["btrfs", "ntfs", "", "ext4 -F"])
def test_unsupported_fstype(disk: Path, fstype: str) -> None:
    runner = blkid(2)
    with pytest.raises(InvalidArgument, match="unsupported"):
        Filesystems(runner, allow_files=True).make(disk, fstype)
    assert runner.calls == []


def test_grow_commands(tmp_path: Path) -> None:
    runner = FakeRunner()
    fs = Filesystems(runner)
    fs.grow(Path("/dev/vdb"), tmp_path, "ext4")
    fs.grow(Path("/dev/vdc"), tmp_path, "xfs")
    assert runner.commands() == ["resize2fs /dev/vdb", f"xfs_growfs {tmp_path}"]


DUMPE2FS = "Filesystem volume name:   <none>\nBlock count:              262144\n" \
           "Reserved block count:     13107\nBlock size:               4096\n"
XFS_INFO = ("meta-data=/dev/vdb isize=512    agcount=4, agsize=65536 blks\n"
            "         =                       sectsz=512   attr=2, projid32bit=1\n"
            "data     =                       bsize=4096   blocks=262144, imaxpct=25\n"
            "naming   =version 2              bsize=4096   ascii-ci=0, ftype=1\n")


def size_runner() -> FakeRunner:
    def answer(argv: tuple[str, ...]) -> tuple[int, str, str] | None:
        if argv[0] == "dumpe2fs":
            return 0, DUMPE2FS, "dumpe2fs 1.47.0 (5-Feb-2023)\n"
        if argv[0] == "xfs_info":
            return 0, XFS_INFO, ""
        return None
    return FakeRunner(answer)


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_filesystem_size_is_its_block_count(tmp_path: Path, fstype: str) -> None:
    assert Filesystems(size_runner()).size(Path("/dev/vdb"), tmp_path, fstype) == 1024 * MIB


@pytest.mark.parametrize(("fstype", "grow"), [("ext4", "resize2fs /dev/vdb"),
                                              ("xfs", "xfs_growfs {mnt}")])
def test_grow_to_device_grows_only_a_smaller_filesystem(
    tmp_path: Path, fstype: str, grow: str
) -> None:
    runner = size_runner()
    fs = Filesystems(runner)
    assert not fs.grow_to_device(Path("/dev/vdb"), tmp_path, fstype, 1024 * MIB)
    assert not fs.grow_to_device(Path("/dev/vdb"), tmp_path, fstype, 1024 * MIB + 4096)
    assert grow.format(mnt=tmp_path) not in runner.commands()
    assert fs.grow_to_device(Path("/dev/vdb"), tmp_path, fstype, 2048 * MIB)
    assert runner.commands()[-1] == grow.format(mnt=tmp_path)


def test_unreadable_filesystem_size_is_internal(tmp_path: Path) -> None:
    runner = FakeRunner(lambda argv: (0, "garbage", ""))
    with pytest.raises(InternalError, match="size of the ext4"):
        Filesystems(runner).size(Path("/dev/vdb"), tmp_path, "ext4")


def test_stats_of_a_directory(tmp_path: Path) -> None:
    s = stats(tmp_path)
    vfs = os.statvfs(tmp_path)
    assert s.total_bytes == vfs.f_blocks * vfs.f_frsize > 0
    assert 0 <= s.available_bytes <= s.total_bytes
    assert 0 <= s.used_bytes <= s.total_bytes
    assert s.used_inodes == s.total_inodes - s.free_inodes


def test_stats_of_missing_path(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        stats(tmp_path / "gone")
