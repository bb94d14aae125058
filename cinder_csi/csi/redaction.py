"""CSI messages as JSON-able dicts for the log, every secret field masked.

A field is secret when the CSI spec marks it with the `csi_secret` option (or is named
``secrets``), so new secret fields in a newer spec are masked without a change here.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from cinder_csi.csi import csi_pb2

REDACTED = "***"

_CSI_SECRET: Any = csi_pb2.csi_secret  # typed as a plain FieldDescriptor by the .pyi


@cache
def is_secret(field: FieldDescriptor) -> bool:
    if field.name == "secrets":
        return True
    options = field.GetOptions()
    return options.HasExtension(_CSI_SECRET) and bool(options.Extensions[_CSI_SECRET])


def redact(message: Message) -> dict[str, Any]:
    """The message as a JSON-able dict, every secret field replaced by "***"."""
    out: dict[str, Any] = {}
    for field, value in message.ListFields():
        out[field.name] = REDACTED if is_secret(field) else _field_value(field, value)
    return out


def _field_value(field: FieldDescriptor, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        return {str(k): _single_value(value_field, v) for k, v in value.items()}
    if field.is_repeated:
        return [_single_value(field, v) for v in value]
    return _single_value(field, value)


def _single_value(field: FieldDescriptor, value: Any) -> Any:
    if isinstance(value, Message):
        return redact(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value
