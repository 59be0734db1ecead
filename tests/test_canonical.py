"""Canonical msgpack profile (spec 5): one table drives encode and decode."""

from __future__ import annotations

import pytest

from capsule import NonCanonicalError
from capsule.format.canonical import decode, encode

# (value, canonical bytes)
GOOD = [
    (None, b"\xc0"),
    (True, b"\xc3"),
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\xcc\x80"),
    (-1, b"\xff"),
    (-33, b"\xd0\xdf"),
    (2**64 - 1, b"\xcf" + b"\xff" * 8),
    (1.5, b"\xcb\x3f\xf8\x00\x00\x00\x00\x00\x00"),
    ("", b"\xa0"),
    ("a" * 32, b"\xd9\x20" + b"a" * 32),
    (b"\x00", b"\xc4\x01\x00"),
    ([], b"\x90"),
    ({"a": 1, "b": 2}, b"\x82\xa1a\x01\xa1b\x02"),
    ({"\u00e9": 1, "z": 0}, b"\x82\xa1z\x00\xa2\xc3\xa9\x01"),
]


@pytest.mark.parametrize(("value", "raw"), GOOD)
def test_encode_decode_table(value: object, raw: bytes) -> None:
    assert encode(value) == raw
    assert decode(raw) == value


def test_encoder_normalizes() -> None:
    assert encode({"b": 1, "a": 2}) == encode({"a": 2, "b": 1})
    assert encode(-0.0) == encode(0.0)
    assert encode("e\u0301") == encode("\u00e9")
    assert encode((1, 2)) == encode([1, 2])


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), 2**64, -(2**63) - 1, {1: 2}, {"e\u0301": 1, "\u00e9": 2}, object()]
)
def test_encoder_refuses(value: object) -> None:
    # the last dict holds two keys that are equal after NFC
    with pytest.raises(NonCanonicalError):
        encode(value)


def test_encoder_refuses_deep_nesting() -> None:
    v: object = 1
    for _ in range(40):
        v = [v]
    with pytest.raises(NonCanonicalError, match="nesting"):
        encode(v)


BAD = [
    (b"\xcc\x01", "non-minimal int"),
    (b"\xd9\x01a", "str8 for a fixstr"),
    (b"\x82\xa1b\x01\xa1a\x02", "unsorted keys"),
    (b"\x82\xa1a\x01\xa1a\x02", "duplicate keys"),
    (b"\xca\x3f\xc0\x00\x00", "float32"),
    (b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", "NaN"),
    (b"\xcb\x80\x00\x00\x00\x00\x00\x00\x00", "-0.0"),
    (b"\x01\x02", "trailing bytes"),
    (b"\xd4\x01\x00", "ext type"),
    (b"\xd6\xff\x00\x00\x00\x00", "timestamp ext"),
    (b"\xa2\xff\xfe", "invalid UTF-8"),
    (b"\xa3e\xcc\x81", "text not NFC"),
    (b"\x81\x01\x02", "int key"),
    (b"\xdd\xff\xff\xff\xff", "huge array length"),
    (b"\xdf\xff\xff\xff\xff", "huge map length"),
    (b"\xdb\xff\xff\xff\xff", "huge str length"),
    (b"\xc6\xff\xff\xff\xff", "huge bin length"),
    (b"", "empty"),
]


@pytest.mark.parametrize(("raw", "why"), BAD, ids=[b[1] for b in BAD])
def test_decoder_refuses(raw: bytes, why: str) -> None:
    with pytest.raises(NonCanonicalError):
        decode(raw)
