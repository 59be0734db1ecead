"""What a compaction keeps: one pass over the parent, by commit (spec 15.1).

Theory of operation. :func:`commits` walks a capsule's frames in order up to its last
commit, checking what a reader checks (frame headers, chain, codec) plus each COMMIT's
Merkle root and record count, and yields every COMMIT with its records as stored bytes
(id, kind, bytes): nothing is decoded but the kind, and the few records the plan must
read (reverts, memories with a ttl). :func:`make_plan` folds that walk once: the dead and
redacted sets at the end (13.1, 7.7.1), every id a revert names (where, and whether it is
live after), the signed states (checkpoints, and carried ones), the ttl ends; then selects
with NumPy over the id column. Which signed states hold a record is found by following the
reverts that name it (``_Spans``), never by keeping a dead set per checkpoint: thousands of
checkpoints over a large dead set cost their product. The writer (``rewrite.py``) walks the parent a second
time and copies the kept records' bytes, and ``verify --parent`` (verifier/lineage.py)
recomputes the same plan on the parent to check a compacted file against it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError, UsageError
from ..core.lazy import lazy
from ..format.checkpoint import CheckpointFrame, Lineage, parse_checkpoint, parse_lineage
from ..format.commit import CommitInfo, parse_commit_payload
from ..format.frames import FileHeader, Merkle, raw_payload
from ..format.records import record_id
from ..format.scan import Reader, Source
from ..state.fold import EVENT_KINDS
from ..state.liveness import apply_revert
from ..state.stateroot import state_root_of

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

POLICIES = ("history", "checkpoints", "live")
#: 15.1: kept whatever the policy: the action journal (7.8), the task queue's events (7.9),
#: every revert (the lifecycle events prove what was dropped; all of them keep the liveness
#: of every kept record what it was in the parent) and the vector parameters (16.1).
ALWAYS = frozenset({"action", "task", "revert", "vindex"})
#: 15.1: `live` writes its kept records in commits of at most this many (it keeps no history to
#: travel in, and the records of many small commits compress worse apart: 1.36x at 100k)
LIVE_GROUP = 65_536
_TTL_KEY = b"\xa3ttl"  # a memory's `ttl` key as canonical msgpack spells it (7.1)
_EMB_KEY = b"\xa9embedding"  # and its `embedding` key


@dataclass
class Commit:
    """One COMMIT of a walk: its info, its records (id, kind, bytes) and CHECKPOINT frames."""

    ordinal: int  # 1 = the file's first COMMIT
    info: CommitInfo
    records: list[tuple[bytes, str, bytes]]
    checkpoints: list[CheckpointFrame]


def _kind_decoder() -> Any:
    import msgspec

    class _Kind(msgspec.Struct, gc=False):
        kind: str

    return msgspec.msgpack.Decoder(list[_Kind])


_FIELDS: dict[str, Any] = {}


def _fields(kind: str) -> Any:
    """A decoder of just the fields the plan reads of a ``revert`` (7.7) or ``memory`` (7.1):
    a revert's lists and op, a memory's time and ttl (what the writer validated, and the
    verifier checks, is not re-checked here; a record that does not even decode is refused)."""
    if not _FIELDS:
        import msgspec

        class _Revert(msgspec.Struct, gc=False):
            after: bytes
            drop: list[bytes] = []
            restore: list[bytes] = []
            op: str | None = None

        class _Ttl(msgspec.Struct, gc=False):
            time: int
            ttl: int | None = None

        _FIELDS.update(revert=msgspec.msgpack.Decoder(_Revert), memory=msgspec.msgpack.Decoder(_Ttl),
                       error=(msgspec.DecodeError, msgspec.ValidationError))
    return _FIELDS[kind]


def commits(src: Source, header: FileHeader, end: int, lineage: list[Lineage] | None = None) -> Iterator[Commit]:
    """Every COMMIT of the file up to ``end`` (its last commit's end), in order, checked
    as a reader checks frames (3, 4.2) plus each COMMIT's Merkle root and record count
    (6.1), so damage anywhere is refused with the first bad frame (8.2). ``lineage``, when
    given, receives the file's own LINEAGE frame."""
    import msgspec

    dec = _kind_decoder()
    split = msgspec.msgpack.Decoder(list[msgspec.Raw])
    rd = Reader(src, C.HEADER_SIZE, end, 0, header.chain_seed, header.max_frame_len)
    merkle = Merkle()
    recs: list[tuple[bytes, str, bytes]] = []
    cks: list[CheckpointFrame] = []
    total = 0
    ordinal = 0
    for fh, payload, leaf in rd.frames():
        t = fh.ftype
        if t == C.FT_RECORDS:
            raw = raw_payload(fh, payload)
            try:
                parts = split.decode(raw)
                kinds = dec.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as e:
                raise CorruptError(f"RECORDS payload: {e}", offset=fh.offset, seq=fh.seq, check="records") from None
            for part, k in zip(parts, kinds, strict=True):
                data = bytes(part)
                recs.append((record_id(k.kind, data), k.kind, data))
        elif t == C.FT_COMMIT:
            info = parse_commit_payload(payload, fh.offset, fh.seq, fh.end, rd.chain)
            total += len(recs)
            if info.root != merkle.root():
                raise CorruptError("COMMIT root is not the Merkle root of the frames before it", offset=fh.offset,
                                   seq=fh.seq, check="merkle-root")
            if info.records != total:
                raise CorruptError("COMMIT record count is wrong", offset=fh.offset, seq=fh.seq, check="record-count")
            ordinal += 1
            yield Commit(ordinal, info, recs, cks)
            recs, cks = [], []
        elif t == C.FT_CHECKPOINT:
            cks.append(parse_checkpoint(payload, fh.offset, fh.seq))
        elif t == C.FT_LINEAGE and lineage is not None:
            lineage.append(parse_lineage(payload, fh.offset, fh.seq))
        merkle.append(leaf)


@dataclass
class Plan:
    """What compacting a file under ``policy`` keeps (15.1), computed before anything is written."""

    policy: str
    ids: np.ndarray  # S32: every stored id, in commit order
    keep: np.ndarray  # bool, beside ids
    bounds: list[int]  # bounds[k-1]:bounds[k] are the records of commit k (ordinal)
    times: list[int]  # commit k's time is times[k-1]
    copied: int  # commits 1..copied are copied (15.1: later ones hold derived data only)
    last: CommitInfo  # the parent's last commit (the LINEAGE names it)
    checkpoint: bytes | None  # the parent's newest checkpoint hash then
    pairs: list[tuple[CheckpointFrame, int]] = field(default_factory=list)  # checkpoints whose state is kept
    bad_after: int | None = None  # index of the first kept revert whose `after` the parent does not vouch for
    embedded_kept: int = 0  # memories with an embedding (16.1's entries) kept,
    embedded_dropped: int = 0  # and dropped
    unkept: dict[bytes, str] = field(default_factory=dict)  # checkpoint hash -> why its state is not kept

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def dropped_ids(self) -> np.ndarray:
        return np.sort(self.ids[~self.keep])

    def dropped_root(self) -> bytes:
        """15.1: RFC 6962 Merkle root over the sorted dropped ids, leaf = SHA-256(0x00 || id)."""
        m = Merkle()
        for rid in rows(self.dropped_ids):
            m.append(hashlib.sha256(b"\x00" + rid).digest())
        return m.root()

    def kept_of(self, ordinal: int) -> np.ndarray:
        lo, hi = self.bounds[ordinal - 1], self.bounds[ordinal]
        return self.keep[lo:hi]

    def groups(self) -> list[tuple[int, int]]:
        """15.1 layout: (records, time) of each inherited COMMIT of the compacted file. One per
        parent commit 1..copied for `history` and `checkpoints`; for `live` the kept records in
        commits of at most LIVE_GROUP, at the parent's last commit time."""
        if self.policy != "live":
            return [(int(self.kept_of(k).sum()), self.times[k - 1]) for k in range(1, self.copied + 1)]
        n = self.kept
        sizes = [LIVE_GROUP] * (n // LIVE_GROUP) + ([n % LIVE_GROUP] if n % LIVE_GROUP or not n else [])
        return [(s, self.last.time) for s in sizes]


def rows(arr: np.ndarray) -> list[bytes]:
    """The 32-byte ids of an S32 column (``tolist`` would strip trailing zero bytes)."""
    b = arr.tobytes()
    return [b[i : i + 32] for i in range(0, len(b), 32)]


def _isin(arr: np.ndarray, ids: set[bytes]) -> np.ndarray:
    if not ids or not len(arr):
        return np.zeros(len(arr), dtype=bool)
    return np.isin(arr, np.array(sorted(ids), dtype="S32"))


def make_plan(src: Source, header: FileHeader, end: int, policy: str) -> Plan:
    """15.1: the selection of ``policy`` over the file's committed records."""
    if policy not in POLICIES:
        raise UsageError(f"unknown compaction policy {policy!r}: one of {', '.join(POLICIES)}")
    ids = bytearray()
    flags = bytearray()  # 1: always kept, 2: an event
    dead: set[bytes] = set()
    redacted: set[bytes] = set()
    ends: list[tuple[bytes, int]] = []  # (memory id, time + ttl)
    cks: list[tuple[CheckpointFrame, int, int]] = []  # (frame, ordinal, its signed state's index)
    states: list[int] = []  # the signed states in order: each holds the rows before this count
    moves = _Moves()  # every id a revert names: where, and whether it is live after
    bounds, times = [0], []
    copied = 1
    last: CommitInfo | None = None
    checkpoint: bytes | None = None
    own: list[Lineage] = []
    bad: list[int] = []  # reverts whose `after` is not the root of the commit before (7.7)
    prev_root = Merkle().root()
    for c in commits(src, header, end, own):
        inherited = (own[0].kept or 0) if own else 0  # 15.1: the parent's own inherited records
        for rid, kind, data in c.records:
            if kind == "revert":
                rec = _decode(rid, kind, data, c)
                apply_revert(dead, redacted, rec)
                moves.add(rec, len(flags), len(states), dead)
                if rec.after != prev_root and len(flags) >= inherited:
                    bad.append(len(flags))
            elif kind == "memory" and _TTL_KEY in data:
                v = _decode(rid, kind, data, c)
                if v.ttl is not None:
                    ends.append((rid, v.time + v.ttl))
            ids += rid
            flags.append((kind in ALWAYS) | ((kind in EVENT_KINDS) << 1)
                         | ((kind == "memory" and _EMB_KEY in data) << 2))
        for ck in c.checkpoints:
            cks.append((ck, c.ordinal, len(states)))
            states.append(len(flags))
            checkpoint = ck.hash
        if own and any(e.commit == c.ordinal for e in own[0].carried):
            states.append(len(flags))  # 15.1: a carried checkpoint's state is a signed state too (15.2)
        if c.records or c.checkpoints:
            copied = c.ordinal
        bounds.append(len(flags))
        times.append(c.info.time)
        last = c.info
        prev_root = c.info.root
    if last is None:
        raise UsageError("the capsule has no commit to compact")
    arr = np.frombuffer(bytes(ids), dtype="S32")
    fl = np.frombuffer(bytes(flags), dtype=np.uint8)
    always, event = (fl & 1).astype(bool), (fl & 2).astype(bool)
    live = ~event & ~_isin(arr, dead)
    spans = _Spans(arr, event, states, moves)
    if policy == "history":
        keep = np.ones(len(arr), dtype=bool)
    elif policy == "live":
        # 15.1: a memory whose ttl ended by the parent's last commit time is not live then
        gone = {rid for rid, t in ends if t <= last.time}
        keep = always | (live & ~_isin(arr, gone))
    else:
        keep = always | live | spans.signed  # live at the end or in a signed state
    # 7.7.1: a redacted payload is never kept; but a record every policy keeps (the journal, tasks,
    # events, vindex) is one a redaction may not name, so an event that names it (damage verify
    # reports as lifecycle-target) cannot make compaction drop it (7.8: no effect runs twice)
    purge = _isin(arr, redacted) & ~always
    keep &= ~purge
    lost = spans.dropped_in(keep)  # per signed state: the rows it holds that are not kept
    purged = spans.dropped_in(~purge) if purge.any() else [False] * len(lost)  # ... that a redaction purges
    pairs = [(ck, ordinal) for ck, ordinal, j in cks if not lost[j]]
    unkept = {ck.hash: "its state held a redacted record, whose payload compaction purges" if purged[j] else
              "its state held records the policy does not keep" for ck, _, j in cks if lost[j]}
    if policy == "live":  # 15.1: one state is kept, the last: a checkpoint that signed it
        final = state_root_of(rows(arr[keep & live])) if pairs else ""
        groups = max(1, -(-int(keep.sum()) // LIVE_GROUP))
        last_only = "a --keep live file keeps only the last state"
        unkept = {ck.hash: unkept[ck.hash] if ck.hash in unkept and purged[j] else last_only for ck, _, j in cks
                  if ck.body.state_root.hex() != final or ck.hash in unkept}
        pairs = [(ck, groups) for ck, _ in pairs if ck.hash not in unkept]
    bad_after = next((i for i in bad if keep[i]), None)
    emb = (fl & 4).astype(bool)
    return Plan(policy, arr, keep, bounds, times, copied, last, checkpoint, pairs, bad_after,
                int((emb & keep).sum()), int((emb & ~keep).sum()), unkept)


class _Moves:
    """Every (id, row, signed states before it, live after) of the reverts, in commit order,
    in flat columns: a record's liveness changes only here (13.1)."""

    def __init__(self) -> None:
        self.ids = bytearray()
        self.rows: list[int] = []
        self.states: list[int] = []
        self.live = bytearray()

    def add(self, rec: Any, row: int, states: int, dead: set[bytes]) -> None:
        for x in dict.fromkeys((*rec.drop, *rec.restore)):
            if len(x) == 32:
                self.ids += x
                self.rows.append(row)
                self.states.append(states)
                self.live.append(x not in dead)


class _Spans:
    """Which signed states (checkpoints, carried ones) hold each record (15.1 `checkpoints`,
    and the checkpoints a compacted file carries, 15.2), without a dead set per state.

    Signed state j holds row i when i is a record (not an event) before it and live there.
    A record no revert names is live from the first state after it to the last; one a
    revert names is followed through its moves. Linear in records plus revert ids, however
    many checkpoints there are."""

    def __init__(self, arr: np.ndarray, event: np.ndarray, states: list[int], moves: _Moves) -> None:
        self.n_states = s = len(states)
        self.event = event
        rows = np.arange(len(arr))
        self.first = np.searchsorted(np.asarray(states, dtype=np.int64), rows, side="right")
        self.touched = np.zeros(len(arr), dtype=bool)
        self.extra: list[tuple[int, int, int]] = []  # (row, first, end) for the rows a revert names
        if s and len(moves.rows) and len(arr):
            self._follow(arr, moves)
        plain = ~event & ~self.touched
        self.signed = plain & (self.first < s)
        for row, a, b in self.extra:
            if a < b:
                self.signed[row] = True

    def _follow(self, arr: np.ndarray, moves: _Moves) -> None:
        order = np.argsort(arr, kind="stable")
        srt = arr[order]
        mid = np.frombuffer(bytes(moves.ids), dtype="S32")
        lo, hi = np.searchsorted(srt, mid, side="left"), np.searchsorted(srt, mid, side="right")
        by_row: dict[int, list[int]] = {}  # every row holding the id (a damaged file may hold one twice)
        for m in np.flatnonzero(hi > lo).tolist():
            for row in order[lo[m] : hi[m]].tolist():
                if not self.event[row]:
                    by_row.setdefault(row, []).append(m)
        for row, ms in by_row.items():
            self.touched[row] = True
            live = True
            for m in ms:  # moves before the record: dropped before it was written, it starts dead
                if moves.rows[m] < row:
                    live = bool(moves.live[m])
            start = int(self.first[row]) if live else None
            for m in ms:
                if moves.rows[m] < row:
                    continue
                at = moves.states[m]
                if start is not None and not moves.live[m]:
                    self.extra.append((row, start, at))
                    start = None
                elif start is None and moves.live[m]:
                    start = at
            if start is not None:
                self.extra.append((row, start, self.n_states))

    def dropped_in(self, keep: np.ndarray) -> list[int]:
        """Per signed state, how many rows it holds that ``keep`` drops."""
        s = self.n_states
        diff = np.zeros(s + 1, dtype=np.int64)
        gone = ~keep & ~self.event & ~self.touched
        np.add.at(diff, self.first[gone], 1)
        for row, a, b in self.extra:
            if not keep[row] and a < b:
                diff[a] += 1
                diff[b] -= 1
        return np.cumsum(diff)[:s].tolist()  # type: ignore[no-any-return]


def _decode(rid: bytes, kind: str, data: bytes, c: Commit) -> Any:
    try:
        return _fields(kind).decode(data)
    except _fields("error") as e:
        raise CorruptError(f"{kind} {rid.hex()}: {e}", seq=c.info.seq, check="record-schema") from None


__all__ = ["ALWAYS", "LIVE_GROUP", "POLICIES", "Commit", "Plan", "commits", "make_plan", "rows"]
