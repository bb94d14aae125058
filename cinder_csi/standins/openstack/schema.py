"""Cinder's request-body limits, so a client that sends what real Cinder refuses is refused
here too: strings of at most 255 printable characters of the Basic Multilingual Plane (names,
descriptions, zones, types, metadata keys and values), sizes in a 32-bit integer."""

from __future__ import annotations

import unicodedata
from typing import Any

from .errors import bad_request

MAX_TEXT = 255
MAX_INT = 2**31 - 1


def _printable(char: str) -> bool:
    if ord(char) >= 0xFFFF:
        return False
    category = unicodedata.category(char)
    return not category.startswith("C") and (not category.startswith("Z") or category == "Zs")


def text(value: Any, field: str) -> str | None:
    """A string field as Cinder's JSON schema checks it (None stays None)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"Invalid input for field/attribute {field}. Value: {value!r}. "
                          f"{value!r} is not of type 'string'")
    if len(value) > MAX_TEXT:
        raise bad_request(f"Invalid input for field/attribute {field}. Value: {value[:40]}... "
                          f"is too long")
    if not all(_printable(c) for c in value):
        raise bad_request(f"Invalid input for field/attribute {field}. Value: {value[:40]!r}. "
                          "Invalid characters")
    return value


def metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request("Invalid input received: metadata must be a dict.")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not key or len(str(key)) > MAX_TEXT or len(str(item)) > MAX_TEXT:
            raise bad_request(f"Invalid input for field/attribute metadata. Key "
                              f"{str(key)[:40]!r}: keys need 1 to 255 characters, values at "
                              "most 255")
        out[str(key)] = str(item)
    return out


def size(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise bad_request(f"Invalid input received: Invalid input for field/attribute size. "
                          f"Value: {value}.") from None
    if number < 1:  # Cinder's request schema, before anything else is looked at
        raise bad_request(f"Invalid input for field/attribute size. Value: {value}. "
                          f"{number} is less than the minimum of 1")
    if number > MAX_INT:
        raise bad_request(f"Invalid input for field/attribute size. Value: {value}. "
                          f"{value} is greater than the maximum of {MAX_INT}")
    return number
