"""CreateVolume + DeleteVolume throughput through the real gRPC socket, against the OpenStack
stand-in with Cinder-like latency (each status change takes 0.2-0.6 s, every API call 20 ms).

Prints volumes per second at several concurrency levels and the ratio to sequential calls.
Usage: python -m bench create [--volumes 48] [--concurrency 1,8,32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import ControllerHandle, start_controller
from tests.integration.csi_helpers import create_request


def run_level(
    handle: ControllerHandle, prefix: str, volumes: int, concurrency: int
) -> tuple[float, list[float]]:
    controller = handle.controller
    latencies: list[float] = []

    def one(index: int) -> None:
        started = time.monotonic()
        volume = controller.CreateVolume(create_request(f"{prefix}-{index}"), timeout=120).volume
        latencies.append(time.monotonic() - started)
        controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id),
                                timeout=120)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(volumes)))
    return time.monotonic() - started, latencies


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench create", description=__doc__)
    parser.add_argument("--volumes", type=int, default=48)
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        openstack = OpenStackStandIn(root / "os", transition_delay=(0.2, 0.6))
        openstack.start()
        openstack.faults.delay(0.02, service="volume")
        conf = root / "cloud.conf"
        conf.write_text(openstack.cloud_conf())
        server, handle = start_controller(conf, root / "c.sock")
        try:
            print(f"{'concurrency':>11} {'volumes':>7} {'seconds':>8} {'vol/s':>7} "
                  f"{'p50 create s':>12} {'p95 create s':>12} {'speed-up':>8}")
            base = None
            for level in levels:
                seconds, lat = run_level(handle, f"bench-c{level}", args.volumes, level)
                rate = args.volumes / seconds
                base = base or rate
                p95 = sorted(lat)[int(0.95 * (len(lat) - 1))]
                print(f"{level:>11} {args.volumes:>7} {seconds:>8.2f} {rate:>7.2f} "
                      f"{statistics.median(lat):>12.2f} {p95:>12.2f} {rate / base:>7.1f}x")
            leftovers = [v for v in openstack.volumes() if v["name"].startswith("bench-")]
            print(f"volumes left behind: {len(leftovers)}")
        finally:
            handle.channel.close()
            server.stop(0)
            openstack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
