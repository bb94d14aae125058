"""Device identity from the device itself (host/identity.py, DeviceFinder.verify), on a fake
/sys and /dev/disk/by-id: SCSI VPD pages, udev's serials, stale links of other volumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition
from cinder_csi.host.commands import CommandResult
from cinder_csi.host.devices import DeviceFinder
from cinder_csi.host.identity import Identifier, judge, parse_vpd80, parse_vpd83
from tests.unit.host_fakes import FakeDevTree, FakeRunner

VOLUME = "0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f"
OTHER = "7c1d4e2f-9a8b-4c3d-8e7f-6a5b4c3d2e1f"


def vpd80(serial: str) -> bytes:
    data = serial.encode()
    return bytes([0, 0x80]) + len(data).to_bytes(2, "big") + data


def vpd83(*designators: tuple[int, int, bytes]) -> bytes:
    """(code set, designator type, body) triples as a VPD 0x83 page."""
    body = b"".join(bytes([code, kind, 0, len(data)]) + data for code, kind, data in designators)
    return bytes([0, 0x83]) + len(body).to_bytes(2, "big") + body


class Node(FakeDevTree):
    """A fake /dev, /dev/disk/by-id and /sys with SCSI and virtio disks, and udev's view."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.udev: dict[str, dict[str, str]] = {}

    def disk(self, name: str, *, serial: str | None = None, pg80: bytes | None = None,
             pg83: bytes | None = None, udev: dict[str, str] | None = None) -> Path:
        node = self.dev / name
        node.write_bytes(b"")
        block = self.sys / "block" / name
        (block / "device").mkdir(parents=True)
        if serial is not None:
            (block / "serial").write_text(serial + "\n")
        if pg80 is not None:
            (block / "device" / "vpd_pg80").write_bytes(pg80)
        if pg83 is not None:
            (block / "device" / "vpd_pg83").write_bytes(pg83)
        self.udev[str(node)] = udev or {}
        return node

    def runner(self, *, udev_fails: bool = False) -> FakeRunner:
        def answer(argv: tuple[str, ...]) -> CommandResult | tuple[int, str, str] | None:
            if argv[:2] == ("udevadm", "info"):
                if udev_fails:
                    return (1, "", "device node not found")
                props = self.udev.get(argv[-1].removeprefix("--name="), {})
                return (0, "".join(f"{k}={v}\n" for k, v in props.items()), "")
            return None
        return FakeRunner(answer)

    def finder(self, **kwargs: bool) -> DeviceFinder:
        return DeviceFinder(by_id_dir=self.by_id, sys_root=self.sys, dev_root=self.dev,
                            runner=self.runner(**kwargs))


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


# ---- the device's own word ---------------------------------------------------------------


def test_scsi_disk_proven_by_its_vpd_serial(node: Node) -> None:
    disk = node.disk("sdb", pg80=vpd80(VOLUME))
    node.link(f"scsi-0QEMU_QEMU_HARDDISK_{VOLUME}", disk)
    node.finder().verify(VOLUME, disk)


def test_scsi_disk_whose_vpd_serial_is_another_volume_is_refused(node: Node) -> None:
    # A stale link left by a missed udev remove event names our volume; the disk is OTHER's.
    disk = node.disk("sdb", pg80=vpd80(OTHER))
    node.link(f"scsi-0QEMU_QEMU_HARDDISK_{VOLUME}", disk)
    with pytest.raises(FailedPrecondition) as info:
        node.finder().verify(VOLUME, disk)
    assert str(disk) in str(info.value) and OTHER in str(info.value)
    assert "VPD page 0x80" in str(info.value)


def test_scsi_disk_proven_by_an_ascii_designator_of_page_83(node: Node) -> None:
    disk = node.disk("sdc", pg83=vpd83((2, 0, VOLUME.encode())))
    node.finder().verify(VOLUME, disk)


def test_scsi_disk_proven_by_its_naa_wwn(node: Node) -> None:
    disk = node.disk("sdd", pg83=vpd83((1, 3, bytes.fromhex(VOLUME.replace("-", "")))))
    node.link(f"wwn-0x{VOLUME.replace('-', '')}", disk)
    node.finder().verify(VOLUME, disk)


def test_an_array_wwn_alone_proves_nothing(node: Node) -> None:
    disk = node.disk("sde", pg83=vpd83((1, 3, bytes.fromhex("6001405" + "a" * 25))))
    node.link(f"scsi-0QEMU_QEMU_HARDDISK_{VOLUME}", disk)
    with pytest.raises(FailedPrecondition, match=r"cannot prove device .*sde"):
        node.finder().verify(VOLUME, disk)


