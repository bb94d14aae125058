"""Attachments as real loop devices with virtio by-id links (root only)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openstack
import openstack.connection
import pytest

from cinder_csi.standins.openstack import OpenStackStandIn

pytestmark = pytest.mark.root
GIB = 1024**3


def loops_over(path: Path) -> list[str]:
    result = subprocess.run(["losetup", "-j", str(path)], check=True, capture_output=True,
                            text=True)
    return [line.split(":", 1)[0] for line in result.stdout.splitlines() if line]


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[OpenStackStandIn]:
    standin = OpenStackStandIn(tmp_path / "os", transition_delay=(0.01, 0.03))
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
        # stop() must leave no loop device behind over any backing file.
        for image in (tmp_path / "os").glob("*/*.img"):
            leftovers = loops_over(image)
            for device in leftovers:
                subprocess.run(["losetup", "-d", device], check=False)
            assert leftovers == [], f"stop() left {leftovers} over {image}"


@pytest.fixture
def conn(standin: OpenStackStandIn) -> openstack.connection.Connection:
    return openstack.connect(
        auth_url=standin.auth_url, username="admin", password="secret", project_name="demo",
        user_domain_name="Default", project_domain_name="Default", region_name="RegionOne",
    )


def wait_volume(conn: openstack.connection.Connection, volume_id: str, status: str) -> None:
    deadline = time.monotonic() + 5
    while conn.block_storage.get_volume(volume_id).status != status:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def backing_file(standin: OpenStackStandIn, volume_id: str) -> Path:
    return next(Path(v["backing_file"]) for v in standin.volumes() if v["id"] == volume_id)


def test_attach_makes_loop_device_and_link(standin: OpenStackStandIn,
                                           conn: openstack.connection.Connection,
                                           tmp_path: Path) -> None:
    by_id = tmp_path / "by-id"
    server = standin.add_server("node-0", "nova", by_id_dir=by_id)
    volume = conn.block_storage.create_volume(size=1)
    wait_volume(conn, volume.id, "available")
    image = backing_file(standin, volume.id)

    conn.compute.create_volume_attachment(server, volume=volume.id)
    wait_volume(conn, volume.id, "in-use")
    link = by_id / f"virtio-{volume.id[:20]}"
    device = os.readlink(link)
    assert device.startswith("/dev/loop") and loops_over(image) == [device]
    assert standin.attachments()[0]["loop_device"] == device
    with open(device, "r+b") as dev:  # writes through the device land in the backing file
        dev.write(b"through-the-device")
        dev.flush()
        os.fsync(dev.fileno())
    with image.open("rb") as f:
        assert f.read(18) == b"through-the-device"

    conn.block_storage.extend_volume(volume, 2)
    wait_volume(conn, volume.id, "in-use")
    size = subprocess.run(["blockdev", "--getsize64", device], check=True, capture_output=True,
                          text=True).stdout.strip()
    assert int(size) == 2 * GIB

    conn.compute.delete_volume_attachment(server, volume.id)
    wait_volume(conn, volume.id, "available")
    assert not link.is_symlink()
    assert loops_over(image) == []


def test_no_devices_without_by_id_dir(standin: OpenStackStandIn,
                                      conn: openstack.connection.Connection) -> None:
    server = standin.add_server("node-0", "nova")
    volume = conn.block_storage.create_volume(size=1)
    wait_volume(conn, volume.id, "available")
    conn.compute.create_volume_attachment(server, volume=volume.id)
    wait_volume(conn, volume.id, "in-use")
    assert loops_over(backing_file(standin, volume.id)) == []
    assert standin.attachments()[0]["loop_device"] is None


def test_stop_detaches_what_it_made(standin: OpenStackStandIn,
                                    conn: openstack.connection.Connection,
                                    tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.img"
    foreign.write_bytes(b"\0" * 1024 * 1024)
    foreign_loop = subprocess.run(["losetup", "--find", "--show", str(foreign)], check=True,
                                  capture_output=True, text=True).stdout.strip()
    try:
        server = standin.add_server("node-0", "nova", by_id_dir=tmp_path / "by-id")
        volumes = [conn.block_storage.create_volume(size=1) for _ in range(2)]
        for volume in volumes:
            wait_volume(conn, volume.id, "available")
            conn.compute.create_volume_attachment(server, volume=volume.id)
        for volume in volumes:
            wait_volume(conn, volume.id, "in-use")
        images = [backing_file(standin, v.id) for v in volumes]
        assert all(len(loops_over(image)) == 1 for image in images)
        standin.stop()  # the fixture's stop() afterwards is a no-op
        assert all(loops_over(image) == [] for image in images)
        assert not list((tmp_path / "by-id").iterdir())
        assert loops_over(foreign) == [foreign_loop]  # not ours: left alone
    finally:
        subprocess.run(["losetup", "-d", foreign_loop], check=False)
