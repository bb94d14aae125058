from __future__ import annotations

from pathlib import Path

import pytest

from cinder_csi.errors import InternalError
from cinder_csi.host.mountinfo import MountTable, escape, parse, parse_line, unescape

SAMPLE = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro
36 27 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 27 253:16 / /var/lib/kubelet/plugins/kubernetes.io/csi/pv/pvc-1/globalmount rw,relatime \
shared:5 master:3 propagate_from:2 - xfs /dev/vdb rw,attr2,inode64,noquota
41 40 253:16 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/pvc-1/mount ro,relatime \
shared:5 - xfs /dev/vdb rw,attr2,inode64,noquota
42 27 7:3 / /tmp/with\\040space\\011tab\\134slash rw - ext4 /dev/loop3 rw
43 27 0:45 / /run/no\\040super rw - tmpfs tmpfs
"""


def test_plain_line() -> None:
    m = parse_line("27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw,errors=remount-ro")
    assert (m.mount_id, m.parent_id, m.major_minor) == (27, 1, "8:1")
    assert (m.root, m.mount_point, m.fstype, m.source) == ("/", "/", "ext4", "/dev/sda1")
    assert m.options == ("rw", "relatime")
    assert m.optional_fields == ("shared:1",)
    assert m.super_options == ("rw", "errors=remount-ro")
    assert not m.readonly


def test_no_optional_fields_and_several() -> None:
    mounts = parse(SAMPLE)
    assert mounts[0].optional_fields == ()
    assert mounts[3].optional_fields == ("shared:5", "master:3", "propagate_from:2")
    assert mounts[3].fstype == "xfs" and mounts[3].source == "/dev/vdb"


def test_bind_root_and_readonly() -> None:
    m = parse(SAMPLE)[2]
    assert m.root == "/mnt1" and m.mount_point == "/mnt2"
    assert parse(SAMPLE)[4].readonly


def test_octal_escapes() -> None:
    m = parse(SAMPLE)[5]
    assert m.mount_point == "/tmp/with space\ttab\\slash"
    assert unescape("a\\012b") == "a\nb"
    assert unescape("not\\9escape\\") == "not\\9escape\\"
    assert unescape("caf\\303\\251") == "café"  # escapes are bytes of a UTF-8 name


def test_missing_super_options() -> None:
    assert parse(SAMPLE)[6].super_options == ()


@pytest.mark.parametrize("line", ["garbage", "1 2 3 4 5 6 7", "x 1 8:1 / / rw - ext4 /dev/a rw"])
def test_bad_lines(line: str) -> None:
    with pytest.raises(InternalError, match="cannot parse"):
        parse_line(line)


@pytest.fixture
def table(tmp_path: Path) -> MountTable:
    path = tmp_path / "mountinfo"
    path.write_text(SAMPLE)
    return MountTable(path)


def test_table_queries(table: MountTable) -> None:
    staging = "/var/lib/kubelet/plugins/kubernetes.io/csi/pv/pvc-1/globalmount"
    assert [m.mount_id for m in table.mounts_at(staging)] == [40]
    assert table.is_mounted(staging + "/")  # normalised
    assert not table.is_mounted("/var/lib")
    assert table.is_mounted("/tmp/with space\ttab\\slash")
    assert [m.mount_id for m in table.find_by_source("/dev/vdb")] == [40, 41]


def test_containing(table: MountTable) -> None:
    holder = table.containing("/mnt2/sub/dir")
    assert holder is not None and holder.mount_id == 36
    root = table.containing("/etc/passwd")
    assert root is not None and root.mount_id == 27
    # /mnt2x is not inside /mnt2
    other = table.containing("/mnt2x")
    assert other is not None and other.mount_id == 27


def test_unreadable_table(tmp_path: Path) -> None:
    with pytest.raises(InternalError, match="mount table"):
        MountTable(tmp_path / "nope").all()


def test_real_mount_table_parses() -> None:
    mounts = MountTable().all()
    assert any(m.mount_point == "/" for m in mounts)


@pytest.mark.parametrize("path", ["/a/b", "/tmp/with space\ttab\\slash", "/x\ny", "/ä/ö"])
def test_escape_is_what_unescape_undoes(path: str) -> None:
    assert unescape(escape(path)) == path
    assert " " not in escape(path) and "\n" not in escape(path)


def test_mounts_at_matches_the_mount_point_only(tmp_path: Path) -> None:
    """A line naming the path as the root of a bind mount (or anywhere but the mount point)
    is not a mount at it, and no stacked mount is lost."""
    path = tmp_path / "mountinfo"
    path.write_text(SAMPLE + "50 27 253:16 /mnt2 /elsewhere rw - ext4 /dev/vdb rw\n"
                    "51 36 98:0 / /mnt2 rw - ext3 /dev/root rw\n")
    table = MountTable(path)
    assert [m.mount_id for m in table.mounts_at("/mnt2")] == [36, 51]
    assert table.mounts_at("/mnt") == []
    assert table.mounts_at("/elsewhere")[0].root == "/mnt2"
