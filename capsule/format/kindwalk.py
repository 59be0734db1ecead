"""A walk over the RECORDS frames for the records of a few kinds (no kind index exists, 9.1).

Theory of operation: the walk follows frame headers; the RECORDS frames between two INDEX frames
whose ``kinds`` counts (9.2) agree on every kind asked for are not read at all; a frame that is read
but whose decompressed payload does not contain the kind's canonical encoding (a msgpack fixstr,
5.1) cannot hold a record of that kind and is not split; only records of the wanted kinds are
decoded, each canonical-checked and named by its content id as every reader does (5.3). Any frame
that fails its checks raises the reader's ``CorruptError``. Liveness (13.1: every ``revert``) and
the questions (13.5) read through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ..core import constants as C
from ..core.errors import CorruptError, DataError
from . import canonical as canon
from .commit import CommitInfo, parse_index_payload, record_bounds
from .frames import parse_frame_header, raw_payload
from .records import decode_fast, decode_record, kind_needle
from .records import record_id as content_id
from .scan import read_frame_at
from .store import Store


def walk(store: Store, kinds: Iterable[str], start: CommitInfo | None = None,
         end: int | None = None, field: str | None = None) -> Iterator[tuple[int, int, Any]]:
    """``(frame offset, frame seq, record)`` for each committed record of ``kinds``, in
    commit order, after the commit ``start`` (from the first frame when None) up to
    ``end`` (the snapshot's end when None).

    Frames are followed by their headers (3.1). Each INDEX counts the records of every
    kind before it (9.2 ``kinds``): when two consecutive INDEX frames count the same of
    every kind asked for, the RECORDS frames between them hold none and are not read.
    With ``field``, only records whose canonical bytes hold that key are decoded (a record
    that has the field holds its fixstr encoding, 5.1; one that seems to is decoded and the
    caller checks the field)."""
    store.check_open()
    snap = store.snap
    want = frozenset(kinds) & set(snap.kinds)  # a kind the file never held: no walk at all
    if not want:
        return
    needles = [kind_needle(k) for k in want]
    also = None if field is None else kind_needle(field)
    hdr = snap.header
    stop = snap.end if end is None else end
    pos = C.HEADER_SIZE if start is None else start.end
    last: dict[str, int] | None = {k: 0 for k in want} if start is None else None  # None: not known
    pending: list[int] = []
    while pos < stop:
        fh = parse_frame_header(store.h.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=None,
                                max_frame_len=hdr.max_frame_len)
        if fh.end > stop:
            raise CorruptError("frame runs past the last commit", offset=pos, seq=fh.seq, check="frame-length")
        if fh.ftype == C.FT_RECORDS:
            pending.append(pos)
        elif fh.ftype == C.FT_INDEX:
            opened, payload, _, _ = read_frame(store, pos)  # 10.2: the header of the plaintext
            meta = parse_index_payload(raw_payload(opened, payload), pos, fh.seq)
            counts = {k: meta.kinds.get(k, 0) for k in want}
            if counts != last:
                for off in pending:
                    yield from _records(store, off, want, needles, also)
            pending, last = [], counts
        pos = fh.end
    for off in pending:
        yield from _records(store, off, want, needles, also)


def read_frame(store: Store, off: int) -> tuple[Any, bytes, bytes, bytes]:
    hdr = store.snap.header
    prev = hdr.chain_seed if off == C.HEADER_SIZE else None
    return read_frame_at(store.h, off, max_frame=hdr.max_frame_len, prev_chain=prev)


def _records(store: Store, off: int, want: frozenset[str], needles: list[bytes],
             also: bytes | None = None) -> Iterator[tuple[int, int, Any]]:
    """The records of ``want`` in the RECORDS frame at ``off``, each checked as ``get`` checks one."""
    fh, payload, _, _ = read_frame(store, off)
    raw = raw_payload(fh, payload)
    if not any(n in raw for n in needles) or (also is not None and also not in raw):
        return
    bounds = record_bounds(raw, fh.offset, fh.seq)
    for i in range(len(bounds) - 1):
        data = raw[bounds[i] : bounds[i + 1]]
        if not any(n in data for n in needles) or (also is not None and also not in data):
            continue
        rec = decode_fast(data, want)
        if rec is not None:
            yield fh.offset, fh.seq, rec
        else:
            yield from _exact(data, fh, want)


def _exact(data: bytes, fh: Any, want: frozenset[str]) -> Iterator[tuple[int, int, Any]]:
    """One record through the reference reader: decoded, canonical-checked, then its kind's parse."""
    try:
        value = canon.decode(data)
    except DataError as e:
        raise CorruptError(str(e), offset=fh.offset, seq=fh.seq, check="canonical") from None
    k = value.get("kind") if isinstance(value, dict) else None
    if not isinstance(k, str):
        raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
    if k in want:
        yield fh.offset, fh.seq, decode_record(value, content_id(k, data))


__all__ = ["read_frame", "walk"]
