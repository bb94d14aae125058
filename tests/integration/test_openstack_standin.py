"""The OpenStack stand-in driven by the real openstacksdk over HTTP."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import openstack.connection
import openstack.exceptions
import pytest
import requests

from cinder_csi.standins.openstack import OpenStackStandIn

FAST = (0.01, 0.03)
GIB = 1024**3


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[OpenStackStandIn]:
    with OpenStackStandIn(tmp_path / "os", availability_zones=("az-a", "az-b"),
                          transition_delay=FAST) as s:
        yield s


def connect(standin: OpenStackStandIn, **overrides: Any) -> openstack.connection.Connection:
    args: dict[str, Any] = dict(
        auth_url=standin.auth_url, username="admin", password="secret", project_name="demo",
        user_domain_name="Default", project_domain_name="Default", region_name="RegionOne",
    )
    args.update(overrides)
    return openstack.connect(**args)


@pytest.fixture
def conn(standin: OpenStackStandIn) -> openstack.connection.Connection:
    return connect(standin)


def wait_volume(conn: openstack.connection.Connection, volume_id: str, status: str,
                timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        volume = conn.block_storage.get_volume(volume_id)
        if volume.status == status:
            return volume
        assert time.monotonic() < deadline, f"volume {volume_id} still {volume.status}"
        time.sleep(0.02)


def wait_gone(conn: openstack.connection.Connection, volume_id: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.block_storage.get_volume(volume_id)
        except openstack.exceptions.NotFoundException:
            return
        assert time.monotonic() < deadline
        time.sleep(0.02)


def raw(conn: openstack.connection.Connection, service: str, method: str, path: str,
        **kwargs: Any) -> requests.Response:
    """A request through the SDK's own adapter, without raising on errors."""
    proxy = conn.block_storage if service == "volume" else conn.compute
    response: requests.Response = proxy.request(path, method, raise_exc=False, **kwargs)
    return response


# --- discovery and identity ---------------------------------------------------------------


def test_version_documents(standin: OpenStackStandIn) -> None:
    base = standin.base_url
    root = requests.get(base + "/", timeout=5)
    assert root.status_code == 300 and root.json()["versions"]["values"][0]["id"] == "v3.14"
    assert requests.get(standin.auth_url, timeout=5).json()["version"]["status"] == "stable"
    volume = requests.get(base + "/volume/", timeout=5)
    assert volume.status_code == 300
    doc = volume.json()["versions"][0]
    assert (doc["min_version"], doc["version"]) == ("3.0", "3.71")
    assert doc["links"][0]["href"] == base + "/volume/v3/"
    assert requests.get(base + "/volume/v3/", timeout=5).json()["versions"][0]["id"] == "v3.0"
    compute = requests.get(base + "/compute/", timeout=5).json()["versions"][0]
    assert (compute["min_version"], compute["version"]) == ("2.1", "2.104")
    single = requests.get(base + "/compute/v2.1/", timeout=5).json()["version"]
    assert single["links"][0]["href"] == base + "/compute/v2.1/"


def test_password_token_catalog_and_validation(standin: OpenStackStandIn) -> None:
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": "secret"}}},
        "scope": {"project": {"name": "demo", "domain": {"id": "default"}}}}}
    issued = requests.post(standin.auth_url + "/auth/tokens", json=body, timeout=5)
    assert issued.status_code == 201
    token = issued.headers["X-Subject-Token"]
    assert issued.headers["x-openstack-request-id"].startswith("req-")
    catalog = {entry["type"]: entry for entry in issued.json()["token"]["catalog"]}
    assert {"identity", "block-storage", "volumev3", "compute"} <= set(catalog)
    project_id = standin.project_id("demo")
    volume_url = catalog["block-storage"]["endpoints"][0]["url"]
    assert volume_url == f"{standin.base_url}/volume/v3/{project_id}"
    checked = requests.get(standin.auth_url + "/auth/tokens", timeout=5,
                           headers={"X-Auth-Token": token, "X-Subject-Token": token})
    assert checked.status_code == 200
    assert checked.json()["token"]["project"]["id"] == project_id

    body["auth"]["identity"]["password"]["user"]["password"] = "wrong"
    refused = requests.post(standin.auth_url + "/auth/tokens", json=body, timeout=5)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == 401
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        connect(standin, password="wrong").authorize()
    anonymous = requests.get(volume_url + "/volumes", timeout=5)
    assert anonymous.status_code == 401


