"""Kubernetes resource quantities for storage sizes: parse to bytes, format like the API does.

Only what storage needs: a non-negative number with an optional binary (``Ki`` .. ``Ei``),
decimal (``m``, ``k``, ``M`` .. ``E``) or exponent (``1e9``) suffix. Sizes compare as whole
bytes, a fraction of a byte rounding up, as ``resource.Quantity.Value()`` does.
"""

from __future__ import annotations

import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

from cinder_csi.loop.errors import QuantityError

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15,
            "E": 18}
_PATTERN = re.compile(
    r"^\+?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|n|u|m|k|M|G|T|P|E)?$"
)


def parse_bytes(text: object) -> int:
    """``"1Gi"`` → 1073741824; a fractional byte rounds up. Raises :class:`QuantityError`."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise QuantityError(f"quantity must be a string, got {text!r}")
    match = _PATTERN.match(str(text).strip())
    if match is None:
        raise QuantityError(f"{text!r} is not a valid quantity")
    try:
        number = Decimal(match["number"])
    except InvalidOperation:
        raise QuantityError(f"{text!r} is not a valid quantity") from None
    suffix = match["suffix"] or ""
    if suffix in _BINARY:
        value = number * (1024 ** _BINARY[suffix])
    elif suffix in _DECIMAL:
        value = number.scaleb(_DECIMAL[suffix])
    else:  # an exponent such as e9
        value = number.scaleb(int(suffix[1:]))
    return int(value.to_integral_value(rounding=ROUND_CEILING))


def is_quantity(text: object) -> bool:
    try:
        parse_bytes(text)
    except QuantityError:
        return False
    return True


def format_bytes(size: int) -> str:
    """The canonical binary form the API server would print: ``2Gi``, ``1536Mi``, ``1500``."""
    if size < 0:
        raise QuantityError(f"a size cannot be negative: {size}")
    if size == 0:
        return "0"
    for suffix, power in sorted(_BINARY.items(), key=lambda item: -item[1]):
        unit = 1024 ** power
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)
