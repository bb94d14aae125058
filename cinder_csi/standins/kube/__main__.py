"""A stand-in for the Kubernetes API (and the cluster's volume controllers) over plain HTTP.

No real kube-apiserver runs on the test machines, so the provisioner's watch loops, the
``kubernetes`` client and ``kubectl`` are pointed at this instead. It is deliberately strict
(real status codes, reasons, resourceVersion conflicts, 410 on expired watches) so that it
surfaces the bugs a real cluster would.

    with KubeStandIn() as kube:
        kube.write_kubeconfig(tmp / "kubeconfig")
        kube.add_node("node-1", {"topology.cinder.csi.openstack.org/zone": "nova"})
        kube.store.create("storageclasses", {...})
        kube.faults.throttle(3, path="/persistentvolumeclaims")
        kube.add_kubelet("node-1", node_plugin_socket, tmp / "kubelet")

Run on its own: ``python -m cinder_csi.standins.kube_api --port 8080 --kubeconfig kc.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Sequence
from types import FrameType

from cinder_csi.standins.kube.controllers.kubelet import PUBLISH_PATH_ANNOTATION, Kubelet
from cinder_csi.standins.kube.errors import ApiError
from cinder_csi.standins.kube.faults import Faults
from cinder_csi.standins.kube.standin import CONTROLLERS, DEFAULT_CONTROLLERS, KubeStandIn
from cinder_csi.standins.kube.store import Store

__all__ = [
    "CONTROLLERS",
    "DEFAULT_CONTROLLERS",
    "PUBLISH_PATH_ANNOTATION",
    "ApiError",
    "Faults",
    "KubeStandIn",
    "Kubelet",
    "Store",
    "main",
]


def _node(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    labels = dict(item.split("=", 1) for item in rest.split(",") if "=" in item)
    return name, labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cinder_csi.standins.kube_api",
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
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with KubeStandIn(args.port, controllers=controllers, event_window=args.event_window) as kube:
        for spec in args.node:
            name, labels = _node(spec)
            kube.add_node(name, labels)
        path = kube.write_kubeconfig(args.kubeconfig)
        logging.getLogger("kube_api").info("serving %s, kubeconfig %s", kube.url, path)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
