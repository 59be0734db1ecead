"""``timeline``: what happened, in order (spec 13.5).

The document (``Timeline.to_dict()``, ``capsule timeline --json``), stable::

    {"events": [{"seq": int, "time": iso, "kind": "commit"|"checkpoint"|"action"|"task"|"lifecycle",
                 "summary": str, "id": record id | null}...],   # in file order
     # a lifecycle event (7.7.1) also carries "op", "records", "by", "reason", "actor"
     "total": int | null,   # events that passed the filters, before ``limit``; null when the
                            # newest ``limit`` were found before the first commit (older not counted)
     "limit": int | null}

A commit's summary counts its records by kind (one of no records names what it holds: index,
snapshots, checkpoint, keyset, ...); a checkpoint's names its label and signers;
an action's, task event's or lifecycle event's is its one-line record summary (a lifecycle
event: op, the ids it dropped, ``-> `` its replacements, reason and actor). ``since`` / ``until`` (ns,
inclusive) filter by event time, ``kinds`` by event kind; ``limit`` keeps the newest,
read back from the last commit so that the cost follows the commits read, not the history.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from ..core import constants as C
from ..core.clock import iso
from ..core.errors import CorruptError, DataError, UsageError
from ..format import canonical as canon
from ..format.commit import parse_commit_payload, record_kinds
from ..format.frames import parse_frame_header, raw_payload
from ..format.kindwalk import read_frame
from ..format.records import decode_record, kind_needle
from ..format.records import record_id as content_id
from ._walk import Source, summarize

EVENT_KINDS = ("commit", "checkpoint", "action", "task", "lifecycle")


@dataclass(frozen=True)
class Timeline:
    doc: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def timeline(cap: Source, *, since: int | None = None, until: int | None = None,
             kinds: Iterable[str] | None = None, limit: int | None = None) -> Timeline:
    """Commits, checkpoints, actions and task events in file order."""
    want = set(EVENT_KINDS if kinds is None else kinds)
    bad = sorted(want - set(EVENT_KINDS))
    if bad:
        raise UsageError(f"unknown event kind(s) {', '.join(bad)}: choose from {', '.join(EVENT_KINDS)}")
    if limit is not None and (type(limit) is not int or limit < 0):
        raise UsageError("limit must be a non-negative integer")
    if since is not None and until is not None and since > until:
        raise UsageError("--since is after --until")
    store = cap._store
    snap = store.snap

    def keep(t: int) -> bool:
        return (since is None or t >= since) and (until is None or t <= until)

    if limit is None:
        events = _events(store, C.HEADER_SIZE, snap.end, 0, want, keep)
        return Timeline({"events": events, "total": len(events), "limit": None})
    # 13.5: the newest first, commit by commit along the COMMIT back-pointers, until `limit` are
    # found: the cost follows the commits read, not the file's history (as `log --limit`)
    found: list[list[dict[str, Any]]] = []
    n = 0
    commits = store.commits()
    cur = next(commits, None)
    while cur is not None and n < limit:
        prev = next(commits, None)
        start, seq = (prev.end, prev.seq + 1) if prev is not None else (C.HEADER_SIZE, 0)
        evs = _events(store, start, cur.end, seq, want, keep)
        found.append(evs)
        n += len(evs)
        cur = prev
    events = [e for evs in reversed(found) for e in evs]
    # every event was seen only when the walk reached the first commit; else older ones are not counted
    total = len(events) if cur is None else None
    return Timeline({"events": events[max(0, len(events) - limit):], "total": total, "limit": limit})


def _events(store: Any, start: int, end: int, seq: int, want: set[str],
            keep: Callable[[int], bool]) -> list[dict[str, Any]]:
    """The events of the frames from ``start`` (frame ``seq``) to ``end`` (a COMMIT's end), in
    file order. Frames are followed by their headers (3.1); only RECORDS, CHECKPOINT and COMMIT
    frames are read (13.5: a question reads what it needs), each checked against the chain
    value before it, so a commit's snapshots and tables cost a header read."""
    events: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    other: set[str] = set()  # what a commit of no records holds instead (index, snapshots, ...)
    hdr = store.snap.header
    counting = "commit" in want  # a commit's summary counts its records by kind: every frame read
    # else a RECORDS frame is parsed only when its bytes hold a kind asked for (5.1: its fixstr)
    needles = [kind_needle(k) for k in ("action", "task") if k in want] + \
        ([kind_needle("revert")] if "lifecycle" in want else [])
    pos = start
    while pos < end:
        fh = parse_frame_header(store.h.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=seq,
                                max_frame_len=hdr.max_frame_len)
        if fh.end > end:
            raise CorruptError("frame runs past its commit", offset=pos, seq=fh.seq, check="frame-length")
        if fh.ftype in _HOLDS:
            other.add(_HOLDS[fh.ftype])
        if fh.ftype == C.FT_RECORDS and (counting or needles):
            fh, payload, _, _ = read_frame(store, pos)
            raw = raw_payload(fh, payload)
            if not any(n in raw for n in needles):  # a commit's summary alone: its kinds counted in C
                if counting:
                    for kind, k in _kind_counts(raw, fh.offset, fh.seq).items():
                        counts[kind] = counts.get(kind, 0) + k
                pos, seq = fh.end, seq + 1
                continue
            for kind, data in record_kinds(raw, fh.offset, fh.seq):
                counts[kind] = counts.get(kind, 0) + 1
                if kind in ("action", "task") and kind in want:
                    rec = _decode(kind, data, fh.offset, fh.seq)
                    if keep(rec.time):
                        events.append({"seq": fh.seq, "time": iso(rec.time), "kind": kind,
                                       "summary": summarize(rec), "id": rec.id})
                elif kind == "revert" and "lifecycle" in want and b"\xa2op" in data:  # 7.7.1: has an `op`
                    rec = _decode(kind, data, fh.offset, fh.seq)
                    if rec.op is not None and keep(rec.time):
                        events.append({"seq": fh.seq, "time": iso(rec.time), "kind": "lifecycle",
                                       "summary": summarize(rec), "id": rec.id, **_life(rec)})
        elif fh.ftype == C.FT_CHECKPOINT and "checkpoint" in want:
            ck = store.read_checkpoint(pos)
            if keep(ck.time):
                events.append({"seq": fh.seq, "time": iso(ck.time), "kind": "checkpoint", "id": None,
                               "summary": f"checkpoint {ck.label!r} signed by {', '.join(ck.signers) or 'nobody'}"})
        elif fh.ftype == C.FT_COMMIT:
            fh, payload, chain, _ = read_frame(store, pos)
            c = parse_commit_payload(raw_payload(fh, payload), fh.offset, fh.seq, fh.end, chain)
            if "commit" in want and keep(c.time):
                n = sum(counts.values())
                what = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                if not what:
                    what = ", ".join(sorted(other)) or ("created" if c.commits == 1 else "")
                events.append({"seq": fh.seq, "time": iso(c.time), "kind": "commit", "id": None,
                               "summary": f"commit #{c.commits}: {n} record{'s' if n != 1 else ''}"
                                          + (f" ({what})" if what else "")})
            counts, other = {}, set()
        pos = fh.end
        seq += 1
    return events


class _Kind(msgspec.Struct, gc=False):
    """A record as a commit's summary needs it: its kind (the other keys are skipped unbuilt)."""

    kind: str


_KINDS = msgspec.msgpack.Decoder(list[_Kind])


def _kind_counts(raw: bytes, offset: int, seq: int) -> Counter[str]:
    """How many records of each kind a RECORDS payload holds: one decode in C, the other fields
    skipped (a million records: 2.4 s as full maps); a payload it cannot read is left to
    :func:`record_kinds`, which names the damage."""
    try:
        return Counter(r.kind for r in _KINDS.decode(raw))
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return Counter(k for k, _ in record_kinds(raw, offset, seq))


# frames a commit of no records may hold, as its timeline summary names them
_HOLDS = {C.FT_INDEX: "index", C.FT_TABLE: "index", C.FT_BLOB: "snapshot",
          C.FT_CHECKPOINT: "checkpoint", C.FT_KEYSET: "keyset", C.FT_KEYSLOT: "keyslot", C.FT_LINEAGE: "lineage",
          C.FT_RECOVERY: "recovery note"}


def _life(rec: Any) -> dict[str, Any]:
    """A lifecycle event's own fields (7.7.1): op, what, replacements, why, who."""
    return {"op": rec.op, "records": [x.hex() for x in rec.drop], "by": [x.hex() for x in rec.by],
            "reason": rec.reason, "actor": rec.actor}


def _decode(kind: str, data: bytes, offset: int, seq: int) -> Any:
    try:
        value = canon.decode(data)
    except DataError as e:
        raise CorruptError(str(e), offset=offset, seq=seq, check="canonical") from None
    return decode_record(value, content_id(kind, data))