def test_other_users_and_application_credentials(standin: OpenStackStandIn) -> None:
    standin.add_user("alice", "pw", "team")
    cred_id = standin.add_application_credential("alice", "csi", "s3cret")
    by_id = openstack.connect(auth_url=standin.auth_url, auth_type="v3applicationcredential",
                              application_credential_id=cred_id,
                              application_credential_secret="s3cret", region_name="RegionOne")
    created = by_id.block_storage.create_volume(size=1, name="alice-vol")
    # Cinder names the owner in show and list, not in the create answer.
    assert by_id.block_storage.get_volume(created.id).project_id == standin.project_id("team")
    by_name = openstack.connect(auth_url=standin.auth_url, auth_type="v3applicationcredential",
                                application_credential_name="csi", username="alice",
                                user_domain_name="Default",
                                application_credential_secret="s3cret", region_name="RegionOne")
    assert [v.id for v in by_name.block_storage.volumes()] == [created.id]
    # Alice's project is not the admin's; a non-admin does not see the admin's volumes.
    admin = connect(standin)
    admin.block_storage.create_volume(size=1, name="admin-vol")
    assert [v.name for v in by_id.block_storage.volumes()] == ["alice-vol"]
    wrong = openstack.connect(auth_url=standin.auth_url, auth_type="v3applicationcredential",
                              application_credential_id=cred_id,
                              application_credential_secret="nope", region_name="RegionOne")
    with pytest.raises(openstack.exceptions.SDKException, match="HTTP 401"):
        wrong.authorize()


def test_tokens_expire_and_clients_reauthenticate(tmp_path: Path) -> None:
    with OpenStackStandIn(tmp_path, token_ttl=0.5, transition_delay=FAST) as standin:
        conn = connect(standin)
        conn.block_storage.volumes()  # warms discovery
        token = conn.session.get_token()
        url = conn.block_storage.get_endpoint() + "/volumes"
        assert requests.get(url, headers={"X-Auth-Token": token}, timeout=5).status_code == 200
        time.sleep(0.6)
        assert requests.get(url, headers={"X-Auth-Token": token}, timeout=5).status_code == 401

    with OpenStackStandIn(tmp_path, transition_delay=FAST) as standin:
        conn = connect(standin)
        list(conn.block_storage.volumes())
        standin.expire_tokens()
        list(conn.block_storage.volumes())  # keystoneauth re-authenticates after the 401
        statuses = [(r.method, r.path.rsplit("/", 1)[-1], r.status) for r in standin.requests()]
        assert ("GET", "detail", 401) in statuses
        assert statuses[-1] == ("GET", "detail", 200)


def test_catalog_without_nova(tmp_path: Path) -> None:
    with OpenStackStandIn(tmp_path, with_nova=False) as standin:
        conn = connect(standin)
        catalog = conn.session.auth.get_access(conn.session).service_catalog
        assert catalog.get_endpoints(service_type="compute") == {}
        assert list(conn.block_storage.volumes()) == []
        with pytest.raises(openstack.exceptions.SDKException):
            conn.compute.get_server("anything")


def test_microversions_negotiated_and_enforced(
    standin: OpenStackStandIn, conn: openstack.connection.Connection
) -> None:
    assert conn.block_storage.get_endpoint_data().max_microversion == (3, 71)
    assert conn.compute.get_endpoint_data().max_microversion == (2, 104)
    ok = raw(conn, "volume", "GET", "/volumes/detail", microversion="3.42")
    assert ok.status_code == 200
    assert ok.headers["OpenStack-API-Version"] == "volume 3.42"
    too_new = raw(conn, "volume", "GET", "/volumes/detail", microversion="3.99")
    assert too_new.status_code == 406
    assert "maximum is 3.71" in too_new.json()["computeFault"]["message"]
    nova = raw(conn, "compute", "GET", "/servers/detail", microversion="2.60")
    assert nova.headers["OpenStack-API-Version"] == "compute 2.60"
    assert raw(conn, "compute", "GET", "/servers", microversion="2.105").status_code == 406
    # No header: the minimum, as the services do.
    bare = requests.get(conn.block_storage.get_endpoint() + "/volumes", timeout=5,
                        headers={"X-Auth-Token": conn.session.get_token()})
    assert bare.headers["OpenStack-API-Version"] == "volume 3.0"


