"""GetCapacity from the real project quota, as Cinder reports it."""

from __future__ import annotations

import pytest

from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import GIB
from tests.real.cloud_check import Cloud
from tests.real.controller_process import ControllerProcess

pytestmark = pytest.mark.real

UNLIMITED = 2**63 - 1
DEFAULT_TYPE = "__DEFAULT__"


def capacity(controller: ControllerProcess, **params: str) -> csi_pb2.GetCapacityResponse:
    return controller.controller.GetCapacity(csi_pb2.GetCapacityRequest(parameters=params),
                                             timeout=60)


def headroom(usage: dict[str, dict[str, int]], key: str) -> int | None:
    item = usage[key]
    if item["limit"] < 0:
        return None
    return max(0, item["limit"] - item["in_use"] - item.get("reserved", 0))


def test_capacity_follows_the_quota_cinder_reports(
        controller: ControllerProcess, cloud: Cloud) -> None:
    usage = cloud.quota_usage()
    free = headroom(usage, "gigabytes")
    answer = capacity(controller)
    assert answer.available_capacity == (UNLIMITED if free is None else free * GIB)
    assert answer.minimum_volume_size.value == GIB


def test_capacity_under_tight_limits(controller: ControllerProcess, cloud: Cloud) -> None:
    before = capacity(controller).available_capacity
    with cloud.quota(gigabytes=5):
        assert capacity(controller).available_capacity == 5 * GIB
        with cloud.quota(**{f"gigabytes_{DEFAULT_TYPE}": 2}):
            # The tighter of the project's and the type's limit.
            assert capacity(controller, type=DEFAULT_TYPE).available_capacity == 2 * GIB
            assert capacity(controller).available_capacity == 5 * GIB
    with cloud.quota_limits(per_volume_gigabytes=3):
        assert capacity(controller).maximum_volume_size.value == 3 * GIB
    assert capacity(controller).available_capacity == before  # the old limits are back
