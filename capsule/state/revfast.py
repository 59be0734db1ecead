"""A stored ``revert`` record straight to a :class:`~capsule.state.kinds.Revert`, checked in C (5.2, 7.7, 7.7.1).

Theory of operation: liveness (13.1) folds every revert of a file, so a capsule whose agent
supersedes or forgets as it goes holds thousands of them, and each used to go through the
generic reader (``canonical.decode`` checking every scalar, then the kind table parsing and
re-encoding the map): about 60 µs a record, most of an open's time on such a file. msgspec
decodes the record into a struct whose declared types are 7.7's (32-byte bins, an int time in
range, an ``op`` of 7.7.1, no unknown field); one re-encoding with the keys sorted must give
the bytes back, which is the canonical check of 5.2 for them (key order, shortest forms,
defaults omitted, no duplicate key), as in ``memframe``. What is left is checked here: each id
list holds distinct ids, ``reason`` and ``actor`` are NFC, and the event rules of 7.7.1 (the
:class:`Revert` constructor raises them).

Anything this does not accept in full returns None and goes the exact way, which accepts it
or raises the reader's error, so the result is what the exact way gives, or nothing.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

_INT63 = (1 << 63) - 1
_Id = Annotated[bytes, Meta(min_length=32, max_length=32)]


class _Revert(msgspec.Struct, tag_field="kind", tag="revert", omit_defaults=True, forbid_unknown_fields=True):
    after: _Id
    time: Annotated[int, Meta(ge=0, le=_INT63)]
    to: _Id | UnsetType = UNSET
    drop: list[_Id] = []
    restore: list[_Id] = []
    op: Literal["forget", "redact", "supersede", "promote", "demote"] | UnsetType = UNSET
    by: list[_Id] = []
    evidence: list[_Id] = []
    reason: str = ""
    actor: str = ""


_codecs: list[tuple[Any, Any]] = []


def _get() -> tuple[Any, Any]:
    if not _codecs:  # two threads may both build them: each gets a whole pair
        _codecs.append((msgspec.msgpack.Decoder(_Revert), msgspec.msgpack.Encoder(order="sorted")))
    return _codecs[0]


def _distinct(ids: list[bytes]) -> bool:
    return len(ids) < 2 or len(set(ids)) == len(ids)


def _nfc(s: str) -> bool:
    return s.isascii() or unicodedata.is_normalized("NFC", s)


def decode_revert(revert: Any, data: bytes) -> Any:
    """The record of class ``revert`` (:class:`~capsule.state.kinds.Revert`, which registers this
    decoder) the stored bytes ``data`` hold, or None to take the exact way."""
    from ..format.records import record_id

    dec, enc = _get()
    try:
        r = dec.decode(data)
        if enc.encode(r) != data:
            return None
    except (msgspec.DecodeError, msgspec.EncodeError, ValueError):
        return None
    if not (_distinct(r.drop) and _distinct(r.restore) and _distinct(r.by) and _distinct(r.evidence)
            and _nfc(r.reason) and _nfc(r.actor)):
        return None
    try:
        return revert(time=r.time, after=r.after, to=None if r.to is UNSET else r.to, drop=tuple(r.drop),
                      restore=tuple(r.restore), op=None if r.op is UNSET else r.op, by=tuple(r.by),
                      evidence=tuple(r.evidence), reason=r.reason, actor=r.actor,
                      id=record_id("revert", data).hex())
    except Exception:  # 7.7.1's rules: the exact way raises the reader's error for them
        return None
