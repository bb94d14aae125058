"""The in-process probe (libblkid) against the blkid program on loop devices this test creates
(root only): for every kind of content the "never format data" rule guards against, it reports
what `blkid -p -o export` reports; and the probe catches what the zero check of the device's
ends cannot."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cinder_csi.errors import NotFound
from cinder_csi.host.commands import CommandRunner
from cinder_csi.host.filesystems import Filesystems
from cinder_csi.host.signatures import BlkidCommandSignatures, LibblkidSignatures
from tests.integration.loop_devices import MIB, LoopDevices, run
from tests.tools import LOOP, require_tools

pytestmark = [pytest.mark.root, pytest.mark.tools(*LOOP)]

SIZE = 320 * MIB  # xfs needs 300 MiB


def write_at(device: Path, offset: int, data: bytes) -> None:
    with device.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def with_tool(tool: str, *argv: str, input_text: str | None = None) -> Callable[[Path], None]:
    def make(device: Path) -> None:
        require_tools(tool)
        subprocess.run([tool, *argv, str(device)], check=True, capture_output=True, text=True,
                       timeout=120, input=input_text)
    return make


def gpt_without_primary_header(device: Path) -> None:
    with_tool("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel",
              input_text="label: gpt\n,32M\n")(device)
    write_at(device, 512, bytes(512))  # only the backup header at the end is left


def ext4_with_xfs_sector(device: Path, tmp: Path) -> None:
    """Two filesystems' superblocks at once: blkid calls that ambivalent."""
    require_tools("mkfs.xfs", "mkfs.ext4")
    image = tmp / "xfs.img"
    with image.open("wb") as handle:
        handle.truncate(SIZE)
    run("mkfs.xfs", "-q", str(image))
    run("mkfs.ext4", "-q", str(device))
    write_at(device, 0, image.read_bytes()[:512])


KINDS: dict[str, Callable[[Path], None]] = {
    "blank": lambda device: None,
    "ext4": with_tool("mkfs.ext4", "-q", "-L", "label with spaces"),
    "xfs": with_tool("mkfs.xfs", "-q"),
    "swap": with_tool("mkswap"),
    "MBR": with_tool("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel",
                     input_text="label: dos\n,32M,L\n"),
    "GPT": with_tool("sfdisk", "--quiet", "--no-reread", "--no-tell-kernel",
                     input_text="label: gpt\n,32M\n"),
    "GPT, primary header wiped": gpt_without_primary_header,
    "LUKS": with_tool("cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
                      "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                      "--key-file", "-", input_text="pw"),
    "LVM": with_tool("pvcreate", "--config", "devices { use_devicesfile = 0 }", "-y"),
    # VMFS's volume header lies at 1 MiB: past the zero check of the first MiB.
    "VMFS at 1 MiB": lambda device: write_at(device, MIB, b"\x0d\xd0\x01\xc0"),
}


@pytest.fixture
def libblkid() -> LibblkidSignatures:
    loaded = LibblkidSignatures.load()
    assert loaded is not None, "libblkid.so.1 (util-linux) cannot be loaded"
    return loaded


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_in_process_probe_reports_what_blkid_p_reports(
    loops: LoopDevices, libblkid: LibblkidSignatures, kind: str
) -> None:
    device = loops.create(SIZE)
    KINDS[kind](device)
    program = BlkidCommandSignatures(CommandRunner()).read(device)
    in_process = libblkid.read(device)
    assert in_process.ambivalent == program.ambivalent
    # blkid's export format escapes some characters of values; names and types are plain.
    assert sorted(in_process.values) == sorted(program.values)
    for key in ("TYPE", "PTTYPE", "USAGE", "UUID"):
        assert in_process.values.get(key) == program.values.get(key)
    assert bool(in_process.values) == (kind != "blank")


def test_ambivalent_is_reported_as_blkid_reports_it(
    loops: LoopDevices, libblkid: LibblkidSignatures, tmp_path: Path
) -> None:
    device = loops.create(SIZE)
    ext4_with_xfs_sector(device, tmp_path)
    assert BlkidCommandSignatures(CommandRunner()).read(device).ambivalent
    assert libblkid.read(device).ambivalent
    found = Filesystems().probe(device)
    assert not found.blank and "AMBIVALENT" in found.signatures


def test_a_signature_past_the_zero_checked_ends_is_not_blank(loops: LoopDevices) -> None:
    device = loops.create(SIZE)
    KINDS["VMFS at 1 MiB"](device)
    found = Filesystems().probe(device)
    assert not found.unknown_data  # the ends are zero: only the probe saw it
    assert not found.blank and found.signatures.get("TYPE") == "VMFS_volume_member"


def test_a_missing_device_is_not_found(libblkid: LibblkidSignatures, tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        libblkid.read(tmp_path / "nothing-here")
