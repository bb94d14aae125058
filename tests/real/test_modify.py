"""ControllerModifyVolume (a VolumeAttributesClass) between two real Cinder volume types on the
same backend; the second type is made by the cloud admin for this module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from cinder_csi.csi import csi_pb2
from tests.integration.csi_helpers import create_request, expect_code
from tests.real.cloud_check import Cloud
from tests.real.conftest import Ledger, Session
from tests.real.controller_process import ControllerProcess

pytestmark = pytest.mark.real

CALL_S = 300
DEFAULT_TYPE = "__DEFAULT__"


@pytest.fixture(scope="module")
def gold(cloud: Cloud, session: Session) -> Iterator[str]:
    """A second type with the default type's extra specs, so on the same backend and retyped
    in place (a type Cinder must migrate to needs a driver that can copy data; the rig's
    cannot). Module teardown runs after each test's ledger, so no volume of it is left."""
    default = cloud.admin.block_storage.find_type(DEFAULT_TYPE, ignore_missing=False)
    made = cloud.admin.block_storage.create_type(
        name=f"{session.tag}-gold", extra_specs=dict(default.extra_specs or {}))
    try:
        yield str(made.name)
    finally:
        cloud.admin.block_storage.delete_type(made.id, ignore_missing=True)


@pytest.fixture(scope="module")
def nowhere(cloud: Cloud, session: Session) -> Iterator[str]:
    """A type no backend serves: Cinder's scheduler turns every retype to it down."""
    made = cloud.admin.block_storage.create_type(
        name=f"{session.tag}-nowhere", extra_specs={"volume_backend_name": "no-such-backend"})
    try:
        yield str(made.name)
    finally:
        cloud.admin.block_storage.delete_type(made.id, ignore_missing=True)


def host_of(cloud: Cloud, volume_id: str) -> str:
    return str(cloud.admin.block_storage.get_volume(volume_id).host)


def modify(controller: ControllerProcess, volume_id: str, **params: str) -> None:
    controller.controller.ControllerModifyVolume(csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume_id, mutable_parameters=params), timeout=CALL_S)


def create(controller: ControllerProcess, ledger: Ledger, label: str, **kwargs: Any) -> str:
    volume = controller.controller.CreateVolume(
        create_request(ledger.name(label), 1, **kwargs), timeout=CALL_S).volume
    return ledger.track(volume.volume_id)


def test_modify_retypes_between_two_real_types(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, gold: str) -> None:
    volume_id = create(controller, ledger, "retype")
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.volume_type == DEFAULT_TYPE
    backend = host_of(cloud, volume_id)

    modify(controller, volume_id, type=gold)
    volume = cloud.volume(volume_id)
    assert volume is not None and (volume.volume_type, volume.status) == (gold, "available")
    assert host_of(cloud, volume_id) == backend
    modify(controller, volume_id, type=gold)  # already that type: nothing to do
    modify(controller, volume_id)  # nothing asked: nothing to do

    modify(controller, volume_id, type=DEFAULT_TYPE)
    volume = cloud.volume(volume_id)
    assert volume is not None and (volume.volume_type, volume.status) == (
        DEFAULT_TYPE, "available")

    error = expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                        lambda: modify(controller, volume_id, type="no-such-type"))
    assert "no-such-type" in error.details()
    expect_code(grpc.StatusCode.INVALID_ARGUMENT,
                lambda: modify(controller, volume_id, iops="100"))
    expect_code(grpc.StatusCode.NOT_FOUND,
                lambda: modify(controller, "6a0e9b45-0000-4000-8000-0000000000cc", type=gold))


def test_a_retype_cinder_rolls_back_is_not_reported_as_done(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, nowhere: str) -> None:
    volume_id = create(controller, ledger, "rollback")
    error = expect_code(grpc.StatusCode.FAILED_PRECONDITION,
                        lambda: modify(controller, volume_id, type=nowhere))
    assert nowhere in error.details() and DEFAULT_TYPE in error.details()
    volume = cloud.volume(volume_id)
    assert volume is not None and (volume.volume_type, volume.status) == (
        DEFAULT_TYPE, "available")


def test_create_with_a_volume_attributes_class_type(
        controller: ControllerProcess, cloud: Cloud, ledger: Ledger, gold: str) -> None:
    volume_id = create(controller, ledger, "vac", mutable_parameters={"type": gold})
    volume = cloud.volume(volume_id)
    assert volume is not None and volume.volume_type == gold
