"""Kubernetes resource quantities ("10Gi", "500M", "1.5e3"), enough to compare storage sizes."""

from __future__ import annotations

import re
from fractions import Fraction

# "m" and the decimal suffixes step by 1000, the binary ones ("Ki" ..) by 1024.
_SUFFIXES: dict[str, Fraction] = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    **{suffix: Fraction(1000**power) for power, suffix in enumerate("kMGTPE", start=1)},
    **{suffix + "i": Fraction(1024**power) for power, suffix in enumerate("KMGTPE", start=1)},
}

_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:\d+\.?\d*|\.\d+))(?:(?P<exp>[eE][+-]?\d+)|(?P<suffix>[a-zA-Z]*))$"
)


def parse_quantity(text: object) -> Fraction:
    """The exact value of a quantity; ValueError for anything the real parser rejects."""
    if isinstance(text, bool):
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    if isinstance(text, int):
        return Fraction(text)
    if not isinstance(text, str):
        raise ValueError(f"quantities must be strings: {text!r}")
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise ValueError(f"quantities must match the regular expression: {text!r}")
    number = Fraction(match.group("num"))
    if match.group("exp"):
        return number * Fraction(10) ** int(match.group("exp")[1:])
    suffix = match.group("suffix") or ""
    if suffix not in _SUFFIXES:
        raise ValueError(f"unable to parse quantity's suffix: {text!r}")
    return number * _SUFFIXES[suffix]


def is_quantity(text: object) -> bool:
    try:
        parse_quantity(text)
    except ValueError:
        return False
    return True
