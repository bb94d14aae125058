"""Checks on CSI requests shared by the controller and node services.

Everything here raises InvalidArgument (or OutOfRange / NotFound where the spec says so) with a
message that names the field, so the caller can tell what to change.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

from cinder_csi import FS_TYPES, errors
from cinder_csi.csi import csi_pb2

GIB = 1024**3
# Cinder keeps sizes in a 32-bit integer column (GiB), and names, descriptions, zones, types
# and metadata keys and values in strings of at most 255 characters; it refuses (400, or 414
# for a URL that long) anything beyond, so such input is refused here, before any cloud call.
MAX_VOLUME_GIB = 2**31 - 1
CINDER_TEXT_MAX = 255

Mode = csi_pb2.VolumeCapability.AccessMode.Mode
MULTI_NODE_MODES = frozenset(
    {Mode.MULTI_NODE_READER_ONLY, Mode.MULTI_NODE_SINGLE_WRITER, Mode.MULTI_NODE_MULTI_WRITER}
)
READ_ONLY_MODES = frozenset({Mode.SINGLE_NODE_READER_ONLY, Mode.MULTI_NODE_READER_ONLY})
KNOWN_MODES = frozenset(Mode.values()) - {Mode.UNKNOWN}

# Cinder and Nova IDs are UUIDs; anything else cannot name an existing object, and must not be
# spliced into a URL path.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def require(value: str, field: str) -> str:
    if not value:
        raise errors.InvalidArgument(f"{field} is required")
    return value


def cinder_text(value: str, field: str, *, name: bool = False) -> str:
    """``value`` if Cinder would store it as given: at most 255 characters, each printable and
    in the Basic Multilingual Plane (Cinder's own name and description rule). A ``name`` must
    also not start or end with white space, which Cinder strips: the stored name would then
    differ from the CSI name, and the lookup by name that makes CreateVolume idempotent would
    miss it."""
    if len(value) > CINDER_TEXT_MAX:
        raise errors.InvalidArgument(
            f"{field} is {len(value)} characters long; Cinder accepts at most {CINDER_TEXT_MAX}"
        )
    bad = next((c for c in value if not _cinder_printable(c)), None)
    if bad is not None:
        raise errors.InvalidArgument(
            f"{field} {shown(value)} contains the character U+{ord(bad):04X}, which Cinder "
            "refuses (control characters, line breaks, characters outside the BMP)"
        )
    if name and value != value.strip():
        raise errors.InvalidArgument(
            f"{field} {shown(value)} starts or ends with white space, which Cinder strips"
        )
    return value


def cinder_metadata(items: Mapping[str, str], what: str) -> None:
    """Metadata Cinder would store as given: keys of 1 to 255 characters, values up to 255."""
    for key, value in items.items():
        if not key:
            raise errors.InvalidArgument(f"{what}: an empty key is not allowed")
        cinder_text(key, f"{what} key")
        cinder_text(value, f"{what} {shown(key)}")


def _cinder_printable(char: str) -> bool:
    if ord(char) >= 0xFFFF:
        return False
    category = unicodedata.category(char)
    return not category.startswith("C") and (not category.startswith("Z") or category == "Zs")


def shown(value: str) -> str:
    """A bounded rendering of user input for an error message."""
    return repr(value) if len(value) <= 80 else repr(value[:60]) + f"... ({len(value)} chars)"


def is_uuid(value: str) -> bool:
    return bool(_UUID.match(value))


def require_id(value: str, field: str, what: str) -> str:
    """A required Cinder/Nova ID; a well-formed non-UUID is NOT_FOUND (it cannot exist)."""
    require(value, field)
    if not is_uuid(value):
        raise errors.NotFound(f"{what} {value!r} does not exist (not a UUID)")
    return value


def mode_name(mode: int) -> str:
    return str(Mode.Name(mode)) if mode in Mode.values() else str(mode)


def check_capability(cap: csi_pb2.VolumeCapability, field: str = "volume_capability") -> None:
    kind = cap.WhichOneof("access_type")
    if kind is None:
        raise errors.InvalidArgument(f"{field}: access_type must be mount or block")
    if not cap.HasField("access_mode") or cap.access_mode.mode not in KNOWN_MODES:
        raise errors.InvalidArgument(f"{field}: access_mode is missing or unknown")
    if kind == "mount":
        fs_type = cap.mount.fs_type
        if fs_type and fs_type not in FS_TYPES:
            raise errors.InvalidArgument(
                f"{field}: fs_type {fs_type!r} is not supported; use one of "
                f"{', '.join(sorted(FS_TYPES))}"
            )


def check_capabilities(caps: Sequence[csi_pb2.VolumeCapability]) -> None:
    if not caps:
        raise errors.InvalidArgument("volume_capabilities is required")
    for index, cap in enumerate(caps):
        check_capability(cap, f"volume_capabilities[{index}]")


def multi_node(caps: Iterable[csi_pb2.VolumeCapability]) -> bool:
    return any(cap.access_mode.mode in MULTI_NODE_MODES for cap in caps)


def unsupported_multi_node_reason(
    caps: Iterable[csi_pb2.VolumeCapability], *, multiattach: bool, volume: str
) -> str | None:
    """Why these capabilities cannot be served on ``volume``, or None when they can.

    Several nodes may share a Cinder volume only through a multiattach volume type, and only as
    a raw block device: a filesystem mounted on two nodes at once is corrupted.
    """
    for cap in caps:
        if cap.access_mode.mode not in MULTI_NODE_MODES:
            continue
        name = mode_name(cap.access_mode.mode)
        if cap.WhichOneof("access_type") != "block":
            return (
                f"access mode {name} needs volumeMode Block: a filesystem mounted on several "
                f"nodes at once would be corrupted ({volume})"
            )
        if not multiattach:
            return (
                f"access mode {name} needs a Cinder volume type with multiattach=\"<is> True\"; "
                f"{volume} is not multiattach (set the StorageClass parameter 'type')"
            )
    return None


def size_gib(capacity: csi_pb2.CapacityRange | None, *, minimum_gib: int = 1) -> int:
    """Whole GiB satisfying the range: at least ``required``, at most ``limit``."""
    required = capacity.required_bytes if capacity is not None else 0
    limit = capacity.limit_bytes if capacity is not None else 0
    if required < 0 or limit < 0:
        raise errors.InvalidArgument("capacity_range bytes must not be negative")
    if limit and required > limit:
        raise errors.OutOfRange(
            f"capacity_range: required_bytes {required} exceeds limit_bytes {limit}"
        )
    gib = max(minimum_gib, -(-required // GIB))
    if gib > MAX_VOLUME_GIB:
        raise errors.OutOfRange(
            f"capacity_range: {required} bytes is more than Cinder's largest volume "
            f"({MAX_VOLUME_GIB} GiB)"
        )
    if limit and gib * GIB > limit:
        raise errors.OutOfRange(
            f"capacity_range: Cinder allocates whole GiB; {gib} GiB exceeds limit_bytes {limit}"
        )
    return gib
