"""Find, verify, size and rescan the block device behind a Cinder volume.

Nova attaches a volume as virtio-blk (serial = first 20 characters of the volume ID) or as a
SCSI disk; udev names it under /dev/disk/by-id/. The device appears some time after Nova says
"in-use", so `find` polls, nudging the kernel (SCSI host scan) and udev between tries.
"""

from __future__ import annotations

import logging
import os
import re
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
from cinder_csi.waiting import wait_for

log = logging.getLogger(__name__)

# virtio-blk serials hold at most 20 bytes, so Nova truncates the volume ID to that.
VIRTIO_SERIAL_LEN = 20
_UUID_IN_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
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
    return volume_id


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


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
        wanted = {volume_id[:VIRTIO_SERIAL_LEN], volume_id}
        try:
            entries = sorted((self.sys_root / "block").iterdir())
        except OSError:
            return None
        for entry in entries:
            serial = _read_text(entry / "serial")
            if serial and serial in wanted:
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

    def verify(self, volume_id: str, device: Path) -> None:
        """Prove `device` belongs to `volume_id` before anything writes to it.

        Proof is the device's virtio serial matching the ID, or (no serial, e.g. SCSI or the
        stand-in's loop devices) a by-id link that names this volume resolving to exactly it.
        Any by-id link of the volume that points elsewhere is a conflict and refused too.
        """
        check_volume_id(volume_id)
        real = Path(os.path.realpath(device))
        if not real.exists():
            raise NotFound(f"device {device} of volume {volume_id} does not exist")
        linked = [
            (link, Path(os.path.realpath(link)))
            for link in self.candidate_links(volume_id)
            if link.exists()
        ]
        for link, target in linked:
            if not _same_device(target, real):
                raise FailedPrecondition(
                    f"device {real} is not volume {volume_id}: {link} points to {target}"
                )
        self._check_loop_backing(volume_id, real)
        serial = _read_text(self.sys_root / "block" / real.name / "serial")
        if serial:
            if serial not in (volume_id[:VIRTIO_SERIAL_LEN], volume_id):
                raise FailedPrecondition(
                    f"device {real} has serial {serial!r}, which is not volume {volume_id} "
                    f"(expected {volume_id[:VIRTIO_SERIAL_LEN]!r}); refusing to touch it"
                )
            return
        if not linked:
            raise FailedPrecondition(
                f"cannot prove device {real} is volume {volume_id}: it has no serial and no "
                f"link in {self.by_id_dir} names the volume; refusing to touch it"
            )

    def _check_loop_backing(self, volume_id: str, real: Path) -> None:
        """A loop device's identity is its backing file: one named after another volume ID is
        the wrong device, whatever the by-id links say (links are only as good as udev)."""
        backing = _read_text(self.sys_root / "block" / real.name / "loop" / "backing_file")
        if not backing:
            return
        named = set(_UUID_IN_TEXT.findall(Path(backing).name.lower()))
        if named and volume_id.lower() not in named:
            raise FailedPrecondition(
                f"device {real} is backed by {backing}, which names another volume than "
                f"{volume_id}; refusing to touch it"
            )

    # ---- size and rescan -----------------------------------------------------------------

    def device_size(self, device: Path, deadline: Deadline | None = None) -> int:
        """Size of a block device in bytes."""
        name = Path(os.path.realpath(device)).name
        sectors = _read_text(self.sys_root / "class" / "block" / name / "size")
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


def _same_device(a: Path, b: Path) -> bool:
    """Same block device (by device number), or the same path for non-device files."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if stat.S_ISBLK(sa.st_mode) and stat.S_ISBLK(sb.st_mode):
        return sa.st_rdev == sb.st_rdev
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
