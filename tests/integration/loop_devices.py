"""Loop devices for root tests, with cleanup that cannot leak.

Safety rules: a test only ever touches loop devices created here over sparse files in its own
tmp_path; cleanup unmounts only mounts under that directory or of those devices, detaches a
loop device only after checking it is still backed by our file, and then asserts that
`losetup -j <file>` is empty. Cleanup runs on failure too (context manager / the `loops`
fixture of conftest.py).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from types import TracebackType

from cinder_csi.host.mountinfo import MountInfo, MountTable, device_number

MIB = 1024 * 1024


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


def sha256(device: Path) -> str:
    digest = hashlib.sha256()
    with device.open("rb") as f:
        while chunk := f.read(4 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


class LoopDevices:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.devices: dict[Path, Path] = {}  # loop device -> backing file

    def create(self, size: int, name: str = "disk") -> Path:
        backing = self.workdir / f"{name}-{len(self.devices)}.img"
        with backing.open("wb") as f:
            f.truncate(size)  # sparse: costs nothing until written
        device = Path(run("losetup", "--find", "--show", str(backing)).strip())
        self.devices[device] = backing
        return device

    def resize(self, device: Path, size: int) -> None:
        os.truncate(self.devices[device], size)

    def directory(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __enter__(self) -> LoopDevices:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ours(self, m: MountInfo) -> bool:
        numbers = {device_number(d) for d in self.devices}
        under = m.mount_point.startswith(str(self.workdir) + "/")
        return under or m.major_minor in numbers

    def close(self) -> None:
        problems: list[str] = []
        # Newest first, so stacked and nested mounts come off in the right order.
        for m in reversed([m for m in MountTable().all() if self._ours(m)]):
            result = subprocess.run(["umount", m.mount_point], capture_output=True, timeout=30)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", m.mount_point], capture_output=True, timeout=30)
        for device, backing in self.devices.items():
            sysfs = Path("/sys/block") / device.name / "loop" / "backing_file"
            try:
                current = sysfs.read_text().strip()
            except OSError:
                current = ""
            if current == str(backing.resolve()):
                subprocess.run(["losetup", "-d", str(device)], capture_output=True, timeout=30)
            elif current:
                problems.append(f"{device} is now backed by {current}, not ours: left alone")
            leaked = run("losetup", "-j", str(backing)).strip()
            if leaked:
                problems.append(f"leaked loop device: {leaked}")
        leftover = [m.mount_point for m in MountTable().all() if self._ours(m)]
        if leftover:
            problems.append(f"leaked mounts: {leftover}")
        self.devices.clear()
        assert not problems, "; ".join(problems)
