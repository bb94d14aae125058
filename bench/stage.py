"""NodeStage of a fresh 10 GiB volume against mkfs + mount run by hand on the same device.

The OpenStack stand-in (in this process) attaches each volume as a real loop device with a
by-id link; our controller and node plugin are child processes. For each filesystem and run,
one fresh volume is attached and both are timed on it, in alternating order: NodeStage (the
RPC round trip: find and check the device, probe that it is blank, mkfs, mount), and by hand
``mkfs`` + ``mount`` with the same mkfs options the plugin uses (ext4: -E nodiscard,
lazy_itable_init=1; xfs: -K) and the same mount options (xfs: nouuid), so the ratio is the
plugin's own overhead. Between the two the device is unmounted and wiped (wipefs, first and
last MiB zeroed) so each starts blank. The table gives medians (one slow mkfs moves a mean a
lot) and the ratio of the medians; the JSON keeps every run. Needs root. Mounts and loop
devices are removed on every exit path.

Usage: python -m bench stage [--runs 3] [--fs ext4,xfs] [--gib 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import grpc

from bench.processes import start_controller, start_node
from bench.results import Report, mean
from cinder_csi.csi import csi_pb2, csi_pb2_grpc
from cinder_csi.standins.openstack import OpenStackStandIn
from cinder_csi.standins.openstack.standin import ADMIN_PASSWORD, ADMIN_PROJECT, ADMIN_USER

TARGET_RATIO = 1.2
GIB = 1024**3
MIB = 1024**2
# What the plugin runs (host/filesystems.py) and the options it mounts with (node/service.py
# FS_MOUNT_OPTIONS), so that by hand does the same work.
MKFS = {"ext4": ["mkfs.ext4", "-q", "-E", "nodiscard,lazy_itable_init=1"],
        "xfs": ["mkfs.xfs", "-K", "-q"]}
MOUNT_OPTIONS = {"ext4": [], "xfs": ["-o", "nouuid"]}


def milliseconds(values: Sequence[float]) -> str:
    """"median (min - max)" in ms."""
    return f"{median(values) * 1000:.1f} ({min(values) * 1000:.1f} - {max(values) * 1000:.1f})"


def capability(fs: str) -> Any:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs),
        access_mode=csi_pb2.VolumeCapability.AccessMode(
            mode=csi_pb2.VolumeCapability.AccessMode.Mode.SINGLE_NODE_WRITER))


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=300)


def wipe(device: Path) -> None:
    """Blank again: no signature, first and last MiB zero (what the plugin checks)."""
    run("wipefs", "-a", str(device))
    size = int(subprocess.run(["blockdev", "--getsize64", str(device)], check=True,
                              capture_output=True, text=True, timeout=30).stdout)
    fd = os.open(device, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\0" * MIB, 0)
        os.pwrite(fd, b"\0" * MIB, size - MIB)
        os.fsync(fd)
    finally:
        os.close(fd)


def by_hand(device: Path, fs: str, target: Path) -> float:
    target.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    run(*MKFS[fs], str(device))
    run("mount", "-t", fs, *MOUNT_OPTIONS[fs], str(device), str(target))
    seconds = time.perf_counter() - started
    run("umount", str(target))
    return seconds


def unmount_below(root: Path) -> None:
    prefix = str(root) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mount in reversed(mounts):
        if mount.startswith(prefix):
            subprocess.run(["umount", "-l", mount], capture_output=True, timeout=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench stage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fs", default="ext4,xfs")
    parser.add_argument("--gib", type=int, default=10)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("stage needs root (loop devices, mkfs, mount); nothing measured")
        return 2
    report = Report("stage", ["fs", "NodeStage ms median (min - max)",
                              "mkfs + mount by hand ms median (min - max)",
                              "ratio of medians", "ratio of means", f"target <= {TARGET_RATIO}x"])
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stage-") as tmp:
        root = Path(tmp)
        openstack = OpenStackStandIn(root / "openstack", transition_delay=(0.01, 0.02))
        children = []
        try:
            openstack.start()
            (root / "by-id").mkdir()
            server = openstack.add_server("node-0", "nova", by_id_dir=root / "by-id")
            conf = root / "cloud.conf"
            conf.write_text(f"[Global]\nauth-url = {openstack.auth_url}\nusername = {ADMIN_USER}"
                            f"\npassword = {ADMIN_PASSWORD}\ntenant-name = {ADMIN_PROJECT}\n"
                            "domain-name = Default\nregion = RegionOne\n")
            node, node_socket = start_node(root, node_id=server)
            children.append(node)
            controller, controller_socket = start_controller(root, conf)
            children.append(controller)
            ctrl: Any = csi_pb2_grpc.ControllerStub(  # type: ignore[no-untyped-call]
                grpc.insecure_channel(f"unix://{controller_socket}"))
            plugin: Any = csi_pb2_grpc.NodeStub(  # type: ignore[no-untyped-call]
                grpc.insecure_channel(f"unix://{node_socket}"))
            for fs in args.fs.split(","):
                staged, hand = [], []
                for index in range(args.runs):
                    cap = capability(fs)
                    volume = ctrl.CreateVolume(csi_pb2.CreateVolumeRequest(
                        name=f"bench-{fs}-{index}", volume_capabilities=[cap],
                        capacity_range=csi_pb2.CapacityRange(required_bytes=args.gib * GIB)),
                        timeout=60).volume
                    ctrl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
                        volume_id=volume.volume_id, node_id=server, volume_capability=cap),
                        timeout=60)
                    device = (root / "by-id" / f"virtio-{volume.volume_id[:20]}").resolve()
                    staging = root / "kubelet" / "staging" / f"{fs}-{index}"
                    staging.mkdir(parents=True)
                    stage_request = csi_pb2.NodeStageVolumeRequest(
                        volume_id=volume.volume_id, staging_target_path=str(staging),
                        volume_capability=cap)

                    def stage(request: Any = stage_request, where: Path = staging) -> float:
                        started = time.perf_counter()
                        plugin.NodeStageVolume(request, timeout=300)
                        seconds = time.perf_counter() - started
                        plugin.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(
                            volume_id=request.volume_id, staging_target_path=str(where)),
                            timeout=60)
                        return seconds

                    manual = root / "manual" / f"{fs}-{index}"
                    if index % 2 == 0:
                        staged.append(stage())
                        wipe(device)
                        hand.append(by_hand(device, fs, manual))
                    else:
                        hand.append(by_hand(device, fs, manual))
                        wipe(device)
                        staged.append(stage())
                    ctrl.ControllerUnpublishVolume(csi_pb2.ControllerUnpublishVolumeRequest(
                        volume_id=volume.volume_id, node_id=server), timeout=60)
                    ctrl.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id),
                                      timeout=60)
                ratio = median(staged) / median(hand)
                report.add(fs, milliseconds(staged), milliseconds(hand), f"{ratio:.2f}x",
                           f"{mean(staged) / mean(hand):.2f}x",
                           "met" if ratio <= TARGET_RATIO else "missed")
                figures[fs] = {"node_stage_s": staged, "by_hand_s": hand,
                               "node_stage_median_s": median(staged),
                               "by_hand_median_s": median(hand), "ratio": ratio,
                               "ratio_of_means": mean(staged) / mean(hand)}
        finally:
            unmount_below(root)
            for child in reversed(children):
                child.stop()
            openstack.stop()  # detaches every loop device it made
    report.figures = figures
    report.note(f"fresh {args.gib} GiB volumes on loop devices (sparse files), {args.runs} "
                "runs per filesystem, order alternating; NodeStage timed as the RPC round "
                "trip from this process; by hand: the same mkfs and mount options")
    report.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
