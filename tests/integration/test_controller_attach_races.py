"""Attach and detach racing an attach Nova accepted earlier (the real services taught us).

Real Nova lists a volume on a server from the moment it accepts the attach, while Cinder lists
the attachment only once the volume is in-use; a second attach in between is a 400 ("already
attached to instances"). A controller restarted mid-attach meets exactly that window.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openstack

from cinder_csi.csi import csi_pb2
from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.conftest import ControllerHandle
from tests.integration.csi_helpers import create_request, mount_cap


def nova_attach(standin: OpenStackStandIn, server_id: str, volume_id: str) -> None:
    conn = openstack.connect(
        auth_url=standin.auth_url, username="admin", password="secret", project_name="demo",
        user_domain_name="Default", project_domain_name="Default", region_name="RegionOne",
        load_yaml_config=False, load_envvars=False)
    response = conn.compute.post(f"/servers/{server_id}/os-volume_attachments",
                                 json={"volumeAttachment": {"volumeId": volume_id}},
                                 microversion="2.60")
    assert response.status_code == 200, response.text


def volume(standin: OpenStackStandIn, volume_id: str) -> dict[str, Any]:
    (found,) = [v for v in standin.volumes() if v["id"] == volume_id]
    return dict(found)


def test_publish_joins_an_attach_nova_already_accepted(
        csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume_id = csi.controller.CreateVolume(create_request("pvc-join"), timeout=30).volume.volume_id
    held = openstack.faults.stick("reserved", volume=volume_id)
    nova_attach(openstack, server, volume_id)  # as a controller killed right after its POST
    assert volume(openstack, volume_id)["status"] == "reserved"

    released = threading.Timer(1.0, openstack.faults.remove, args=(held,))
    released.start()
    try:
        answer = csi.controller.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(
            volume_id=volume_id, node_id=server, volume_capability=mount_cap()), timeout=30)
    finally:
        released.cancel()
    assert answer.publish_context["DevicePath"]
    found = volume(openstack, volume_id)
    assert found["status"] == "in-use"
    assert [a["server_id"] for a in found["attachments"]] == [server]


def test_unpublish_waits_out_a_reserved_attach_then_detaches(
        csi: ControllerHandle, openstack: OpenStackStandIn) -> None:
    server = openstack.add_server("node-0", "az-a")
    volume_id = csi.controller.CreateVolume(create_request("pvc-late"), timeout=30).volume.volume_id
    held = openstack.faults.stick("reserved", volume=volume_id)
    nova_attach(openstack, server, volume_id)
    with ThreadPoolExecutor(1) as pool:
        unpublished = pool.submit(csi.controller.ControllerUnpublishVolume,
                                  csi_pb2.ControllerUnpublishVolumeRequest(
                                      volume_id=volume_id, node_id=server), timeout=30)
        threading.Event().wait(1.0)
        assert not unpublished.done(), "unpublish returned while the attach could still land"
        openstack.faults.remove(held)
        unpublished.result()
    found = volume(openstack, volume_id)
    assert (found["status"], found["attachments"]) == ("available", [])
