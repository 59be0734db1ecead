"""The commit writer: lay out frames, INDEX when due, COMMIT, one fsync (spec 6.4, 8.3, 9).

:func:`write_commit` is the only code that appends to a capsule. It builds every
frame of one commit in memory (extra frames first, then BLOB parts, RECORDS in
batches of about ``FRAME_TARGET_RAW`` bytes, frames built by callbacks once
their position is known, index tables and an INDEX when due, the COMMIT last),
appends them in one write, fsyncs once, and only then publishes the new
snapshot on the store, so a failed commit leaves the in-memory state as it was.

A commit that writes an INDEX is appended in two parts with an fsync after each:
the frames before the INDEX, then the INDEX and the COMMIT (6.4). A disk may
persist the sectors of one write in any order, and a reader replays only from
the INDEX on (6.3), so it could not tell that frames before the INDEX were lost
in a power loss; made durable first, they never are. Commits without an INDEX
(nearly all small ones) keep their one write and one fsync: the reader's replay
covers every frame since the previous commit anyway (8.1).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.clock import read_clock
from ..core.errors import CorruptError, InvalidRecordError
from ..core.lazy import lazy
from . import canonical as canon
from .batch import Item as Item  # re-exported: the writer's input type, and its ids
from .batch import RecordBatch, as_batch
from .batch import item_ids as item_ids
from .blob import BlobRef, Buffer, blob_parts
from .checkpoint import parse_checkpoint
from .commit import (
    CommitInfo,
    IndexMeta,
    encode_commit_payload,
    encode_recovery,
)
from .file import WriteHandle
from .frames import Merkle, encode_frame
from .index import ENTRY_SIZE, Segment, SegmentRef, build_table, merge_inputs, plan_merge
from .scan import Snapshot, label_key
from .store import Store

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

#: payloads longer than this are written as pieces, not copied into their frame's bytes
_SPLIT_AT = 1 << 20
#: a frame built once everything before it is laid out: (seq, chain, Merkle so far, offset) -> payload
Build = Callable[[int, bytes, Merkle, int], bytes]


def write_commit(store: Store, items: Sequence[Item] | RecordBatch, *, force_index: bool = False,
                 extra: Sequence[tuple[int, bytes]] = (), after: Sequence[tuple[int, Build]] = (),
                 blob: tuple[str, Buffer | Sequence[Buffer]] | None = None,
                 at_index: Callable[[], Sequence[tuple[str, bytes]]] | None = None,
                 vectors: Callable[[], dict[str, int | str]] | None = None,
                 defer_index: bool = False, published: Callable[[], object] | None = None) -> CommitInfo:
    """Append records (+ INDEX when due) + COMMIT, fsync once, then publish.

    ``extra`` frames go first; ``after`` frames are built by callbacks that get
    (seq, chain, Merkle so far, offset) once everything before them is laid out.
    ``at_index`` is asked, only when this commit writes an INDEX, for blobs to
    write just before it (the action journal's snapshot, 18.3). ``vectors`` is asked
    likewise for the INDEX's `vectors` map (9.2, 16.1), written in files created by 1.2 or later
    (header minor >= 2), so a 1.1 file appended to stays readable by 1.1 readers (12.6).
    ``defer_index``: no INDEX unless forced (compaction writes one fresh INDEX at its end, 15.1).
    ``published`` runs once the new snapshot is, under the same guard: what the caller keeps in
    step with the file (an interruption there poisons the writer too).
    """
    h = store.h
    assert isinstance(h, WriteHandle)
    now = read_clock(store.clock)  # before any byte is written: a bad clock is a usage error (6.1)
    if store.snap.torn is not None:
        # 8.3: a torn tail is dropped, durably and on the record, before any write.
        recover(store)
    # The RECOVERY frame stays pending until a commit carrying it is durable: a commit
    # refused or failed after the truncation must not lose the record of it (8.3).
    extra = [*store.pending_recovery, *extra]
    store.committed = True
    snap = store.snap
    seq, chain, merkle = snap.next_seq, snap.chain, snap.merkle.copy()
    pos = snap.end
    parts: list[Buffer] = []
    # New entries go to side columns and are merged into the snapshot only
    # after the fsync, so a failed commit leaves the in-memory state as it was.
    kinds = dict(snap.kinds)

    max_frame = snap.header.max_frame_len
    table_cap = max(1, (max_frame - C.FRAME_OVERHEAD) // ENTRY_SIZE)

    def emit(ftype: int, raw: bytes | bytearray | list[Buffer], compress: bool = False) -> int:
        nonlocal seq, chain, pos
        # a large payload (an index table, a blob part) is written from where it lies, not copied into a frame
        big = (sum(map(len, raw)) if isinstance(raw, list) else len(raw)) > _SPLIT_AT
        fr = encode_frame(ftype, seq, raw, chain, compress=compress, crypt=h.crypt, split=big)
        body = fr.pieces or (fr.data,)
        size = sum(map(len, body))
        if size > max_frame:
            # 11: a writer never writes what its own reader refuses; nothing is written yet.
            raise InvalidRecordError(f"this commit needs a frame of {size} bytes, over this capsule's "
                                     f"max frame length of {max_frame} bytes (spec 11)")
        at = pos
        parts.extend(body)
        merkle.append(fr.leaf)
        chain, pos, seq = fr.chain, pos + size, seq + 1
        return at

    frames = 0
    keyslots = snap.commit.keyslots if snap.commit else None
    for ftype, raw in extra:
        at = emit(ftype, raw)
        if ftype == C.FT_KEYSLOT:
            keyslots = at  # 6.1, 10.3: every COMMIT of an encrypted file names the newest KEYSLOT
        frames += 1
    blobs = snap.blobs
    if blob is not None:
        # 3.4: the parts go first; the INDEX this commit must write names them.
        btype, content = blob
        payloads, bid, size = blob_parts(btype, content)  # pieces of the content, not copies
        first = pos
        for piece in payloads:
            emit(C.FT_BLOB, piece)
            frames += 1
        blobs = {**blobs, btype: BlobRef(btype, first, len(payloads), size, bid)}
        force_index = True
    # RECORDS frames of about FRAME_TARGET_RAW bytes, smaller when the header allows less,
    # sliced out of the batch; the records' locations go into columns, not a dict entry
    # per record, so a commit of a million records stays compact (11, F22).
    frame_target = min(C.FRAME_TARGET_RAW, max_frame - C.FRAME_OVERHEAD)
    batch = as_batch(items)
    new_frames = np.zeros(len(batch), dtype=np.uint64)
    new_slots = np.zeros(len(batch), dtype=np.uint32)
    for lo, hi in batch.frames(frame_target):
        at = emit(C.FT_RECORDS, batch.payload(lo, hi), compress=True)
        frames += 1
        new_frames[lo:hi] = at
        new_slots[lo:hi] = np.arange(hi - lo, dtype=np.uint32)
    for kind, count in batch.kind_counts().items():
        kinds[kind] = kinds.get(kind, 0) + count
    ckpt, keyset_at = snap.checkpoint, snap.keyset
    new_labels: dict[bytes, tuple[int, int]] = {}
    for ftype, build in after:
        raw = build(seq, chain, merkle, pos)
        at = emit(ftype, raw)
        frames += 1
        if ftype == C.FT_CHECKPOINT:
            ckf = parse_checkpoint(raw, at, seq - 1)
            ckpt = (at, ckf.hash)
            new_labels[label_key(ckf.body.label)] = (at, 0)
        elif ftype == C.FT_KEYSET:
            keyset_at = at
    records = snap.records + len(batch)
    segments = list(snap.segments)
    index_at, index_hash = (snap.commit.index, snap.commit.index_hash) if snap.commit else (None, None)
    since = snap.frames_since_index + frames
    wrote_index = False
    vectors_at = snap.vectors
    before_index = 0  # frames in ``parts`` before the INDEX, when one is written
    labels = snap.labels
    n_mem = len(snap.mem) + len(batch)
    if force_index or (not defer_index and (n_mem >= C.INDEX_EVERY_RECORDS or since >= C.INDEX_EVERY_FRAMES)):
        for btype, content in at_index() if at_index is not None else ():
            # 3.4: blobs kept current at every INDEX, after this commit's records
            payloads, bid, size = blob_parts(btype, content)
            first = pos
            for piece in payloads:
                emit(C.FT_BLOB, piece)
            blobs = {**blobs, btype: BlobRef(btype, first, len(payloads), size, bid)}
        mem = snap.mem  # the batch's entries join as columns (its ids are in no table, 7.0)
        k = _merge_count([s.ref.count for s in segments], n_mem, table_cap)
        if k:
            # 9.2: only the tables rewritten here are hashed; a damaged one must not be
            # laundered into a new table under a fresh hash.
            for s in segments[-k:]:
                s.verify()
        if n_mem or k:
            ids, fr_offs, slots = merge_inputs(segments[len(segments) - k:], mem)
            ids, fr_offs, slots = _join(ids, fr_offs, slots, batch.id_array(), new_frames, new_slots)
            segments = segments[: len(segments) - k] + _tables(emit, ids, fr_offs, slots, table_cap)
        labels = list(snap.labels)
        lmem = {**snap.label_mem, **new_labels}
        if lmem:
            # Label tables: same layout and merge rule as record tables, but a
            # later checkpoint with the same label replaces the entry (14.9).
            k = _merge_count([s.ref.count for s in labels], len(lmem), table_cap)
            # 14.9: one entry per label over all tables: a label used again (a checkpoint label an agent
            # reuses) merges down to the table that holds it, so the newest entry replaces it there
            older = len(labels) - k
            for i in range(older - 1, -1, -1):
                if any(labels[i].find(key) is not None for key in lmem):
                    older = i
            k = len(labels) - older
            merged: dict[bytes, tuple[int, int]] = {}
            for seg in labels[len(labels) - k:]:
                seg.verify()
                for j in range(seg.ref.count):
                    merged[seg.key(j)] = (int(seg.frames[j]), int(seg.slots[j]))
            merged.update(lmem)
            ids, fr_offs, slots = merge_inputs([], merged)
            labels = labels[: len(labels) - k] + _tables(emit, ids, fr_offs, slots, table_cap)
        if len(segments) > C.MAX_SEGMENTS or len(labels) > C.MAX_SEGMENTS:
            raise InvalidRecordError(f"this capsule's max frame length of {max_frame} bytes cannot index more "
                                     f"records: over {C.MAX_SEGMENTS} index tables (spec 11)")
        # 9.2 (1.2): the vector parameters of everything before this INDEX, so no reader
        # looks for them in the records (16.1); a file created before 1.2 omits the key,
        # which its own readers would refuse (12.5, 12.6).
        index_vectors = vectors() if vectors is not None and snap.header.minor >= 2 else None
        meta = IndexMeta(seq, merkle.peaks, records, kinds, [s.ref for s in segments], ckpt, keyset_at,
                         [s.ref for s in labels], blobs, index_vectors)
        payload = meta.encode()
        if len(payload) > C.MAX_INDEX_META:
            raise InvalidRecordError(f"this commit's INDEX would be {len(payload)} bytes, over the limit of "
                                     f"{C.MAX_INDEX_META} (spec 11; {len(kinds)} record kinds)")
        before_index = len(parts)
        index_at, index_hash = emit(C.FT_INDEX, payload), hashlib.sha256(payload).digest()
        vectors_at = None if index_vectors is None else (pos, index_vectors)  # pos: just after the INDEX
        wrote_index = True
        since = 1
    info = CommitInfo(
        offset=pos, end=0, seq=seq, time=now, root=merkle.root(), records=records,
        commits=snap.commits + 1, prev=snap.commit.offset if snap.commit else None, index=index_at,
        index_hash=index_hash, keyslots=keyslots,
    )
    if h.crypt is not None:  # 10.7: a key holder's MAC over everything before this COMMIT
        info = dataclasses.replace(info, mac=h.crypt.commit_mac(chain, canon.pack(info.to_value(mac=False))))
    cframe = encode_frame(C.FT_COMMIT, seq, encode_commit_payload(info), chain)
    if len(cframe.data) > max_frame:
        raise InvalidRecordError(f"this capsule's max frame length of {max_frame} bytes cannot hold a COMMIT")
    parts.append(cframe.data)
    merkle.append(cframe.leaf)
    WRITTEN[str(store.path)] = (info.commits, info.seq, False)  # from the first byte: it may stand
    try:
        if before_index:
            # 6.4: every frame before an INDEX is durable before the INDEX is written.
            head_len = h.append_parts(snap.end, parts[:before_index])
            h.sync()
            data_len = head_len + h.append_parts(snap.end + head_len, parts[before_index:])
        else:
            data_len = h.append_parts(snap.end, parts)
        h.sync()  # the commit exists from here on (6.4)
        WRITTEN[str(store.path)] = (info.commits, info.seq, True)
        if h.crypt is None and wrote_index:
            # The new tables are in the file now: read them there (mapped, as a reader opens them),
            # so the writer does not keep a heap copy of each (52 MB at a million records, F22).
            segments = [_mapped(h, s) for s in segments]
            labels = [_mapped(h, s) for s in labels]
        store.pending_recovery = []
        end = snap.end + data_len
        info = CommitInfo(info.offset, end, info.seq, info.time, info.root, info.records, info.commits,
                          info.prev, info.index, info.index_hash, cframe.chain, info.keyslots, info.mac)
        if wrote_index:
            mem_after: dict[bytes, tuple[int, int]] = {}
            label_mem: dict[bytes, tuple[int, int]] = {}
        else:  # fewer than INDEX_EVERY_RECORDS entries since the INDEX: a dict is fine here
            mem_after, label_mem = snap.mem, snap.label_mem
            mem_after.update(zip((batch.rid(j) for j in range(len(batch))),
                                 zip(new_frames.tolist(), new_slots.tolist(), strict=True), strict=True))
            label_mem.update(new_labels)
        store.snap = Snapshot(
            snap.header, end, info, cframe.chain, merkle, seq + 1, segments, mem_after, kinds, records, since + 1,
            checkpoint=ckpt, keyset=keyset_at, labels=labels, label_mem=label_mem, blobs=blobs,
            vectors=vectors_at,
        )
        if published is not None:
            published()
    except BaseException as e:
        # From the first byte written to the new snapshot, an interruption (Ctrl-C, a signal
        # handler's exception) may leave the commit durable yet unpublished: a next commit on
        # this handle would write over it. Poisoned, the handle refuses; reopening finds the
        # commit whole or a torn tail (8.1). An I/O error has poisoned it already.
        if h.poisoned is None:
            h.poisoned = InterruptedError(f"a commit was interrupted ({type(e).__name__}) before it was published")
        raise
    return info


#: path -> (commit ordinal, seq, durable) of the last commit this process wrote there (``durable``
#: once its fsync returned; before, cut short, it may or may not stand): a command cut short later
#: (Ctrl-C while indexing or printing) says so (``capsule_cli._errors``)
WRITTEN: dict[str, tuple[int, int, bool]] = {}


def _mapped(h: WriteHandle, seg: Segment) -> Segment:
    """``seg`` read from the file where its heap buffer (a table just written) is large."""
    if not isinstance(seg._buf, bytearray) or len(seg._buf) < _SPLIT_AT:
        return seg
    try:
        return Segment(seg.ref, h.view(seg.ref.offset, len(seg._buf)), verified=seg.verified)
    except (OSError, ValueError):  # the commit is durable already: keep the copy in hand
        return seg


def _join(*cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The merged tables' three columns followed by the batch's three."""
    a, b, c, x, y, z = cols
    if not len(a):  # nothing merged: no copy of a million entries
        return x, y, z
    return np.concatenate((a, x)), np.concatenate((b, y)), np.concatenate((c, z))


def _merge_count(counts: list[int], new: int, cap: int) -> int:
    """9.3's binary-counter merge, never past what one TABLE frame holds (11)."""
    k = plan_merge(counts, new)
    while k and new + sum(counts[len(counts) - k:]) > cap:
        k -= 1
    return k


def _tables(emit: Callable[[int, bytes | bytearray], int], ids: np.ndarray, frames: np.ndarray, slots: np.ndarray,
            cap: int) -> list[Segment]:
    """TABLE frames for these entries: one, or sorted runs of at most ``cap`` entries (11)."""
    order = np.argsort(ids, kind="stable")
    out = []
    for lo in range(0, max(len(ids), 1), cap):
        sel = order[lo : lo + cap]
        table = build_table(ids, frames, slots, sel)
        at = emit(C.FT_TABLE, table)
        ref = SegmentRef(at + C.FRAME_HEADER_SIZE, len(sel), hashlib.sha256(table).digest())
        # the segment and a plain frame share the table's one buffer (F22); nothing changes it
        out.append(Segment(ref, table, verified=True))
    return out


def recover(store: Store) -> None:
    """8.3: drop a torn tail, durably, and say so in a RECOVERY frame."""
    h = store.h
    assert isinstance(h, WriteHandle)
    torn = store.snap.torn
    if torn is None:
        return
    if h.crypt is not None and store.snap.commit is None:
        # 10.3: the first KEYSLOT is frame 0 (1 after a LINEAGE) of the first commit, so with no
        # COMMIT it lies in this tail: dropping it would seal the records under a key stored nowhere
        raise CorruptError("an encrypted capsule whose creation was interrupted before its first commit: its "
                           "KEYSLOT is in the torn tail, and a write would drop it; nothing was committed, so "
                           "remove the file and create the capsule again", offset=torn[0], check="keyslot")
    dropped = h.pread(torn[0], torn[1])
    h.truncate(torn[0])
    h.sync()
    store.pending_recovery = [(C.FT_RECOVERY, encode_recovery(torn[0], dropped))]
    store.snap.torn = None
    import logging  # loaded already (capsule/__init__); here so the writer's import stays light

    # said, not only recorded: the dropped bytes may be damage that looks like a tear (8.2)
    logging.getLogger("capsule.recovery").warning(
        "%s: dropped a torn tail of %d bytes at offset %d (a commit that was not durable, or damage "
        "that cannot be told from one; a RECOVERY frame names them, spec 8.3)", store.path, torn[1], torn[0])
