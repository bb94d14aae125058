"""The registry volume on `cinder-csi sandbox`, both ways, and bad input that changes nothing.

dynamic: the sandbox's controller runs the registry duty; the claim from manifests/ is Bound,
forced to Retain, and the registry pod's data follows it from node-0 to node-1.
pre-created: `cinder-csi registry ensure --volume-id` adopts a volume made with openstacksdk,
checked through the sandbox controller's CSI socket (`--csi-address`); deleting the claim keeps
the Cinder volume, and ensure brings the claim back on the same one.

The sandbox's controller ignores volume zones (volumes attach across zones there), so the
driver reports none and any zone will do; the zone check is held to a second controller on
the same cloud that reports zones.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import openstack.config
import openstack.connection
import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cinder_csi.standins.kube.client import api_client
from tests.e2e.sandbox_helpers import RunningSandbox, running_sandbox, until

T = TypeVar("T")
REGISTRY_NS = "openshift-image-registry"
CLAIM = "image-registry-storage"
PUBLISH = "sandbox.cinder-csi/publish-path-"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSandbox]:
    with running_sandbox(tmp_path_factory.mktemp("registry")) as running:
        yield running


def core(sandbox: RunningSandbox) -> Any:
    return k8s.CoreV1Api(api_client(sandbox.state_dir / "kubeconfig"))


def cloud(sandbox: RunningSandbox) -> Any:
    config = openstack.config.OpenStackConfig(
        config_files=[str(sandbox.state_dir / "clouds.yaml")], load_envvars=False)
    return openstack.connection.Connection(config=config.get_one(cloud="sandbox"))


@pytest.fixture(scope="module")
def zoned_socket(sandbox: RunningSandbox,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A second controller on the sandbox's cloud, without ``ignore-volume-az``."""
    state = tmp_path_factory.mktemp("zoned")
    conf = state / "cloud.conf"
    text = (sandbox.state_dir / "cloud.conf").read_text()
    assert "ignore-volume-az = true" in text
    conf.write_text(text.replace("ignore-volume-az = true", "ignore-volume-az = false"))
    conf.chmod(0o600)
    socket = state / "controller.sock"
    with open(state / "controller.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cinder_csi.cli", "controller", "--endpoint",
             f"unix://{socket}", "--cloud-config", str(conf), "--cluster", "sandbox"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        until(lambda: socket.exists() or None, "the zoned controller's socket")
        yield socket
    finally:
        process.terminate()
        process.wait(30)


def registry_cli(
    sandbox: RunningSandbox, action: str, *args: str, socket: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    socket = socket or sandbox.state_dir / "controller.sock"
    return subprocess.run(
        [sys.executable, "-m", "cinder_csi.cli", "registry", action,
         "--kubeconfig", str(sandbox.state_dir / "kubeconfig"),
         "--csi-address", f"unix://{socket}", *args],
        capture_output=True, text=True, timeout=120, check=False)


def run_pod(api: Any, name: str, node: str, claim: str, namespace: str) -> Path:
    api.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{"name": "registry", "image": "registry:2"}],
                 "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]}})

    def running() -> Any:
        pod = api.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase == "Running" else None

    pod = until(running, f"pod {name} to run")
    paths = [v for k, v in (pod.metadata.annotations or {}).items() if k.startswith(PUBLISH)]
    return Path(paths[0])


def delete_pod(api: Any, name: str, namespace: str) -> None:
    api.delete_namespaced_pod(name, namespace)

    def gone() -> bool | None:
        try:
            api.read_namespaced_pod(name, namespace)
        except ApiException as exc:
            return True if exc.status == 404 else None
        return None

    until(gone, f"pod {name} to go")


def new_namespace(api: Any, name: str) -> None:
    api.create_namespace({"metadata": {"name": name}})


def make_volume(sandbox: RunningSandbox, name: str, zone: str) -> Any:
    conn = cloud(sandbox)
    volume = conn.block_storage.create_volume(name=name, size=2, availability_zone=zone)
    return conn.block_storage.wait_for_status(volume, "available", wait=60)


@pytest.mark.root
def test_dynamic_registry_claim_follows_the_pod(sandbox: RunningSandbox) -> None:
    api = core(sandbox)

    def bound() -> Any:
        claim = api.read_namespaced_persistent_volume_claim(CLAIM, REGISTRY_NS)
        return claim if claim.status.phase == "Bound" else None

    claim = until(bound, "the registry claim to be Bound", timeout=90)
    assert claim.metadata.annotations["imageregistry.openshift.io"] == "true"
    def retained() -> Any:
        pv = api.read_persistent_volume(claim.spec.volume_name)
        return pv if pv.spec.persistent_volume_reclaim_policy == "Retain" else None

    pv = until(retained, "the registry PV to be forced to Retain")
    assert pv.spec.csi.driver == "cinder.csi.openstack.org"

    path = run_pod(api, "registry-a", "node-0", CLAIM, REGISTRY_NS)
    (path / "blob").write_text("layer-data")
    delete_pod(api, "registry-a", REGISTRY_NS)
    path = run_pod(api, "registry-b", "node-1", CLAIM, REGISTRY_NS)
    assert (path / "blob").read_text() == "layer-data"
    delete_pod(api, "registry-b", REGISTRY_NS)


def test_precreated_volume_is_adopted_and_kept(sandbox: RunningSandbox) -> None:
    api = core(sandbox)
    new_namespace(api, "registry-pre")
    volume = make_volume(sandbox, "registry-precreated", "az-a")
    args = ("--namespace", "registry-pre", "--volume-id", volume.id)
    made = registry_cli(sandbox, "ensure", *args)
    assert made.returncode == 0, made.stdout + made.stderr
    until(lambda: registry_cli(sandbox, "status", *args).returncode == 0 or None,
          "the adopted claim to be ready")
    status = registry_cli(sandbox, "status", *args).stdout
    assert f"cinder volume: {volume.id}" in status and "ready: true" in status

    api.delete_namespaced_persistent_volume_claim(CLAIM, "registry-pre")
    until(lambda: (cloud(sandbox).block_storage.get_volume(volume.id).status == "available"
                   and api.list_namespaced_persistent_volume_claim("registry-pre").items == [])
          or None, "the claim to go while the volume stays")
    assert cloud(sandbox).block_storage.get_volume(volume.id).id == volume.id  # data kept

    assert registry_cli(sandbox, "ensure", *args).returncode == 0
    until(lambda: registry_cli(sandbox, "status", *args).returncode == 0 or None,
          "the claim to come back bound")
    claim = api.read_namespaced_persistent_volume_claim(CLAIM, "registry-pre")
    pv = api.read_persistent_volume(claim.spec.volume_name)
    assert pv.spec.csi.volume_handle == volume.id


@pytest.mark.parametrize("case", ["unknown", "foreign", "wrong-zone"])
def test_bad_precreated_volume_changes_nothing(sandbox: RunningSandbox, case: str,
                                               request: pytest.FixtureRequest) -> None:
    api = core(sandbox)
    namespace = f"registry-bad-{case}"
    new_namespace(api, namespace)
    conn = cloud(sandbox)
    if case == "unknown":
        volume_id, expected = "1f0e2d3c-0000-4000-8000-00000000dead", "does not exist"
    elif case == "foreign":
        volume = make_volume(sandbox, "registry-foreign", "az-a")
        bastion = conn.compute.find_server("bastion")
        conn.compute.create_volume_attachment(bastion, volume_id=volume.id)
        until(lambda: conn.block_storage.get_volume(volume.id).status == "in-use" or None,
              "the bastion attach")
        volume_id, expected = volume.id, "not a node of this cluster"
    else:
        volume = make_volume(sandbox, "registry-elsewhere", "az-c")
        volume_id, expected = volume.id, "no node"
    socket = request.getfixturevalue("zoned_socket") if case == "wrong-zone" else None
    pvs_before = {pv.metadata.name for pv in api.list_persistent_volume().items}
    result = registry_cli(sandbox, "ensure", "--namespace", namespace, "--volume-id", volume_id,
                          socket=socket)
    assert result.returncode == 1
    assert expected in result.stdout, result.stdout
    assert api.list_namespaced_persistent_volume_claim(namespace).items == []
    assert {pv.metadata.name for pv in api.list_persistent_volume().items} == pvs_before
    events = api.list_namespaced_event(namespace).items
    assert any(e.reason == "RegistryVolumeInvalid" and expected in e.message for e in events)
