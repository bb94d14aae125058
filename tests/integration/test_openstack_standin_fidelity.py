"""The stand-in answers as real Cinder 29 and Nova 34 do where the real tier (tests/real) saw
them differ: every expectation here was observed on the realstack rig, as a member user (the
way a CSI controller runs), through openstacksdk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import openstack.connection
import pytest
import requests

from cinder_csi.standins.openstack import OpenStackStandIn

FAST = (0.01, 0.03)
CINDER = "3.42"
NOVA = "2.60"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[OpenStackStandIn]:
    with OpenStackStandIn(tmp_path / "os", transition_delay=FAST) as made:
        made.add_user("demo", "demo", "demo")
        yield made


def connect(standin: OpenStackStandIn, user: str, password: str) -> openstack.connection.Connection:
    return openstack.connect(
        auth_url=standin.auth_url, username=user, password=password, project_name="demo",
        user_domain_name="Default", project_domain_name="Default", region_name="RegionOne",
        load_yaml_config=False, load_envvars=False)


@pytest.fixture
def member(standin: OpenStackStandIn) -> openstack.connection.Connection:
    return connect(standin, "demo", "demo")


@pytest.fixture
def admin(standin: OpenStackStandIn) -> openstack.connection.Connection:
    return connect(standin, "admin", "secret")


def cinder(conn: openstack.connection.Connection, method: str, path: str,
           **kwargs: Any) -> requests.Response:
    kwargs.setdefault("microversion", CINDER)
    response: requests.Response = conn.block_storage.request(path, method, raise_exc=False,
                                                             **kwargs)
    return response


def nova(conn: openstack.connection.Connection, method: str, path: str,
         **kwargs: Any) -> requests.Response:
    kwargs.setdefault("microversion", NOVA)
    response: requests.Response = conn.compute.request(path, method, raise_exc=False, **kwargs)
    return response


def fault(response: requests.Response, name: str, code: int) -> dict[str, Any]:
    assert response.status_code == code, response.text
    body: dict[str, Any] = response.json()[name]
    assert body["code"] == code
    return body


def new_volume(conn: openstack.connection.Connection, name: str = "v", size: int = 1,
               **fields: Any) -> str:
    response = cinder(conn, "POST", "/volumes",
                      json={"volume": {"name": name, "size": size, **fields}})
    assert response.status_code == 202, response.text
    return str(response.json()["volume"]["id"])


def wait_status(conn: openstack.connection.Connection, volume_id: str, *statuses: str,
                timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        volume: dict[str, Any] = cinder(conn, "GET", f"/volumes/{volume_id}").json()["volume"]
        if volume["status"] in statuses:
            return volume
        assert time.monotonic() < deadline, f"volume {volume_id} still {volume['status']}"
        time.sleep(0.02)


# --- quotas -----------------------------------------------------------------------------------


def test_a_quota_413_carries_retry_after_zero_like_cinder(
        standin: OpenStackStandIn, member: openstack.connection.Connection) -> None:
    standin.set_quota("demo", gigabytes=1)
    response = cinder(member, "POST", "/volumes", json={"volume": {"name": "big", "size": 2}})
    body = fault(response, "overLimit", 413)
    assert response.headers["Retry-After"] == "0" and body["retryAfter"] == "0"
    assert body["message"].startswith("VolumeSizeExceedsAvailableQuota: ")


def test_quota_usage_has_no_allocated_field(member: openstack.connection.Connection) -> None:
    project = member.current_project_id
    quota = cinder(member, "GET", f"/os-quota-sets/{project}", params={"usage": "True"})
    assert set(quota.json()["quota_set"]["gigabytes"]) == {"limit", "in_use", "reserved"}


def test_a_limit_below_usage_is_refused(
        member: openstack.connection.Connection, admin: openstack.connection.Connection) -> None:
    new_volume(member)
    project = member.current_project_id
    response = cinder(admin, "PUT", f"/os-quota-sets/{project}",
                      json={"quota_set": {"volumes": 0}})
    assert fault(response, "badRequest", 400)["message"] == (
        "Quota volumes limit must be equal or greater than existing resources. Current usage "
        "is 1 and the requested limit is 0.")
    assert cinder(admin, "PUT", f"/os-quota-sets/{project}",
                  json={"quota_set": {"volumes": 1}}).status_code == 200


def test_policy_refusals_name_the_rule(member: openstack.connection.Connection) -> None:
    project = member.current_project_id
    response = cinder(member, "PUT", f"/os-quota-sets/{project}",
                      json={"quota_set": {"volumes": 10}})
    assert fault(response, "forbidden", 403)["message"] == (
        "Policy doesn't allow volume_extension:quotas:update to be performed.")
    volume_id = new_volume(member)
    response = cinder(member, "POST", f"/volumes/{volume_id}/action",
                      json={"os-reset_status": {"status": "error"}})
    assert fault(response, "forbidden", 403)["message"] == (
        "Policy doesn't allow volume_extension:volume_admin_actions:reset_status to be "
        "performed.")


# --- Nova attachments -------------------------------------------------------------------------


def test_a_second_attach_is_a_400_naming_the_holder_even_mid_attach(
        standin: OpenStackStandIn, member: openstack.connection.Connection) -> None:
    node0 = standin.add_server("node-0", "nova")
    node1 = standin.add_server("node-1", "nova")
    volume_id = new_volume(member)
    wait_status(member, volume_id, "available")
    held = standin.faults.stick("reserved", volume=volume_id)
    attach = {"volumeAttachment": {"volumeId": volume_id}}
    assert nova(member, "POST", f"/servers/{node0}/os-volume_attachments",
                json=attach).status_code == 200
    # Nova lists the attachment from its POST on; Cinder only once the volume is in-use.
    listed = nova(member, "GET", f"/servers/{node0}/os-volume_attachments").json()
    assert [a["volumeId"] for a in listed["volumeAttachments"]] == [volume_id]
    assert wait_status(member, volume_id, "reserved")["attachments"] == []
    message = f"Invalid volume: volume {volume_id} is already attached to instances: {node0}"
    for server in (node0, node1):
        again = nova(member, "POST", f"/servers/{server}/os-volume_attachments", json=attach)
        assert fault(again, "badRequest", 400)["message"] == message
    standin.faults.remove(held)
    wait_status(member, volume_id, "in-use")
    again = nova(member, "POST", f"/servers/{node1}/os-volume_attachments", json=attach)
    assert fault(again, "badRequest", 400)["message"] == message


def test_detach_of_what_is_not_attached_names_instance_and_volume(
        standin: OpenStackStandIn, member: openstack.connection.Connection) -> None:
    node0 = standin.add_server("node-0", "nova")
    volume_id = new_volume(member)
    response = nova(member, "DELETE", f"/servers/{node0}/os-volume_attachments/{volume_id}")
    assert fault(response, "itemNotFound", 404)["message"] == (
        f"Instance {node0} is not attached to volume {volume_id}")


# --- scheduling failures and user messages ----------------------------------------------------


def test_a_type_no_backend_serves_ends_in_error_with_a_user_message(
        standin: OpenStackStandIn, member: openstack.connection.Connection) -> None:
    standin.add_volume_type("nowhere", extra_specs={"volume_backend_name": "no-such-backend"})
    first = new_volume(member, "first", volume_type="nowhere")
    second = new_volume(member, "second", volume_type="nowhere")
    for volume_id in (first, second):
        assert wait_status(member, volume_id, "error", "available")["status"] == "error"

    assert cinder(member, "GET", "/messages", microversion="3.0").status_code == 404
    # Before 3.5 Cinder ignores the filter and lists the whole project's messages.
    unfiltered = cinder(member, "GET", "/messages", params={"resource_uuid": first},
                        microversion="3.3").json()["messages"]
    assert {m["resource_uuid"] for m in unfiltered} == {first, second}
    (message,) = cinder(member, "GET", "/messages", params={"resource_uuid": first},
                        microversion="3.5").json()["messages"]
    assert message["user_message"] == (
        "schedule allocate volume:Could not find any available weighted backend.")
    assert message["event_id"] == "VOLUME_VOLUME_001_003"
    assert (message["resource_type"], message["message_level"]) == ("VOLUME", "ERROR")
    assert message["request_id"].startswith("req-")
    shown = cinder(member, "GET", f"/messages/{message['id']}", microversion="3.3")
    assert shown.json()["message"] == message


def test_no_backend_with_room_ends_in_error_too(
        member: openstack.connection.Connection) -> None:
    huge = new_volume(member, "huge", 60_000)
    assert wait_status(member, huge, "error", "available")["status"] == "error"
    (message,) = cinder(member, "GET", "/messages", params={"resource_uuid": huge},
                        microversion="3.5").json()["messages"]
    assert message["event_id"] == "VOLUME_VOLUME_001_003"


def test_a_retype_no_backend_can_take_is_rolled_back_silently(
        standin: OpenStackStandIn, member: openstack.connection.Connection) -> None:
    standin.add_volume_type("nowhere", extra_specs={"volume_backend_name": "no-such-backend"})
    standin.faults.slow("retype", 0.5)
    volume_id = new_volume(member)
    wait_status(member, volume_id, "available")
    response = cinder(member, "POST", f"/volumes/{volume_id}/action",
                      json={"os-retype": {"new_type": "nowhere",
                                          "migration_policy": "on-demand"}})
    assert response.status_code == 202
    assert cinder(member, "GET", f"/volumes/{volume_id}").json()["volume"]["status"] == (
        "retyping")
    volume = wait_status(member, volume_id, "available")
    assert volume["volume_type"] == "__DEFAULT__"
    assert cinder(member, "GET", "/messages", microversion="3.5").json()["messages"] == []


# --- views as a member sees them --------------------------------------------------------------


def test_volume_views_of_a_member(member: openstack.connection.Connection,
                                  admin: openstack.connection.Connection) -> None:
    created = cinder(member, "POST", "/volumes",
                     json={"volume": {"name": "v", "size": 1}}).json()["volume"]
    # Cinder's os-vol-* attributes extend show and list, not the create answer.
    assert not [k for k in created if k.startswith("os-vol-")]
    shown = cinder(member, "GET", f"/volumes/{created['id']}").json()["volume"]
    assert "os-vol-tenant-attr:tenant_id" in shown
    assert not {"migration_status", "provider_id", "os-vol-host-attr:host"} & set(shown)
    as_admin = cinder(admin, "GET", f"/volumes/{created['id']}").json()["volume"]
    assert {"migration_status", "provider_id", "os-vol-host-attr:host"} <= set(as_admin)


def test_snapshot_create_answer_has_no_extended_attributes(
        member: openstack.connection.Connection) -> None:
    volume_id = new_volume(member)
    wait_status(member, volume_id, "available")
    created = cinder(member, "POST", "/snapshots",
                     json={"snapshot": {"volume_id": volume_id, "name": "s"}}).json()["snapshot"]
    assert not [k for k in created if k.startswith("os-extended-snapshot-attributes:")]
    shown = cinder(member, "GET", f"/snapshots/{created['id']}").json()["snapshot"]
    assert "os-extended-snapshot-attributes:project_id" in shown


def test_type_views_hide_admin_fields_and_sensitive_specs(
        standin: OpenStackStandIn, member: openstack.connection.Connection,
        admin: openstack.connection.Connection) -> None:
    standin.add_volume_type("gold", multiattach=True,
                            extra_specs={"volume_backend_name": "lvmdriver-1"})
    listed = {t["name"]: t for t in cinder(member, "GET", "/types").json()["volume_types"]}
    assert set(listed["gold"]) == {"id", "name", "is_public", "description", "extra_specs",
                                   "os-volume-type-access:is_public"}
    assert listed["gold"]["extra_specs"] == {"multiattach": "<is> True"}
    default = cinder(member, "GET", "/types/default").json()["volume_type"]
    assert set(default) == {"id", "name", "is_public", "description", "extra_specs"}
    as_admin = {t["name"]: t for t in cinder(admin, "GET", "/types").json()["volume_types"]}
    assert as_admin["gold"]["extra_specs"]["volume_backend_name"] == "lvmdriver-1"
    assert "qos_specs_id" in as_admin["gold"]


# --- error texts, versions, authentication ----------------------------------------------------


@pytest.mark.parametrize(("body", "message"), [
    ({"name": "v", "size": 1, "availability_zone": "mars"},
     "Availability zone 'mars' is invalid."),
    ({"name": "v", "size": 0},
     "Invalid input for field/attribute size. Value: 0. 0 is less than the minimum of 1"),
])
def test_create_refusals_are_worded_as_cinder_words_them(
        member: openstack.connection.Connection, body: dict[str, Any], message: str) -> None:
    response = cinder(member, "POST", "/volumes", json={"volume": body})
    assert fault(response, "badRequest", 400)["message"] == message


def test_action_and_listing_refusals_are_worded_as_cinder_words_them(
        standin: OpenStackStandIn, member: openstack.connection.Connection) -> None:
    standin.faults.slow("extend", 1.0)
    volume_id = new_volume(member)
    wait_status(member, volume_id, "available")

    def refusal(method: str, path: str, **kwargs: Any) -> str:
        return str(fault(cinder(member, method, path, **kwargs), "badRequest", 400)["message"])

    assert refusal("POST", f"/volumes/{volume_id}/action",
                   json={"os-retype": {"new_type": "__DEFAULT__"}}).startswith(
        "Invalid volume: Retype needs volume to be in available or in-use state")
    assert refusal("POST", f"/volumes/{volume_id}/action", json={"os-bogus": {}}) == (
        "There is no such action: os-bogus. Verify the request body and Content-Type header "
        "and try again.")
    assert refusal("GET", "/volumes/detail", params={"bogus": "x"}) == (
        "Invalid filters bogus are found in query options.")
    assert refusal("GET", "/volumes/detail", params={"sort": "bogus:asc"}) == (
        "Invalid input received: Invalid sort key")
    missing = "6a0e9b45-0000-4000-8000-000000000000"
    response = cinder(member, "GET", "/volumes/detail", params={"marker": missing})
    assert fault(response, "itemNotFound", 404)["message"] == (
        f"Volume {missing} could not be found.")
    growing = cinder(member, "POST", f"/volumes/{volume_id}/action",
                     json={"os-extend": {"new_size": 2}})
    assert growing.status_code == 202
    assert refusal("POST", f"/volumes/{volume_id}/action",
                   json={"os-extend": {"new_size": 3}}).startswith(
        f"Invalid volume: Volume {volume_id} status must be '{{'status': 'available'}}' to "
        "extend, currently ")


def test_a_refused_microversion_is_echoed_and_the_maxima_are_current(
        member: openstack.connection.Connection) -> None:
    refused = cinder(member, "GET", "/volumes", microversion="3.99")
    assert refused.status_code == 406
    assert refused.headers["OpenStack-API-Version"] == "volume 3.99"
    assert "maximum is 3.71" in refused.json()["computeFault"]["message"]
    refused = nova(member, "GET", "/servers", microversion="2.105")
    assert refused.status_code == 406
    assert refused.headers["OpenStack-API-Version"] == "compute 2.105"
    assert "maximum is 2.104" in refused.json()["computeFault"]["message"]


def test_nova_from_2_96_to_2_104(standin: OpenStackStandIn,
                                 member: openstack.connection.Connection) -> None:
    server = standin.add_server("node-0", "nova")
    shown = nova(member, "GET", f"/servers/{server}", microversion="2.100").json()["server"]
    assert shown["pinned_availability_zone"] is None and shown["scheduler_hints"] == {}
    volume_id = new_volume(member)
    wait_status(member, volume_id, "available")
    accepted = nova(member, "POST", f"/servers/{server}/os-volume_attachments",
                    json={"volumeAttachment": {"volumeId": volume_id}}, microversion="2.101")
    assert accepted.status_code == 202 and not accepted.content
    assert nova(member, "GET", "/servers", params={"bogus": "1"},
                microversion="2.102").status_code == 400
    assert nova(member, "GET", "/servers", params={"bogus": "1"},
                microversion="2.101").status_code == 200


def test_a_401_says_where_keystone_is(standin: OpenStackStandIn,
                                      member: openstack.connection.Connection) -> None:
    endpoint = member.block_storage.get_endpoint()
    refused = requests.get(f"{endpoint}/volumes", headers={"X-Auth-Token": "bogus"}, timeout=5)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == f'Keystone uri="{standin.auth_url}"'
    wrong = requests.post(f"{standin.auth_url}/auth/tokens", timeout=5, json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": "demo", "password": "wrong", "domain": {"name": "Default"}}}}}})
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers
