"""The loop-device helper's cleanup (tests/integration/loop_devices.py): it cannot leak."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from cinder_csi.host.mountinfo import MountTable
from tests.integration.loop_devices import MIB, LoopDevices, run, sha256
from tests.tools import LOOP

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP)]


def test_cleanup_after_failure_leaves_nothing(tmp_path: Path) -> None:
    devices = LoopDevices(tmp_path)
    backing: Path | None = None
    with pytest.raises(RuntimeError), devices:
        device = devices.create(64 * MIB)
        backing = devices.devices[device]
        run("mkfs.ext4", "-q", str(device))
        target = devices.directory("mnt")
        run("mount", str(device), str(target))
        bind = devices.directory("bind")
        run("mount", "--bind", str(target), str(bind))
        raise RuntimeError("test body failed")
    assert backing is not None
    assert run("losetup", "-j", str(backing)) == ""
    assert not [m for m in MountTable().all() if m.mount_point.startswith(str(tmp_path))]


def test_devices_are_sparse_and_blank(loops: LoopDevices) -> None:
    device = loops.create(64 * MIB)
    assert device.is_block_device()
    assert loops.devices[device].stat().st_blocks == 0
    assert sha256(device) == hashlib.sha256(bytes(64 * MIB)).hexdigest()
