from __future__ import annotations

import pytest

from cinder_csi import errors


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.InvalidArgument, "INVALID_ARGUMENT"),
        (errors.NotFound, "NOT_FOUND"),
        (errors.AlreadyExists, "ALREADY_EXISTS"),
        (errors.FailedPrecondition, "FAILED_PRECONDITION"),
        (errors.OutOfRange, "OUT_OF_RANGE"),
        (errors.OperationInProgress, "ABORTED"),
        (errors.InvalidToken, "ABORTED"),
        (errors.QuotaExceeded, "RESOURCE_EXHAUSTED"),
        (errors.CloudUnavailable, "UNAVAILABLE"),
        (errors.Timeout, "DEADLINE_EXCEEDED"),
        (errors.InternalError, "INTERNAL"),
    ],
)
def test_every_error_maps_to_its_code(cls: type[errors.CinderCSIError], code: str) -> None:
    assert errors.grpc_code_name(cls("x")) == code


def test_foreign_exception_is_internal_never_unknown() -> None:
    assert errors.grpc_code_name(KeyError("x")) == "INTERNAL"


def test_temporary_and_permanent_are_disjoint() -> None:
    for cls in errors.GRPC_CODE_NAMES:
        assert issubclass(cls, errors.TemporaryError) != issubclass(cls, errors.PermanentError)
        assert cls.temporary == issubclass(cls, errors.TemporaryError)


def test_request_id_is_in_message() -> None:
    assert "req-1" in str(errors.CloudUnavailable("cinder down", request_id="req-1"))
