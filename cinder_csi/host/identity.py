"""What a block device says it is, read from the device itself, and whether that proves it is
a given Cinder volume.

Nova hands the volume ID to the hypervisor as the disk's serial: virtio-blk shows its first
20 characters in /sys/block/<dev>/serial; a (virtio-)SCSI disk answers SCSI INQUIRY with it,
in the unit serial number page (VPD 0x80) and the device identification page (VPD 0x83),
which the kernel exposes as device/vpd_pg80 and device/vpd_pg83, and which udev reports as
ID_SERIAL / ID_SCSI_SERIAL / ID_SERIAL_SHORT. The stand-in's loop devices carry the volume ID
in their backing file's name. /dev/disk/by-id links are derived from the same data but only
as fresh as udev's last event, so they are never proof on their own.

A device is proven to be a volume when at least one identifier names the volume and none
names anything else. Identifiers that say nothing either way (a storage array's own WWN, a
vendor designator without the ID) neither prove nor refute.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from cinder_csi.deadline import Deadline
from cinder_csi.errors import CommandNotFound, InternalError, Timeout
from cinder_csi.host.commands import CommandRunner

log = logging.getLogger(__name__)

# virtio-blk serials hold at most 20 bytes, so Nova's volume ID arrives cut to that.
VIRTIO_SERIAL_LEN = 20
UDEV_INFO_TIMEOUT_S = 5.0
# A volume ID as a device shows it: the 20-character virtio prefix, or the whole UUID.
VOLUME_REF = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f](?:[0-9a-f]{3}-[0-9a-f]{12})?", re.IGNORECASE
)
_UDEV_SERIALS = ("ID_SCSI_SERIAL", "ID_SERIAL_SHORT", "ID_SERIAL")
_UDEV_WWNS = ("ID_WWN_WITH_EXTENSION", "ID_WWN")
# VPD 0x83 designator code sets and types (SPC-4, 7.8.6).
_CODE_BINARY, _CODE_ASCII, _CODE_UTF8 = 1, 2, 3
_TYPE_EUI64, _TYPE_NAA = 2, 3


@dataclass(frozen=True)
class Identifier:
    source: str  # where it was read, for messages: "sysfs serial", "udev ID_SCSI_SERIAL", ...
    value: str
    kind: str  # "serial" (must name the volume), "designator" (may), "wwn", "backing"


@dataclass(frozen=True)
class Verdict:
    proof: list[Identifier] = field(default_factory=list)
    against: list[Identifier] = field(default_factory=list)


def names_volume(text: str, volume_id: str) -> bool:
    """Whether a volume reference (20-character prefix or full ID) is this volume's."""
    ref, vid = text.lower(), volume_id.lower()
    return ref == vid or (len(ref) >= VIRTIO_SERIAL_LEN and vid.startswith(ref))


def judge(identifiers: list[Identifier], volume_id: str) -> Verdict:
    """Sort the device's identifiers into proof for `volume_id` and evidence against it."""
    verdict = Verdict()
    hex_id = volume_id.replace("-", "").lower()
    for ident in identifiers:
        value = ident.value.strip().strip("\0").strip()
        if not value:
            continue
        refs = VOLUME_REF.findall(value)
        if any(not names_volume(ref, volume_id) for ref in refs):
            verdict.against.append(ident)  # it names another volume
        elif ident.kind == "wwn":
            digits = value.lower().removeprefix("0x")
            if digits == hex_id:
                verdict.proof.append(ident)
        elif ident.kind == "backing":
            if refs:
                verdict.proof.append(ident)
        elif names_volume(value, volume_id) or (refs and value.endswith(refs[-1])):
            # The ID itself, or a composed serial ending in it ("0QEMU_QEMU_HARDDISK_<id>").
            verdict.proof.append(ident)
        elif ident.kind == "serial":
            verdict.against.append(ident)  # a serial that is not this volume's
    return verdict


