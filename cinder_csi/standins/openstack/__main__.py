"""``python -m cinder_csi.standins.openstack``: the OpenStack stand-in on its own, until a signal.

Prints the auth URL, then one ``server NAME ID ZONE`` line per ``--servers`` entry.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from cinder_csi.standins.openstack.standin import OpenStackStandIn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cinder_csi.standins.openstack",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--region", default="RegionOne")
    parser.add_argument("--servers", default="",
                        help="comma-separated name:zone pairs, e.g. node-0:az-a,node-1:az-b")
    parser.add_argument("--availability-zones", default="",
                        help="Cinder zones (default: the servers' zones, else 'nova')")
    parser.add_argument("--by-id-dir", type=Path, default=None,
                        help="give every server real loop devices linked from this directory")
    args = parser.parse_args(argv)

    servers = [item.split(":", 1) for item in args.servers.split(",") if item]
    if any(len(pair) != 2 for pair in servers):
        parser.error("--servers takes name:zone pairs")
    zones = [z for z in args.availability_zones.split(",") if z]
    if not zones:
        zones = list(dict.fromkeys(zone for _, zone in servers)) or ["nova"]

    standin = OpenStackStandIn(args.state_dir, host=args.host, port=args.port,
                               region=args.region, availability_zones=zones)
    # The handler takes no lock (an Event's set() in a handler can hang the main thread inside
    # that Event's wait()): it records the signal, and the main thread polls.
    stopping: list[int] = []

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    standin.start()
    try:
        print(standin.auth_url, flush=True)
        for name, zone in servers:
            server_id = standin.add_server(name, zone, by_id_dir=args.by_id_dir)
            print(f"server {name} {server_id} {zone}", flush=True)
        while not stopping:
            time.sleep(0.2)
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
