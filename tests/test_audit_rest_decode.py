"""Canonical decode cannot be made to allocate far more than its input (spec 11; audit 4c).

msgpack sizes a list from its header before it reads a single element, and the
decoders allowed any header up to 1,000,000 entries: about 5 KB of nested array
headers made one decode allocate ~76 MiB. An array or map header can promise no
more values than bytes remain (every value takes a byte at least), counting the
values still owed to the headers around it; a decoder checks that from the headers
before msgpack builds anything.
"""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.core.errors import NonCanonicalError
from capsule.format import canonical as canon

from .test_hostile import append_frames, build_base, records_frame

BUDGET = 2 * 2**20  # peak traced allocation allowed for a decode of a few KB


def peak(fn: Callable[[], Any]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    try:
        fn()
        err: BaseException | None = None
    except Exception as e:  # the caller asserts on it
        err = e
    finally:
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return top, err


BOMBS = {
    "array32-of-a-million": (b"\xdd" + struct.pack(">I", 1_000_000)) * 1000,  # 5,000 bytes
    "array16-full": (b"\xdc" + struct.pack(">H", 65535)) * 1700,  # 5,100 bytes
    "array16-within-the-input": (b"\xdc" + struct.pack(">H", 5000)) * 1700,  # each fits alone
    "map16": (b"\xde" + struct.pack(">H", 65535)) * 1700,
    "map32": (b"\xdf" + struct.pack(">I", 100_000)) * 1000,
}


@pytest.mark.parametrize("name", list(BOMBS))
@pytest.mark.parametrize("decoder", ["decode", "decode_bulk"])
def test_header_bombs_are_refused_before_they_allocate(name: str, decoder: str) -> None:
    raw = BOMBS[name]
    top, err = peak(lambda: getattr(canon, decoder)(raw))
    assert isinstance(err, NonCanonicalError), err
    assert top < BUDGET, f"{len(raw)} bytes of headers allocated {top / 2**20:.1f} MiB"


def test_honest_nesting_and_long_arrays_still_decode() -> None:
    for value in ([[list(range(300))] * 3] * 2, {"a": [{"b": list(range(1000))}] * 20}, [[[[]]]] * 500,
                  list(range(70_000))):
        raw = canon.encode(value)
        assert canon.decode(raw) == value and canon.promises_fit(raw)


def test_promises_are_counted_against_the_bytes_that_remain() -> None:
    assert canon.promises_fit(canon.encode([1, 2, 3]))
    assert not canon.promises_fit(b"\x93\x01\x02")  # three promised, two bytes left
    assert not canon.promises_fit(b"\x92\x92\x01\x01")  # the outer array still owes one
    assert canon.promises_fit(b"\x92\x92\x01\x01\x01")


@pytest.mark.parametrize("name", ["array32-of-a-million", "array16-within-the-input"])
def test_a_record_of_header_bombs_is_damage_not_an_allocation(tmp_path: Path, name: str) -> None:
    """In a RECORDS frame (open replays its ids without the full decode, verify decodes
    it): both refuse it as corrupt within the budget."""
    p = tmp_path / "a.capsule"
    build_base(p)
    payload = b"\x91" + BOMBS[name]  # an array of one "record"
    append_frames(p, [records_frame(payload)], new_records=1)
    top, err = peak(lambda: capsule.open(p).close())
    assert isinstance(err, capsule.CorruptError), err
    assert top < 4 * BUDGET, f"open allocated {top / 2**20:.1f} MiB"
    top, rep = peak(lambda: capsule.verify(p))
    assert top < 4 * BUDGET, f"verify allocated {top / 2**20:.1f} MiB"
    got = capsule.verify(p)
    assert not got.ok and got.first_error is not None