# --- volumes ------------------------------------------------------------------------------


def test_volume_lifecycle(standin: OpenStackStandIn,
                          conn: openstack.connection.Connection) -> None:
    standin.add_volume_type("fast")
    created = conn.block_storage.create_volume(name="pvc-1", size=1, availability_zone="az-b",
                                               metadata={"k": "v"})
    assert created.status == "creating"
    volume = wait_volume(conn, created.id, "available")
    assert (volume.availability_zone, volume.volume_type) == ("az-b", "__DEFAULT__")
    assert volume.metadata == {"k": "v"}
    path = Path(standin.volumes()[0]["backing_file"])
    assert path.stat().st_size == GIB and path.stat().st_blocks == 0  # sparse

    conn.block_storage.set_volume_metadata(volume, extra="1")
    assert conn.block_storage.get_volume(volume.id).metadata == {"k": "v", "extra": "1"}
    with standin.faults.slow("extend", 0.3):
        conn.block_storage.extend_volume(volume, 3)
        assert conn.block_storage.get_volume(volume.id).status == "extending"
    assert wait_volume(conn, volume.id, "available").size == 3
    assert path.stat().st_size == 3 * GIB
    conn.block_storage.retype_volume(volume, "fast", migration_policy="on-demand")
    assert wait_volume(conn, volume.id, "available").volume_type == "fast"
    shrink = raw(conn, "volume", "POST", f"/volumes/{volume.id}/action",
                 json={"os-extend": {"new_size": 2}})
    assert shrink.status_code == 400 and "badRequest" in shrink.json()

    conn.block_storage.delete_volume(volume)
    wait_gone(conn, volume.id)
    assert not path.exists()
    with pytest.raises(openstack.exceptions.NotFoundException):
        conn.block_storage.get_volume(volume.id)
    missing = raw(conn, "volume", "GET", f"/volumes/{volume.id}")
    assert missing.json() == {"itemNotFound": {
        "code": 404, "message": f"Volume {volume.id} could not be found."}}


def test_create_refusals(standin: OpenStackStandIn, conn: openstack.connection.Connection) -> None:
    bad_zone = raw(conn, "volume", "POST", "/volumes",
                   json={"volume": {"size": 1, "availability_zone": "mars"}})
    assert bad_zone.status_code == 400 and "mars" in bad_zone.json()["badRequest"]["message"]
    bad_type = raw(conn, "volume", "POST", "/volumes",
                   json={"volume": {"size": 1, "volume_type": "gold"}})
    assert bad_type.status_code == 404 and "itemNotFound" in bad_type.json()
    multi = raw(conn, "volume", "POST", "/volumes", json={"volume": {"size": 1,
                                                                     "multiattach": True}})
    assert multi.status_code == 400
    zones = sorted(z.name for z in conn.block_storage.availability_zones())
    assert zones == ["az-a", "az-b"]
    types = {t.name: t for t in conn.block_storage.types()}
    assert "__DEFAULT__" in types


