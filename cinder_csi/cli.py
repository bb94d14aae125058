"""`cinder-csi controller | node | sandbox | version`: flags as the upstream driver spells them."""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cinder_csi import DEFAULT_DRIVER_NAME, errors, version
from cinder_csi.deadline import DEFAULT_TIMEOUT_S
from cinder_csi.logs import setup_logging
from cinder_csi.signals import SignalStop

if TYPE_CHECKING:
    from cinder_csi.csi.server import CSIServer
    from cinder_csi.loop.registry import RegistrySpec
    from cinder_csi.loop.runner import LoopOptions
    from cinder_csi.metrics import HealthChecks, Metrics

log = logging.getLogger("cinder_csi")

DEFAULT_ENDPOINT = "unix:///csi/csi.sock"
DEFAULT_CLUSTER = "kubernetes"


def go_bool(text: str) -> bool:
    """Upstream's flags are Go flags: --with-topology=false and friends."""
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true", "yes", "on"):
        return True
    if lowered in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float:
    """Seconds from a Go duration ("15s", "1m30s", "500ms") or a plain number of seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    total, rest = 0.0, text.strip()
    pattern = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
    while rest:
        match = pattern.match(rest)
        if match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 15s or 1m30s")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        rest = rest[match.end():]
    return total


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


def name_list(text: str) -> list[str]:
    """A Go string-slice flag: comma-separated, each value optionally double-quoted (upstream's
    manifests write --cloud-name="zone-one"; pflag reads that as zone-one)."""
    try:
        rows = list(csv.reader([text], skipinitialspace=True))
    except csv.Error as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return [value.strip() for value in (rows[0] if rows else [""])]


def _add_logging(parser: argparse.ArgumentParser, default_level: str = "INFO") -> None:
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", default_level),
                        help=f"DEBUG, INFO, WARNING or ERROR (default: $LOG_LEVEL or "
                             f"{default_level})")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="write the log here instead of to stderr")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=os.environ.get("CSI_ENDPOINT", DEFAULT_ENDPOINT),
                        help="CSI endpoint: unix:///path or tcp://host:port (default: "
                             f"$CSI_ENDPOINT or {DEFAULT_ENDPOINT})")
    parser.add_argument("--cloud-config", action="append", type=Path, default=[],
                        help="cloud.conf file (repeatable; later files override earlier ones)")
    parser.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME,
                        help=f"CSI driver name (default: {DEFAULT_DRIVER_NAME})")
    parser.add_argument("--http-endpoint", default="",
                        help="host:port serving /metrics and /healthz (off when empty)")
    _add_logging(parser)
    parser.add_argument("--v", type=int, default=0,
                        help="klog verbosity of the upstream driver; accepted and ignored "
                             "(use --log-level)")
    parser.add_argument("--default-call-timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a CSI call may take when its caller sent no deadline "
                             f"(default: {DEFAULT_TIMEOUT_S:g})")


def _add_controller(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("controller", help="serve the CSI Identity and Controller services")
    _add_common(parser)
    parser.add_argument("--cloud-name", action="extend", type=name_list, default=[],
                        help='serve the cloud of this cloud.conf section: "" for [Global], '
                             'NAME for [Global "NAME"]; requests pick one with the secret key '
                             '"cloud" (repeatable or comma-separated; default: every [Global] '
                             "section)")
    parser.add_argument("--cloud", default=os.environ.get("OS_CLOUD"),
                        help="clouds.yaml entry for the default cloud, instead of [Global] "
                             "credentials (default: $OS_CLOUD)")
    parser.add_argument("--clouds-file", default=None,
                        help="clouds.yaml path (default: $OS_CLIENT_CONFIG_FILE, then "
                             "openstacksdk's search path)")
    parser.add_argument("--cluster", default=None,
                        help="cluster id stored in volume metadata; scopes idempotency and "
                             f"sweeps (default: {DEFAULT_CLUSTER}; orphans are deleted only "
                             "when it is set)")
    parser.add_argument("--with-topology", type=go_bool, nargs="?", const=True, default=True,
                        help="report volume zones as CSI topology (default: true)")
    parser.add_argument("--max-workers", type=int, default=64,
                        help="gRPC worker threads; a CreateVolume may hold one for minutes "
                             "(default: 64)")
    parser.add_argument("--with-provisioner", type=go_bool, nargs="?", const=True,
                        default=False,
                        help="also run the watch loop (provisioner, attacher, resizer) "
                             "in-process (default: false)")
    _add_loop(parser)
    _add_registry(parser, prefix="--registry-")
    parser.add_argument("--registry", type=go_bool, nargs="?", const=True, default=False,
                        help="keep the image registry's claim true (with --with-provisioner; "
                             "default: false)")
    parser.set_defaults(run=run_controller)


def _add_loop(parser: argparse.ArgumentParser) -> None:
    """The watch loop's flags, named as the upstream sidecars name them."""
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig path (default: $KUBECONFIG, else in-cluster config)")
    parser.add_argument("--worker-threads", type=int, default=100,
                        help="workers per queue; attach and detach have separate pools "
                             "(default: 100)")
    parser.add_argument("--kube-api-qps", type=float, default=300.0,
                        help="client-side rate limit of Kubernetes API calls (default: 300)")
    parser.add_argument("--kube-api-burst", type=int, default=600,
                        help="burst above --kube-api-qps (default: 600)")
    parser.add_argument("--leader-election", type=go_bool, nargs="?", const=True, default=False,
                        help="take the Lease named after the driver before working; losing it "
                             "exits (default: false)")
    parser.add_argument("--leader-election-namespace", default=None,
                        help="namespace of the Lease (default: the pod's)")
    parser.add_argument("--leader-election-lease-duration", type=go_duration, default=15.0,
                        help="how long a silent leader's lease stays valid (default: 15s)")
    parser.add_argument("--leader-election-renew-deadline", type=go_duration, default=10.0,
                        help="how long the leader may fail to renew before it stops; it stops "
                             "starting volume calls then, before anyone may take over "
                             "(default: 10s)")
    parser.add_argument("--leader-election-retry-period", type=go_duration, default=2.0,
                        help="how often to renew or try to acquire (default: 2s)")
    parser.add_argument("--leader-election-clock-skew", type=float, default=0.0,
                        help="for tests: seconds added to this replica's wall clock in the "
                             "times it writes to the Lease; lease ages never read it "
                             "(default: 0)")
    parser.add_argument("--resync-period", type=float, default=600.0,
                        help="seconds between full re-deliveries of the caches (default: 600)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds a CSI call of the loop may take (default: 180)")
    parser.add_argument("--duties", default=None,
                        help="which duties to run, comma-separated (default all: claims,"
                             "volumes,attachments,resizer,orphans)")
    parser.add_argument("--orphan-sweep-interval", type=float, default=600.0,
                        help="seconds between looks for Cinder volumes of this cluster that "
                             "have no PV (default: 600)")
    parser.add_argument("--orphan-grace", type=float, default=3600.0,
                        help="seconds a volume must look orphaned before it counts "
                             "(default: 3600)")
    parser.add_argument("--delete-orphans", type=go_bool, nargs="?", const=True, default=False,
                        help="delete orphaned volumes after the grace period (default: false, "
                             "report them)")


