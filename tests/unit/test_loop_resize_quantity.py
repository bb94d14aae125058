"""cinder_csi.loop.kube.quantity: Kubernetes quantities as storage sizes."""

from __future__ import annotations

import pytest

from cinder_csi.loop.errors import QuantityError
from cinder_csi.loop.kube.quantity import format_bytes, is_quantity, parse_bytes

GI = 1 << 30


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1Gi", GI),
        ("2Gi", 2 * GI),
        ("1536Mi", 1536 << 20),
        ("1.5Gi", 3 * GI // 2),
        ("10Ki", 10240),
        ("1Ti", 1 << 40),
        ("1Pi", 1 << 50),
        ("1Ei", 1 << 60),
        ("5k", 5000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("2T", 2 * 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1073741824", GI),
        ("0", 0),
        ("1e9", 10**9),
        ("1E3", 1000),
        ("+3", 3),
        (".5Ki", 512),
        ("100m", 1),  # a fraction of a byte rounds up, as Quantity.Value() does
        ("1500m", 2),
        ("1n", 1),
        (" 1Gi ", GI),
        (42, 42),
    ],
)
def test_parse(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "Gi", "1GB", "-1Gi", "1 Gi", "1gi", "1.2.3", "0x10",
                                  None, True, 1.5, "1e", "1Gi1"])
def test_parse_refuses(text: object) -> None:
    with pytest.raises(QuantityError):
        parse_bytes(text)
    assert not is_quantity(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0"), (GI, "1Gi"), (2 * GI, "2Gi"), (3 * GI // 2, "1536Mi"), (1500, "1500"),
     (3072, "3Ki"), (1 << 40, "1Ti"), (10**9, "1000000000"), (1, "1")],
)
def test_format(size: int, text: str) -> None:
    assert format_bytes(size) == text
    assert parse_bytes(text) == size


def test_format_refuses_negative() -> None:
    with pytest.raises(QuantityError):
        format_bytes(-1)
