"""The registry volume against both stand-ins, through real HTTP, checking a pre-created volume
through our CSI controller on a unix socket (no watch loop needed for the pre-created way: the
stand-in's PV controller binds the pre-bound static PV)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack as openstacksdk
import pytest

from cinder_csi import TOPOLOGY_KEY
from cinder_csi.loop.csi_client import CSIClient
from cinder_csi.loop.kube.apierror import ApiException
from cinder_csi.loop.kube.client import KubeOptions, KubeRest, build_clients
from cinder_csi.loop.kube.events import EventRecorder
from cinder_csi.loop.registry import REGISTRY_ANNOTATION, RegistrySpec, RegistryVolume
from cinder_csi.standins.kube import KubeStandIn
from cinder_csi.standins.kube.client import wait_until
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import start_controller

DRIVER = "cinder.csi.openstack.org"
NS = "openshift-image-registry"


@dataclass
class Env:
    kube: KubeStandIn
    openstack: OpenStackStandIn
    rest: KubeRest
    csi: CSIClient
    servers: dict[str, str]

    def registry(self, **spec: Any) -> RegistryVolume:
        recorder = EventRecorder(self.rest, "cinder-csi-registry")
        return RegistryVolume(self.rest, RegistrySpec(namespace=NS, **spec), csi=self.csi,
                              recorder=recorder)

    def events(self) -> list[dict[str, Any]]:
        return list(self.rest.get("/api/v1/events").get("items") or [])

    def sdk(self) -> Any:
        return openstacksdk.connect(
            auth_url=self.openstack.auth_url, username="admin", password="secret",
            project_name="demo", user_domain_name="Default", project_domain_name="Default",
            region_name=self.openstack.region, load_yaml_config=False, load_envvars=False)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    openstack = OpenStackStandIn(tmp_path / "os", availability_zones=("az-a", "az-b", "az-c"))
    openstack.start()
    kube = KubeStandIn().start()
    server = None
    try:
        servers = {}
        for index, zone in enumerate(("az-a", "az-b")):
            name = f"node-{index}"
            servers[name] = openstack.add_server(name, zone)
            kube.add_node(name, {TOPOLOGY_KEY: zone})
            kube.store.create("csinodes", {"metadata": {"name": name}, "spec": {"drivers": [
                {"name": DRIVER, "nodeID": servers[name], "topologyKeys": [TOPOLOGY_KEY]}]}})
        kube.store.create("namespaces", {"metadata": {"name": NS}})
        kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
        clients = build_clients(KubeOptions(kubeconfig=str(kubeconfig)))
        conf = tmp_path / "cloud.conf"
        conf.write_text(openstack.cloud_conf())
        server, handle = start_controller(conf, tmp_path / "controller.sock")
        handle.channel.close()
        csi = CSIClient(str(handle.socket), timeout=30.0)
        yield Env(kube, openstack, clients.rest(), csi, servers)
        csi.close()
        clients.close()
    finally:
        if server is not None:
            server.stop(0)
        kube.stop()
        openstack.stop()


def claim(env: Env) -> dict[str, Any] | None:
    try:
        return env.rest.get(f"/api/v1/namespaces/{NS}/persistentvolumeclaims/"
                            "image-registry-storage")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_precreated_volume_is_adopted_and_survives_claim_deletion(env: Env) -> None:
    volume = env.sdk().block_storage.create_volume(name="registry-data", size=10,
                                                   availability_zone="az-a")
    env.sdk().block_storage.wait_for_status(volume, "available", wait=30)
    registry = env.registry(volume_id=volume.id)
    status = registry.ensure()
    pv = env.rest.get(f"/api/v1/persistentvolumes/registry-{volume.id}")
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert pv["spec"]["csi"] == {"driver": DRIVER, "volumeHandle": volume.id, "fsType": "xfs"}
    assert pv["spec"]["capacity"]["storage"] == "10Gi"
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["az-a"]
    bound = wait_until(lambda: (c := claim(env)) and c["status"].get("phase") == "Bound" and c,
                       timeout=10, what="the registry claim to bind")
    assert bound["metadata"]["annotations"][REGISTRY_ANNOTATION] == "true"
    assert bound["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert registry.status().ready, status.render()

    env.rest.delete(f"/api/v1/namespaces/{NS}/persistentvolumeclaims/image-registry-storage")
    wait_until(lambda: claim(env) is None or None, timeout=10, what="the claim to go")
    assert [v["id"] for v in env.openstack.volumes()] == [volume.id]  # data kept
    # The loop's registry duty runs ensure() again when the PV changes; here the test waits
    # for the PV controller to release the PV, then calls it (else a race: still Bound).
    pv_path = f"/api/v1/persistentvolumes/registry-{volume.id}"
    wait_until(lambda: env.rest.get(pv_path)["status"].get("phase") == "Released",
               timeout=10, what="the PV controller to release the PV")

    registry.ensure()
    again = wait_until(lambda: (c := claim(env)) and c["status"].get("phase") == "Bound" and c,
                       timeout=10, what="the claim to come back bound")
    assert again["spec"]["volumeName"] == f"registry-{volume.id}"
    assert registry.ensure().ready


@pytest.mark.parametrize("case", ["unknown", "foreign", "wrong-zone"])
def test_bad_precreated_volume_changes_nothing(env: Env, case: str) -> None:
    sdk = env.sdk()
    if case == "unknown":
        volume_id = "0b2a3c4d-0000-4000-8000-000000000000"
        expected = "does not exist"
    else:
        zone = "az-c" if case == "wrong-zone" else "az-a"
        volume = sdk.block_storage.create_volume(name=f"reg-{case}", size=1,
                                                 availability_zone=zone)
        sdk.block_storage.wait_for_status(volume, "available", wait=30)
        volume_id = volume.id
        expected = "no node" if case == "wrong-zone" else "not a node of this cluster"
        if case == "foreign":
            stranger = env.openstack.add_server("stranger", "az-a")
            sdk.compute.create_volume_attachment(stranger, volume_id=volume_id)
            wait_until(lambda: [v for v in env.openstack.volumes()
                                if v["id"] == volume_id and v["status"] == "in-use"] or None,
                       timeout=10, what="the foreign attach")
    before = [(v["id"], v["status"]) for v in env.openstack.volumes()]
    status = env.registry(volume_id=volume_id).ensure()
    assert not status.ready
    assert any(expected in p for p in status.problems), status.problems
    assert claim(env) is None
    assert env.rest.get("/api/v1/persistentvolumes")["items"] == []
    assert [(v["id"], v["status"]) for v in env.openstack.volumes()] == before
    reasons = [(e["reason"], e["message"]) for e in env.events()]
    assert any(r == "RegistryVolumeInvalid" and expected in m for r, m in reasons), reasons


def test_dynamic_claim_is_created_in_the_default_class(env: Env) -> None:
    env.kube.store.create("storageclasses", {
        "metadata": {"name": "standard",
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": DRIVER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"})
    status = env.registry(size="20Gi").ensure()
    made = claim(env)
    assert made is not None
    assert made["spec"]["storageClassName"] == "standard"
    assert made["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert made["metadata"]["annotations"][REGISTRY_ANNOTATION] == "true"
    assert any("created claim" in step for step in status.steps)
    assert not status.ready  # nothing provisions in this test: Pending, and it says so
    assert env.registry(size="20Gi").ensure().phase == "Pending"


def test_dynamic_without_default_class_is_a_clear_problem(env: Env) -> None:
    status = env.registry().ensure()
    assert any("no StorageClass is marked default" in p for p in status.problems)
    assert claim(env) is None
