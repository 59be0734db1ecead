"""Coverage-guided fuzz target for the JSONL reader (spec 11; capsule.ingest.jsonl).

The input is one byte choosing the line limit (small limits reach the
over-long-line refusal; the others use the real one, 16 MiB) and a byte stream
read by ``read_jsonl`` as ``put --jsonl`` and ``pack`` read it. Every line that
parses goes on the way ``put`` takes (``Transaction.put_value``): a JSON object
becomes a record with ``record_from_input``, which is encoded; the encoded bytes
must then decode canonically and back to a record with the same id and bytes.

Only ``DataError`` or ``UsageError`` may escape (and ``TypeError`` from
``record_from_input``, which ``put_value`` turns into ``InvalidRecordError``).
When the whole stream is read, the line numbers count every line and the
``seen`` hash covers exactly the bytes read.

Run from the repository root (``make fuzz`` does):

    .venv/bin/python tests/fuzz/fuzz_jsonl.py build/fuzz/corpus/jsonl -max_total_time=60
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

try:
    import atheris
except ImportError:  # pytest runs check() without it
    atheris = None

import msgpack  # noqa: F401  (imported before instrumenting: only capsule is instrumented)
import numpy  # noqa: F401

with (atheris.instrument_imports(include=["capsule"]) if atheris is not None and __name__ == "__main__"
      else contextlib.nullcontext()):
    import capsule  # noqa: F401  (registers every record kind)
    from capsule.core import constants as C
    from capsule.core.errors import CapsuleError, InvalidRecordError
    from capsule.format import canonical as canon
    from capsule.format.records import decode_record, encode_record, record_from_input
    from capsule.ingest.jsonl import read_jsonl

from tests.fuzz._common import atheris_main

NAME = "jsonl"
TIME = 1767225600 * 10**9


def limit_for(b: int) -> int:
    return 1 + (b & 0x3F) if b < 0x80 else C.MAX_JSONL_LINE


def put_value(obj: object) -> None:
    """What ``Transaction.put_value`` does with a line, without a capsule."""
    if not isinstance(obj, dict):
        raise InvalidRecordError("a record must be a JSON object")
    try:
        rec = record_from_input(obj, time=TIME)
    except TypeError as e:  # put_value's own mapping
        raise InvalidRecordError(f"missing or bad field: {e}") from e
    rid, data = encode_record(rec)
    value = canon.decode(data)  # what was encoded must be canonical ...
    back = decode_record(value, rid)  # ... and read back as the same record
    assert encode_record(back) == (rid, data), "a record read back must encode to the same bytes"


def check(data: bytes) -> None:
    if not data:
        return
    limit, body = limit_for(data[0]), data[1:]
    seen = hashlib.sha256()
    last = 0
    try:
        for n, obj in read_jsonl(io.BytesIO(body), "f ", limit=limit, seen=seen):
            assert type(n) is int and n > last, "line numbers must increase"
            last = n
            with contextlib.suppress(CapsuleError):
                put_value(obj)
    except CapsuleError:
        return
    assert last <= body.count(b"\n") + 1
    assert seen.digest() == hashlib.sha256(body).digest(), "seen must cover every byte read"


LINES = [
    {"text": "user prefers metric units", "tags": ["prefs", "units"], "meta": {"a": 1, "b": [1.5, None]}},
    {"kind": "memory", "text": "é", "embedding": [0.5, -0.0, 1e-3], "tier": "validated", "ttl": 60,
     "source": "chat", "time": "2026-01-01T00:00:00Z"},
    {"kind": "note", "text": "a note", "time": 5},
    {"kind": "decision", "summary": "use zstd", "rationale": "small", "alternatives": ["lz4"],
     "evidence": ["ab" * 32], "inputs": {"q": "cd" * 32}},
    {"kind": "constraint", "text": "never delete", "scope": "global", "status": "active"},
    {"kind": "approval", "subject": "ab" * 32, "approver": "0123456789abcdef" * 2, "signature": "00" * 64},
    {"kind": "identity", "agent_id": "a1", "name": "agent", "model": "m", "config": {"x": 1}, "keys": ["11" * 32]},
    {"kind": "revert", "target": "ab" * 32},
    [1, 2, 3],
]


def seeds() -> list[tuple[str, bytes]]:
    lines = [json.dumps(x, ensure_ascii=False).encode() for x in LINES]
    out = [(f"line-{i}", b"\x80" + line + b"\n") for i, line in enumerate(lines)]
    out.append(("all", b"\x80\xef\xbb\xbf" + b"\n".join(lines) + b"\n\n  \n"))
    out.append(("short-limit", b"\x10" + b"\n".join(lines[:3])))
    return out


if __name__ == "__main__":
    atheris_main(NAME, check, seeds)