def test_list_filters_sorting_and_paging(standin: OpenStackStandIn,
                                         conn: openstack.connection.Connection) -> None:
    ids = []
    for i in range(25):
        volume = conn.block_storage.create_volume(
            name=f"vol-{i:02d}", size=1, metadata={"parity": "even" if i % 2 == 0 else "odd"})
        ids.append(volume.id)
    deadline = time.monotonic() + 5
    while {v["status"] for v in standin.volumes()} != {"available"}:
        assert time.monotonic() < deadline
        time.sleep(0.02)

    before = len(standin.requests())
    paged = list(conn.block_storage.volumes(limit=10))
    assert len(paged) == 25 and len({v.id for v in paged}) == 25
    pages = [r for r in standin.requests()[before:] if r.path.endswith("/volumes/detail")]
    # 10 + 10 + 5 by volumes_links; the SDK then asks once more with the last marker
    # whenever a limit was given and no next link came back.
    assert len(pages) == 4 and "marker=" in pages[1].query
    # Newest first by default, like Cinder.
    assert [v.id for v in paged] == list(reversed(ids))

    first = raw(conn, "volume", "GET", "/volumes/detail?limit=10&sort=name:asc").json()
    assert [v["name"] for v in first["volumes"]] == [f"vol-{i:02d}" for i in range(10)]
    next_href = first["volumes_links"][0]["href"]
    assert "marker=" in next_href and "sort=name" in next_href
    second = requests.get(next_href, timeout=5,
                          headers={"X-Auth-Token": conn.session.get_token()}).json()
    assert second["volumes"][0]["name"] == "vol-10"
    last = raw(conn, "volume", "GET",
               f"/volumes/detail?limit=10&sort=name:asc&marker={ids[19]}").json()
    assert [v["name"] for v in last["volumes"]] == [f"vol-{i:02d}" for i in range(20, 25)]
    assert "volumes_links" not in last
    assert raw(conn, "volume", "GET", "/volumes/detail?marker=nope").status_code == 404

    assert [v.name for v in conn.block_storage.volumes(name="vol-07")] == ["vol-07"]
    conn.block_storage.update_volume(ids[7], name="renamed")
    conn.block_storage.update_volume(ids[8], name="vol-09")  # two volumes may share a name
    assert list(conn.block_storage.volumes(name="vol-07")) == []
    assert [v.id for v in conn.block_storage.volumes(name="renamed")] == [ids[7]]
    assert sorted(v.id for v in conn.block_storage.volumes(name="vol-09")) == sorted(ids[8:10])
    both = raw(conn, "volume", "GET", "/volumes/detail", params={
        "name": "vol-09", "metadata": json.dumps({"parity": "odd"})}).json()["volumes"]
    assert [v["id"] for v in both] == [ids[9]]
    odd = raw(conn, "volume", "GET", "/volumes/detail", params={
        "metadata": json.dumps({"parity": "odd"})}).json()["volumes"]
    assert len(odd) == 12
    assert len(list(conn.block_storage.volumes(status="available"))) == 25
    assert list(conn.block_storage.volumes(status="error")) == []
    assert raw(conn, "volume", "GET", "/volumes/detail?colour=red").status_code == 400
    counted = raw(conn, "volume", "GET", "/volumes/detail?with_count=true&limit=1",
                  microversion="3.45").json()
    assert counted["count"] == 25 and len(counted["volumes"]) == 1


def test_snapshots_and_restores(standin: OpenStackStandIn,
                                conn: openstack.connection.Connection) -> None:
    source = conn.block_storage.create_volume(name="src", size=1, availability_zone="az-b")
    wait_volume(conn, source.id, "available")
    source_file = Path(standin.volumes()[0]["backing_file"])
    with source_file.open("r+b") as f:
        f.seek(4096)
        f.write(b"hello")
    snap = conn.block_storage.create_snapshot(volume_id=source.id, name="snap-1",
                                              metadata={"owner": "csi"})
    assert snap.status == "creating"
    snap = conn.block_storage.wait_for_status(snap, "available", interval=0.02, wait=5)
    with source_file.open("r+b") as f:  # later writes do not change the snapshot
        f.seek(4096)
        f.write(b"HELLO")
    assert [s.name for s in conn.block_storage.snapshots(volume_id=source.id)] == ["snap-1"]
    assert list(conn.block_storage.snapshots(name="other")) == []

    busy = raw(conn, "volume", "DELETE", f"/volumes/{source.id}")
    assert busy.status_code == 400 and "have snapshots" in busy.json()["badRequest"]["message"]
    far = raw(conn, "volume", "POST", "/volumes", json={"volume": {
        "snapshot_id": snap.id, "availability_zone": "az-a"}})
    assert far.status_code == 400

    restored = conn.block_storage.create_volume(snapshot_id=snap.id, size=2, name="restored")
    restored = wait_volume(conn, restored.id, "available")
    assert restored.availability_zone == "az-b"  # inherited from the snapshot's volume
    restored_file = next(Path(v["backing_file"]) for v in standin.volumes()
                         if v["id"] == restored.id)
    with restored_file.open("rb") as f:
        f.seek(4096)
        assert f.read(5) == b"hello"
    assert restored_file.stat().st_size == 2 * GIB

    clone = conn.block_storage.create_volume(source_volid=source.id, name="clone")
    assert wait_volume(conn, clone.id, "available").size == 1

    conn.block_storage.delete_snapshot(snap)
    conn.block_storage.wait_for_delete(snap, interval=0.02, wait=5)
    assert not list((standin.state_dir / "snapshots").iterdir())
    conn.block_storage.delete_volume(source)
    wait_gone(conn, source.id)


