"""Hostile CSI input against the real controller and node processes: every answer has a
specific code, input the cloud would refuse never reaches it, the servers keep serving, and
nothing appears outside the kubelet root. Examples first, then generated input (hypothesis)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import openstack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.csi_helpers import GIB, create_request, mount_cap
from tests.reliability.driver_env import (
    PluginProcess,
    audit,
    module_controller,
    module_standin,
    node_process,
    outcome,
    specific,
    wipe,
)

C = grpc.StatusCode
TOPOLOGY_KEY = "topology.cinder.csi.openstack.org/zone"

standin = module_standin("hostile")
plugin = module_controller("hostile")


def zone_topology(zone: str) -> csi_pb2.TopologyRequirement:
    return csi_pb2.TopologyRequirement(preferred=[csi_pb2.Topology(segments={TOPOLOGY_KEY: zone})])


# Requests the cloud would refuse (or could not even be sent as a URL), and the code each gets
# before any cloud call.
REFUSED: dict[str, tuple[Callable[[], Any], grpc.StatusCode]] = {
    "name of 256 characters": (lambda: create_request("p" * 256), C.INVALID_ARGUMENT),
    "name of 100,000 characters": (lambda: create_request("p" * 100_000), C.INVALID_ARGUMENT),
    "name with NUL": (lambda: create_request("pvc-\0-x"), C.INVALID_ARGUMENT),
    "name with a line break": (lambda: create_request("pvc-\n"), C.INVALID_ARGUMENT),
    "name outside the BMP": (lambda: create_request("pvc-\U0001F4BE"), C.INVALID_ARGUMENT),
    "name with white space around": (lambda: create_request(" pvc-1"), C.INVALID_ARGUMENT),
    "type of 300 characters": (
        lambda: create_request("pvc-t", parameters={"type": "t" * 300}), C.INVALID_ARGUMENT),
    "zone of 300 characters": (
        lambda: create_request("pvc-z", parameters={"availability": "z" * 300}),
        C.INVALID_ARGUMENT),
    "topology zone of 300 characters": (
        lambda: create_request("pvc-tz", accessibility_requirements=zone_topology("z" * 300)),
        C.INVALID_ARGUMENT),
    "metadata value of 256 characters": (
        lambda: create_request("pvc-m", parameters={"csi.storage.k8s.io/pvc/name": "n" * 256}),
        C.INVALID_ARGUMENT),
    "size beyond Cinder's integer": (lambda: create_request("pvc-big", 2**32), C.OUT_OF_RANGE),
    "negative size": (lambda: csi_pb2.CreateVolumeRequest(
        name="pvc-neg", capacity_range=csi_pb2.CapacityRange(required_bytes=-GIB),
        volume_capabilities=create_request("x").volume_capabilities), C.INVALID_ARGUMENT),
    "source snapshot that is no UUID": (lambda: create_request(
        "pvc-src", volume_content_source=csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id="../../x"))),
        C.NOT_FOUND),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_input_the_cloud_would_refuse_is_refused_before_any_cloud_call(
    standin: OpenStackStandIn, plugin: PluginProcess, case: str
) -> None:
    build, code = REFUSED[case]
    sent_before = len(standin.requests())
    result = specific(outcome(lambda: plugin.controller.CreateVolume(build(), timeout=20)),
                      case)
    assert result.code == code, result
    assert len(standin.requests()) == sent_before, "the request reached the cloud"
    assert len(result.details) < 1000, "the error echoes the whole input"
    assert plugin.identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value
    audit(standin, {})


@pytest.mark.parametrize("call", ["snapshot name", "snapshot metadata", "modify type",
                                  "expand beyond Cinder", "listing token", "list snapshots"])
def test_other_calls_refuse_what_the_cloud_would_refuse(
    standin: OpenStackStandIn, plugin: PluginProcess, call: str
) -> None:
    volume_id = "0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f"
    requests: dict[str, tuple[Callable[[], Any], grpc.StatusCode]] = {
        "snapshot name": (lambda: plugin.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(name="s" * 256, source_volume_id=volume_id),
            timeout=20), C.INVALID_ARGUMENT),
        "snapshot metadata": (lambda: plugin.controller.CreateSnapshot(
            csi_pb2.CreateSnapshotRequest(
                name="snap", source_volume_id=volume_id,
                parameters={"csi.storage.k8s.io/volumesnapshot/name": "\0"}),
            timeout=20), C.INVALID_ARGUMENT),
        "modify type": (lambda: plugin.controller.ControllerModifyVolume(
            csi_pb2.ControllerModifyVolumeRequest(
                volume_id=volume_id, mutable_parameters={"type": "t" * 1000}),
            timeout=20), C.INVALID_ARGUMENT),
        "expand beyond Cinder": (lambda: plugin.controller.ControllerExpandVolume(
            csi_pb2.ControllerExpandVolumeRequest(
                volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(
                    required_bytes=2**62)), timeout=20), C.OUT_OF_RANGE),
        "listing token": (lambda: plugin.controller.ListVolumes(
            csi_pb2.ListVolumesRequest(starting_token="eyJpZCI6ICIuLi8uLiIsICJhdCI6ICIyMDIwLTAxLTAxIn0"),
            timeout=20), C.ABORTED),
        "list snapshots": (lambda: plugin.controller.ListSnapshots(
            csi_pb2.ListSnapshotsRequest(starting_token="x" * 10_000), timeout=20), C.ABORTED),
    }
    send, code = requests[call]
    sent_before = len(standin.requests())
    result = specific(outcome(send), call)
    assert result.code == code, result
    assert len(standin.requests()) == sent_before, "the request reached the cloud"


# ---- generated input (hypothesis) ------------------------------------------------------------

# Modest example counts: the whole suite must stay fast. Each example is a real RPC.
EXAMPLES = 60
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=400),
    st.sampled_from(["", "\0", "../../etc", "a/b", "..", ".", " pvc ", "p" * 100_000,
                     "\U0001F4BE", "pvc-\n-x", "0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f"]),
)
IDS = st.one_of(st.uuids().map(str), HOSTILE_TEXT)
# Valid values are drawn as often as hostile ones, so that calls get past the first check and
# reach the cloud, the devices and the mounts.
MODES = st.one_of(st.integers(min_value=1, max_value=7), st.integers(min_value=-1, max_value=20))


@st.composite
def capabilities(draw: st.DrawFn) -> csi_pb2.VolumeCapability:
    cap = csi_pb2.VolumeCapability(
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=draw(MODES)))
    kind = draw(st.sampled_from(["mount", "mount", "block", "none"]))
    if kind == "mount":
        cap.mount.fs_type = draw(st.one_of(st.sampled_from(["", "ext4", "xfs"]),
                                           st.sampled_from(["ntfs", "ext4\0"]),
                                           st.text(max_size=20)))
        cap.mount.mount_flags.extend(draw(st.lists(st.one_of(
            st.sampled_from(["bind", "remount", "ro", "noatime", "rw,suid"]),
            st.text(max_size=20)), max_size=3)))
    elif kind == "block":
        cap.block.SetInParent()
    return cap


MAPS = st.one_of(st.just({}), st.dictionaries(HOSTILE_TEXT, HOSTILE_TEXT, max_size=5),
                 st.sampled_from([
                     {f"k{i}": "v" * 100 for i in range(2000)},
                     {"type": "t" * 300}, {"csi.storage.k8s.io/pvc/name": "\0"},
                     {"availability": "az-b"}, {"csi.storage.k8s.io/pvc/name": "claim"},
                 ]))


@st.composite
def create_requests(draw: st.DrawFn) -> csi_pb2.CreateVolumeRequest:
    valid_name = st.from_regex(r"pvc-[a-z0-9]{1,12}", fullmatch=True)
    request = csi_pb2.CreateVolumeRequest(
        name=draw(st.one_of(valid_name, valid_name, HOSTILE_TEXT)),
        parameters=draw(MAPS), secrets=draw(MAPS),
        volume_capabilities=draw(st.lists(capabilities(), min_size=draw(st.sampled_from(
            [1, 1, 0])), max_size=2)),
    )
    if draw(st.booleans()):
        request.capacity_range.required_bytes = draw(st.one_of(
            st.integers(min_value=0, max_value=8 * GIB), INT64))
        request.capacity_range.limit_bytes = draw(st.one_of(st.just(0), INT64))
    source = draw(st.sampled_from(["none", "none", "snapshot", "volume"]))
    if source == "snapshot":
        request.volume_content_source.snapshot.snapshot_id = draw(IDS)
    elif source == "volume":
        request.volume_content_source.volume.volume_id = draw(IDS)
    if draw(st.booleans()):
        request.accessibility_requirements.requisite.add().segments.update(draw(MAPS))
    return request


def controller_calls(plugin: PluginProcess) -> st.SearchStrategy[tuple[str, Any]]:
    stub = plugin.controller
    return st.one_of(
        create_requests().map(lambda r: ("CreateVolume", partial(stub.CreateVolume, r))),
        st.builds(csi_pb2.DeleteVolumeRequest, volume_id=IDS, secrets=MAPS).map(
            lambda r: ("DeleteVolume", partial(stub.DeleteVolume, r))),
        st.builds(csi_pb2.ControllerPublishVolumeRequest, volume_id=IDS, node_id=IDS,
                  volume_capability=capabilities(), readonly=st.booleans(),
                  volume_context=MAPS).map(
            lambda r: ("ControllerPublishVolume", partial(stub.ControllerPublishVolume, r))),
        st.builds(csi_pb2.ControllerUnpublishVolumeRequest, volume_id=IDS, node_id=IDS).map(
            lambda r: ("ControllerUnpublishVolume",
                       partial(stub.ControllerUnpublishVolume, r))),
        st.builds(csi_pb2.ControllerExpandVolumeRequest, volume_id=IDS,
                  capacity_range=st.builds(csi_pb2.CapacityRange, required_bytes=INT64,
                                           limit_bytes=INT64)).map(
            lambda r: ("ControllerExpandVolume", partial(stub.ControllerExpandVolume, r))),
        st.builds(csi_pb2.ListVolumesRequest, max_entries=st.integers(-5, 5),
                  starting_token=HOSTILE_TEXT).map(
            lambda r: ("ListVolumes", partial(stub.ListVolumes, r))),
        st.builds(csi_pb2.CreateSnapshotRequest, name=HOSTILE_TEXT, source_volume_id=IDS,
                  parameters=MAPS).map(
            lambda r: ("CreateSnapshot", partial(stub.CreateSnapshot, r))),
        st.builds(csi_pb2.ListSnapshotsRequest, max_entries=st.integers(-5, 5),
                  starting_token=HOSTILE_TEXT, snapshot_id=IDS, source_volume_id=IDS).map(
            lambda r: ("ListSnapshots", partial(stub.ListSnapshots, r))),
        st.builds(csi_pb2.ValidateVolumeCapabilitiesRequest, volume_id=IDS,
                  volume_capabilities=st.lists(capabilities(), max_size=2),
                  parameters=MAPS).map(
            lambda r: ("ValidateVolumeCapabilities",
                       partial(stub.ValidateVolumeCapabilities, r))),
        st.builds(csi_pb2.GetCapacityRequest, parameters=MAPS).map(
            lambda r: ("GetCapacity", partial(stub.GetCapacity, r))),
    )


def test_generated_controller_input_gets_specific_answers(
    standin: OpenStackStandIn, plugin: PluginProcess
) -> None:
    standin.add_server("node-h", "az-a")
    created: set[str] = set()

    @SETTINGS
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        method, call = data.draw(controller_calls(plugin))
        result = specific(outcome(lambda: call(timeout=10)), method)
        if method == "CreateVolume" and result.ok:
            created.add(call.args[0].name)
        assert plugin.identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value

    one()
    # Every volume the cloud holds was answered OK to a CreateVolume; no name twice.
    audit(standin, dict.fromkeys(created, 1))
    wipe(standin, plugin.controller)


@pytest.fixture(scope="module")
def node_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PluginProcess, Path]]:
    """`cinder-csi node` over an empty fake /sys and a no-op udevadm: a device search misses
    quickly and nudges nothing on the machine running the tests."""
    workdir = tmp_path_factory.mktemp("hostile-node")
    kubelet, by_id, sys_root, bin_dir = (workdir / d for d in ("kubelet", "by-id", "sys", "bin"))
    for directory in (kubelet, by_id, sys_root, bin_dir, workdir / "outside"):
        directory.mkdir()
    (kubelet / "escape").symlink_to(workdir / "outside")
    (bin_dir / "udevadm").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "udevadm").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
    with node_process(workdir / "run", "0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f", by_id, kubelet,
                      "--sys-root", str(sys_root), "--default-call-timeout", "1",
                      env=env) as node:
        yield node, workdir


def paths(kubelet: Path, outside: Path) -> st.SearchStrategy[str]:
    inside = st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,3}", fullmatch=True).map(
        lambda rel: str(kubelet / rel))
    return st.one_of(inside, st.sampled_from([
        str(kubelet), str(kubelet / ".." / "outside" / "x"), str(kubelet / "escape" / "y"),
        str(outside / "z"), "relative/path", "", "/", "/etc/passwd", str(kubelet) + "\0x",
        str(kubelet / ("d" * 300) / "x"), str(kubelet / "a") * 400,
        str(kubelet / "pods" / "p" / "volumes" / "mount"),
    ]), HOSTILE_TEXT)


def node_calls(node: PluginProcess, workdir: Path) -> st.SearchStrategy[tuple[str, Any]]:
    stub, where = node.node, paths(workdir / "kubelet", workdir / "outside")
    return st.one_of(
        st.builds(csi_pb2.NodeStageVolumeRequest, volume_id=IDS, staging_target_path=where,
                  volume_capability=capabilities(), volume_context=MAPS,
                  publish_context=MAPS, secrets=MAPS).map(
            lambda r: ("NodeStageVolume", partial(stub.NodeStageVolume, r))),
        st.builds(csi_pb2.NodeUnstageVolumeRequest, volume_id=IDS,
                  staging_target_path=where).map(
            lambda r: ("NodeUnstageVolume", partial(stub.NodeUnstageVolume, r))),
        st.builds(csi_pb2.NodePublishVolumeRequest, volume_id=IDS, staging_target_path=where,
                  target_path=where, volume_capability=capabilities(),
                  readonly=st.booleans(), volume_context=MAPS).map(
            lambda r: ("NodePublishVolume", partial(stub.NodePublishVolume, r))),
        st.builds(csi_pb2.NodeUnpublishVolumeRequest, volume_id=IDS, target_path=where).map(
            lambda r: ("NodeUnpublishVolume", partial(stub.NodeUnpublishVolume, r))),
        st.builds(csi_pb2.NodeGetVolumeStatsRequest, volume_id=IDS, volume_path=where).map(
            lambda r: ("NodeGetVolumeStats", partial(stub.NodeGetVolumeStats, r))),
        st.builds(csi_pb2.NodeExpandVolumeRequest, volume_id=IDS, volume_path=where,
                  capacity_range=st.builds(csi_pb2.CapacityRange, required_bytes=INT64)).map(
            lambda r: ("NodeExpandVolume", partial(stub.NodeExpandVolume, r))),
    )


def tree(root: Path, skip: Path) -> set[str]:
    found = set()
    for directory, dirs, files in os.walk(root):
        if Path(directory) == skip:
            dirs.clear()
            continue
        found.update(os.path.join(directory, name) for name in [*dirs, *files])
    return found


def test_generated_node_input_gets_specific_answers_and_stays_inside_the_kubelet_root(
    node_host: tuple[PluginProcess, Path],
) -> None:
    node, workdir = node_host
    before = tree(workdir, skip=workdir / "kubelet")

    @settings(SETTINGS, max_examples=EXAMPLES + EXAMPLES // 2)
    @given(data=st.data())
    def one(data: st.DataObject) -> None:
        method, call = data.draw(node_calls(node, workdir))
        specific(outcome(lambda: call(timeout=3)), method)
        assert node.identity.Probe(csi_pb2.ProbeRequest(), timeout=5).ready.value

    one()
    appeared = tree(workdir, skip=workdir / "kubelet") - before
    assert not {p for p in appeared if not p.startswith(str(workdir / "run"))}, appeared
    assert not os.listdir(workdir / "outside")


def test_unpublish_never_deletes_what_it_did_not_make(
    node_host: tuple[PluginProcess, Path],
) -> None:
    node, workdir = node_host
    data = workdir / "kubelet" / "pods" / "other" / "volumes" / "empty-dir" / "data.db"
    data.parent.mkdir(parents=True)
    data.write_text("another pod's data")
    result = specific(outcome(lambda: node.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="0b3a9d2e-5f41-4c8e-9a77-1d2c3b4a5e6f",
                                           target_path=str(data)), timeout=5)))
    assert data.read_text() == "another pod's data", result


def test_stage_onto_a_path_the_file_system_refuses_is_a_specific_error(
    node_host: tuple[PluginProcess, Path],
) -> None:
    node, workdir = node_host
    volume = "3f6a1c2e-8b4d-4e5f-9a0b-1c2d3e4f5a6b"
    # A device the plugin can prove is the volume (its backing file names it)...
    device = workdir / "fakedev"
    device.write_bytes(b"")
    (workdir / "sys" / "block" / "fakedev" / "loop").mkdir(parents=True)
    (workdir / "sys" / "block" / "fakedev" / "loop" / "backing_file").write_text(
        f"/srv/{volume}.img\n")
    link = workdir / "by-id" / f"virtio-{volume[:20]}"
    link.symlink_to(device)
    blocker = workdir / "kubelet" / "plugins" / "a-file"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("")
    try:
        # ...staged where a file stands in the way of the directory: the caller's to fix.
        blocked = specific(outcome(lambda: node.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume, staging_target_path=str(blocker / "globalmount"),
                volume_capability=mount_cap()), timeout=5)))
        assert blocked.code == C.FAILED_PRECONDITION, blocked
        too_long = specific(outcome(lambda: node.node.NodeStageVolume(
            csi_pb2.NodeStageVolumeRequest(
                volume_id=volume, staging_target_path=str(workdir / "kubelet" / ("d" * 256)),
                volume_capability=mount_cap()), timeout=5)))
        assert too_long.code == C.INVALID_ARGUMENT, too_long
    finally:
        link.unlink()


def test_a_cluster_id_cinder_would_refuse_stops_the_controller_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cinder_csi.cli", "controller", "--cluster", "c" * 300,
         "--endpoint", f"unix://{tmp_path / 'c.sock'}"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "--cluster is 300 characters long" in result.stderr


def test_the_stand_in_refuses_what_cinder_refuses(standin: OpenStackStandIn) -> None:
    """The other half of the examples above: what the driver now refuses first is what the
    cloud would answer 414 or 400 to (so a regression shows as a cloud error, not silence)."""
    long_url = f"{standin.base_url}/volume/v3/volumes/detail?name={'n' * 9000}"
    try:
        urllib.request.urlopen(long_url, timeout=10)
        status = 200
    except urllib.error.HTTPError as error:
        status = error.code
    assert status == 414
    cloud = standin.clouds_yaml()["clouds"]["sandbox"]
    conn = openstack.connect(auth=cloud["auth"], region_name=cloud["region_name"],
                             load_yaml_config=False, load_envvars=False)
    try:
        for body in ({"name": "n" * 256, "size": 1}, {"name": "a\nb", "size": 1},
                     {"size": 2**31}, {"size": 1, "metadata": {"k": "v" * 256}}):
            answer = conn.block_storage.post("/volumes", json={"volume": body},
                                             raise_exc=False)
            assert answer.status_code == 400, (body, answer.text)
    finally:
        conn.close()
    assert not standin.volumes()
