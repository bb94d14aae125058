"""mount(2) planning: which options become which MS_* flags, what goes to the kernel as data,
and when the mount program must run instead (a fake libc mount stands in for the kernel)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cinder_csi.host import mountcall
from cinder_csi.host.mountcall import (
    MS_NOATIME,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    MS_STRICTATIME,
    MountPlan,
    has_helper,
    plan,
    try_mount,
)


class FakeCall(mountcall.MountCall):
    """Records each mount(2); refuses with `errno_` when set."""

    def __init__(self, errno_: int = 0) -> None:
        self.calls: list[tuple[str, str, str, MountPlan]] = []
        self.errno = errno_

    def mount(self, source: str, target: str, fstype: str, plan: MountPlan) -> None:
        self.calls.append((source, target, fstype, plan))
        if self.errno:
            raise OSError(self.errno, os.strerror(self.errno), target)


@pytest.mark.parametrize(("options", "flags"), [
    ([], 0),
    (["ro"], MS_RDONLY),
    (["rw"], 0),
    (["ro", "rw"], 0),  # the last word wins, as with mount(8)
    (["rw", "ro"], MS_RDONLY),
    (["nosuid", "nodev", "noexec"], MS_NOSUID | MS_NODEV | MS_NOEXEC),
    (["noatime", "atime"], 0),
    (["relatime"], MS_RELATIME),
    (["strictatime", "noatime"], MS_STRICTATIME | MS_NOATIME),
    (["defaults"], 0),
    (["defaults", "ro"], MS_RDONLY),
])
def test_flag_options_become_ms_flags(options: list[str], flags: int) -> None:
    assert plan("ext4", options) == MountPlan(flags, "")


def test_filesystem_options_go_to_the_kernel_as_data_in_order() -> None:
    assert plan("ext4", ["errors=remount-ro", "ro", "data=ordered", "noatime"]) == MountPlan(
        MS_RDONLY | MS_NOATIME, "errors=remount-ro,data=ordered")
    assert plan("xfs", ["nouuid", "inode64", "logbufs=8"]) == MountPlan(
        0, "nouuid,inode64,logbufs=8")


@pytest.mark.parametrize("option", [
    "nofail", "_netdev", "x-systemd.automount", "X-mount.mkdir", "user", "users", "loop",
    "comment=kubelet", "helper=foo", "context=system_u:object_r:container_file_t:s0",
    "owner", "noauto", "made-up-option",
])
def test_options_the_kernel_does_not_parse_leave_it_to_the_program(option: str) -> None:
    assert plan("ext4", ["noatime", option]) is None
    assert plan("xfs", [option]) is None


def test_an_option_of_the_other_filesystem_is_not_passed_on() -> None:
    assert plan("ext4", ["nouuid"]) is None  # an xfs option: ext4 would refuse it
    assert plan("xfs", ["data=ordered"]) is None


def test_other_filesystems_are_left_to_the_program() -> None:
    assert plan("btrfs", []) is None
    assert plan("ext3", ["ro"]) is None


def test_a_mount_helper_sends_the_mount_to_the_program(tmp_path: Path) -> None:
    assert not has_helper("ext4", [str(tmp_path)])
    (tmp_path / "mount.ext4").touch()
    assert has_helper("ext4", [str(tmp_path)])


@pytest.fixture
def block_device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A path try_mount takes for a block device (unit tests have none)."""
    device = tmp_path / "vdb"
    device.touch()
    monkeypatch.setattr(mountcall, "is_block_device", lambda path: path == str(device))
    return device


def test_a_mount_it_can_express_is_one_system_call(block_device: Path, tmp_path: Path) -> None:
    call = FakeCall()
    assert try_mount(call, block_device, tmp_path, "xfs", ["nouuid", "ro"],
                     helper_dirs=[str(tmp_path / "none")])
    assert call.calls == [(str(block_device), str(tmp_path), "xfs", MountPlan(MS_RDONLY,
                                                                             "nouuid"))]


def test_paths_are_canonical_as_mount8_makes_them(block_device: Path, tmp_path: Path) -> None:
    link = tmp_path / "by-id-link"
    link.symlink_to(block_device)
    call = FakeCall()
    assert try_mount(call, link, tmp_path / "." / "", "ext4", [], helper_dirs=[])
    assert call.calls[0][:2] == (str(block_device), str(tmp_path))


@pytest.mark.parametrize("code", [errno.EINVAL, errno.EUCLEAN, errno.EROFS, errno.EACCES,
                                  errno.EBUSY, errno.EIO])
def test_a_refused_mount_is_left_to_the_program(block_device: Path, tmp_path: Path,
                                                code: int) -> None:
    """The program then gives the refusal in its own words (host/refusals.py), or retries a
    write-protected device read-only, as it always did."""
    call = FakeCall(code)
    assert not try_mount(call, block_device, tmp_path, "ext4", [], helper_dirs=[])
    assert len(call.calls) == 1


def test_what_the_system_call_cannot_do_it_does_not_try(block_device: Path,
                                                         tmp_path: Path) -> None:
    call = FakeCall()
    helpers = tmp_path / "sbin"
    helpers.mkdir()
    (helpers / "mount.ext4").touch()
    plain_file = tmp_path / "image"
    plain_file.touch()
    assert not try_mount(call, block_device, tmp_path, "ext4", [], helper_dirs=[str(helpers)])
    assert not try_mount(call, block_device, tmp_path, "ext4", ["nofail"], helper_dirs=[])
    assert not try_mount(call, plain_file, tmp_path, "ext4", [], helper_dirs=[])
    assert not try_mount(None, block_device, tmp_path, "ext4", [], helper_dirs=[])
    assert call.calls == []


def test_libc_mount_reports_the_kernels_errno(tmp_path: Path) -> None:
    """The real libc call, with a source that does not exist."""
    call = mountcall.MountCall.load()
    assert call is not None
    with pytest.raises(OSError) as caught:
        call.mount(str(tmp_path / "no-such-device"), str(tmp_path), "ext4", MountPlan(0, ""))
    assert caught.value.errno in (errno.ENOENT, errno.EPERM, errno.ENOTBLK)
