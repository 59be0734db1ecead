"""Coverage-guided fuzz target for the canonical msgpack decoder (spec 5, 11; capsule.format.canonical).

Every input either decodes to a value that re-encodes to exactly the same bytes,
or is refused with a ``DataError`` (``NonCanonicalError``); no other exception,
and memory bounded by the limits of spec 11 (libFuzzer's ``-rss_limit_mb``
watches that). Beyond the round trip, for a value that decodes:

- ``encode`` (normalize, then pack) gives the same bytes, or refuses a value
  nested deeper than 32 (the record depth limit normalize applies);
- ``count_objects``, which counts objects from the headers alone to refuse
  object bombs before msgpack builds them (11), agrees with a count of the
  decoded tree, and ``decode`` refuses the bytes with ``max_objects`` one below
  that count and takes them at that count.

Run from the repository root (``make fuzz`` does):

    .venv/bin/python tests/fuzz/fuzz_canonical.py build/fuzz/corpus/canonical -max_total_time=60
"""

from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

try:
    import atheris
except ImportError:  # pytest runs check() without it
    atheris = None

import msgpack  # noqa: F401  (imported before instrumenting: only capsule is instrumented)

with (atheris.instrument_imports(include=["capsule"]) if atheris is not None and __name__ == "__main__"
      else contextlib.nullcontext()):
    from capsule.core.constants import MAX_DEPTH
    from capsule.core.errors import DataError, NonCanonicalError
    from capsule.format import canonical as canon

from tests.fuzz._common import atheris_main, vector_frames

NAME = "canonical"


def objects(v: object) -> int:
    """Spec 11's count: every value once, map keys included."""
    n, stack = 0, [v]
    while stack:
        x = stack.pop()
        n += 1
        if type(x) is list:
            stack.extend(x)
        elif type(x) is dict:
            n += len(x)  # the keys (str: no deeper objects)
            stack.extend(x.values())
    return n


def check(data: bytes) -> None:
    try:
        v = canon.decode(data)
    except DataError:
        return
    assert canon.pack(v) == data, "decode must only accept bytes that re-encode identically (5.2)"
    if canon.depth(v, MAX_DEPTH) <= MAX_DEPTH:
        assert canon.encode(v) == data, "encode must agree with decode"
    else:
        try:
            canon.encode(v)
        except NonCanonicalError:
            pass
        else:
            raise AssertionError("encode took a value nested deeper than the limit")
    n = objects(v)
    assert canon.count_objects(data, 1 << 40) == n, "the header walk must count what decode builds (11)"
    assert canon.decode(data, max_objects=n) == v
    try:
        canon.decode(data, max_objects=n - 1)
    except NonCanonicalError:
        pass
    else:
        raise AssertionError(f"decode took {n} objects with max_objects={n - 1}")


SAMPLES: list[object] = [
    None, True, False, 0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, 2**32 - 1, 2**32,
    2**63 - 1, 2**63, 2**64 - 1, -(2**63), 0.5, -1.25, 1e300, "", "a", "é", "x" * 31, "x" * 32,
    "y" * 256, b"", b"\0" * 32, b"z" * 256, [], [1, [2, [3]]], {}, {"a": 1, "b": [None, {"c": b"d"}]},
    {"kind": "memory", "text": "hello", "time": 1, "tags": ["a", "b"], "meta": {"k": 1.5}},
    0,  # replaced below by a list nested 32 deep, the record depth limit
]


for _ in range(32):
    SAMPLES[-1] = [SAMPLES[-1]]


def seeds() -> list[tuple[str, bytes]]:
    out = [(f"value-{i}", canon.encode(v)) for i, v in enumerate(SAMPLES)]
    seen = set()
    for name, ftype, payload in vector_frames():
        if ftype == 0x82:  # COMMIT: the map before the 16-byte tail locator
            payload = payload[:-16]
        elif ftype == 0x0A:  # BLOB: u16 n | header map | data
            payload = payload[2 : 2 + int.from_bytes(payload[:2], "little")]
        elif ftype == 0x0B or len(payload) > 4096:  # TABLE is not msgpack
            continue
        if payload not in seen:
            seen.add(payload)
            out.append((f"{name}-{ftype:02x}", payload))
    return out


if __name__ == "__main__":
    atheris_main(NAME, check, seeds)
