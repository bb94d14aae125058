"""``python -m cinder_csi.standins.kube``: the Kubernetes stand-in on its own, until a signal.

    python -m cinder_csi.standins.kube --port 8080 --kubeconfig kc.yaml --node node-0:zone=a
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Sequence
from types import FrameType

from cinder_csi.standins.kube.standin import CONTROLLERS, DEFAULT_CONTROLLERS, KubeStandIn

log = logging.getLogger("cinder_csi.standins.kube")


def _node(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    labels = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
    return name, labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cinder_csi.standins.kube",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", required=True, help="where to write a kubeconfig")
    parser.add_argument(
        "--controllers",
        default=",".join(DEFAULT_CONTROLLERS),
        help=f"comma-separated, from {','.join(CONTROLLERS)} (empty for none)",
    )
    parser.add_argument("--event-window", type=int, default=1000)
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME[:k=v,...]",
        help="add a Ready node (repeatable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    controllers = [c for c in args.controllers.split(",") if c]
    # The handler takes no lock (an Event's set() in a handler can hang the main thread inside
    # that Event's wait()): it records the signal, and the main thread polls.
    done: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with KubeStandIn(args.port, controllers=controllers, event_window=args.event_window) as kube:
        for spec in args.node:
            name, labels = _node(spec)
            kube.add_node(name, labels)
        path = kube.write_kubeconfig(args.kubeconfig)
        log.info("serving %s, kubeconfig %s", kube.url, path)
        while not done:
            time.sleep(0.2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
