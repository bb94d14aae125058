"""The OpenStack stand-in still answers as the real services do.

The same requests go to real Cinder and Nova (as the member user) and to the stand-in (as a
member too); status codes, fault names, messages (ids blanked) and the field names of the views
the driver reads must match. A difference here means the stand-in has drifted from the real
services, and tests that pass on it prove less than they claim.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import openstack.connection
import pytest

from cinder_csi.standins.openstack import OpenStackStandIn
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger
from tests.real.env import RealEnv

pytestmark = pytest.mark.real

CINDER, NOVA = "3.42", "2.60"
_IDS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
_REQ = re.compile(r"req-<id>")
_GIGABYTES = re.compile(r"\b\d+G\b")  # quota figures depend on what the project holds


@dataclass
class Side:
    """One cloud as the scenario sees it."""

    user: openstack.connection.Connection
    admin: openstack.connection.Connection
    server: str
    name: Callable[[str], str]
    add_type: Callable[[str, dict[str, str]], str]  # returns the type's name


def shape(response: Any) -> dict[str, Any]:
    """What must match: status, fault name and message (ids and quota figures blanked),
    Retry-After, version echo, and the field names of a successful answer."""
    out: dict[str, Any] = {"status": response.status_code}
    headers = {k.lower(): v for k, v in response.headers.items()}
    for name in ("retry-after", "openstack-api-version"):
        if name in headers:
            out[name] = headers[name]
    body = response.json() if response.content else None
    if response.status_code >= 400 and isinstance(body, dict) and len(body) == 1:
        (fault, detail), = body.items()
        out["fault"] = fault
        message = _IDS.sub("<id>", str(detail.get("message")))
        out["message"] = _GIGABYTES.sub("<n>G", _REQ.sub("req-", message))
    elif body is not None:
        out["fields"] = fields(body)
    return out


def fields(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: fields(v) for k, v in body.items()
                if k not in ("metadata", "extra_specs", "quota_set")} | (
            {"quota_set": sorted(body["quota_set"])} if "quota_set" in body else {})
    if isinstance(body, list):
        return [fields(body[0])] if body else []
    return None


def wait(side: Side, volume_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        volume: dict[str, Any] = side.user.block_storage.get(
            f"/volumes/{volume_id}", microversion=CINDER).json()["volume"]
        if volume["status"] in statuses:
            return volume
        assert time.monotonic() < deadline, f"{volume_id} stays {volume['status']}"
        time.sleep(0.2)


def scenario(side: Side) -> dict[str, Any]:
    bs, nova = side.user.block_storage, side.user.compute
    pid = side.user.current_project_id
    missing = str(uuid.uuid4())
    seen: dict[str, Any] = {}

    def cinder(label: str, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("microversion", CINDER)
        response = bs.request(path, method, raise_exc=False, **kwargs)
        seen[label] = shape(response)
        return response

    def compute(label: str, method: str, path: str, **kwargs: Any) -> Any:
        kwargs.setdefault("microversion", NOVA)
        response = nova.request(path, method, raise_exc=False, **kwargs)
        seen[label] = shape(response)
        return response

    def create(label: str, **fields_: Any) -> Any:
        return cinder(label, "POST", "/volumes", json={"volume": {
            "name": side.name(label), "size": 1, **fields_}})

    cinder("missing volume", "GET", f"/volumes/{missing}")
    create("unknown zone", availability_zone="no-such-zone")
    create("size 0", size=0)
    create("unknown type", volume_type="no-such-type")
    volume_id = create("create").json()["volume"]["id"]
    wait(side, volume_id, "available")
    cinder("show", "GET", f"/volumes/{volume_id}")
    cinder("quota usage", "GET", f"/os-quota-sets/{pid}", params={"usage": "True"})
    cinder("member sets quota", "PUT", f"/os-quota-sets/{pid}",
           json={"quota_set": {"volumes": 100}})
    cinder("default type", "GET", "/types/default")
    cinder("retype to own type", "POST", f"/volumes/{volume_id}/action",
           json={"os-retype": {"new_type": "__DEFAULT__", "migration_policy": "on-demand"}})
    cinder("unknown action", "POST", f"/volumes/{volume_id}/action", json={"os-bogus": {}})
    cinder("unknown filter", "GET", "/volumes/detail", params={"bogus": "1"})
    cinder("too new", "GET", "/volumes", microversion="3.99")

    snap = cinder("snapshot", "POST", "/snapshots", json={"snapshot": {
        "volume_id": volume_id, "name": side.name("snap"), "force": True}}).json()["snapshot"]
    deadline = time.monotonic() + 60
    while bs.get(f"/snapshots/{snap['id']}", microversion=CINDER).json()[
            "snapshot"]["status"] != "available":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cinder("show snapshot", "GET", f"/snapshots/{snap['id']}")
    cinder("delete with snapshot", "DELETE", f"/volumes/{volume_id}")
    cinder("delete snapshot", "DELETE", f"/snapshots/{snap['id']}")
    while bs.get(f"/snapshots/{snap['id']}").status_code != 404:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    compute("missing server", "GET", f"/servers/{missing}")
    attach = {"volumeAttachment": {"volumeId": volume_id}}
    compute("attach", "POST", f"/servers/{side.server}/os-volume_attachments", json=attach)
    compute("attach again", "POST", f"/servers/{side.server}/os-volume_attachments",
            json=attach)
    wait(side, volume_id, "in-use")
    cinder("show in-use", "GET", f"/volumes/{volume_id}")
    compute("attachments", "GET", f"/servers/{side.server}/os-volume_attachments")
    cinder("delete attached", "DELETE", f"/volumes/{volume_id}")
    cinder("snapshot in-use without force", "POST", "/snapshots", json={"snapshot": {
        "volume_id": volume_id, "name": side.name("snap2"), "force": False}})
    compute("detach", "DELETE", f"/servers/{side.server}/os-volume_attachments/{volume_id}")
    wait(side, volume_id, "available")
    compute("detach again", "DELETE",
            f"/servers/{side.server}/os-volume_attachments/{volume_id}")
    cinder("extend", "POST", f"/volumes/{volume_id}/action",
           json={"os-extend": {"new_size": 2}})
    wait(side, volume_id, "available")
    cinder("delete", "DELETE", f"/volumes/{volume_id}")
    while bs.get(f"/volumes/{volume_id}").status_code != 404:
        time.sleep(0.2)
    cinder("marker gone", "GET", "/volumes/detail", params={"marker": volume_id})

    usage = bs.get(f"/os-quota-sets/{pid}", params={"usage": "True"}).json()["quota_set"]
    limit = usage["gigabytes"]["limit"]
    side.admin.block_storage.put(f"/os-quota-sets/{pid}", json={"quota_set": {
        "gigabytes": usage["gigabytes"]["in_use"]}})
    try:
        create("over quota")
    finally:
        side.admin.block_storage.put(f"/os-quota-sets/{pid}",
                                     json={"quota_set": {"gigabytes": limit}})

    nowhere = side.add_type("nowhere", {"volume_backend_name": "no-such-backend"})
    failed = create("no backend", volume_type=nowhere).json()["volume"]["id"]
    wait(side, failed, "error")
    messages = bs.get("/messages", params={"resource_uuid": failed}, microversion="3.5")
    seen["no backend message"] = [m["user_message"] for m in messages.json()["messages"]]
    bs.delete(f"/volumes/{failed}")
    return seen


@pytest.fixture
def standin_side(tmp_path: Path) -> Iterator[Side]:
    with OpenStackStandIn(tmp_path / "os", transition_delay=(0.05, 0.1)) as standin:
        standin.add_user("demo", "demo", "demo")
        common = dict(auth_url=standin.auth_url, user_domain_name="Default",
                      project_domain_name="Default", project_name="demo",
                      region_name="RegionOne", load_yaml_config=False, load_envvars=False)
        yield Side(
            user=openstack.connect(username="demo", password="demo", **common),
            admin=openstack.connect(username="admin", password="secret", **common),
            server=standin.add_server("node-0", "nova"),
            name=lambda label: label,
            add_type=lambda name, specs: (standin.add_volume_type(name, extra_specs=specs),
                                          name)[1],
        )


@pytest.fixture
def real_side(cloud: Cloud, real: RealEnv, ledger: Ledger) -> Iterator[Side]:
    made: list[str] = []

    def add_type(name: str, specs: dict[str, str]) -> str:
        created = cloud.admin.block_storage.create_type(name=ledger.name(name),
                                                        extra_specs=specs)
        made.append(created.id)
        return str(created.name)

    try:
        yield Side(user=cloud.user, admin=cloud.admin, server=real.server_id("node-0"),
                   name=ledger.name, add_type=add_type)
    finally:
        cloud.sweep(prefixes=(ledger.prefix,))
        for type_id in made:
            cloud.admin.block_storage.delete_type(type_id, ignore_missing=True)


def test_the_standin_answers_as_the_real_services_do(real_side: Side,
                                                     standin_side: Side) -> None:
    real = scenario(real_side)
    standin = scenario(standin_side)
    differences = {label: {"real": real[label], "stand-in": standin.get(label)}
                   for label in real if real[label] != standin.get(label)}
    assert differences == {}
