from __future__ import annotations

import time
from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition, InvalidArgument, NotFound
from cinder_csi.host.devices import DeviceFinder
from tests.unit.host_fakes import FakeDevTree, FakeRunner

VOLUME = "0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f"
SHORT = VOLUME[:20]


class Host(FakeDevTree):
    """A fake /dev, /dev/disk/by-id and /sys under tmp_path."""

    def device(self, name: str, serial: str | None = None, sectors: int = 2048) -> Path:
        node = self.dev / name
        node.write_bytes(b"")
        block = self.sys / "block" / name
        block.mkdir()
        if serial is not None:
            (block / "serial").write_text(serial + "\n")
        cls = self.sys / "class" / "block" / name
        cls.mkdir(parents=True)
        (cls / "size").write_text(f"{sectors}\n")
        return node

    def finder(self, runner: FakeRunner) -> DeviceFinder:
        return DeviceFinder(
            by_id_dir=self.by_id, sys_root=self.sys, dev_root=self.dev, runner=runner
        )


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return Host(tmp_path)


def test_candidate_links_in_upstream_order(host: Host) -> None:
    names = [p.name for p in host.finder(FakeRunner()).candidate_links(VOLUME)]
    assert names == [
        f"virtio-{SHORT}",
        f"virtio-{VOLUME}",
        f"scsi-0QEMU_QEMU_HARDDISK_{SHORT}",
        f"scsi-0QEMU_QEMU_HARDDISK_{VOLUME}",
        f"wwn-0x{VOLUME.replace('-', '')}",
    ]


def test_links_are_tried_in_order(host: Host) -> None:
    finder = host.finder(FakeRunner())
    links = finder.candidate_links(VOLUME)
    devices = [host.device(f"sd{c}") for c in "abcde"]
    for link, device in zip(links, devices, strict=True):
        link.symlink_to(device)
    for link, device in zip(links, devices, strict=True):
        assert finder.find(VOLUME, Deadline.after(1)) == device
        link.unlink()


def test_dangling_link_is_skipped(host: Host) -> None:
    host.link(f"virtio-{SHORT}", host.dev / "vanished")
    good = host.device("sdb")
    host.link(f"scsi-0QEMU_QEMU_HARDDISK_{SHORT}", good)
    assert host.finder(FakeRunner()).find(VOLUME, Deadline.after(1)) == good


def test_sysfs_serial_fallback(host: Host) -> None:
    host.device("vda", serial="someothervolume12345")
    vdb = host.device("vdb", serial=SHORT)
    runner = FakeRunner()
    assert host.finder(runner).find(VOLUME, Deadline.after(1)) == vdb
    assert runner.calls == []  # found on the first try: no rescan


def test_rescans_between_tries_until_the_link_appears(host: Host) -> None:
    scan = host.sys / "class" / "scsi_host" / "host0" / "scan"
    scan.parent.mkdir(parents=True)
    scan.write_text("")
    device = host.device("vdc")

    def udev(argv: tuple[str, ...]) -> None:
        triggers = sum(1 for c in runner.calls if c[0] == "udevadm")
        if triggers == 2:  # udev "creates" the link after the second nudge
            host.link(f"virtio-{SHORT}", device)

    runner = FakeRunner(udev)
    assert host.finder(runner).find(VOLUME, Deadline.after(5)) == device
    assert (
        runner.commands()
        == [
            "udevadm trigger --subsystem-match=block --action=change",
        ]
        * 2
    )
    assert scan.read_text() == "- - -"


def test_no_udevadm_still_polls(host: Host) -> None:
    runner = FakeRunner(available=())
    with pytest.raises(NotFound):
        host.finder(runner).find(VOLUME, Deadline.after(0.4))
    assert runner.calls == []


def test_missing_device_is_not_found_within_the_deadline_naming_every_path(host: Host) -> None:
    runner = FakeRunner()
    finder = host.finder(runner)
    start = time.monotonic()
    with pytest.raises(NotFound) as info:
        finder.find(VOLUME, Deadline.after(1.0))
    assert time.monotonic() - start < 1.0
    message = str(info.value)
    for link in finder.candidate_links(VOLUME):
        assert str(link) in message
    assert f"{host.sys / 'block'}/*/serial" in message and SHORT in message
    assert len(runner.calls) >= 2  # it nudged udev between tries