def test_attach_detach_through_nova(standin: OpenStackStandIn,
                                    conn: openstack.connection.Connection) -> None:
    node0 = standin.add_server("node-0", "az-a")
    node1 = standin.add_server("node-1", "az-b")
    volume = conn.block_storage.create_volume(name="data", size=1)
    wait_volume(conn, volume.id, "available")

    # Slow enough to watch the intermediate statuses.
    standin.faults.slow("attach", 0.4)
    standin.faults.slow("detach", 0.3)
    attachment = conn.compute.create_volume_attachment(node0, volume=volume.id)
    assert attachment.device == "/dev/vdb" and attachment.attachment_id
    assert conn.block_storage.get_volume(volume.id).status in ("reserved", "attaching")
    in_use = wait_volume(conn, volume.id, "in-use")
    (cinder_side,) = in_use.attachments
    assert cinder_side["server_id"] == node0
    assert cinder_side["attachment_id"] == attachment.attachment_id
    assert cinder_side["device"] == "/dev/vdb" and cinder_side["attached_at"]
    listed = list(conn.compute.volume_attachments(node0))
    assert [a.volume_id for a in listed] == [volume.id]
    assert conn.compute.get_volume_attachment(node0, volume.id).device == "/dev/vdb"
    server = conn.compute.get_server(node0)
    assert server.availability_zone == "az-a" and server.status == "ACTIVE"
    assert [s.name for s in conn.compute.servers(name="node-1")] == ["node-1"]

    again = raw(conn, "compute", "POST", f"/servers/{node0}/os-volume_attachments",
                json={"volumeAttachment": {"volumeId": volume.id}})
    assert again.status_code == 400
    elsewhere = raw(conn, "compute", "POST", f"/servers/{node1}/os-volume_attachments",
                    json={"volumeAttachment": {"volumeId": volume.id}})
    assert elsewhere.status_code == 400
    unknown = raw(conn, "compute", "POST", f"/servers/{node0}/os-volume_attachments",
                  json={"volumeAttachment": {"volumeId": "0" * 32}})
    assert unknown.status_code == 404
    assert raw(conn, "compute", "GET", "/servers/nope").status_code == 404
    refused = raw(conn, "volume", "DELETE", f"/volumes/{volume.id}")
    assert refused.status_code == 400
    assert refused.json()["badRequest"]["message"].startswith(
        "Invalid volume: Volume status must be available or error")

    # Extending an in-use volume needs 3.42.
    old = raw(conn, "volume", "POST", f"/volumes/{volume.id}/action",
              json={"os-extend": {"new_size": 2}}, microversion="3.41")
    assert old.status_code == 400
    conn.block_storage.extend_volume(volume, 2)
    assert wait_volume(conn, volume.id, "in-use").size == 2

    conn.compute.delete_volume_attachment(node0, volume.id)
    assert conn.block_storage.get_volume(volume.id).status == "detaching"
    assert wait_volume(conn, volume.id, "available").attachments == []
    assert list(conn.compute.volume_attachments(node0)) == []


def test_multiattach(standin: OpenStackStandIn, conn: openstack.connection.Connection) -> None:
    standin.add_volume_type("shared", multiattach=True)
    node0 = standin.add_server("node-0", "nova")
    node1 = standin.add_server("node-1", "nova")
    volume = conn.block_storage.create_volume(size=1, volume_type="shared")
    assert wait_volume(conn, volume.id, "available").is_multiattach
    old = raw(conn, "compute", "POST", f"/servers/{node0}/os-volume_attachments",
              json={"volumeAttachment": {"volumeId": volume.id}}, microversion="2.59")
    assert old.status_code == 400
    conn.compute.create_volume_attachment(node0, volume=volume.id)
    wait_volume(conn, volume.id, "in-use")
    conn.compute.create_volume_attachment(node1, volume=volume.id)
    in_use = wait_volume(conn, volume.id, "in-use")
    deadline = time.monotonic() + 5
    while len(in_use.attachments) < 2:
        assert time.monotonic() < deadline
        in_use = conn.block_storage.get_volume(volume.id)
    assert {a["server_id"] for a in in_use.attachments} == {node0, node1}
    conn.compute.delete_volume_attachment(node0, volume.id)
    still = wait_volume(conn, volume.id, "in-use")
    deadline = time.monotonic() + 5
    while len(still.attachments) != 1:
        assert time.monotonic() < deadline
        still = conn.block_storage.get_volume(volume.id)
    assert still.attachments[0]["server_id"] == node1