class IdentityReader:
    """Reads a block device's identifiers from sysfs and udev."""

    def __init__(self, sys_root: Path, runner: CommandRunner) -> None:
        self.sys_root = sys_root
        self.runner = runner

    def read(self, device: Path, deadline: Deadline | None = None) -> list[Identifier]:
        name = device.name
        block = self.sys_root / "block" / name
        found: list[Identifier] = []
        serial = read_text(block / "serial")
        if serial:
            found.append(Identifier("sysfs serial", serial, "serial"))
        found += self.vpd(block)
        backing = read_text(block / "loop" / "backing_file")
        if backing:
            found.append(Identifier("loop backing file", Path(backing).name, "backing"))
        found += self.udev(device, deadline)
        return found

    def serials(self, block: Path) -> list[str]:
        """The serials sysfs shows for a block device (no udev): for finding a device."""
        texts = [read_text(block / "serial")]
        texts += [i.value for i in self.vpd(block) if i.kind == "serial"]
        return [t for t in texts if t]

    @staticmethod
    def vpd(block: Path) -> list[Identifier]:
        found = []
        page80 = _read_bytes(block / "device" / "vpd_pg80")
        if page80 is not None:
            serial = parse_vpd80(page80)
            if serial:
                found.append(Identifier("VPD page 0x80 serial", serial, "serial"))
        page83 = _read_bytes(block / "device" / "vpd_pg83")
        if page83 is not None:
            found += parse_vpd83(page83)
        return found

    def udev(self, device: Path, deadline: Deadline | None) -> list[Identifier]:
        if not self.runner.has("udevadm"):
            return []
        try:
            result = self.runner.run(
                ["udevadm", "info", "--query=property", f"--name={device}"],
                deadline=deadline, timeout=UDEV_INFO_TIMEOUT_S,
            )
        except (InternalError, CommandNotFound, Timeout) as exc:
            log.warning("udevadm info %s failed; judging the device without it: %s", device, exc)
            return []
        props = dict(line.partition("=")[::2] for line in result.stdout.splitlines() if "=" in line)
        found = [Identifier(f"udev {key}", props[key], "serial" if key != "ID_SERIAL" else
                            "designator") for key in _UDEV_SERIALS if props.get(key)]
        found += [Identifier(f"udev {key}", props[key], "wwn") for key in _UDEV_WWNS
                  if props.get(key)]
        return found


def parse_vpd80(page: bytes) -> str:
    """The unit serial number of a VPD 0x80 page (4-byte header, then ASCII)."""
    if len(page) < 4 or page[1] != 0x80:
        return ""
    length = int.from_bytes(page[2:4], "big")
    return page[4:4 + length].decode("ascii", "replace").strip(" \0")


def parse_vpd83(page: bytes) -> list[Identifier]:
    """The designators of a VPD 0x83 page: text ones as designators, NAA/EUI-64 as WWNs."""
    if len(page) < 4 or page[1] != 0x83:
        return []
    end = min(len(page), 4 + int.from_bytes(page[2:4], "big"))
    found = []
    offset = 4
    while offset + 4 <= end:
        code_set = page[offset] & 0x0F
        kind = page[offset + 1] & 0x0F
        length = page[offset + 3]
        body = page[offset + 4:offset + 4 + length]
        offset += 4 + length
        if code_set in (_CODE_ASCII, _CODE_UTF8):
            text = body.decode("utf-8", "replace").strip(" \0")
            if text:
                found.append(Identifier(f"VPD page 0x83 designator type {kind}", text,
                                        "designator"))
        elif code_set == _CODE_BINARY and kind in (_TYPE_NAA, _TYPE_EUI64) and body:
            found.append(Identifier(f"VPD page 0x83 designator type {kind}", body.hex(), "wwn"))
    return found


def read_text(path: Path) -> str | None:
    """A sysfs attribute's text, stripped; None when it cannot be read."""
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
