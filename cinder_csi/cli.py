"""`cinder-csi controller | node | sandbox | version`: flags as the upstream driver spells them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cinder_csi import DEFAULT_DRIVER_NAME, errors, version

log = logging.getLogger("cinder_csi")

DEFAULT_ENDPOINT = "unix:///csi/csi.sock"


def go_bool(text: str) -> bool:
    """Upstream's flags are Go flags: --with-topology=false and friends."""
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT", DEFAULT_ENDPOINT),
                        help="CSI endpoint: unix:///path or tcp://host:port")
    parser.add_argument("--cloud-config", action="append", type=Path, default=[],
                        help="cloud.conf file (repeatable; later files override earlier ones)")
    parser.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME)
    parser.add_argument("--http-endpoint", default="",
                        help="host:port serving /metrics and /healthz (off when empty)")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"))
    parser.add_argument("--log-file", type=Path, default=None)
    parser.add_argument("--v", type=int, default=0, help="klog-style verbosity (accepted)")


def _add_controller(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("controller", help="serve the CSI Identity and Controller services")
    _add_common(parser)
    parser.add_argument("--cloud", default=os.environ.get("OS_CLOUD"),
                        help="clouds.yaml entry to use instead of [Global] credentials")
    parser.add_argument("--clouds-file", default=None, help="clouds.yaml path")
    parser.add_argument("--cluster", default="kubernetes",
                        help="cluster id stored in volume metadata; scopes idempotency and sweeps")
    parser.add_argument("--with-topology", type=go_bool, nargs="?", const=True, default=True)
    parser.add_argument("--max-workers", type=int, default=64,
                        help="gRPC worker threads (a CreateVolume may hold one for minutes)")
    parser.set_defaults(run=run_controller)


def _add_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("node", help="serve the CSI Identity and Node services")
    _add_common(parser)
    parser.add_argument("--node-id", default="", help="Nova server UUID (bare metal)")
    parser.add_argument("--availability-zone", default="", help="zone of this node (bare metal)")
    parser.add_argument("--additional-topology", action="append", type=key_value, default=[],
                        help="extra topology segment key=value (repeatable)")
    parser.add_argument("--with-topology", type=go_bool, nargs="?", const=True, default=True)
    parser.add_argument("--kubelet-root", type=Path, default=Path("/var/lib/kubelet"))
    parser.add_argument("--by-id-dir", type=Path, default=Path("/dev/disk/by-id"))
    parser.add_argument("--sys-root", type=Path, default=Path("/sys"))
    parser.add_argument("--metadata-url", default=None,
                        help="metadata service URL of meta_data.json")
    parser.add_argument("--config-drive-dir", type=Path, default=None,
                        help="a directory holding openstack/latest/meta_data.json")
    parser.set_defaults(run=run_node)


def _add_sandbox(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sandbox", help="run everything on local stand-ins")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where sockets, logs and config go (default: a new temp dir)")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-file", type=Path, default=None)
    parser.set_defaults(run=run_sandbox)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinder-csi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_controller(sub)
    _add_node(sub)
    _add_sandbox(sub)
    version_parser = sub.add_parser("version", help="print the version")
    version_parser.set_defaults(run=lambda _args: print(version()) or 0)
    return parser


def setup_logging(level: str, log_file: Path | None) -> None:
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    from cinder_csi.cloud.connection import quiet_library_loggers

    quiet_library_loggers()


def run_controller(args: argparse.Namespace) -> int:
    from cinder_csi.cloud.connection import Cloud
    from cinder_csi.config import load_cloud_config
    from cinder_csi.controller import ControllerOptions, ControllerService
    from cinder_csi.identity import IdentityService
    from cinder_csi.metrics import Metrics, serve_http
    from cinder_csi.server import CSIServer

    config = load_cloud_config(args.cloud_config, cloud=args.cloud, clouds_file=args.clouds_file)
    log.info("starting controller %s %s, cloud %r", args.driver_name, version(), config.auth)
    cloud = Cloud(config.auth)
    options = ControllerOptions(
        cluster_id=args.cluster,
        with_topology=args.with_topology,
        ignore_volume_az=config.block_storage.ignore_volume_az,
        node_volume_attach_limit=config.block_storage.node_volume_attach_limit,
    )
    identity = IdentityService(args.driver_name, has_controller=True, probe=cloud.probe)
    metrics = Metrics(args.driver_name)
    server = CSIServer(
        args.endpoint, identity=identity, controller=ControllerService(cloud, options),
        max_workers=args.max_workers, metrics=metrics,
    )
    http = None
    if args.http_endpoint:
        http = serve_http(args.http_endpoint, metrics, healthz=lambda: cloud.probe() is None)
    try:
        server.run_until_signal()
    finally:
        if http is not None:
            http.stop()
    return 0


def run_node(args: argparse.Namespace) -> int:
    from cinder_csi.node_main import run

    return run(args)


def run_sandbox(args: argparse.Namespace) -> int:
    from cinder_csi.sandbox import run

    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "version":
        setup_logging(args.log_level, getattr(args, "log_file", None))
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except errors.InvalidArgument as exc:
        log.error("%s", exc)
        print(f"cinder-csi: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
