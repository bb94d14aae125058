"""Find, verify, size and rescan the block device behind a Cinder volume.

Nova attaches a volume as virtio-blk (serial = first 20 characters of the volume ID) or as a
SCSI disk; udev names it under /dev/disk/by-id/. The device appears some time after Nova says
"in-use", so `find` polls, nudging the kernel (SCSI host scan) and udev between tries.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

from cinder_csi.deadline import Deadline
from cinder_csi.errors import (
    CommandNotFound,
    FailedPrecondition,
    InternalError,
    InvalidArgument,
    NotFound,
    Timeout,
)
from cinder_csi.host.commands import CommandRunner
from cinder_csi.host.identity import (
    VIRTIO_SERIAL_LEN,
    VOLUME_REF,
    IdentityReader,
    judge,
    names_volume,
    read_text,
)
from cinder_csi.waiting import wait_for

log = logging.getLogger(__name__)

# CSI's own limit for an ID; anything longer cannot be a Cinder UUID, nor part of a file name.
MAX_VOLUME_ID_BYTES = 128
# udevadm must not eat the caller's whole deadline; a trigger that takes longer is stuck.
UDEV_TRIGGER_TIMEOUT_S = 5.0
# Report NotFound a little before the caller's deadline, so it gets our message, not a timeout.
_REPORT_MARGIN_S = 0.5


def check_volume_id(volume_id: str) -> str:
    """The ID, if it is safe in a file name (by-id links are named after it); else
    InvalidArgument: nothing that could walk out of a directory."""
    if not volume_id or "/" in volume_id or volume_id in (".", "..") or "\0" in volume_id:
        raise InvalidArgument(
            f"volume_id {volume_id!r} is not a volume ID (no '/' or NUL, not '.' or '..')"
        )
    if len(volume_id.encode()) > MAX_VOLUME_ID_BYTES:
        raise InvalidArgument(
            f"volume_id of {len(volume_id)} characters is not a volume ID (Cinder's are UUIDs; "
            f"at most {MAX_VOLUME_ID_BYTES} bytes are accepted)"
        )
    return volume_id


class DeviceFinder:
    def __init__(
        self,
        by_id_dir: Path = Path("/dev/disk/by-id"),
        sys_root: Path = Path("/sys"),
        dev_root: Path = Path("/dev"),
        runner: CommandRunner | None = None,
    ) -> None:
        self.by_id_dir = by_id_dir
        self.sys_root = sys_root
        self.dev_root = dev_root
        self.runner = runner or CommandRunner()
        self.identity = IdentityReader(sys_root, self.runner)

    # ---- finding -------------------------------------------------------------------------

    def candidate_links(self, volume_id: str) -> list[Path]:
        """The by-id names a volume can have, in the order the upstream driver tries them."""
        check_volume_id(volume_id)
        short = volume_id[:VIRTIO_SERIAL_LEN]
        names = [
            f"virtio-{short}",
            f"virtio-{volume_id}",
            f"scsi-0QEMU_QEMU_HARDDISK_{short}",
            f"scsi-0QEMU_QEMU_HARDDISK_{volume_id}",
            f"wwn-0x{volume_id.replace('-', '')}",
        ]
        unique = list(dict.fromkeys(names))  # short == full for IDs of 20 chars or fewer
        return [self.by_id_dir / name for name in unique]

    def _from_links(self, volume_id: str) -> Path | None:
        for link in self.candidate_links(volume_id):
            # exists() follows the link: a dangling link (device gone) does not count.
            if link.exists():
                return Path(os.path.realpath(link))
        return None

    def _from_serials(self, volume_id: str) -> Path | None:
        """The device whose sysfs serial (virtio) or VPD 0x80 serial (SCSI) is the volume's,
        for nodes where udev made no link."""
        try:
            entries = sorted((self.sys_root / "block").iterdir())
        except OSError:
            return None
        for entry in entries:
            if any(names_volume(s, volume_id) for s in self.identity.serials(entry)):
                device = self.dev_root / entry.name
                if device.exists():
                    return device
        return None

    def _nudge(self, deadline: Deadline) -> None:
        """Ask the kernel to rescan SCSI hosts and udev to replay events, best effort."""
        try:
            hosts = sorted((self.sys_root / "class" / "scsi_host").glob("*/scan"))
        except OSError:
            hosts = []
        for scan in hosts:
            try:
                scan.write_text("- - -")
            except OSError as exc:
                log.debug("cannot scan %s: %s", scan, exc)
        if deadline.expired() or not self.runner.has("udevadm"):
            return
        try:
            # Block devices only: no reason to replay events of every device on the node.
            self.runner.run(
                ["udevadm", "trigger", "--subsystem-match=block", "--action=change"],
                deadline=deadline,
                timeout=UDEV_TRIGGER_TIMEOUT_S,
            )
        except (InternalError, CommandNotFound, Timeout) as exc:
            log.warning("udevadm trigger failed, continuing to wait: %s", exc)

    def find(self, volume_id: str, deadline: Deadline) -> Path:
        """The device node (e.g. /dev/vdb) of `volume_id`; NotFound before the deadline passes."""
        links = self.candidate_links(volume_id)
        margin = min(_REPORT_MARGIN_S, deadline.remaining() / 10)
        search_deadline = Deadline(deadline.at - margin)
        started = time.monotonic()
        tries = 0

        def probe() -> Path | None:
            nonlocal tries
            tries += 1
            device = self._from_links(volume_id) or self._from_serials(volume_id)
            if device is None:
                self._nudge(search_deadline)
            return device

        try:
            device = wait_for(
                probe, search_deadline, what=f"device of volume {volume_id}", initial=0.2
            )
        except Timeout:
            searched = ", ".join(str(p) for p in links)
            raise NotFound(
                f"no block device found for volume {volume_id} after {tries} tries in "
                f"{time.monotonic() - started:.1f}s; searched {searched} and "
                f"{self.sys_root / 'block'}/*/serial for serial "
                f"{volume_id[:VIRTIO_SERIAL_LEN]!r}; is the volume attached to this node?"
            ) from None
        log.info("volume %s is device %s", volume_id, device)
        return device

    # ---- verifying -----------------------------------------------------------------------

    def verify(self, volume_id: str, device: Path, deadline: Deadline | None = None) -> None:
        """Prove `device` belongs to `volume_id` before anything writes to it, or refuse with
        FailedPrecondition naming the device and why; never guess.

        - every by-id link of this volume must resolve to exactly this device;
        - no by-id link of another volume may resolve to it (a stale link left by a missed
          udev remove event makes two volumes' links meet on one disk);
        - the device itself must name the volume (serial, SCSI VPD pages, udev's serial, a
          loop device's backing file; see host/identity.py) and name nothing else. Links are
          never proof on their own: they are only as fresh as udev's last event.
        """
        check_volume_id(volume_id)
        real = Path(os.path.realpath(device))
        if not real.exists():
            raise NotFound(f"device {device} of volume {volume_id} does not exist")
        for link in self.candidate_links(volume_id):
            if link.exists():
                target = Path(os.path.realpath(link))
                if not _same_device(target, real):
                    raise FailedPrecondition(
                        f"device {real} is not volume {volume_id}: {link} points to {target}"
                    )
        for link, other in self._links_of_other_volumes(volume_id, real):
            raise FailedPrecondition(
                f"device {real} is named by the links of two volumes: {link} says it is "
                f"volume {other}, not {volume_id} (a stale link?); refusing to touch it"
            )
        identifiers = self.identity.read(real, deadline)
        verdict = judge(identifiers, volume_id)
        if verdict.against:
            shown = "; ".join(f"its {i.source} is {i.value!r}" for i in verdict.against)
            raise FailedPrecondition(
                f"device {real} is not volume {volume_id} (expected serial "
                f"{volume_id[:VIRTIO_SERIAL_LEN]!r} or {volume_id!r}): {shown}; refusing to "
                "touch it"
            )
        if not verdict.proof:
            seen = ", ".join(f"{i.source} {i.value!r}" for i in identifiers) or "none"
            raise FailedPrecondition(
                f"cannot prove device {real} is volume {volume_id}: it reports no serial, "
                f"SCSI VPD or udev identity naming the volume (identifiers seen: {seen}); "
                "refusing to touch it"
            )
        log.debug("device %s is volume %s (%s)", real, volume_id,
                  ", ".join(i.source for i in verdict.proof))

    def _links_of_other_volumes(self, volume_id: str, real: Path) -> list[tuple[Path, str]]:
        """By-id links that resolve to `real` but are named after another volume."""
        try:
            links = sorted(self.by_id_dir.iterdir())
        except OSError:
            return []
        found = []
        own_hex = volume_id.replace("-", "").lower()
        for link in links:
            other = _volume_named_by(link.name)
            if other is None or names_volume(other, volume_id) or other == own_hex:
                continue
            if link.exists() and _same_device(Path(os.path.realpath(link)), real):
                found.append((link, other))
        return found

    # ---- size and rescan -----------------------------------------------------------------

    def device_size(self, device: Path, deadline: Deadline | None = None) -> int:
        """Size of a block device in bytes."""
        name = Path(os.path.realpath(device)).name
        sectors = read_text(self.sys_root / "class" / "block" / name / "size")
        if sectors is not None and sectors.isdigit():
            return int(sectors) * 512  # sysfs counts 512-byte sectors whatever the block size
        result = self.runner.run(["blockdev", "--getsize64", str(device)], deadline=deadline)
        try:
            return int(result.stdout.strip())
        except ValueError:
            raise InternalError(
                f"blockdev --getsize64 {device} printed {result.stdout.strip()!r}"
            ) from None

    def rescan(self, device: Path, deadline: Deadline | None = None) -> None:
        """Make the kernel re-read the size of a device whose volume was extended."""
        name = Path(os.path.realpath(device)).name
        if name.startswith("loop"):
            self.runner.run(["losetup", "-c", str(device)], deadline=deadline)
            return
        rescan = self.sys_root / "class" / "block" / name / "device" / "rescan"
        if not rescan.exists():
            log.info("device %s has no rescan file; relying on the hypervisor's notice", device)
            return
        try:
            rescan.write_text("1")
        except OSError as exc:
            raise InternalError(f"cannot rescan device {device} via {rescan}: {exc}") from exc


def _volume_named_by(link_name: str) -> str | None:
    """The volume reference in a by-id link name of the kinds candidate_links makes
    (virtio-<id>, scsi-0QEMU_QEMU_HARDDISK_<id>, wwn-0x<hex>), else None."""
    lowered = link_name.lower()
    if lowered.startswith("wwn-0x"):
        digits = lowered[len("wwn-0x"):]
        if len(digits) == 32 and all(c in "0123456789abcdef" for c in digits):
            return digits
        return None
    for prefix in ("virtio-", "scsi-0qemu_qemu_harddisk_"):
        if lowered.startswith(prefix):
            match = VOLUME_REF.fullmatch(lowered[len(prefix):])
            return match.group(0) if match else None
    return None


def _same_device(a: Path, b: Path) -> bool:
    """Same block device (by device number), or the same path for non-device files."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