def test_quotas_and_limits(standin: OpenStackStandIn,
                           conn: openstack.connection.Connection) -> None:
    standin.add_volume_type("gold")
    standin.set_quota("demo", volumes=3, gigabytes=8, snapshots=1,
                      per_type={"gold": {"volumes": 1}})
    too_big = raw(conn, "volume", "POST", "/volumes", json={"volume": {"size": 9}})
    assert too_big.status_code == 413
    message = too_big.json()["overLimit"]["message"]
    assert message.startswith("VolumeSizeExceedsAvailableQuota: Requested volume or snapshot "
                              "exceeds allowed gigabytes quota. Requested 9G, quota is 8G")
    with pytest.raises(openstack.exceptions.HttpException) as raised:
        conn.block_storage.create_volume(size=9)
    assert raised.value.status_code == 413

    first = conn.block_storage.create_volume(size=2, volume_type="gold")
    wait_volume(conn, first.id, "available")
    per_type = raw(conn, "volume", "POST", "/volumes",
                   json={"volume": {"size": 1, "volume_type": "gold"}})
    assert per_type.status_code == 413 and "volumes_gold" in per_type.text
    conn.block_storage.create_volume(size=1)
    conn.block_storage.create_volume(size=1)
    count = raw(conn, "volume", "POST", "/volumes", json={"volume": {"size": 1}})
    assert count.status_code == 413 and "VolumeLimitExceeded" in count.text
    snap = conn.block_storage.create_snapshot(volume_id=first.id)
    second = raw(conn, "volume", "POST", "/snapshots", json={"snapshot": {"volume_id": first.id}})
    assert second.status_code == 413 and "SnapshotLimitExceeded" in second.text
    conn.block_storage.wait_for_status(snap, "available", interval=0.02, wait=5)

    quota = conn.block_storage.get_quota_set(standin.project_id(), usage=True)
    assert quota.volumes == 3 and quota.usage["volumes"] == 3
    assert quota.usage["gigabytes"] == 6  # 4 GB of volumes + the 2 GB snapshot
    assert quota.usage["volumes_gold"] == 1
    limits = conn.block_storage.get_limits()
    assert limits.absolute.max_total_volume_gigabytes == 8
    assert limits.absolute.total_gigabytes_used == 6
    assert limits.absolute.total_volumes_used == 3


def test_metadata_service(standin: OpenStackStandIn) -> None:
    server_id = standin.add_server("Node-0", "az-a")
    url = standin.metadata_url(server_id) + "/openstack/latest/meta_data.json"
    meta = requests.get(url, timeout=5).json()
    assert meta["uuid"] == server_id and meta["availability_zone"] == "az-a"
    assert meta["name"] == "Node-0" and meta["hostname"] == "node-0"
    assert meta["project_id"] == standin.project_id()
    missing = requests.get(standin.metadata_url("nope") + "/openstack/latest/meta_data.json",
                           timeout=5)
    assert missing.status_code == 404


def test_config_helpers(standin: OpenStackStandIn) -> None:
    cloud = standin.clouds_yaml("sandbox")["clouds"]["sandbox"]
    conn = openstack.connect(auth_url=cloud["auth"]["auth_url"], region_name=cloud["region_name"],
                             **{k: v for k, v in cloud["auth"].items() if k != "auth_url"})
    assert list(conn.block_storage.volumes()) == []
    conf = standin.cloud_conf()
    assert conf.startswith("[Global]\n") and f"auth-url = {standin.auth_url}" in conf
    assert "tenant-name = demo" in conf and "domain-name = Default" in conf


def test_standalone_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "cinder_csi.standins.openstack", "--port", "0",
         "--state-dir", str(tmp_path), "--servers", "node-0:az-a,node-1:az-b"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        auth_url = proc.stdout.readline().strip()
        servers = [proc.stdout.readline().split() for _ in range(2)]
        assert auth_url.endswith("/identity/v3")
        assert [s[1] for s in servers] == ["node-0", "node-1"]
        conn = openstack.connect(auth_url=auth_url, username="admin", password="secret",
                                 project_name="demo", user_domain_name="Default",
                                 project_domain_name="Default")
        assert {z.name for z in conn.block_storage.availability_zones()} == {"az-a", "az-b"}
        assert conn.compute.get_server(servers[1][2]).availability_zone == "az-b"
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