def _add_registry(parser: argparse.ArgumentParser, prefix: str = "--") -> None:
    parser.add_argument(f"{prefix}namespace", dest="registry_namespace",
                        default="openshift-image-registry",
                        help="namespace of the image registry's claim "
                             "(default: openshift-image-registry)")
    parser.add_argument(f"{prefix}claim", dest="registry_claim", default="image-registry-storage",
                        help="name of the registry's claim (default: image-registry-storage)")
    parser.add_argument(f"{prefix}size", dest="registry_size", default="100Gi",
                        help="size of a claim made for the registry (default: 100Gi)")
    parser.add_argument(f"{prefix}storage-class", dest="registry_storage_class", default=None,
                        help="StorageClass of the claim (default: the cluster's default class)")
    parser.add_argument(f"{prefix}volume-id", dest="registry_volume_id", default=None,
                        help="adopt this pre-created Cinder volume instead of provisioning one")
    parser.add_argument(f"{prefix}fstype", dest="registry_fstype", default="xfs",
                        help="filesystem of an adopted volume (default: xfs)")


def _add_provisioner(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("provisioner",
                            help="run the watch loop against any CSI controller socket")
    parser.add_argument("--csi-address", required=True,
                        help="the CSI controller's endpoint (unix:///path or a socket path)")
    parser.add_argument("--http-endpoint", default="",
                        help="host:port serving /metrics and /healthz (off when empty)")
    parser.add_argument("--cluster", default=None,
                        help="cluster id the controller tags volumes with; the orphan sweep "
                             f"looks at this cluster's volumes only (default: {DEFAULT_CLUSTER}; "
                             "orphans are deleted only when it is set)")
    _add_logging(parser)
    _add_loop(parser)
    parser.set_defaults(run=run_provisioner)


def _add_registry_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("registry", help="ensure or show the image registry's volume")
    parser.add_argument("action", choices=("ensure", "status"),
                        help="ensure: make the claim (or adopt the volume) once; status: show "
                             "it and what is wrong")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"),
                        help="kubeconfig path (default: $KUBECONFIG, else in-cluster config)")
    parser.add_argument("--csi-address", default=None,
                        help="the CSI controller's socket; checks a pre-created --volume-id")
    parser.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME,
                        help=f"CSI driver name (default: {DEFAULT_DRIVER_NAME})")
    _add_logging(parser, default_level="WARNING")
    _add_registry(parser)
    parser.set_defaults(run=run_registry)


