"""Wiring of `cinder-csi node`: configuration, host objects, the Node service and the server."""

from __future__ import annotations

import argparse
import logging

from cinder_csi import version
from cinder_csi.config import load_cloud_config
from cinder_csi.csi.identity import IdentityService
from cinder_csi.csi.server import CSIServer
from cinder_csi.host import CommandRunner, DeviceFinder, MetadataSource, Mounter
from cinder_csi.host.metadata import DEFAULT_METADATA_URL
from cinder_csi.metrics import HealthChecks, Metrics, serve_http
from cinder_csi.node.service import NodeOptions, NodeService

log = logging.getLogger(__name__)


def build_node_service(args: argparse.Namespace) -> NodeService:
    config = load_cloud_config(args.cloud_config, require_auth=False)
    runner = CommandRunner()
    metadata = MetadataSource(
        search_order=config.metadata.search_order,
        node_id=args.node_id or None,
        availability_zone=args.availability_zone or None,
        metadata_url=args.metadata_url or DEFAULT_METADATA_URL,
        request_timeout=config.metadata.request_timeout,
        config_drive_dir=args.config_drive_dir,
        runner=runner,
    )
    options = NodeOptions(
        kubelet_root=args.kubelet_root,
        max_volumes_per_node=config.block_storage.node_volume_attach_limit,
        with_topology=args.with_topology,
        additional_topology=dict(args.additional_topology),
        default_call_timeout=args.default_call_timeout,
    )
    return NodeService(
        metadata=metadata,
        finder=DeviceFinder(by_id_dir=args.by_id_dir, sys_root=args.sys_root, runner=runner),
        mounter=Mounter(runner, sys_root=args.sys_root),
        options=options,
    )


def node_identity(driver_name: str, node: NodeService) -> IdentityService:
    # The plugin as a whole has a controller service (in another pod); upstream's node plugin
    # says so too, and csi-sanity asks the node socket to decide whether to run its
    # controller-backed node specs.
    return IdentityService(driver_name, has_controller=True, probe=node.probe)


def run(args: argparse.Namespace) -> int:
    node = build_node_service(args)
    log.info("starting node plugin %s %s, kubelet root %s", args.driver_name, version(),
             args.kubelet_root)
    identity = node_identity(args.driver_name, node)
    metrics = Metrics(args.driver_name)
    server = CSIServer(args.endpoint, identity=identity, node=node, metrics=metrics)
    checks = HealthChecks()
    checks.register("metadata", node.probe)
    checks.register("operations", node.locks.health)
    http = serve_http(args.http_endpoint, metrics, checks) if args.http_endpoint else None
    try:
        server.run_until_signal()
    finally:
        if http is not None:
            http.stop()
    return 0