@pytest.mark.parametrize("props", [
    {"ID_SCSI_SERIAL": VOLUME},
    {"ID_SERIAL_SHORT": VOLUME},
    {"ID_SERIAL": f"0QEMU_QEMU_HARDDISK_{VOLUME}"},
    {"ID_SERIAL": VOLUME[:20]},
])
def test_disk_proven_by_udevs_serial(node: Node, props: dict[str, str]) -> None:
    disk = node.disk("sdf", udev=props)
    node.finder().verify(VOLUME, disk)


def test_udev_serial_of_another_volume_is_refused(node: Node) -> None:
    disk = node.disk("sdg", udev={"ID_SERIAL": f"0QEMU_QEMU_HARDDISK_{OTHER}"})
    node.link(f"scsi-0QEMU_QEMU_HARDDISK_{VOLUME[:20]}", disk)
    with pytest.raises(FailedPrecondition, match="udev ID_SERIAL"):
        node.finder().verify(VOLUME, disk)


def test_sysfs_and_udev_disagreeing_is_refused(node: Node) -> None:
    disk = node.disk("vdb", serial=VOLUME[:20], udev={"ID_SERIAL": OTHER[:20]})
    with pytest.raises(FailedPrecondition, match=OTHER[:20]):
        node.finder().verify(VOLUME, disk)


def test_scsi_disk_with_nothing_but_a_link_is_refused_clearly(node: Node) -> None:
    # virtio-scsi has no /sys/block/sdX/serial; the link alone must not do.
    disk = node.disk("sdh")
    node.link(f"scsi-0QEMU_QEMU_HARDDISK_{VOLUME[:20]}", disk)
    with pytest.raises(FailedPrecondition) as info:
        node.finder().verify(VOLUME, disk)
    assert "cannot prove" in str(info.value) and str(disk) in str(info.value)


def test_udev_unavailable_leaves_the_sysfs_proof(node: Node) -> None:
    disk = node.disk("sdi", pg80=vpd80(VOLUME))
    node.finder(udev_fails=True).verify(VOLUME, disk)


# ---- links of two volumes ----------------------------------------------------------------


@pytest.mark.parametrize("stale", [f"virtio-{OTHER[:20]}", f"virtio-{OTHER}",
                                   f"scsi-0QEMU_QEMU_HARDDISK_{OTHER}",
                                   f"wwn-0x{OTHER.replace('-', '')}"])
def test_device_that_another_volumes_link_also_names_is_refused(node: Node, stale: str) -> None:
    disk = node.disk("vdb", serial=VOLUME[:20])
    node.link(f"virtio-{VOLUME[:20]}", disk)
    node.link(stale, disk)
    with pytest.raises(FailedPrecondition) as info:
        node.finder().verify(VOLUME, disk)
    assert "two volumes" in str(info.value) and stale in str(info.value)


def test_links_that_name_no_volume_are_no_conflict(node: Node) -> None:
    disk = node.disk("vdb", serial=VOLUME[:20])
    node.link(f"virtio-{VOLUME[:20]}", disk)
    node.link("ata-QEMU_DVD-ROM_QM00003", disk)
    node.link(f"virtio-{VOLUME[:20]}-part1", node.disk("vdb1"))
    node.finder().verify(VOLUME, disk)


# ---- finding by serial, without links ----------------------------------------------------


def test_find_uses_the_vpd_serial_when_udev_made_no_link(node: Node) -> None:
    node.disk("sda", pg80=vpd80(OTHER))
    disk = node.disk("sdb", pg80=vpd80(VOLUME))
    assert node.finder().find(VOLUME, Deadline.after(2)) == disk


# ---- parsers and the verdict -------------------------------------------------------------


def test_vpd_parsers() -> None:
    assert parse_vpd80(vpd80(f"  {VOLUME}  ")) == VOLUME
    assert parse_vpd80(b"\x00\x83\x00\x02ab") == ""  # not page 0x80
    found = parse_vpd83(vpd83((2, 1, b"QEMU    QEMU HARDDISK   " + VOLUME.encode()),
                              (1, 3, bytes.fromhex("6001405abcdef0123456789abcdef012"))))
    assert [(i.kind, i.value) for i in found] == [
        ("designator", f"QEMU    QEMU HARDDISK   {VOLUME}"),
        ("wwn", "6001405abcdef0123456789abcdef012"),
    ]
    assert parse_vpd83(b"\x00\x83\x00\x40\x02\x00\x00\x7f") == []  # truncated: nothing


def test_judge_needs_proof_and_no_contradiction() -> None:
    proof = Identifier("VPD page 0x80 serial", VOLUME, "serial")
    neutral = Identifier("VPD page 0x83 designator type 3", "6001405abc", "wwn")
    against = Identifier("udev ID_SERIAL", f"0QEMU_QEMU_HARDDISK_{OTHER}", "designator")
    assert judge([proof, neutral], VOLUME).proof == [proof]
    assert judge([neutral], VOLUME).proof == []
    verdict = judge([proof, against], VOLUME)
    assert verdict.against == [against]
