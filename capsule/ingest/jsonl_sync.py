"""``pack --append`` of a JSONL file: a line already packed adds nothing (issue 10).

A JSONL line without its own ``time`` gets the commit clock's (7.0), so packing the same file
again made every such record anew: same text, new time, new id. Here a line is taken as
already packed, and left out, when a live record of its kind (one not matched to another line
already: lines and records are counted) equals the record it would make
in every field but ``time`` (when the line brings none) and ``embedding`` (when the line brings
none: pack fills it in from the text). So re-packing an unchanged file adds nothing, a changed
one adds only its new lines, and a line whose record was forgotten is packed again; lines gone
from the file stay (a JSONL line names no file or position that would say it was removed).

Only facts are matched so: memories, notes and decisions (7.1, 7.2, 7.6). A constraint or an
identity line is always packed, since the newest record of those wins (7.3, 7.5) and packing an
older line again is how it is made current again; so is a memory line with a ``ttl``, whose
copy may have expired (7.1), and an application record.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from ..core.errors import DataError
from ..format import canonical as canon
from ..format.records import record_from_input

Row = tuple[str, dict[str, Any]]
#: the kinds whose live records are facts: one more copy adds nothing
FACTS = frozenset({"memory", "note", "decision"})


def timeless_key(value: Mapping[str, Any], timed: bool, embedded: bool) -> bytes:
    """SHA-256 of a record's canonical map, its time left out unless ``timed`` and its
    embedding unless ``embedded``."""
    drop = {"time"} if not timed else set()
    if not embedded:
        drop.add("embedding")
    return hashlib.sha256(canon.pack({k: v for k, v in value.items() if k not in drop})).digest()


class Packed:
    """The keys of the live facts of a capsule, kind by kind and by what a line brings (its own
    time, its own embedding), read on first need."""

    def __init__(self, cap: Any) -> None:
        self.cap = cap
        self.keys: dict[tuple[str, bool, bool], Counter[bytes]] = {}
        self.red: dict[tuple[str, bool, bool], set[bytes]] = {}
        self.skipped = 0
        self.withheld = 0  # lines whose record was redacted (7.7.1): never packed again

    def _redacted(self, kind: str, timed: bool, embedded: bool) -> set[bytes]:
        """The keys of the redacted records of ``kind`` whose bytes are still stored (7.7.1: until
        a compaction purges them; then nothing is known of them here)."""
        got = self.red.get((kind, timed, embedded))
        if got is None:
            from ..questions._lifecycle import redacted

            store = self.cap._store
            recs = (store.get(rid) for rid in redacted(store))
            got = self.red[kind, timed, embedded] = {timeless_key(r.to_value(), timed, embedded)
                                                     for r in recs if r is not None and r.kind == kind}
        return got

    def _of(self, kind: str, timed: bool, embedded: bool) -> Counter[bytes]:
        got = self.keys.get((kind, timed, embedded))
        if got is None:
            got = self.keys[kind, timed, embedded] = Counter(timeless_key(rec.to_value(), timed, embedded)
                                                             for rec in self.cap.live(kind))
        return got

    def seen(self, obj: Mapping[str, Any]) -> bool:
        """Whether this JSONL object is a live fact already (see the module's rules)."""
        if obj.get("kind", "memory") not in FACTS or obj.get("ttl") is not None:
            return False
        try:
            rec = record_from_input(obj, time=0)
            value = rec.to_value()
        except (DataError, TypeError, ValueError):
            return False  # the bulk path names what is wrong with it
        timed, embedded = "time" in obj, obj.get("embedding") is not None
        # counted: a line repeated three times whose record is live once (a pack killed after
        # its first copy) is packed twice more, as a clean pack of the file would hold three
        have, key = self._of(rec.kind, timed, embedded), timeless_key(value, timed, embedded)
        if key in self._redacted(rec.kind, timed, embedded):
            self.withheld += 1
            return True
        if have[key] <= 0:
            return False
        have[key] -= 1
        return True

    def filter(self, rows: Iterator[Row]) -> Iterator[Row]:
        for row in rows:
            if self.seen(row[1]):
                self.skipped += 1
            else:
                yield row


__all__ = ["FACTS", "Packed", "timeless_key"]
