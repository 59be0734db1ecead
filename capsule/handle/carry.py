"""Carrying a parent's signed checkpoints into a new file (spec 15.2): forks and compaction.

A fork, or a compacted file, that keeps a signed state of its parent exactly can keep the
signature too: the LINEAGE frame carries the parent's checkpoint body (the bytes the keys
signed), its signatures and the ordinal of the new file's COMMIT whose live set is the
body's state. For those signatures (and the checkpoints the new file signs later) to
verify under the same keys without the parent, the new file also holds the parent's
keyset chain, copied KEYSET frame by KEYSET frame.

How a writer uses it (``fork`` in ``entry.py``; compaction likewise):

1. pick the parent's checkpoints whose state the new file keeps, each with the ordinal
   of the new file's COMMIT holding exactly that live set (1 = the first COMMIT, the one
   that ends with the LINEAGE frame);
2. ``carried_for(parent, pairs)`` gives the entries; put them in ``Lineage(...,
   carried=tuple(entries))`` and create the new file with that LINEAGE;
3. write the records, so that COMMIT number ``ordinal`` holds the named state;
4. ``copy_keysets(parent, new)`` once, whenever carried is not empty (before any
   checkpoint is signed in the new file);
5. ``carry_snapshots(parent, new, records)`` last, so the new file's first search loads a
   vector index and a lexical catalog instead of building them (16.3, 16.8).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError, UsageError
from ..core.lazy import lazy
from ..format.blob import read_blob
from ..format.checkpoint import MAX_CARRIED, Carried, CheckpointFrame, KeysetFrame, encode_keyset
from ..format.frames import Merkle
from ..format.keys import CHECKPOINT_PAYLOAD_TYPE
from ..format.signing import count_valid
from ..format.writer import Build
from ..search.entries import check_ids_distinct, entries_disagree
from ..search.part import LEX_SNAPSHOT_ON_CLOSE, SNAPSHOT_ON_CLOSE
from ..search.vindex import BLOB_TYPE, Entry, VectorIndex
from ..state import checkpoints as ck

if TYPE_CHECKING:
    import numpy as np

    from .capsule import Capsule
else:
    np = lazy("numpy")


def carried_for(parent: Capsule, pairs: Iterable[tuple[CheckpointFrame, int]]) -> list[Carried]:
    """The LINEAGE ``carried`` entries (15.2) for ``pairs`` of (a checkpoint of ``parent``, as
    :meth:`Capsule.checkpoints` returns it; the ordinal, from 1, of the new file's COMMIT whose
    live set is exactly that checkpoint's state).

    Entries come out in the parent's checkpoint order, one per checkpoint. Only checkpoints
    that count are carried: signed by ``parent`` itself, under a keyset of its chain, by a
    threshold of that keyset (anything else is skipped, never carried to fail later). With more
    than ``MAX_CARRIED`` the newest are kept. The ordinals must not decrease in that order
    (a UsageError otherwise): the state of a later checkpoint is written later.
    """
    chain = {k.keyset.digest: k.keyset for k in ck.keysets(parent._store)}
    origin = parent._snap.header.file_id
    best: dict[int, tuple[CheckpointFrame, int]] = {}
    for frame, ordinal in pairs:
        if type(ordinal) is not int or ordinal < 1:
            raise UsageError(f"carried checkpoint {frame.label!r}: commit ordinal {ordinal!r} is not >= 1")
        ks = chain.get(frame.body.keyset)
        if frame.body.origin != origin or ks is None or \
                count_valid(CHECKPOINT_PAYLOAD_TYPE, frame.body_raw, frame.sigs, ks) < ks.threshold:
            continue
        best[frame.body.tree_size] = (frame, ordinal)
    out = [Carried(f.body_raw, f.body, f.sigs, n) for _, (f, n) in sorted(best.items())][-MAX_CARRIED:]
    for a, b in zip(out, out[1:], strict=False):
        if b.commit < a.commit:
            raise UsageError(f"carried checkpoint {b.body.label!r} names commit {b.commit}, before "
                             f"{a.commit} of the checkpoint before it")
    return out


def copy_keysets(parent: Capsule, new_cap: Capsule) -> int:
    """Write ``parent``'s keyset chain (its first keyset and every rotation, with their
    signatures, as at ``parent``'s snapshot) into ``new_cap`` in one commit, so carried
    signatures and the checkpoints ``new_cap`` signs later verify under the same keys
    (14.6, 15.2). Returns how many KEYSET frames were written (0: the parent has none,
    nothing is written). ``new_cap`` must be a writer with no keyset yet; the parent's
    chain must check (a CorruptError otherwise, before anything is written).
    """
    new_cap._check_writer()
    if new_cap._snap.keyset is not None:
        raise UsageError(f"{new_cap.path}: already has a keyset; keysets are copied into a new file only")
    ck.keyset_in_force(parent._store)  # 14.6: every rotation of the chain checks
    chain = ck.keysets(parent._store)
    if not chain:
        return 0
    prev: list[int | None] = [None]

    def frame(kf: KeysetFrame) -> Build:
        def build(seq: int, chain_value: bytes, merkle: Merkle, pos: int) -> bytes:
            raw = encode_keyset(kf.keyset, kf.sigs, prev[0])  # 14.9: `prev` is this file's previous KEYSET
            prev[0] = pos
            return raw
        return build

    new_cap._write_commit([], after=[(C.FT_KEYSET, frame(kf)) for kf in chain])
    return len(chain)


def carry_snapshots(parent: Capsule, new: Capsule, records: Sequence[Any], *, view: Capsule | None = None,
                    build_max: int | None = None, complete: bool = False) -> str:
    """Write the search snapshots of ``new`` (a writer whose records are ``records``, in
    commit order) as a clean close does (16.3, 16.8), so its first search loads them.

    The vector index is taken over from the parent when a graph of the parent holds exactly
    the new file's entries (16.1: its memories with an embedding, in commit order): first the
    parent's newest snapshot as stored, else (``view``: the parent at the fork point) the graph
    a reader of the view holds. Every entry of a graph taken over is checked against the record
    it names first (16.3: a snapshot is untrusted input). Otherwise the index is built from the
    records, whatever their number (``build_max`` caps it: a larger index is then left to the
    first search, as a close leaves one over ``CLOSE_BUILD_MAX``): a fork or a compaction is
    done once, while an index left unbuilt is built again by every process that searches.
    ``complete``: ``records`` holds every memory of ``new`` (a fork's, a compaction's), so a
    build inserts them from here instead of reading the file back.
    Returns how: "parent", "view", "built" or "none".
    """
    how = "none"
    with new._lock, new._view_lock:
        part = new._search
        if part.lexical_pending() >= LEX_SNAPSHOT_ON_CLOSE:
            part.write_lexical()
        params = part.config() if new._snap.kinds.get("memory", 0) >= SNAPSHOT_ON_CLOSE else None
        if params is None:
            return how
        mine = {bytes.fromhex(r.id): r for r in records
                if r.kind == "memory" and r.embedding is not None and len(r.embedding) == params.dim}
        if len(mine) < SNAPSHOT_ON_CLOSE:
            return how
        order = b"".join(mine)  # dicts keep the commit order: entry i is the i-th (16.1)
        graphs: list[tuple[str, Callable[[], VectorIndex | None]]] = [
            ("parent", lambda: _stored(parent)), ("view", lambda: _loaded(view))]
        for name, graph in graphs:
            try:
                vi = graph()
                if vi is None or vi.params != params or vi.ids.tobytes() != order \
                        or entries_disagree(vi, range(len(vi)), mine.get) is not None:
                    continue
            except CorruptError:
                continue  # 16.2: a snapshot in doubt is absent; try the next, or build
            new._write_commit([], blob=(BLOB_TYPE, vi.encode_parts()))
            return name
        if build_max is None or len(mine) <= build_max:
            s = part.searcher()
            if complete and s.vi is None and BLOB_TYPE not in new._snap.blobs:
                # 16.3: the entries in label order, inserted as a reader's catch-up inserts them
                # (4,096 at a time), from the records in hand rather than read back from the file
                vi = VectorIndex(params)
                rows = list(mine.items())
                for lo in range(0, len(rows), 4096):
                    part_rows = rows[lo : lo + 4096]
                    vi.add([Entry.of(rid, r) for rid, r in part_rows],
                           np.stack([r.embedding for _, r in part_rows]))
                s.vi, s.params, s._vpos = vi, params, new._snap.end
            s.vectors()
            part.write_snapshot()
            how = "built"
    return how


def _stored(parent: Capsule) -> VectorIndex | None:
    """The parent's newest vector snapshot as stored (3.4 hash and 16.2 bounds checked)."""
    snap = parent._snap
    ref = snap.blobs.get(BLOB_TYPE)
    if ref is None:
        return None
    blob, _, check = read_blob(parent._store.h, ref, snap.header.max_frame_len, snap.end)
    try:
        vi = VectorIndex.decode(blob, where=ref.offset)
    finally:
        check()
    check_ids_distinct(vi.ids.tobytes(), where=ref.offset)
    return vi


def _loaded(view: Capsule | None) -> VectorIndex | None:
    """The graph a reader of ``view`` holds: its newest snapshot and the entries after it."""
    if view is None or view._snap.blobs.get(BLOB_TYPE) is None:
        return None  # without a snapshot that graph is a build from the records: no gain
    return view._search.searcher().vectors()


__all__ = ["carried_for", "carry_snapshots", "copy_keysets"]
