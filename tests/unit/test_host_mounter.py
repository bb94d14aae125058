"""Mounter logic against a fake kernel: a mountinfo file that fake mount/umount commands edit."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition, InvalidArgument, NotFound
from cinder_csi.host.mounter import Mounter
from cinder_csi.host.mountinfo import MountTable
from tests.unit.host_fakes import FakeRunner, command_filesystems, write_superblock_magic


class FakeKernel:
    def __init__(self, root: Path) -> None:
        self.mountinfo = root / "mountinfo"
        self.sys = root / "sys"
        (self.sys / "dev" / "block" / "253:16").mkdir(parents=True)  # vdb exists
        self.lines = [f"1 0 8:1 / {root} rw - ext4 /dev/sda1 rw"]
        # Plain files stand in for devices; being no block devices, they match by source path.
        self.vdb = root / "vdb"
        self.vdb.write_bytes(bytes(1024 * 1024))
        self.busy = False
        self.next_id = 100
        self.fstype_on_disk: str | None = None
        self.runner = FakeRunner(self.handle)
        self.save()

    def save(self) -> None:
        self.mountinfo.write_text("\n".join(self.lines) + "\n")

    def add(self, source: str, target: str, fstype: str, opts: str = "rw", root: str = "/") -> None:
        self.next_id += 1
        mm = "253:16" if source == str(self.vdb) else "253:32"
        self.lines.append(f"{self.next_id} 1 {mm} {root} {target} {opts} - {fstype} {source} rw")
        self.save()

    def handle(self, argv: tuple[str, ...]) -> tuple[int, str, str] | None:
        if argv[0] == "mount" and argv[1] == "-t":
            opts = argv[4].split(",") if argv[3] == "-o" else []
            mode = "ro" if "ro" in opts else "rw"
            self.add(argv[-2], argv[-1], argv[2], ",".join([mode, *(o for o in opts if o != mode)]))
        elif argv[0] == "umount":
            if self.busy and "-l" not in argv:
                return (32, "", f"umount: {argv[-1]}: target is busy.")
            self.lines = [ln for ln in self.lines if f" {argv[-1]} " not in ln]
            self.save()
        elif argv[0] == "blkid":
            return (0, f"TYPE={self.fstype_on_disk}\n", "") if self.fstype_on_disk else (2, "", "")
        elif argv[0].startswith("mkfs."):
            self.fstype_on_disk = argv[0].split(".")[1]
            write_superblock_magic(self.vdb, self.fstype_on_disk)
        return None

    def mounter(self) -> Mounter:
        return Mounter(
            runner=self.runner,
            table=MountTable(self.mountinfo),
            filesystems=command_filesystems(self.runner),
            sys_root=self.sys,
        )


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path)


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "target"
    path.mkdir()
    return path


def test_mount_then_same_mount_is_a_no_op(kernel: FakeKernel, target: Path) -> None:
    m = kernel.mounter()
    m.mount(kernel.vdb, target, "ext4", ["noatime"])
    m.mount(kernel.vdb, target, "ext4", ["noatime"])
    assert kernel.runner.commands() == [f"mount -t ext4 -o noatime {kernel.vdb} {target}"]


def test_other_source_at_target_is_refused(kernel: FakeKernel, target: Path) -> None:
    kernel.add("/dev/vdc", str(target), "ext4")
    with pytest.raises(FailedPrecondition, match="/dev/vdc"):
        kernel.mounter().mount(kernel.vdb, target, "ext4")
    assert kernel.runner.calls == []


def test_same_source_other_fstype_or_mode_is_refused(kernel: FakeKernel, target: Path) -> None:
    kernel.add(str(kernel.vdb), str(target), "ext4")
    m = kernel.mounter()
    with pytest.raises(FailedPrecondition, match="as ext4, not xfs"):
        m.mount(kernel.vdb, target, "xfs")
    with pytest.raises(FailedPrecondition, match="read-write"):
        m.mount(kernel.vdb, target, "ext4", ["ro"])


def test_operation_options_are_refused(kernel: FakeKernel, target: Path) -> None:
    with pytest.raises(InvalidArgument, match="remount"):
        kernel.mounter().mount(kernel.vdb, target, "ext4", ["remount", "rw"])


def test_missing_mount_point(kernel: FakeKernel, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="mount point"):
        kernel.mounter().mount(kernel.vdb, tmp_path / "nope", "ext4")


def test_unmount_not_mounted_is_a_no_op(kernel: FakeKernel, target: Path) -> None:
    kernel.mounter().unmount(target)
    kernel.mounter().unmount(target / "never-existed")
    assert kernel.runner.calls == []


def test_unmount_peels_stacked_mounts(kernel: FakeKernel, target: Path) -> None:
    kernel.add(str(kernel.vdb), str(target), "ext4")
    kernel.add(str(kernel.vdb), str(target), "ext4")
    kernel.mounter().unmount(target)
    assert not MountTable(kernel.mountinfo).is_mounted(target)


def test_busy_unmount_with_device_present_is_refused_not_lazy(
    kernel: FakeKernel, target: Path
) -> None:
    kernel.add(str(kernel.vdb), str(target), "ext4")
    kernel.busy = True
    with pytest.raises(FailedPrecondition, match="in use"):
        kernel.mounter().unmount(target)
    assert kernel.runner.commands() == [f"umount {target}"]


def test_vanished_device_is_detached_lazily(
    kernel: FakeKernel, target: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kernel.add("/dev/vdc", str(target), "ext4")  # 253:32: no /sys/dev/block entry
    kernel.busy = True
    kernel.mounter().unmount(target)
    assert kernel.runner.commands() == [f"umount {target}", f"umount -l {target}"]
    assert "lazily" in caplog.text


def test_format_and_mount_formats_a_blank_device(kernel: FakeKernel, target: Path) -> None:
    dev = kernel.vdb
    kernel.mounter().format_and_mount(dev, target, "xfs", [], Deadline.after(5))
    cmds = kernel.runner.commands()
    assert [c for c in cmds if c.startswith("mkfs")] == [f"mkfs.xfs -K -q {kernel.vdb}"]
    assert cmds[-1] == f"mount -t xfs {kernel.vdb} {target}"


def test_format_and_mount_never_reformats(kernel: FakeKernel, target: Path) -> None:
    kernel.fstype_on_disk = "ext4"
    with pytest.raises(FailedPrecondition, match="ext4 filesystem, but xfs was requested"):
        kernel.mounter().format_and_mount(kernel.vdb, target, "xfs", [], Deadline.after(5))
    assert [c for c in kernel.runner.calls if c[0] != "blkid"] == []


def test_format_and_mount_existing_same_type_just_mounts(kernel: FakeKernel, target: Path) -> None:
    kernel.fstype_on_disk = "ext4"
    kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", [], Deadline.after(5))
    assert not any(c.startswith("mkfs") for c in kernel.runner.commands())


def test_format_and_mount_when_already_mounted_probes_nothing(
    kernel: FakeKernel, target: Path
) -> None:
    kernel.add(str(kernel.vdb), str(target), "ext4")
    kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", [], Deadline.after(5))
    assert kernel.runner.calls == []


def test_format_and_mount_unsupported_type(kernel: FakeKernel, target: Path) -> None:
    with pytest.raises(InvalidArgument):
        kernel.mounter().format_and_mount(kernel.vdb, target, "zfs", [], Deadline.after(5))


def test_format_and_mount_refuses_a_forbidden_option_before_touching_the_device(
    kernel: FakeKernel, target: Path
) -> None:
    with pytest.raises(InvalidArgument, match="bind"):
        kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", ["bind"], Deadline.after(5))
    assert kernel.runner.calls == []  # no probe, no mkfs


def test_format_and_mount_of_a_blank_device_runs_only_mkfs_and_mount(
    kernel: FakeKernel, target: Path
) -> None:
    kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", [], Deadline.after(5))
    assert [c[0] for c in kernel.runner.calls] == ["blkid", "mkfs.ext4", "mount"]


class NotTheVolume(FailedPrecondition):
    pass


def _failing_proof(after: float = 0.0) -> Callable[[], None]:
    def proof() -> None:
        time.sleep(after)
        raise NotTheVolume("device is not volume v-1")
    return proof


@pytest.mark.parametrize("after", [0.0, 0.2])
def test_format_and_mount_neither_formats_nor_mounts_when_the_proof_fails(
    kernel: FakeKernel, target: Path, after: float
) -> None:
    """The proof runs alongside the blank check; slow or quick, its failure stops everything
    that would write."""
    with pytest.raises(NotTheVolume):
        kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", [], Deadline.after(5),
                                          proof=_failing_proof(after))
    assert [c[0] for c in kernel.runner.calls] == ["blkid"]  # the read-only probe, nothing else
    assert kernel.vdb.read_bytes() == bytes(1024 * 1024)
    assert not MountTable(kernel.mountinfo).is_mounted(target)


def test_format_and_mount_with_a_proof_that_passes(kernel: FakeKernel, target: Path) -> None:
    proved = []
    kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", [], Deadline.after(5),
                                      proof=lambda: proved.append(True))
    assert proved == [True]
    assert [c[0] for c in kernel.runner.calls] == ["blkid", "mkfs.ext4", "mount"]


def test_format_and_mount_checks_the_proof_when_already_mounted(
    kernel: FakeKernel, target: Path
) -> None:
    kernel.add(str(kernel.vdb), str(target), "ext4")
    with pytest.raises(NotTheVolume):
        kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", [], Deadline.after(5),
                                          proof=_failing_proof())
    assert kernel.runner.calls == []


def test_a_refused_probe_stops_everything_even_when_the_proof_passes(
    kernel: FakeKernel, target: Path
) -> None:
    kernel.vdb.write_bytes(b"\x01" + bytes(1024 * 1024 - 1))  # data no probe knows
    with pytest.raises(FailedPrecondition, match="non-zero data"):
        kernel.mounter().format_and_mount(kernel.vdb, target, "ext4", [], Deadline.after(5),
                                          proof=lambda: None)
    assert [c[0] for c in kernel.runner.calls] == ["blkid"]
