"""Find and verify real loop devices through by-id links, as the stand-in Nova makes them.

Only devices found on the first try are searched for here: a miss would make the finder nudge
the real node (SCSI host scan, udev trigger); the miss path is covered by unit tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import FailedPrecondition
from cinder_csi.host.devices import DeviceFinder
from tests.integration.loop_devices import MIB, LoopDevices
from tests.tools import LOOP

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP)]

VOLUME = "5d8c2b1a-7e4f-4a3b-9c6d-2e1f0a9b8c7d"


def attach(loops: LoopDevices, device: Path) -> DeviceFinder:
    by_id = loops.directory("by-id")
    (by_id / f"virtio-{VOLUME[:20]}").symlink_to(device)
    return DeviceFinder(by_id_dir=by_id)


def test_find_and_verify_through_the_by_id_link(loops: LoopDevices) -> None:
    device = loops.create(64 * MIB, name=VOLUME)  # its backing file names the volume
    finder = attach(loops, device)
    assert finder.find(VOLUME, Deadline.after(5)) == device
    finder.verify(VOLUME, device)
    assert finder.device_size(device) == 64 * MIB


def test_verify_refuses_a_link_to_another_loop_device(loops: LoopDevices) -> None:
    mine, other = loops.create(64 * MIB), loops.create(64 * MIB)
    finder = attach(loops, other)
    with pytest.raises(FailedPrecondition) as info:
        finder.verify(VOLUME, mine)
    assert str(mine) in str(info.value) and str(other) in str(info.value)


def test_verify_refuses_a_device_nothing_names(loops: LoopDevices) -> None:
    device = loops.create(64 * MIB)
    finder = DeviceFinder(by_id_dir=loops.directory("by-id"))
    with pytest.raises(FailedPrecondition, match="cannot prove"):
        finder.verify(VOLUME, device)
