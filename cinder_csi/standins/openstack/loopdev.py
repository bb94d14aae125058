"""Real block devices for attached volumes: a loop device over the backing file and the
/dev/disk/by-id style link a virtio disk would get. Only ever undoes what it made."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


def supported() -> bool:
    return os.geteuid() == 0 and shutil.which("losetup") is not None


def by_id_name(volume_id: str) -> str:
    # virtio-blk serials hold 20 bytes, so the guest sees the volume id cut to 20 characters.
    return f"virtio-{volume_id[:20]}"


@dataclass(frozen=True)
class LoopDevice:
    device: str
    link: Path
    backing: Path


class LoopDevices:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[tuple[str, str], LoopDevice] = {}  # (volume id, server id) -> device

    def attach(self, volume_id: str, server_id: str, backing: Path, by_id_dir: Path) -> str:
        device = _run("losetup", "--find", "--show", str(backing))
        link = by_id_dir / by_id_name(volume_id)
        try:
            by_id_dir.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            link.symlink_to(device)
        except OSError:
            _run("losetup", "-d", device)
            raise
        with self._lock:
            self._made[(volume_id, server_id)] = LoopDevice(device, link, backing)
        return device

    def refresh(self, volume_id: str) -> None:
        """Let the kernel see a grown backing file."""
        with self._lock:
            devices = [d.device for (vol, _), d in self._made.items() if vol == volume_id]
        for device in devices:
            _run("losetup", "-c", device)

    def detach(self, volume_id: str, server_id: str) -> None:
        with self._lock:
            made = self._made.pop((volume_id, server_id), None)
        if made is not None:
            _release(made)

    def detach_all(self) -> None:
        with self._lock:
            made = list(self._made.values())
            self._made.clear()
        for device in made:
            try:
                _release(device)
            except (OSError, subprocess.SubprocessError):
                log.exception("could not release %s", device.device)


def _release(made: LoopDevice) -> None:
    # Another attachment may have re-pointed the link; only remove it if it is still ours.
    if made.link.is_symlink() and os.readlink(made.link) == made.device:
        made.link.unlink()
    _run("losetup", "-d", made.device)


def _run(*argv: str) -> str:
    result = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)
    return result.stdout.strip()
