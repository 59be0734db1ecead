"""``timeline``: what happened, in order (spec 13.5).

The document (``Timeline.to_dict()``, ``capsule timeline --json``), stable::

    {"events": [{"seq": int, "time": iso, "kind": "commit"|"checkpoint"|"action"|"task"|"lifecycle",
                 "summary": str, "id": record id | null}...],   # in file order
     # a lifecycle event (7.7.1) also carries "op", "records", "by", "reason", "actor"
     "total": int,          # events that passed the filters, before ``limit``
     "limit": int | null}

A commit's summary counts its records by kind; a checkpoint's names its label and signers;
an action's, task event's or lifecycle event's is its one-line record summary (a lifecycle
event: op, the ids it dropped, ``-> `` its replacements, reason and actor). ``since`` / ``until`` (ns,
inclusive) filter by event time, ``kinds`` by event kind; ``limit`` keeps the newest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..core import constants as C
from ..core.clock import iso
from ..core.errors import CorruptError, DataError, UsageError
from ..format import canonical as canon
from ..format.commit import parse_commit_payload, record_kinds
from ..format.frames import raw_payload
from ..format.records import decode_record
from ..format.records import record_id as content_id
from ..format.scan import Reader
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

    events: list[dict[str, Any]] = []
    counts: dict[str, int] = {}

    def keep(t: int) -> bool:
        return (since is None or t >= since) and (until is None or t <= until)

    rd = Reader(store.h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
    for fh, payload, _ in rd.frames():
        if fh.ftype == C.FT_RECORDS:
            for kind, data in record_kinds(raw_payload(fh, payload), fh.offset, fh.seq):
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
            ck = store.read_checkpoint(fh.offset)
            if keep(ck.time):
                events.append({"seq": fh.seq, "time": iso(ck.time), "kind": "checkpoint", "id": None,
                               "summary": f"checkpoint {ck.label!r} signed by {', '.join(ck.signers) or 'nobody'}"})
        elif fh.ftype == C.FT_COMMIT:
            c = parse_commit_payload(raw_payload(fh, payload), fh.offset, fh.seq, fh.end, rd.chain)
            if "commit" in want and keep(c.time):
                n = sum(counts.values())
                what = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                events.append({"seq": fh.seq, "time": iso(c.time), "kind": "commit", "id": None,
                               "summary": f"commit #{c.commits}: {n} record{'s' if n != 1 else ''}"
                                          + (f" ({what})" if what else "")})
            counts = {}
    total = len(events)
    if limit is not None:
        events = events[max(0, total - limit):]
    return Timeline({"events": events, "total": total, "limit": limit})


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