@pytest.mark.parametrize("bad", ["", "../etc", "a/b", "..", "x\0y"])
def test_volume_id_cannot_escape_the_directory(host: Host, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        host.finder(FakeRunner()).find(bad, Deadline.after(1))


# ---- verify ------------------------------------------------------------------------------


def test_verify_accepts_matching_serial(host: Host) -> None:
    device = host.device("vdb", serial=SHORT)
    host.finder(FakeRunner()).verify(VOLUME, device)


def test_verify_refuses_other_serial(host: Host) -> None:
    device = host.device("vdb", serial="ffffffff-0000-1111-2")
    with pytest.raises(FailedPrecondition) as info:
        host.finder(FakeRunner()).verify(VOLUME, device)
    assert "ffffffff-0000-1111-2" in str(info.value) and VOLUME in str(info.value)


def test_verify_refuses_a_link_alone_as_proof(host: Host) -> None:
    # A by-id link is only as fresh as udev's last event: the device itself must say who it is.
    device = host.device("loop3")  # no serial, no backing file that names a volume
    host.link(f"virtio-{SHORT}", device)
    with pytest.raises(FailedPrecondition, match="cannot prove"):
        host.finder(FakeRunner()).verify(VOLUME, device)


def test_verify_accepts_a_loop_device_backed_by_the_volumes_file(host: Host) -> None:
    device = host.device("loop3")
    (host.sys / "block" / "loop3" / "loop").mkdir()
    (host.sys / "block" / "loop3" / "loop" / "backing_file").write_text(f"/srv/{VOLUME}.img\n")
    host.link(f"virtio-{SHORT}", device)
    host.finder(FakeRunner()).verify(VOLUME, device)


def test_verify_refuses_link_to_another_device(host: Host) -> None:
    mine, other = host.device("loop3"), host.device("loop4")
    host.link(f"virtio-{SHORT}", other)
    with pytest.raises(FailedPrecondition) as info:
        host.finder(FakeRunner()).verify(VOLUME, mine)
    assert str(mine) in str(info.value) and str(other) in str(info.value)


def test_verify_refuses_a_matching_serial_when_a_link_points_elsewhere(host: Host) -> None:
    mine, other = host.device("vdb", serial=SHORT), host.device("vdc")
    host.link(f"virtio-{VOLUME}", other)
    with pytest.raises(FailedPrecondition):
        host.finder(FakeRunner()).verify(VOLUME, mine)


def test_verify_refuses_without_any_proof(host: Host) -> None:
    device = host.device("loop5")
    with pytest.raises(FailedPrecondition, match="cannot prove"):
        host.finder(FakeRunner()).verify(VOLUME, device)


def test_verify_missing_device(host: Host) -> None:
    with pytest.raises(NotFound):
        host.finder(FakeRunner()).verify(VOLUME, host.dev / "vdz")


# ---- size and rescan ---------------------------------------------------------------------


def test_device_size_from_sysfs(host: Host) -> None:
    device = host.device("vdb", sectors=4096)
    assert host.finder(FakeRunner()).device_size(device) == 4096 * 512


def test_device_size_falls_back_to_blockdev(host: Host) -> None:
    runner = FakeRunner(lambda argv: (0, "1048576\n", ""))
    assert host.finder(runner).device_size(host.dev / "nosys") == 1048576
    assert runner.commands() == [f"blockdev --getsize64 {host.dev / 'nosys'}"]


def test_rescan_loop_device_uses_losetup(host: Host) -> None:
    device = host.device("loop7")
    runner = FakeRunner()
    host.finder(runner).rescan(device)
    assert runner.commands() == [f"losetup -c {device}"]


def test_rescan_virtio_writes_rescan_file(host: Host) -> None:
    device = host.device("vdb")
    rescan = host.sys / "class" / "block" / "vdb" / "device" / "rescan"
    rescan.parent.mkdir()
    rescan.write_text("")
    runner = FakeRunner()
    host.finder(runner).rescan(device)
    assert rescan.read_text() == "1"
    assert runner.calls == []


def test_rescan_without_rescan_file_is_a_no_op(host: Host) -> None:
    device = host.device("vdb")
    runner = FakeRunner()
    host.finder(runner).rescan(device)
    assert runner.calls == []
