"""The stand-in's Cinder backups API, driven by the real openstacksdk over HTTP: create from a
volume or a snapshot, list, show, delete, quotas, and restore into a new volume (API 3.47)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openstack.connection
import pytest

from cinder_csi.standins.openstack import OpenStackStandIn
from tests.integration.test_openstack_standin import FAST, connect, raw, wait_volume

GIB = 1024**3


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[OpenStackStandIn]:
    with OpenStackStandIn(tmp_path / "os", availability_zones=("az-a", "az-b"),
                          transition_delay=FAST) as s:
        yield s


@pytest.fixture
def conn(standin: OpenStackStandIn) -> openstack.connection.Connection:
    return connect(standin)


def until(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def post(conn: openstack.connection.Connection, path: str, body: dict[str, Any],
         version: str = "3.51") -> Any:
    return raw(conn, "volume", "POST", path, json=body, microversion=version)


def backup_status(conn: openstack.connection.Connection, backup_id: str) -> str:
    answer = raw(conn, "volume", "GET", f"/backups/{backup_id}", microversion="3.51")
    return str(answer.json()["backup"]["status"]) if answer.status_code == 200 else "gone"


def volume_with_data(conn: openstack.connection.Connection, standin: OpenStackStandIn,
                     data: bytes, size: int = 1) -> str:
    volume = conn.block_storage.create_volume(size=size, name="src")
    wait_volume(conn, volume.id, "available")
    backing = Path(next(v["backing_file"] for v in standin.volumes() if v["id"] == volume.id))
    with backing.open("r+b") as f:
        f.write(data)
    return str(volume.id)


def test_backup_of_a_snapshot_restores_into_a_bigger_volume(
    conn: openstack.connection.Connection, standin: OpenStackStandIn
) -> None:
    volume_id = volume_with_data(conn, standin, b"precious bytes")
    snap = conn.block_storage.create_snapshot(volume_id=volume_id, name="s1")
    until(lambda: conn.block_storage.get_snapshot(snap.id).status == "available", "snapshot")
    answer = post(conn, "/backups", {"backup": {
        "volume_id": volume_id, "snapshot_id": snap.id, "name": "b1",
        "metadata": {"k": "v"}, "availability_zone": "az-b"}})
    assert answer.status_code == 202, answer.text
    created = answer.json()["backup"]
    assert set(created) >= {"id", "name", "links"} and created["name"] == "b1"
    backup_id = created["id"]
    # While the copy is taken the snapshot is busy; afterwards it is available again.
    assert conn.block_storage.get_snapshot(snap.id).status in ("backing-up", "available")
    until(lambda: backup_status(conn, backup_id) == "available", "backup available")
    assert conn.block_storage.get_snapshot(snap.id).status == "available"
    shown = raw(conn, "volume", "GET", f"/backups/{backup_id}", microversion="3.51").json()
    backup = shown["backup"]
    assert (backup["volume_id"], backup["snapshot_id"], backup["size"]) == (volume_id, snap.id, 1)
    assert backup["metadata"] == {"k": "v"} and backup["availability_zone"] == "az-b"

    # Restore: a volume created with backup_id (3.47), larger than the backup.
    answer = post(conn, "/volumes", {"volume": {"name": "restored", "size": 2,
                                                "backup_id": backup_id}}, version="3.47")
    assert answer.status_code == 202, answer.text
    restored_id = answer.json()["volume"]["id"]
    assert backup_status(conn, backup_id) in ("restoring", "available")
    restored = wait_volume(conn, restored_id, "available")
    assert restored.size == 2
    until(lambda: backup_status(conn, backup_id) == "available", "backup released")
    backing = Path(next(v["backing_file"] for v in standin.volumes() if v["id"] == restored_id))
    assert backing.read_bytes()[:14] == b"precious bytes"
    assert backing.stat().st_size == 2 * GIB


def test_listing_filters_and_pages(
    conn: openstack.connection.Connection, standin: OpenStackStandIn
) -> None:
    volume_id = volume_with_data(conn, standin, b"x")
    ids = []
    for name in ("a", "b", "c"):
        answer = post(conn, "/backups", {"backup": {"volume_id": volume_id, "name": name}})
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["backup"]["id"])
        until(lambda: conn.block_storage.get_volume(volume_id).status == "available",
              "volume back to available")
    summary = raw(conn, "volume", "GET", "/backups").json()["backups"]
    assert {b["id"] for b in summary} == set(ids) and set(summary[0]) == {"id", "name", "links"}
    named = raw(conn, "volume", "GET", "/backups/detail", params={"name": "b"}).json()
    assert [b["id"] for b in named["backups"]] == [ids[1]]
    page = raw(conn, "volume", "GET", "/backups/detail",
               params={"limit": "2", "sort": "created_at:asc"}).json()
    assert [b["id"] for b in page["backups"]] == ids[:2]
    assert any(link["rel"] == "next" for link in page["backups_links"])
    by_sdk = {b.id for b in conn.block_storage.backups(details=True)}
    assert by_sdk == set(ids)


def test_in_use_volume_needs_force_and_busy_backup_cannot_be_deleted(
    conn: openstack.connection.Connection, standin: OpenStackStandIn
) -> None:
    volume_id = volume_with_data(conn, standin, b"x")
    server = standin.add_server("vm", "az-a")
    conn.compute.create_volume_attachment(server, volume_id=volume_id)
    wait_volume(conn, volume_id, "in-use")
    refused = post(conn, "/backups", {"backup": {"volume_id": volume_id, "name": "nf"}})
    assert refused.status_code == 400 and "force" in refused.text
    with standin.faults.stick("creating"):
        answer = post(conn, "/backups", {"backup": {"volume_id": volume_id, "name": "f",
                                                    "force": True}})
        assert answer.status_code == 202, answer.text
        backup_id = answer.json()["backup"]["id"]
        busy = raw(conn, "volume", "DELETE", f"/backups/{backup_id}")
        assert busy.status_code == 400 and "available or error" in busy.text
    until(lambda: backup_status(conn, backup_id) == "available", "backup available")
    # The source went back to in-use (it is still attached).
    assert conn.block_storage.get_volume(volume_id).status == "in-use"
    assert raw(conn, "volume", "DELETE", f"/backups/{backup_id}").status_code == 202
    until(lambda: backup_status(conn, backup_id) == "gone", "backup deleted")


def test_failed_backup_ends_in_error_and_can_be_deleted(
    conn: openstack.connection.Connection, standin: OpenStackStandIn
) -> None:
    volume_id = volume_with_data(conn, standin, b"x")
    standin.faults.fail_backup(backup="doomed")
    answer = post(conn, "/backups", {"backup": {"volume_id": volume_id, "name": "doomed"}})
    backup_id = answer.json()["backup"]["id"]
    until(lambda: backup_status(conn, backup_id) == "error", "backup error")
    shown = raw(conn, "volume", "GET", f"/backups/{backup_id}").json()["backup"]
    assert shown["fail_reason"]
    assert conn.block_storage.get_volume(volume_id).status == "available"
    assert raw(conn, "volume", "DELETE", f"/backups/{backup_id}").status_code == 202
    until(lambda: backup_status(conn, backup_id) == "gone", "backup deleted")


def test_quota_microversions_and_bad_input(
    conn: openstack.connection.Connection, standin: OpenStackStandIn
) -> None:
    volume_id = volume_with_data(conn, standin, b"x", size=2)
    old = post(conn, "/backups", {"backup": {"volume_id": volume_id, "metadata": {"a": "b"}}},
               version="3.42")
    assert old.status_code == 400 and "metadata" in old.text
    missing = post(conn, "/backups", {"backup": {"volume_id": "not-there"}})
    assert missing.status_code == 404
    standin.set_quota("demo", backup_gigabytes=1)
    over = post(conn, "/backups", {"backup": {"volume_id": volume_id}})
    assert over.status_code == 413 and "Backup gigabytes quota" in over.text
    assert conn.block_storage.get_volume(volume_id).status == "available"  # untouched
    standin.set_quota("demo", backup_gigabytes=-1, backups=0)
    over = post(conn, "/backups", {"backup": {"volume_id": volume_id}})
    assert over.status_code == 413 and "BackupLimitExceeded" in over.text
    standin.set_quota("demo", backups=-1)
    with standin.faults.stick("creating"):
        answer = post(conn, "/backups", {"backup": {"volume_id": volume_id, "name": "q"}})
        backup_id = answer.json()["backup"]["id"]
        before_ready = post(conn, "/volumes", {"volume": {"size": 2, "backup_id": backup_id}},
                            version="3.47")
        assert before_ready.status_code == 400 and "must be available" in before_ready.text
    until(lambda: backup_status(conn, backup_id) == "available", "backup available")
    too_old = post(conn, "/volumes", {"volume": {"size": 2, "backup_id": backup_id}},
                   version="3.46")
    assert too_old.status_code == 400 and "backup_id" in too_old.text
    too_small = post(conn, "/volumes", {"volume": {"size": 1, "backup_id": backup_id}},
                     version="3.47")
    assert too_small.status_code == 400 and "smaller than the backup" in too_small.text
