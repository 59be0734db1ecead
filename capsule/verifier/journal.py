"""``verify``: an action journal snapshot against the action records it claims to fold (spec 18).

The SHA-256 of a journal blob (3.4) binds it to the file, not to the records, and a
reader that finds a head whose count adds up uses its entries as they are (18.2): a
head that says a key is ``done`` makes ``run_once`` skip the effect. So the verifier
compares each head an INDEX names (with its ``older`` segments, newest entry first)
with the fold of 7.8 over the first ``actions`` action records, key by key and byte by
byte (18.1: one encoding per state). The walk hands it every action record in commit
order; a head is checked at the first INDEX naming it whose records reach its
``actions`` (before that no reader can use it: 18.2's count cannot add up).
"""

from __future__ import annotations

from typing import Any

from ..core.errors import CorruptError
from ..format import canonical as canon
from ..format.blob import BlobRef, read_blob
from ..format.file import ReadHandle
from ..format.records import decode_fast, decode_record
from ..run.journal_blob import (
    JOURNAL_BLOB,
    ActionState,
    BadSnapshot,
    Segment,
    apply,
    key_hash,
    state_bytes,
)


class JournalCheck:
    """The action records so far, in commit order, their running fold (7.8) as 18.1 entries,
    and the journal segments already read (each is decoded and checked once)."""

    def __init__(self, h: ReadHandle, max_frame: int) -> None:
        self._h, self._max_frame = h, max_frame
        self._recs: list[Any] = []
        self._fold: dict[str, ActionState] = {}
        self._hash: dict[str, bytes] = {}
        self._want: dict[bytes, bytes] = {}  # key hash -> entry bytes of the running fold
        self._segs: dict[BlobRef, tuple[Segment, dict[bytes, bytes]]] = {}
        self._done: set[BlobRef] = set()

    def record(self, rec: Any) -> None:
        """The next action record in commit order."""
        self._recs.append(rec)
        st = self._fold.get(rec.key)
        if st is None:
            st = self._fold[rec.key] = ActionState(rec.key)
            self._hash[rec.key] = key_hash(rec.key)
        apply(st, rec)
        self._want[self._hash[rec.key]] = state_bytes(st)

    def frame(self, raw: bytes, kinds: list[str] | None) -> None:
        """The action records of a RECORDS payload the bulk walk accepted (``kinds``: per slot)."""
        if kinds is not None and "action" in kinds:
            for data, kind in zip(canon.split_array(raw), kinds, strict=True):
                if kind == "action":  # the walk checked it: its fast reader, else the reference
                    self.record(decode_fast(data, ("action",)) or decode_record(canon.decode(data), b""))

    def pending(self, ref: BlobRef) -> bool:
        """Whether ``ref`` is a journal head not checked yet (an INDEX named it before its records)."""
        return ref.type == JOURNAL_BLOB and ref not in self._done

    def _want_at(self, n: int) -> dict[bytes, bytes]:
        if n == len(self._recs):
            return self._want
        fold: dict[str, ActionState] = {}
        for rec in self._recs[:n]:
            apply(fold.setdefault(rec.key, ActionState(rec.key)), rec)
        return {key_hash(k): state_bytes(st) for k, st in fold.items()}

    def _segment(self, ref: BlobRef, end: int) -> tuple[Segment, dict[bytes, bytes]]:
        """A segment, its blob (3.4), bounds and every entry checked (18.2): its entries by key hash."""
        got = self._segs.get(ref)
        if got is None:
            content, _, check = read_blob(self._h, ref, self._max_frame, end)
            check()
            try:
                seg = Segment(ref, content.tobytes())
                got = self._segs[ref] = (seg, {k: raw for k, raw, _ in seg.entries()})
            except BadSnapshot as e:
                raise CorruptError(f"journal snapshot: {e}", offset=ref.offset, check="journal") from None
        return got

    def check(self, ref: BlobRef, end: int) -> None:
        """18.1: raise ``journal`` unless the head ``ref`` (and its older segments) hold
        exactly the fold of the action records it says it covers."""
        if ref.type != JOURNAL_BLOB or ref in self._done:
            return
        head = self._segment(ref, end)[0]
        if head.actions > len(self._recs):
            return  # no reader can use it yet (18.2); a later INDEX naming it is checked then
        self._done.add(ref)
        got: dict[bytes, bytes] = {}
        for r in [*head.older, ref]:  # oldest first: a newer segment's entry wins
            got.update(self._segment(r, end)[1])
        want = self._want_at(head.actions)
        if got != want:
            extra = len(got.keys() - want.keys())
            missing = len(want.keys() - got.keys())
            wrong = sum(1 for k in got.keys() & want.keys() if got[k] != want[k])
            raise CorruptError(f"journal snapshot is not the fold of its {head.actions} action records (18.1): "
                               f"{wrong} states differ, {extra} keys extra, {missing} missing",
                               offset=ref.offset, check="journal")


__all__ = ["JournalCheck"]
