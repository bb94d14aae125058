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
from cinder_csi.host.filesystems import Filesystems, Probe, cache_kept, stats
from tests.unit.host_fakes import FakeRunner, command_filesystems, write_superblock_magic

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
    found = command_filesystems(blkid(2)).probe(disk)
    assert found == Probe(fstype=None, has_partition_table=False)
    assert found.blank


def test_filesystem(disk: Path) -> None:
    out = f"DEVNAME={disk}\nUUID=1234\nTYPE=ext4\nUSAGE=filesystem\n"
    found = command_filesystems(blkid(0, out)).probe(disk)
    assert found.fstype == "ext4" and not found.has_partition_table and not found.blank
    assert "DEVNAME" not in found.signatures


def test_partition_table(disk: Path) -> None:
    found = command_filesystems(blkid(0, "PTUUID=ab\nPTTYPE=gpt\n")).probe(disk)
    assert found.fstype is None and found.has_partition_table and not found.blank
    assert "gpt partition table" in found.describe()


@pytest.mark.parametrize("out", ["PART_ENTRY_SCHEME=dos\n", "UUID=x\n", "garbage\n"])
def test_any_signature_is_not_blank(disk: Path, out: str) -> None:
    assert not command_filesystems(blkid(0, out)).probe(disk).blank


def test_ambivalent_is_not_blank(disk: Path) -> None:
    found = command_filesystems(blkid(8)).probe(disk)
    assert not found.blank and "AMBIVALENT" in found.signatures


def test_blkid_error_is_not_mistaken_for_blank(disk: Path) -> None:
    with pytest.raises(CommandFailed, match="exit code 4"):
        command_filesystems(blkid(4)).probe(disk)


@pytest.mark.parametrize("offset", [0, 512 * 1024, 8 * MIB - 1])
def test_unknown_data_at_either_end_is_not_blank(disk: Path, offset: int) -> None:
    with disk.open("r+b") as f:
        f.seek(offset)
        f.write(b"\x01")
    found = command_filesystems(blkid(2)).probe(disk)
    assert found.unknown_data and not found.blank
    assert "unknown format" in found.describe()


def test_missing_device_is_not_found_not_blank(tmp_path: Path) -> None:
    runner = blkid(2)
    with pytest.raises(NotFound):
        command_filesystems(runner).probe(tmp_path / "nope")
    assert runner.calls == []


def test_regular_file_refused_in_production(disk: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not a block device"):
        Filesystems(blkid(2)).probe(disk)


class Mkfs:
    """blkid answers blank; mkfs writes the superblock magic of `writes` (None: nothing)."""

    def __init__(self, disk: Path, writes: str | None) -> None:
        self.disk = disk
        self.writes = writes
        self.runner = FakeRunner(self.handle)

    def handle(self, argv: tuple[str, ...]) -> tuple[int, str, str] | None:
        if argv[0] == "blkid":
            return (2, "", "")
        if argv[0].startswith("mkfs.") and self.writes:
            write_superblock_magic(self.disk, self.writes)
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
    fake = Mkfs(disk, fstype)
    command_filesystems(fake.runner).make(disk, fstype)
    assert fake.runner.commands() == [f"blkid -p -o export {disk}", argv.format(d=disk)]


def test_make_takes_the_callers_probe_instead_of_probing_again(disk: Path) -> None:
    fake = Mkfs(disk, "ext4")
    filesystems = command_filesystems(fake.runner)
    probed = filesystems.probe(disk)
    fake.runner.calls.clear()
    filesystems.make(disk, "ext4", probed=probed)
    assert [c[0] for c in fake.runner.calls] == ["mkfs.ext4"]


def test_make_refuses_when_the_callers_probe_found_something(disk: Path) -> None:
    runner = blkid(2)
    found = Probe(fstype="crypto_LUKS", has_partition_table=False,
                  signatures={"TYPE": "crypto_LUKS"})
    with pytest.raises(FailedPrecondition, match=r"refusing to format.*crypto_LUKS"):
        command_filesystems(runner).make(disk, "ext4", probed=found)
    assert runner.calls == []


def test_make_refuses_a_device_that_is_not_blank(disk: Path) -> None:
    runner = blkid(0, "TYPE=ext4\n")
    with pytest.raises(FailedPrecondition, match=r"refusing to format.*ext4"):
        command_filesystems(runner).make(disk, "xfs")
    assert not any(c[0].startswith("mkfs") for c in runner.calls)


@pytest.mark.parametrize("writes", [None, "xfs"])
def test_make_notices_mkfs_that_did_not_make_the_filesystem(disk: Path, writes: str | None
                                                            ) -> None:
    with pytest.raises(InternalError, match="holds no ext4 superblock"):
        command_filesystems(Mkfs(disk, writes).runner).make(disk, "ext4")


@pytest.mark.parametrize("fstype", ["btrfs", "ntfs", "", "ext4 -F"])
def test_unsupported_fstype(disk: Path, fstype: str) -> None:
    runner = blkid(2)
    with pytest.raises(InvalidArgument, match="unsupported"):
        command_filesystems(runner).make(disk, fstype)
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


def test_cache_kept_holds_the_device_open_read_only_for_the_block(tmp_path: Path) -> None:
    device = tmp_path / "vdb"
    device.write_bytes(bytes(4096))

    def open_on_device() -> list[str]:
        fds = Path("/proc/self/fd")
        found = []
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) == str(device):
                    found.append(fd.name)
            except OSError:
                continue
        return found

    with cache_kept(device):
        held = open_on_device()
        assert len(held) == 1
        fdinfo = (Path("/proc/self/fdinfo") / held[0]).read_text()
        flags = int(fdinfo.split("flags:")[1].split()[0], 8)
        assert flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_EXCL
    assert open_on_device() == []


def test_cache_kept_leaves_a_device_it_cannot_open_to_the_checks(tmp_path: Path) -> None:
    with cache_kept(tmp_path / "missing"):
        pass  # no error here: the probe inside reports the missing device
