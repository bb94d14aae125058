"""The sanity suite's environment: one node on real loop devices for the whole session.

The environment is `tests.integration.node_env`: the OpenStack stand-in, our controller on its
own socket, and our node plugin on another, the way the driver is deployed (and the way
csi-sanity is pointed at it: --csi.endpoint = node socket, --csi.controllerendpoint =
controller socket). Per test, like csi-sanity, the mount and staging directories are made with
a plain mkdir (leftovers fail the next test) and removed afterwards, and every volume, snapshot
and publication the test made is undone; the teardown also checks the cloud holds no volume or
snapshot the test left behind.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cinder_csi.csi import csi_pb2_grpc
from tests.integration.node_env import NodeEnv, node_env, unmount_below
from tests.sanity.helpers import (
    ControllerCap,
    NodeCap,
    PluginService,
    Resources,
    SanityContext,
    channel,
    controller_supports,
    node_supports,
    plugin_supports,
)


@dataclass
class SanityEnv:
    env: NodeEnv
    root: Path
    controller_channel: grpc.Channel
    node_channel: grpc.Channel

    @property
    def controller(self) -> csi_pb2_grpc.ControllerStub:
        return csi_pb2_grpc.ControllerStub(self.controller_channel)

    @property
    def node(self) -> csi_pb2_grpc.NodeStub:
        return csi_pb2_grpc.NodeStub(self.node_channel)

    @property
    def identity(self) -> csi_pb2_grpc.IdentityStub:
        """Identity on the node endpoint: what csi-sanity's sc.Conn reaches."""
        return csi_pb2_grpc.IdentityStub(self.node_channel)

    @property
    def controller_identity(self) -> csi_pb2_grpc.IdentityStub:
        return csi_pb2_grpc.IdentityStub(self.controller_channel)

    def cloud_objects(self) -> set[str]:
        volumes = {f"volume {v['id']} ({v['name']})" for v in self.env.openstack.volumes()}
        snapshots = {f"snapshot {s['id']} ({s['name']})" for s in self.env.openstack.snapshots()}
        return volumes | snapshots


@pytest.fixture(scope="session")
def sanity_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SanityEnv]:
    root = tmp_path_factory.mktemp("sanity")
    with node_env(root) as env:
        controller_channel = channel(str(env.csi.socket))
        node_channel = channel(str(root / "node.sock"))  # where node_env serves the node
        try:
            yield SanityEnv(env, root, controller_channel, node_channel)
        finally:
            controller_channel.close()
            node_channel.close()


@pytest.fixture
def sc(sanity_env: SanityEnv) -> Iterator[SanityContext]:
    """csi-sanity's per-spec set-up: fresh mount and staging directories below the kubelet
    root (the node refuses paths outside it)."""
    base = sanity_env.env.kubelet / "csi-sanity"
    base.mkdir(exist_ok=True)
    mount, staging = base / "mount", base / "staging"
    os.mkdir(mount)  # plain mkdir, as csi-sanity: it is an error if the directory exists
    os.mkdir(staging)
    yield SanityContext(
        controller=sanity_env.controller,
        node=sanity_env.node,
        identity=sanity_env.identity,
        controller_identity=sanity_env.controller_identity,
        target_path=str(mount),
        staging_path=str(staging),
    )
    leftovers = []
    for path in (mount, staging):
        try:
            os.rmdir(path)
        except OSError as exc:
            leftovers.append(f"{path}: {exc}")
    if leftovers:
        # Leave the next test a clean slate, then report what this one left behind.
        unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail("mount/staging directories not empty after the test: " + "; ".join(leftovers))


def _resources(sanity_env: SanityEnv, sc: SanityContext, *, with_node: bool
               ) -> Iterator[Resources]:
    before = sanity_env.cloud_objects()
    resources = Resources(sc, with_node=with_node)
    yield resources
    resources.cleanup()
    leaked = sorted(sanity_env.cloud_objects() - before)
    assert not leaked, f"the test left these behind in the cloud: {leaked}"


@pytest.fixture
def r(sanity_env: SanityEnv, sc: SanityContext) -> Iterator[Resources]:
    """Resources with controller and node clients (the Controller and Node groups)."""
    yield from _resources(sanity_env, sc, with_node=True)


@pytest.fixture
def rc(sanity_env: SanityEnv, sc: SanityContext) -> Iterator[Resources]:
    """Resources without a node client (csi-sanity's ExpandVolume and ModifyVolume groups)."""
    yield from _resources(sanity_env, sc, with_node=False)


@dataclass(frozen=True)
class NodeCaps:
    """What csi-sanity's Node Service BeforeEach finds out about the driver."""

    provides_controller_service: bool
    controller_publish: bool
    node_stage: bool
    node_volume_stats: bool
    node_expansion: bool
    controller_expansion: bool
    single_node_multi_writer: bool


@pytest.fixture
def node_caps(sc: SanityContext) -> NodeCaps:
    # csi-sanity asks the Identity of the *node* endpoint whether a controller service exists.
    # Our node plugin's Identity does not say so (see test_node_identity_provides_controller_
    # service, which holds that finding); to still run the node flows the way csi-sanity does
    # against a driver that says so, the controller endpoint's answer counts as well.
    provides = plugin_supports(sc.identity, PluginService.CONTROLLER_SERVICE) or plugin_supports(
        sc.controller_identity, PluginService.CONTROLLER_SERVICE
    )
    return NodeCaps(
        provides_controller_service=provides,
        controller_publish=provides
        and controller_supports(sc.controller, ControllerCap.PUBLISH_UNPUBLISH_VOLUME),
        node_stage=node_supports(sc.node, NodeCap.STAGE_UNSTAGE_VOLUME),
        node_volume_stats=node_supports(sc.node, NodeCap.GET_VOLUME_STATS),
        node_expansion=node_supports(sc.node, NodeCap.EXPAND_VOLUME),
        controller_expansion=provides
        and controller_supports(sc.controller, ControllerCap.EXPAND_VOLUME),
        single_node_multi_writer=node_supports(sc.node, NodeCap.SINGLE_NODE_MULTI_WRITER),
    )
