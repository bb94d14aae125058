from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from cinder_csi.errors import InvalidArgument, NotFound
from cinder_csi.host.metadata import (
    MetadataSource,
    NodeMetadata,
    parse_search_order,
)
from tests.unit.host_fakes import FakeRunner

SERVER = "6c4e1a3b-2d9f-4e8a-b1c7-0f5e3d2a9b8c"
# Nothing listens on port 9 (discard) of localhost: the metadata service fails at once.
DEAD_URL = "http://127.0.0.1:9/openstack/latest/meta_data.json"


def drive(root: Path, uuid: str = SERVER, zone: str = "az-1") -> Path:
    path = root / "openstack" / "latest" / "meta_data.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"uuid": uuid, "availability_zone": zone, "name": "node-0"}))
    return root


def source(tmp_path: Path, **kwargs: object) -> MetadataSource:
    defaults: dict[str, object] = {
        "metadata_url": DEAD_URL,
        "request_timeout": 1.0,
        "config_drive_dir": tmp_path / "no-drive",
        "runner": FakeRunner(),
    }
    defaults.update(kwargs)
    return MetadataSource(**defaults)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "order"),
    [
        (None, ("configDrive", "metadataService")),
        ("", ("configDrive", "metadataService")),
        ("metadataService,configDrive", ("metadataService", "configDrive")),
        (" configDrive ", ("configDrive",)),
        (["metadataService"], ("metadataService",)),
    ],
)
def test_search_order(value: str | list[str] | None, order: tuple[str, ...]) -> None:
    assert parse_search_order(value) == order


@pytest.mark.parametrize(
    "value", ["configdrive", "metadataService,nova", "configDrive,configDrive"]
)
def test_bad_search_order(value: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_search_order(value)


def test_config_drive_dir(tmp_path: Path) -> None:
    meta = source(tmp_path, config_drive_dir=drive(tmp_path / "cd")).get()
    assert meta == NodeMetadata(SERVER, "az-1")


def test_order_decides_which_source_answers(tmp_path: Path) -> None:
    cd = drive(tmp_path / "cd", uuid="from-drive")
    first = source(tmp_path, config_drive_dir=cd, search_order="configDrive,metadataService")
    assert first.get().node_id == "from-drive"
    # metadata service first: it fails, so the drive still answers, but after it.
    second = source(tmp_path, config_drive_dir=cd, search_order="metadataService,configDrive")
    assert second.get().node_id == "from-drive"
    only_service = source(tmp_path, config_drive_dir=cd, search_order="metadataService")
    with pytest.raises(NotFound, match="metadataService"):
        only_service.get()


def test_error_names_every_source_and_why(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        source(tmp_path).get()
    message = str(info.value)
    assert "configDrive" in message and "no-drive" in message
    assert "metadataService" in message and DEAD_URL in message
    assert "--node-id" in message


def test_answer_is_cached_but_failure_is_not(tmp_path: Path) -> None:
    cd = tmp_path / "cd"
    src = source(tmp_path, config_drive_dir=cd)
    with pytest.raises(NotFound):
        src.get()
    drive(cd)
    assert src.get().node_id == SERVER
    (cd / "openstack" / "latest" / "meta_data.json").write_text('{"uuid": "changed"}')
    assert src.get().node_id == SERVER


def test_flags_win_and_skip_the_lookup(tmp_path: Path) -> None:
    runner = FakeRunner()
    src = source(
        tmp_path,
        node_id="bare-metal-7",
        availability_zone="rack-2",
        config_drive_dir=None,
        runner=runner,
    )
    assert src.get() == NodeMetadata("bare-metal-7", "rack-2")
    assert runner.calls == []


def test_one_flag_overrides_only_its_field(tmp_path: Path) -> None:
    cd = drive(tmp_path / "cd")
    assert source(tmp_path, config_drive_dir=cd, node_id="n1").get() == NodeMetadata("n1", "az-1")
    assert source(tmp_path, config_drive_dir=cd, availability_zone="").get() == NodeMetadata(
        SERVER, "az-1"
    )  # an empty flag is "not given"
    zone = source(tmp_path, config_drive_dir=cd, availability_zone="z9").get()
    assert zone == NodeMetadata(SERVER, "z9")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("not json", "not JSON"),
        ("[]", "not a JSON object"),
        ('{"availability_zone": "a"}', "no 'uuid'"),
        ('{"uuid": "u"}', "no 'availability_zone'"),
    ],
)
def test_bad_meta_data(tmp_path: Path, raw: str, why: str) -> None:
    cd = tmp_path / "cd"
    (cd / "openstack" / "latest").mkdir(parents=True)
    (cd / "openstack" / "latest" / "meta_data.json").write_text(raw)
    with pytest.raises(NotFound, match=re.escape(why)):
        source(tmp_path, config_drive_dir=cd, search_order="configDrive").get()


class ConfigDriveDevice:
    """Fake blkid/mount/umount: the 'device' mounts by copying a prepared tree."""

    def __init__(self, tmp_path: Path, found: bool = True) -> None:
        self.content = drive(tmp_path / "content")
        self.found = found
        self.mounted: list[str] = []
        self.runner = FakeRunner(self.handle)

    def handle(self, argv: tuple[str, ...]) -> tuple[int, str, str] | None:
        if argv[0] == "blkid":
            time.sleep(0.02)  # let concurrent callers pile up
            if self.found and argv[3] == "LABEL=config-2":
                return (0, "/dev/sr0\n", "")
            return (2, "", "")
        if argv[0] == "mount":
            assert argv[1:4] == ("-o", "ro", "/dev/sr0")
            target = Path(argv[4])
            (target / "openstack").symlink_to(self.content / "openstack")
            self.mounted.append(argv[4])
        if argv[0] == "umount":
            (Path(argv[1]) / "openstack").unlink()
            self.mounted.remove(argv[1])
        return None


def test_config_drive_device_is_mounted_read_only_and_released(tmp_path: Path) -> None:
    dev = ConfigDriveDevice(tmp_path)
    src = source(tmp_path, config_drive_dir=None, runner=dev.runner)
    assert src.get() == NodeMetadata(SERVER, "az-1")
    assert dev.mounted == []
    mount_dir = dev.runner.calls[1][4]
    assert not Path(mount_dir).exists()  # temp dir removed


def test_no_config_drive_device(tmp_path: Path) -> None:
    dev = ConfigDriveDevice(tmp_path, found=False)
    src = source(tmp_path, config_drive_dir=None, runner=dev.runner, search_order="configDrive")
    with pytest.raises(NotFound, match="no device labelled config-2 or CONFIG-2"):
        src.get()
    assert [c[0] for c in dev.runner.calls] == ["blkid", "blkid"]


def test_concurrent_callers_fetch_once(tmp_path: Path) -> None:
    dev = ConfigDriveDevice(tmp_path)
    src = source(tmp_path, config_drive_dir=None, runner=dev.runner)
    results: list[NodeMetadata] = []
    threads = [threading.Thread(target=lambda: results.append(src.get())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [NodeMetadata(SERVER, "az-1")] * 8
    assert [c[0] for c in dev.runner.calls] == ["blkid", "mount", "umount"]