def _add_node(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("node", help="serve the CSI Identity and Node services")
    _add_common(parser)
    parser.add_argument("--cloud-name", action="extend", type=name_list, default=[],
                        help="upstream's cloud selection; accepted and ignored: the node "
                             "plugin talks to no cloud")
    parser.add_argument("--node-id", default="",
                        help="Nova server UUID of this node (bare metal; default: from the "
                             "config drive or metadata service)")
    parser.add_argument("--availability-zone", default="",
                        help="zone of this node (bare metal; default: from the metadata)")
    parser.add_argument("--additional-topology", action="append", type=key_value, default=[],
                        help="extra topology segment key=value (repeatable)")
    parser.add_argument("--with-topology", type=go_bool, nargs="?", const=True, default=True,
                        help="report this node's zone as CSI topology (default: true)")
    parser.add_argument("--kubelet-root", type=Path, default=Path("/var/lib/kubelet"),
                        help="staging and publish paths must lie below it "
                             "(default: /var/lib/kubelet)")
    parser.add_argument("--by-id-dir", type=Path, default=Path("/dev/disk/by-id"),
                        help="where the volumes' by-id links appear (default: /dev/disk/by-id)")
    parser.add_argument("--sys-root", type=Path, default=Path("/sys"),
                        help="sysfs root, for device serials, sizes and rescans (default: /sys)")
    parser.add_argument("--metadata-url", default=None,
                        help="metadata service URL of meta_data.json (default: the OpenStack "
                             "metadata service)")
    parser.add_argument("--config-drive-dir", type=Path, default=None,
                        help="a directory holding openstack/latest/meta_data.json (default: "
                             "mount the config-2 drive)")
    parser.set_defaults(run=run_node)


def _add_sandbox(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("sandbox", help="run everything on local stand-ins")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where sockets, logs and config go (default: a new temp dir)")
    parser.add_argument("--nodes", type=int, default=2,
                        help="simulated nodes, spread over two zones (default: 2)")
    parser.add_argument("--no-loop", action="store_true",
                        help="run everything but our watch loop (to try other provisioners)")
    parser.add_argument("--demo", action="store_true",
                        help="walk a PVC and a pod through the whole flow, then stop")
    _add_logging(parser)
    parser.set_defaults(run=run_sandbox)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cinder-csi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_controller(sub)
    _add_node(sub)
    _add_provisioner(sub)
    _add_registry_command(sub)
    _add_sandbox(sub)
    version_parser = sub.add_parser("version", help="print the version")
    version_parser.set_defaults(run=lambda _args: print(version()) or 0)
    return parser


def cluster_id(args: argparse.Namespace) -> str:
    return str(args.cluster) if args.cluster is not None else DEFAULT_CLUSTER
def flag_reference(parser: argparse.ArgumentParser | None = None
                   ) -> dict[str, list[tuple[str, str | None]]]:
    """Every subcommand's arguments (flags, or the positional's name) and their help text:
    what ``cinder-csi <command> --help`` prints, for tests and docs."""
    reference: dict[str, list[tuple[str, str | None]]] = {}
    # argparse has no public way to list a parser's actions; this is the one place we look.
    for action in (parser or build_parser())._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            reference[name] = [("", helps.get(name))] + [
                ("/".join(a.option_strings) or a.dest, a.help)
                for a in sub._actions if not isinstance(a, argparse._HelpAction)
            ]
    return reference


def loop_options(args: argparse.Namespace, csi_address: str) -> LoopOptions:
    # Imported here: `cinder-csi node` must not load the Kubernetes client.
    from cinder_csi.loop.runner import ALL_DUTIES, LoopOptions

    if args.leader_election:
        from cinder_csi.loop.kube.leader import LeaderElectionConfig

        try:  # renew deadline < lease duration: what fencing relies on
            LeaderElectionConfig("check", "check", "check", args.leader_election_lease_duration,
                                 args.leader_election_renew_deadline,
                                 args.leader_election_retry_period)
        except ValueError as exc:
            raise errors.InvalidArgument(f"leader election timing: {exc}") from None
    duties = ALL_DUTIES if args.duties is None else tuple(
        d.strip() for d in args.duties.split(",") if d.strip())
    return LoopOptions(
        csi_address=csi_address, kubeconfig=args.kubeconfig, workers=args.worker_threads,
        kube_qps=args.kube_api_qps, kube_burst=args.kube_api_burst,
        resync_period=args.resync_period, csi_timeout=args.timeout,
        leader_election=args.leader_election,
        leader_election_namespace=args.leader_election_namespace,
        lease_duration=args.leader_election_lease_duration,
        renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period,
        clock_skew=args.leader_election_clock_skew,
        duties=duties,
        cluster=cluster_id(args), cluster_explicit=args.cluster is not None,
        orphan_interval=args.orphan_sweep_interval,
        orphan_grace=args.orphan_grace, delete_orphans=args.delete_orphans,
    )


def registry_spec(args: argparse.Namespace) -> RegistrySpec:
    from cinder_csi.loop.registry import RegistrySpec

    return RegistrySpec(
        namespace=args.registry_namespace, claim=args.registry_claim, size=args.registry_size,
        storage_class=args.registry_storage_class, volume_id=args.registry_volume_id,
        fstype=args.registry_fstype, driver=args.driver_name,
    )


def run_controller(args: argparse.Namespace) -> int:
    from cinder_csi.cloud.clouds import CloudSet
    from cinder_csi.config import load_cloud_config
    from cinder_csi.controller.service import MANIFEST, ControllerOptions, ControllerService
    from cinder_csi.csi.identity import IdentityService
    from cinder_csi.csi.server import CSIServer
    from cinder_csi.csi.validation import cinder_text
    from cinder_csi.metrics import HealthChecks, Metrics, serve_http

    # Every volume carries the cluster id in its metadata; refuse one Cinder would refuse.
    cinder_text(cluster_id(args), "--cluster")
    config = load_cloud_config(args.cloud_config, cloud=args.cloud, clouds_file=args.clouds_file,
                               cloud_names=args.cloud_name or None)
    log.info("starting controller %s %s, clouds %r", args.driver_name, version(),
             list(config.clouds.values()))
    clouds = CloudSet.from_settings(config.clouds)
    options = ControllerOptions(
        cluster_id=cluster_id(args),
        with_topology=args.with_topology,
        ignore_volume_az=config.block_storage.ignore_volume_az,
        node_volume_attach_limit=config.block_storage.node_volume_attach_limit,
        default_call_timeout=args.default_call_timeout,
    )
    identity = IdentityService(args.driver_name, has_controller=True, probe=clouds.probe,
                               manifest=MANIFEST)
    metrics = Metrics(args.driver_name)
    controller = ControllerService(clouds, options)
    server = CSIServer(
        args.endpoint, identity=identity, controller=controller,
        max_workers=args.max_workers, metrics=metrics,
    )
    # Liveness: fails when the cloud client or a worker is wedged, not when the cloud is
    # merely down (a restart would not cure that).
    checks = HealthChecks()
    checks.register("cloud", clouds.health)
    checks.register("operations", controller.locks.health)
    loop_thread = None
    loop_stop = threading.Event()
    loop_result: list[int] = []
    if args.with_provisioner:
        # Adds the loop's own checks (lease, caches synced, work queues) to `checks`.
        loop_thread = _start_loop(args, server, metrics, loop_stop, loop_result, checks)
    http = serve_http(args.http_endpoint, metrics, checks) if args.http_endpoint else None
    try:
        server.run_until_signal()
    finally:
        loop_stop.set()
        if loop_thread is not None:
            loop_thread.join(timeout=30)
        if http is not None:
            http.stop()
    return loop_result[0] if loop_result else 0


def _start_loop(
    args: argparse.Namespace, server: CSIServer, metrics: Metrics,
    stop: threading.Event, result: list[int], checks: HealthChecks,
) -> threading.Thread:
    """The watch loop beside our controller: it calls us through our own socket, as the
    sidecars would, and losing the leader lease stops the whole process."""
    from cinder_csi.loop.registry import RegistryDuty
    from cinder_csi.loop.runner import WatchLoop

    options = replace(loop_options(args, args.endpoint), driver_in_process=True)
    if args.registry:
        spec = registry_spec(args)
        options = replace(options, extra=(lambda ctx: RegistryDuty(ctx, spec),))
    loop = WatchLoop(options, registry=metrics.registry, health=checks)
    server.start()

    def run() -> None:
        code = loop.run(stop)
        result.append(code)
        if code != 0:
            os.kill(os.getpid(), signal.SIGTERM)  # lease lost: exit, and let the pod restart

    thread = threading.Thread(target=run, name="watch-loop", daemon=True)
    thread.start()
    return thread


def run_provisioner(args: argparse.Namespace) -> int:
    from cinder_csi.loop.runner import WatchLoop

    options = replace(loop_options(args, args.csi_address), http_endpoint=args.http_endpoint)
    stop = threading.Event()
    on_signal = SignalStop(stop)
    try:
        return WatchLoop(options).run(stop)
    finally:
        on_signal.restore()


def run_registry(args: argparse.Namespace) -> int:
    from cinder_csi.loop.csi_client import CSIClient
    from cinder_csi.loop.kube.client import KubeOptions, build_clients
    from cinder_csi.loop.kube.events import EventRecorder
    from cinder_csi.loop.registry import CHECK_TIMEOUT_S, RegistryVolume

    spec = registry_spec(args)
    csi = CSIClient(args.csi_address, timeout=CHECK_TIMEOUT_S) if args.csi_address else None
    clients = build_clients(KubeOptions(kubeconfig=args.kubeconfig))
    try:
        recorder = EventRecorder(clients.rest(), "cinder-csi-registry")
        volume = RegistryVolume(clients.rest(), spec, csi=csi, recorder=recorder)
        status = volume.ensure() if args.action == "ensure" else volume.status()
        print(status.render())
        return 0 if status.ready or (args.action == "ensure" and not status.problems) else 1
    finally:
        clients.close()
        if csi is not None:
            csi.close()


def run_node(args: argparse.Namespace) -> int:
    from cinder_csi.node.wiring import run

    return run(args)


def run_sandbox(args: argparse.Namespace) -> int:
    from cinder_csi.sandbox.environment import run

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
