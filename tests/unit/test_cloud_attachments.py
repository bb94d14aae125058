"""Removing Cinder's record of an attachment (for servers Nova no longer has): through the
attachments API where the cloud has it (3.27+), else os-force_detach."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from cinder_csi.cloud.session import ServiceSession
from cinder_csi.cloud.volumes import VolumeApi
from cinder_csi.deadline import Deadline


class RecordingAdapter:
    def __init__(self, max_microversion: tuple[int, int], status: int = 200) -> None:
        self.max_microversion = max_microversion
        self.status = status
        self.calls: list[tuple[str, str, Any, str | None]] = []

    def get_endpoint_data(self) -> Any:
        return SimpleNamespace(max_microversion=self.max_microversion)

    def request(self, path: str, method: str, **kwargs: Any) -> Any:
        self.calls.append((method, path, kwargs.get("json"), kwargs.get("microversion")))
        body = json.dumps({"itemNotFound": {"message": "gone"}}).encode()
        return SimpleNamespace(status_code=self.status, content=body if self.status >= 400
                               else b"", headers={}, json=lambda: json.loads(body))


def api(adapter: RecordingAdapter) -> VolumeApi:
    return VolumeApi(ServiceSession("block-storage", lambda: adapter, microversion="3.42"))


def test_attachments_api_when_the_cloud_has_it() -> None:
    adapter = RecordingAdapter((3, 70))
    api(adapter).remove_attachment("vol-1", "att-1", Deadline.after(5))
    assert adapter.calls == [("DELETE", "/attachments/att-1", None, "3.27")]


def test_force_detach_on_older_clouds() -> None:
    adapter = RecordingAdapter((3, 20), status=202)
    api(adapter).remove_attachment("vol-1", "att-1", Deadline.after(5))
    assert adapter.calls == [("POST", "/volumes/vol-1/action",
                              {"os-force_detach": {"attachment_id": "att-1"}}, "3.20")]


@pytest.mark.parametrize("version", [(3, 70), (3, 20)])
def test_an_attachment_already_gone_counts_as_removed(version: tuple[int, int]) -> None:
    api(RecordingAdapter(version, status=404)).remove_attachment(
        "vol-1", "att-1", Deadline.after(5))
