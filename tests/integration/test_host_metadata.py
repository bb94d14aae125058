"""Node metadata from a real HTTP metadata service (a local http.server) and a real config drive."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cinder_csi.deadline import Deadline
from cinder_csi.errors import NotFound
from cinder_csi.host.commands import CommandResult, CommandRunner
from cinder_csi.host.metadata import MetadataSource, NodeMetadata
from cinder_csi.host.mountinfo import MountTable
from tests.integration.loop_devices import MIB, LoopDevices, run

SERVER = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
META = {"uuid": SERVER, "availability_zone": "zone-b", "hostname": "node-1"}


class MetadataService:
    def __init__(self) -> None:
        self.hits = 0
        self.status = 200
        self.delay = 0.0
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.hits += 1
                time.sleep(service.delay)
                if self.path != "/openstack/latest/meta_data.json" or service.status != 200:
                    self.send_error(404 if service.status == 200 else service.status)
                    return
                body = json.dumps(META).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        host, port = self.server.server_address[:2]
        self.url = f"http://{host!s}:{port}/openstack/latest/meta_data.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> MetadataService:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def service() -> Iterator[MetadataService]:
    with MetadataService() as svc:
        yield svc


def test_metadata_service_answer_is_fetched_once(service: MetadataService, tmp_path: Path) -> None:
    src = MetadataSource(
        search_order="configDrive,metadataService",
        config_drive_dir=tmp_path / "no-drive",
        metadata_url=service.url,
    )
    assert src.get() == NodeMetadata(SERVER, "zone-b")
    assert src.get() == NodeMetadata(SERVER, "zone-b")
    assert service.hits == 1


def test_http_error_is_reported(service: MetadataService) -> None:
    service.status = 500
    src = MetadataSource(search_order="metadataService", metadata_url=service.url)
    with pytest.raises(NotFound, match=r"metadataService: GET .* failed: HTTP Error 500"):
        src.get()


def test_slow_service_times_out(service: MetadataService) -> None:
    service.delay = 2.0
    src = MetadataSource(
        search_order="metadataService", metadata_url=service.url, request_timeout=0.3
    )
    start = time.monotonic()
    with pytest.raises(NotFound, match="timed out"):
        src.get()
    assert time.monotonic() - start < 1.5


class OnlyThisDrive(CommandRunner):
    """Real runner, but `blkid -t LABEL=...` answers with our loop device only, so the test
    never looks at (or mounts) a config drive of the machine it runs on."""

    def __init__(self, device: Path) -> None:
        super().__init__()
        self.device = device

    def run(
        self,
        argv: Sequence[str],
        *,
        deadline: Deadline | None = None,
        timeout: float | None = None,
        ok_codes: Collection[int] = (0,),
        input_text: str | None = None,
    ) -> CommandResult:
        if argv[0] == "blkid":
            assert "LABEL=config-2" in argv
            return CommandResult(tuple(argv), 0, f"{self.device}\n", "")
        return super().run(
            argv, deadline=deadline, timeout=timeout, ok_codes=ok_codes, input_text=input_text
        )


@pytest.mark.root
def test_config_drive_is_mounted_read_only_read_and_released(tmp_path: Path) -> None:
    with LoopDevices(tmp_path) as loops:
        device = loops.create(64 * MIB)
        run("mkfs.ext4", "-q", "-L", "config-2", str(device))
        prepare = loops.directory("prepare")
        run("mount", str(device), str(prepare))
        (prepare / "openstack" / "latest").mkdir(parents=True)
        (prepare / "openstack" / "latest" / "meta_data.json").write_text(json.dumps(META))
        run("umount", str(prepare))

        src = MetadataSource(search_order="configDrive", runner=OnlyThisDrive(device))
        assert src.get() == NodeMetadata(SERVER, "zone-b")
        assert MountTable().find_by_source(device) == []
