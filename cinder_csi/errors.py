"""The project's one exception tree, and the one table that maps it to gRPC status codes.

Every layer raises these (``cloud/`` translates openstacksdk errors at its boundary, ``host/``
translates failed commands), and only the gRPC server's error interceptor turns them into
statuses. The table holds code *names* so that this module, and therefore ``cloud/`` and
``host/``, never import grpc. A subclass inherits its parent's code.

    CinderCSIError
    ├── PermanentError            retrying the same call will fail the same way
    │   ├── InvalidArgument       INVALID_ARGUMENT  bad input from the caller
    │   ├── NotFound              NOT_FOUND         volume, snapshot or node does not exist
    │   ├── AlreadyExists         ALREADY_EXISTS    same name, incompatible parameters
    │   ├── FailedPrecondition    FAILED_PRECONDITION  wrong state: attached elsewhere, in use
    │   │   └── CommandNotFound                     the node image lacks a program we need
    │   ├── OutOfRange            OUT_OF_RANGE      size cannot satisfy the capacity range
    │   ├── Unimplemented         UNIMPLEMENTED     not supported by this driver or cloud
    │   └── InternalError         INTERNAL          a bug or an impossible state; logged loudly
    │       └── CommandFailed                       a node command exited with a bad code
    └── TemporaryError            the same call may succeed later
        ├── OperationInProgress   ABORTED           another call on the same volume is running
        ├── InvalidToken          ABORTED           pagination token no longer valid (CSI spec)
        ├── QuotaExceeded         RESOURCE_EXHAUSTED  project quota or backend capacity
        ├── CloudUnavailable      UNAVAILABLE       cloud down, 5xx, auth failure, no endpoint
        │   └── RateLimited       UNAVAILABLE       429 / 413 with Retry-After, past retries
        └── Timeout               DEADLINE_EXCEEDED the caller's deadline passed while waiting
            └── CommandTimedOut                     a node command ran too long and was killed
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class CinderCSIError(Exception):
    """Base of every error this project raises on purpose."""

    temporary: ClassVar[bool] = False

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        if self.request_id:
            return f"{self.message} (request id {self.request_id})"
        return self.message


class PermanentError(CinderCSIError):
    """Retrying the same request unchanged will fail the same way."""


class TemporaryError(CinderCSIError):
    """The same request may succeed later."""

    temporary = True


class InvalidArgument(PermanentError):
    pass


class NotFound(PermanentError):
    pass


class AlreadyExists(PermanentError):
    pass


class FailedPrecondition(PermanentError):
    pass


class OutOfRange(PermanentError):
    pass


class Unimplemented(PermanentError):
    pass


class InternalError(PermanentError):
    pass


class OperationInProgress(TemporaryError):
    pass


class InvalidToken(TemporaryError):
    pass


class QuotaExceeded(TemporaryError):
    pass


class CloudUnavailable(TemporaryError):
    pass


class RateLimited(CloudUnavailable):
    """The cloud asked us to slow down (429, or 413 with Retry-After): nothing was done."""


class Timeout(TemporaryError):
    pass


class CommandFailed(InternalError):
    """A node command exited with a code its caller did not accept; keeps what it printed."""

    def __init__(
        self, message: str, *, argv: Sequence[str], returncode: int, stdout: str, stderr: str
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class CommandNotFound(FailedPrecondition):
    """The node image lacks a program the driver needs."""


class CommandTimedOut(Timeout):
    """A node command ran past its timeout and was killed."""


# The one table. Lookup walks the MRO, so a subclass inherits its parent's code.
GRPC_CODE_NAMES: dict[type[CinderCSIError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    FailedPrecondition: "FAILED_PRECONDITION",
    OutOfRange: "OUT_OF_RANGE",
    Unimplemented: "UNIMPLEMENTED",
    InternalError: "INTERNAL",
    OperationInProgress: "ABORTED",
    InvalidToken: "ABORTED",
    QuotaExceeded: "RESOURCE_EXHAUSTED",
    CloudUnavailable: "UNAVAILABLE",
    Timeout: "DEADLINE_EXCEEDED",
}


def grpc_code_name(error: BaseException) -> str:
    """The gRPC status code name for an exception; INTERNAL for anything not ours."""
    for cls in type(error).__mro__:
        name = GRPC_CODE_NAMES.get(cls)
        if name is not None:
            return name
    return "INTERNAL"
