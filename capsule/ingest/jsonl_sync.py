"""``pack --append`` of a JSONL file: a line already packed adds nothing (issue 10).

A JSONL line without its own ``time`` gets the commit clock's (7.0), so packing the same file
again made every such record anew: same text, new time, new id. Here a line without ``time``
whose record would equal a live record of its kind in every field but ``time`` (and
``embedding``, which pack fills in from the text when the line has none) is taken as already
packed and left out; so is a line with its own ``time`` whose record, but for the embedding pack
gave it, is live. So re-packing an unchanged file adds nothing, a changed one adds
only its new lines, and a line whose record was forgotten is packed again; lines gone from
the file stay (a JSONL line names no file or position that would say it was removed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from ..core.errors import DataError
from ..format import canonical as canon
from ..format.records import record_from_input

Row = tuple[str, dict[str, Any]]


def timeless_key(value: Mapping[str, Any], timed: bool = False) -> bytes:
    """SHA-256 of a record's canonical map without its embedding and (unless ``timed``) its time."""
    drop = ("embedding",) if timed else ("embedding", "time")
    return hashlib.sha256(canon.pack({k: v for k, v in value.items() if k not in drop})).digest()


class Packed:
    """What the live records of a capsule are, but for their embeddings (and times), kind by
    kind, read on first need."""

    def __init__(self, cap: Any) -> None:
        self.cap = cap
        self.keys: dict[tuple[str, bool], set[bytes]] = {}
        self.skipped = 0

    def _of(self, kind: str, timed: bool) -> set[bytes]:
        got = self.keys.get((kind, timed))
        if got is None:
            got = self.keys[kind, timed] = {timeless_key(rec.to_value(), timed) for rec in self.cap.live(kind)}
        return got

    def seen(self, obj: Mapping[str, Any]) -> bool:
        """Whether this JSONL object is a live record already, its embedding aside (and its time,
        when it brings none)."""
        try:
            rec = record_from_input(obj, time=0)
            value = rec.to_value()
        except (DataError, TypeError, ValueError):
            return False  # the bulk path names what is wrong with it
        timed = "time" in obj
        return timeless_key(value, timed) in self._of(rec.kind, timed)

    def filter(self, rows: Iterator[Row]) -> Iterator[Row]:
        for row in rows:
            if self.seen(row[1]):
                self.skipped += 1
            else:
                yield row


__all__ = ["Packed", "timeless_key"]
