"""What every question shares: the capsule protocol, commits by offset, one-line summaries and
checkpoint coverage; the filtered walk over the RECORDS frames is ``format/kindwalk.py``.

Theory of operation: no kind index exists (9.1 indexes ids), so a question that
needs, say, every constraint before a commit walks the frames up to that commit.
The walk is cheap where it can be: it follows frame headers, and the RECORDS
frames between two INDEX frames whose ``kinds`` counts (9.2) agree on every kind
asked for are not read at all; a frame that is read but whose decompressed
payload does not contain the kind's canonical encoding (a msgpack fixstr, 5.1)
cannot hold a record of that kind and is not split; only records of the wanted
kinds are decoded, each canonical-checked and named by its content id as every
reader does (5.3). Any frame read that fails its checks raises the reader's
``CorruptError``: the questions refuse a damaged file (13.5).
"""

from __future__ import annotations

from typing import Any, Protocol

from ..core import constants as C
from ..core.clock import iso
from ..core.errors import DataError
from ..format.checkpoint import CheckpointFrame, KeysetFrame
from ..format.commit import CommitInfo
from ..format.frames import parse_frame_header
from ..format.keys import CHECKPOINT_PAYLOAD_TYPE
from ..format.scan import read_commit_at
from ..format.signing import count_valid
from ..format.store import Store

SUMMARY_LEN = 120  # characters of a one-line summary


class Source(Protocol):
    """The handle's read API the questions use (``capsule.Capsule`` provides it)."""

    _store: Store

    def get(self, record_id: str | bytes) -> Any: ...
    def checkpoints(self) -> list[CheckpointFrame]: ...
    def keysets(self) -> list[KeysetFrame]: ...
    def resolve(self, at: str | int) -> CommitInfo: ...


def next_frame(store: Store, offset: int, ftype: int) -> int | None:
    """The offset of the first frame of type ``ftype`` at or after the frame at ``offset``
    within the snapshot, following frame lengths (headers only, CRC-checked, 3.1): the
    commit or checkpoint after a record is a few frames away, so no list of them is read."""
    snap = store.snap
    hdr = snap.header
    pos = offset
    while pos < snap.end:
        fh = parse_frame_header(store.h.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=None,
                                max_frame_len=hdr.max_frame_len)
        if fh.ftype == ftype:
            return pos
        pos = fh.end
    return None


def commit_holding(store: Store, offset: int) -> CommitInfo | None:
    """The commit that made the frame at ``offset`` durable: the first COMMIT after it."""
    pos = next_frame(store, offset, C.FT_COMMIT)
    return None if pos is None else read_commit_at(store.h, pos, store.snap.header)


def checkpoint_after(store: Store, offset: int) -> CheckpointFrame | None:
    """The first checkpoint after the frame at ``offset``: the first whose Merkle root covers it
    (its ``tree_size`` counts every frame before it, 14.8)."""
    pos = next_frame(store, offset, C.FT_CHECKPOINT)
    return None if pos is None else store.read_checkpoint(pos)


def frame_seq(store: Store, offset: int) -> int:
    hdr = store.snap.header
    return parse_frame_header(store.h.pread(offset, C.FRAME_HEADER_SIZE), offset, expect_seq=None,
                              max_frame_len=hdr.max_frame_len).seq


def commit_ref(c: CommitInfo | None) -> dict[str, Any] | None:
    return None if c is None else {"seq": c.seq, "commit": c.commits, "time": iso(c.time), "root": c.root.hex()}


def one_line(text: object) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= SUMMARY_LEN else s[: SUMMARY_LEN - 1] + "\u2026"


def summarize(rec: Any) -> str:
    """A one-line human summary of any record."""
    k = rec.kind
    if k in ("memory", "note"):
        return one_line(rec.text)
    if k == "decision":
        return one_line(rec.summary)
    if k == "constraint":
        return one_line(f"{rec.status} [{rec.scope}] {rec.text}")
    if k == "approval":
        return f"{rec.approver} approves {rec.subject.hex()[:12]}"
    if k == "identity":
        return one_line(" ".join(x for x in (rec.agent_id, rec.name, rec.model) if x))
    if k == "revert":
        if rec.op is not None:  # 7.7.1: a lifecycle event names what, its replacement, why and who
            by = " -> " + ", ".join(x.hex()[:12] for x in rec.by) if rec.by else ""
            tail = (f": {rec.reason}" if rec.reason else "") + (f" (by {rec.actor})" if rec.actor else "")
            return one_line(f"{rec.op} {', '.join(x.hex()[:12] for x in rec.drop)}{by}{tail}")
        what = "rollback" if rec.to is not None else "re-add"
        return f"{what}: {len(rec.drop)} dropped, {len(rec.restore)} restored"
    if k == "action":
        tail = "" if rec.phase == "intent" else (" ok" if rec.ok else f" failed: {rec.error}")
        return one_line(f"{rec.phase} {rec.key} #{rec.attempt}{tail} {rec.what}".rstrip())
    if k == "task":
        ev = rec.event
        return one_line(f"{ev.OP} {ev.task}")
    return str(k)


def ref(rec: Any) -> dict[str, Any]:
    """A record as a node: id, kind, time, one-line summary."""
    t = getattr(rec, "time", None)
    return {"id": rec.id, "kind": rec.kind, "time": None if t is None else iso(t), "summary": summarize(rec)}


def checkpoint_ref(cap: Source, ck: CheckpointFrame | None, anchor: int | None = None) -> dict[str, Any] | None:
    """A checkpoint with whether a threshold of its keyset signed it (14.5) and, with
    ``anchor`` (the keyset index trust starts at, 14.7), whether that keyset is anchored."""
    if ck is None:
        return None
    sets = cap.keysets()
    idx = next((i for i, k in enumerate(sets) if k.keyset.digest == ck.body.keyset), None)
    ok = idx is not None and count_valid(CHECKPOINT_PAYLOAD_TYPE, ck.body_raw, ck.sigs,
                                         sets[idx].keyset) >= sets[idx].keyset.threshold
    return {"label": ck.label, "seq": ck.seq, "time": iso(ck.time), "signers": list(ck.signers),
            "keyset": ck.body.keyset.hex(), "signature_ok": ok,
            "anchored": None if anchor is None else bool(ok and idx is not None and idx >= anchor)}


def anchor_of(cap: Source, trust: Any) -> int | None:
    """The keyset index trust starts at for the anchor ``trust`` (14.7): None without one;
    past the chain (nothing anchored) when the capsule's keys do not chain to it."""
    if trust is None:
        return None
    from ..format.signing import anchor_index

    chain = [k.keyset for k in cap.keysets()]
    try:
        return anchor_index(trust, chain)
    except DataError:
        return len(chain)
