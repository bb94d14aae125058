"""Fault injection in the OpenStack stand-in, seen through the real openstacksdk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keystoneauth1.exceptions
import openstack
import openstack.connection
import openstack.exceptions
import pytest
import requests

from cinder_csi.standins.openstack import OpenStackStandIn

FAST = (0.01, 0.03)


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[OpenStackStandIn]:
    with OpenStackStandIn(tmp_path / "os", transition_delay=FAST) as s:
        yield s


def connect(standin: OpenStackStandIn, **extra: Any) -> openstack.connection.Connection:
    return openstack.connect(
        auth_url=standin.auth_url, username="admin", password="secret", project_name="demo",
        user_domain_name="Default", project_domain_name="Default", region_name="RegionOne",
        **extra,
    )


@pytest.fixture
def conn(standin: OpenStackStandIn) -> openstack.connection.Connection:
    c = connect(standin)
    list(c.block_storage.volumes())  # authenticate and discover before faults start
    return c


def status_after(conn: openstack.connection.Connection, volume_id: str, seconds: float) -> str:
    time.sleep(seconds)
    return str(conn.block_storage.get_volume(volume_id).status)


def wait_volume(conn: openstack.connection.Connection, volume_id: str, status: str) -> None:
    deadline = time.monotonic() + 5
    while conn.block_storage.get_volume(volume_id).status != status:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_delay_per_service_and_route(standin: OpenStackStandIn,
                                     conn: openstack.connection.Connection) -> None:
    with standin.faults.delay(0.4, service="volume", path=r"/volumes/detail$"):
        started = time.monotonic()
        list(conn.block_storage.volumes())
        assert time.monotonic() - started >= 0.4
        started = time.monotonic()
        list(conn.block_storage.types())
        assert time.monotonic() - started < 0.3
    started = time.monotonic()
    list(conn.block_storage.volumes())
    assert time.monotonic() - started < 0.3


def test_5xx_for_next_n_matching_requests(standin: OpenStackStandIn,
                                          conn: openstack.connection.Connection) -> None:
    rule = standin.faults.error(503, count=2, method="POST", path=r"/volumes$")
    for _ in range(2):
        with pytest.raises(openstack.exceptions.HttpException) as raised:
            conn.block_storage.create_volume(size=1)
        assert raised.value.status_code == 503
    list(conn.block_storage.volumes())  # GETs never matched
    assert conn.block_storage.create_volume(size=1).status == "creating"
    assert rule.hits == 2
    failed = [r for r in standin.requests() if r.status == 503]
    assert len(failed) == 2 and all(r.request_id.startswith("req-") for r in failed)


def test_rate_limits_with_retry_after(standin: OpenStackStandIn,
                                      conn: openstack.connection.Connection) -> None:
    url = conn.block_storage.get_endpoint() + "/volumes"
    headers = {"X-Auth-Token": conn.session.get_token()}
    standin.faults.rate_limit(status=429, retry_after=3, count=1, service="volume")
    limited = requests.get(url, headers=headers, timeout=5)
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert "overLimit" in limited.json()
    standin.faults.rate_limit(status=413, retry_after=1, count=1, service="volume")
    assert requests.get(url, headers=headers, timeout=5).status_code == 413
    assert requests.get(url, headers=headers, timeout=5).status_code == 200


def test_hang_longer_than_client_timeout(standin: OpenStackStandIn) -> None:
    impatient = connect(standin, api_timeout=0.5)
    list(impatient.block_storage.volumes())
    standin.faults.hang(30, count=1, service="volume", method="GET")
    started = time.monotonic()
    with pytest.raises((openstack.exceptions.SDKException,
                        keystoneauth1.exceptions.ConnectionError)):
        list(impatient.block_storage.volumes())
    assert time.monotonic() - started < 5
    assert list(impatient.block_storage.volumes()) == []
    standin.faults.reset()  # releases the held request thread


def test_volume_stuck_in_creating_until_released(standin: OpenStackStandIn,
                                                 conn: openstack.connection.Connection) -> None:
    with standin.faults.stick("creating", volume="stuck-vol"):
        stuck = conn.block_storage.create_volume(size=1, name="stuck-vol")
        other = conn.block_storage.create_volume(size=1, name="other")
        assert status_after(conn, stuck.id, 0.3) == "creating"
        wait_volume(conn, other.id, "available")
    wait_volume(conn, stuck.id, "available")


def test_limited_concurrency_queues_transitions_in_order(
        standin: OpenStackStandIn, conn: openstack.connection.Connection) -> None:
    standin.faults.limit("create", 1)
    with standin.faults.stick("creating", volume="first"):
        first = conn.block_storage.create_volume(size=1, name="first")
        second = conn.block_storage.create_volume(size=1, name="second")
        # The stuck create holds the only slot: the second waits although nothing holds it.
        assert status_after(conn, second.id, 0.3) == "creating"
    wait_volume(conn, first.id, "available")
    wait_volume(conn, second.id, "available")


def test_limited_concurrency_passes_the_slot_on_when_a_create_is_voided(
        standin: OpenStackStandIn, conn: openstack.connection.Connection) -> None:
    standin.faults.limit("create", 1)
    with standin.faults.stick("creating", volume="first"):
        first = conn.block_storage.create_volume(size=1, name="first")
        second = conn.block_storage.create_volume(size=1, name="second")
        conn.block_storage.reset_volume_status(first, status="error", attach_status="detached",
                                               migration_status="none")
        wait_volume(conn, second.id, "available")


@pytest.mark.parametrize("status", ["attaching", "detaching", "deleting"])
def test_volume_stuck_in_transitional_status(standin: OpenStackStandIn,
                                             conn: openstack.connection.Connection,
                                             status: str) -> None:
    server = standin.add_server("node-0", "nova")
    volume = conn.block_storage.create_volume(size=1)
    wait_volume(conn, volume.id, "available")
    rule = standin.faults.stick(status, volume=volume.id)
    if status == "deleting":
        conn.block_storage.delete_volume(volume)
    else:
        conn.compute.create_volume_attachment(server, volume=volume.id)
        if status == "detaching":
            wait_volume(conn, volume.id, "in-use")
            conn.compute.delete_volume_attachment(server, volume.id)
    assert status_after(conn, volume.id, 0.3) == status
    rule.cancel()
    if status == "deleting":
        deadline = time.monotonic() + 5
        with pytest.raises(openstack.exceptions.NotFoundException):
            while time.monotonic() < deadline:
                conn.block_storage.get_volume(volume.id)
                time.sleep(0.02)
    else:
        wait_volume(conn, volume.id, "in-use" if status == "attaching" else "available")


def test_create_ends_in_error_and_extend_in_error_extending(
    standin: OpenStackStandIn, conn: openstack.connection.Connection
) -> None:
    standin.faults.fail_create(count=1)
    broken = conn.block_storage.create_volume(size=1)
    wait_volume(conn, broken.id, "error")
    healthy = conn.block_storage.create_volume(size=1)
    wait_volume(conn, healthy.id, "available")
    conn.block_storage.delete_volume(broken)  # error volumes can be deleted

    standin.faults.fail_extend(volume=healthy.id)
    conn.block_storage.extend_volume(healthy, 2)
    wait_volume(conn, healthy.id, "error_extending")
    assert conn.block_storage.get_volume(healthy.id).size == 1


def test_quota_exhausted(standin: OpenStackStandIn,
                         conn: openstack.connection.Connection) -> None:
    standin.set_quota("demo", gigabytes=0)
    with pytest.raises(openstack.exceptions.HttpException) as raised:
        conn.block_storage.create_volume(size=1)
    assert raised.value.status_code == 413
    assert "VolumeSizeExceedsAvailableQuota" in str(raised.value)


def test_nova_unreachable(standin: OpenStackStandIn,
                          conn: openstack.connection.Connection) -> None:
    server = standin.add_server("node-0", "nova")
    assert conn.compute.get_server(server).id == server
    rule = standin.faults.unreachable("compute")
    with pytest.raises((openstack.exceptions.SDKException,
                        keystoneauth1.exceptions.ConnectionError)):
        conn.compute.get_server(server)
    list(conn.block_storage.volumes())  # Cinder still answers
    rule.cancel()
    assert conn.compute.get_server(server).id == server


def test_nova_hidden_from_catalog(standin: OpenStackStandIn) -> None:
    server = standin.add_server("node-0", "nova")
    with standin.faults.hide_from_catalog("compute"):
        blind = connect(standin)
        with pytest.raises(openstack.exceptions.SDKException):
            blind.compute.get_server(server)
    assert connect(standin).compute.get_server(server).id == server


def test_reset_clears_everything(standin: OpenStackStandIn,
                                 conn: openstack.connection.Connection) -> None:
    standin.faults.error(500, count=None, service="volume")
    standin.faults.unreachable("compute")
    standin.faults.stick("creating")
    standin.faults.reset()
    volume = conn.block_storage.create_volume(size=1)
    wait_volume(conn, volume.id, "available")
    with pytest.raises(ValueError):
        standin.faults.unreachable("network")
