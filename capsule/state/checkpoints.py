"""Checkpoints, keysets and the state root of a store (spec 13.1, 14.9).

Read side: the checkpoint chain (walked by ``prev`` pointers), label lookups in
one table probe, the commit that made a checkpoint durable, the keyset history.
Write side: :func:`checkpoint_frames` builds the KEYSET (first checkpoint only)
and CHECKPOINT frames of a commit as callbacks for the commit writer, so the body
signs the exact Merkle root and chain value the frames end up at.
:class:`StateRoots` keeps the state root incrementally for writers.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..core import constants as C
from ..core.errors import CorruptError, DataError, UsageError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.checkpoint import (
    CheckpointFrame,
    KeysetFrame,
    encode_checkpoint,
    encode_keyset,
    parse_keyset,
)
from ..format.commit import CommitInfo
from ..format.frames import Merkle, parse_frame_header
from ..format.keys import PrivateKey
from ..format.records import decode_record
from ..format.scan import label_key, read_commit_at, read_frame_at
from ..format.signing import CheckpointBody, Keyset, verify_rotation
from ..format.store import Store
from ..format.writer import Build, Item
from .fold import EVENT_KINDS, State
from .liveness import apply_revert, fold_of
from .stateroot import RootCache, small_root

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

# --- parsed frames, remembered per store ---------------------------------------------------
#
# A writer that checkpoints every step read and parsed the previous CHECKPOINT, every
# KEYSET and the new CHECKPOINT again at each step, and verified every rotation of the
# keyset chain again. Frames before a snapshot's end never change (the file is append-only
# and a torn tail lies after it), so what a store read and checked once is remembered:
# frames by offset (a small LRU), and the keyset chain that checked, by the offset of its
# newest KEYSET. The CHECKPOINT a commit writes is remembered once the store's snapshot names
# it, with its hash.

_FRAMES: weakref.WeakKeyDictionary[Store, OrderedDict[int, CheckpointFrame | KeysetFrame]] = \
    weakref.WeakKeyDictionary()
_CHAINS: weakref.WeakKeyDictionary[Store, tuple[int, list[KeysetFrame]]] = weakref.WeakKeyDictionary()
_WRITTEN: weakref.WeakKeyDictionary[Store, CheckpointFrame] = weakref.WeakKeyDictionary()
_KEEP = 64


def _remember(store: Store, off: int, frame: CheckpointFrame | KeysetFrame) -> None:
    cache = _FRAMES.setdefault(store, OrderedDict())
    cache[off] = frame
    if len(cache) > _KEEP:
        cache.popitem(last=False)


def _cached(store: Store, off: int) -> CheckpointFrame | KeysetFrame | None:
    cache = _FRAMES.get(store)
    return None if cache is None else cache.get(off)


def read_checkpoint(store: Store, off: int) -> CheckpointFrame:
    """The CHECKPOINT frame at ``off``, parsed once per store."""
    hit = _cached(store, off)
    if isinstance(hit, CheckpointFrame):
        return hit
    written = _WRITTEN.get(store)
    cur = store.snap.checkpoint
    if written is not None and cur is not None and written.offset == off == cur[0] and written.hash == cur[1]:
        ck = written  # this store just wrote it, and its snapshot names it by hash
    else:
        ck = store.read_checkpoint(off)
    _remember(store, off, ck)
    return ck


def _read_keyset(store: Store, off: int) -> KeysetFrame:
    hit = _cached(store, off)
    if isinstance(hit, KeysetFrame):
        return hit
    fh, payload, _, _ = read_frame_at(store.h, off, max_frame=store.snap.header.max_frame_len)
    if fh.ftype != C.FT_KEYSET:
        raise CorruptError("keyset pointer does not name a KEYSET frame", offset=off, check="keyset")
    kf = parse_keyset(payload, off, fh.seq)
    _remember(store, off, kf)
    return kf


def checkpoints(store: Store, limit: int | None = None) -> list[CheckpointFrame]:
    """Every checkpoint up to this snapshot, oldest first (walks the prev pointers; with
    ``limit``, only the newest that many are read)."""
    store.check_open()
    out: list[CheckpointFrame] = []
    cur = store.snap.checkpoint
    expect = cur[1] if cur else None
    off = cur[0] if cur else None
    while off is not None and (limit is None or len(out) < limit):
        ck = read_checkpoint(store, off)
        if ck.hash != expect:
            raise CorruptError("checkpoint chain is broken", offset=off, check="checkpoint-prev")
        out.append(ck)
        off, expect = ck.prev_offset, ck.body.prev
    out.reverse()
    return out


def find_checkpoint(store: Store, label: str) -> CheckpointFrame | None:
    """The newest checkpoint with this label, or None: one table lookup (14.9)."""
    key = label_key(label)
    loc = store.snap.label_mem.get(key)
    if loc is None:
        for seg in reversed(store.snap.labels):
            loc = seg.find(key)
            if loc is not None:
                break
    if loc is None:
        for seg in store.snap.labels:
            seg.verify()  # 9.2: "no such label" only from label tables whose hashes check
        return None
    ck = read_checkpoint(store, loc[0])
    if ck.body.label != label:
        raise CorruptError("label table points at another checkpoint", offset=loc[0], check="index-label")
    return ck


def commit_of(store: Store, ck: CheckpointFrame) -> CommitInfo:
    """The commit that made a checkpoint durable: the first COMMIT after it,
    found by reading forward over the few frames of the same commit."""
    hdr = store.snap.header
    pos = ck.offset
    for _ in range(16):
        fh = parse_frame_header(store.h.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=None,
                                max_frame_len=hdr.max_frame_len)
        if fh.ftype == C.FT_COMMIT and pos != ck.offset:
            c = read_commit_at(store.h, pos, hdr)
            if c.end > store.snap.end:
                break
            return c
        pos = fh.end
        if pos >= store.snap.end:
            break
    raise CorruptError("checkpoint has no commit", offset=ck.offset, check="checkpoint")


def keysets(store: Store) -> list[KeysetFrame]:
    """The keyset history, oldest first: the first keyset, then each rotation."""
    out: list[KeysetFrame] = []
    off = store.snap.keyset
    while off is not None:
        kf = _read_keyset(store, off)
        out.append(kf)
        off = kf.prev_offset
    out.reverse()
    return out


def keyset_in_force(store: Store) -> Keyset | None:
    """14.4-14.6: the newest keyset of the chain at this snapshot (None: there is none),
    once the chain checks: every keyset after the first is a valid rotation of the one
    before it (14.6), and the newest checkpoint is signed under a keyset of the chain.
    A second "first" keyset appended later (prev nil) starts a chain of its own, cut
    off from the checkpoints signed before it: the second check refuses it. Raises
    CorruptError when the chain does not check."""
    newest = store.snap.keyset
    if newest is None:
        return None
    known = _CHAINS.get(store)
    if known is not None and known[0] == newest:
        chain = known[1]  # this chain checked before (frames before the snapshot's end never change)
    else:
        chain = keysets(store)
        for old, new in zip(chain, chain[1:], strict=False):
            try:
                verify_rotation(old.keyset, new.rotation)
            except DataError as e:
                raise CorruptError(f"rotation refused: {e}", offset=new.offset, check="keyset-rotation") from None
        _CHAINS[store] = (newest, chain)
    cur = store.snap.checkpoint
    if cur is not None and read_checkpoint(store, cur[0]).body.keyset not in {k.keyset.digest for k in chain}:
        raise CorruptError("the newest checkpoint is signed under a keyset outside the keyset chain "
                           "(a second first keyset?)", offset=chain[0].offset, check="keyset")
    return chain[-1].keyset


def vouch_approvals(store: Store, st: State) -> State:
    """7.4: give ``st`` the keys of the keyset in force at the store's commit, the only
    keys that make an approval ``verified``; a chain that does not check vouches for none."""
    if st.approvals:
        try:
            ks = keyset_in_force(store)
        except CorruptError:
            ks = None
        st.vouch(k.raw for k in ks.keys) if ks is not None else st.vouch(())
    return st


def index_due_for_checkpoint(store: Store) -> bool:
    """Index with the checkpoint when much is pending, so a view at any
    checkpoint replays at most a few hundred records (6.3)."""
    return (len(store.snap.mem) >= C.INDEX_AT_CHECKPOINT_RECORDS
            or store.snap.frames_since_index >= C.INDEX_AT_CHECKPOINT_FRAMES)


def check_label(label: object) -> None:
    """The labels this writer signs (14.8 allows more): each must name its checkpoint in a view."""
    if not isinstance(label, str) or not label.strip():  # 14.8 allows it; nothing could name it again (--at)
        raise UsageError("a checkpoint's label must be a non-blank string (it names the checkpoint: --at, rollback)")
    if label != label.strip():  # a view's name is stripped (--at " x " names "x"): nothing could name it
        raise UsageError(f"a checkpoint's label must not start or end with white space ({label!r})")
    if label.isdecimal():  # a view tries labels first (14.9): "4" would hide commit seq 4 from --at
        raise UsageError(f"a checkpoint's label must not be a number ({label!r} would hide commit seq "
                         f"{label} from --at); try 'step-{label}'")


def check_can_sign(store: Store, label: str, key: PrivateKey | Sequence[PrivateKey]
                   ) -> tuple[list[PrivateKey], Keyset | None]:
    """Whether ``key`` can sign a checkpoint ``label`` of this store now, before anything is
    written (a rollback asks before its revert): the keys and the keyset in force (None: the
    first checkpoint sets it), or a UsageError saying why not."""
    keys = [key] if isinstance(key, PrivateKey) else list(key)
    if not keys:
        raise UsageError("a checkpoint needs at least one signing key")
    check_label(label)
    in_force = keyset_in_force(store)  # 14.6: refuses a chain that does not check (a forged first keyset)
    if in_force is not None:
        signers = {k.key_id for k in keys}
        inside = [k for k in in_force.keys if k.key_id in signers]
        if len(inside) < in_force.threshold:
            raise UsageError(
                f"the capsule's keyset v{in_force.version} needs {in_force.threshold} of its keys "
                f"({', '.join(sorted(k.key_id for k in in_force.keys))}); {len(inside)} of them given "
                f"({', '.join(sorted(signers))}): sign with them, or rotate keys first"
            )
    return keys, in_force


def checkpoint_frames(store: Store, label: str, key: PrivateKey | Sequence[PrivateKey], runtime_state: bytes | None,
                      state_root: bytes) -> list[tuple[int, Build]]:
    """The KEYSET (first checkpoint) and CHECKPOINT frames of a commit, as writer callbacks."""
    keys, in_force = check_can_sign(store, label, key)
    if runtime_state is not None and not isinstance(runtime_state, bytes | bytearray | memoryview):
        raise UsageError("runtime_state must be bytes")
    runtime = None if runtime_state is None else bytes(runtime_state)
    plain_runtime = runtime
    if runtime is not None and store.h.crypt is not None:
        runtime = store.h.crypt.seal_runtime(runtime)  # 10.2: sealed in an encrypted file; the body signs these bytes
    after: list[tuple[int, Build]] = []
    if in_force is not None:
        keyset = in_force
    else:
        keyset = Keyset.of([k.public_key for k in keys], threshold=len({k.key_id for k in keys}))
        after.append((C.FT_KEYSET, lambda seq, chain, m, pos: encode_keyset(keyset, [], None)))
    # 14.9: store only signatures that can count: one per key, by keys of the keyset in force
    members = {k.key_id for k in keyset.keys}
    signing = list({k.key_id: k for k in keys if k.key_id in members}.values())
    cur = store.snap.checkpoint
    prev = read_checkpoint(store, cur[0]) if cur else None
    if prev is not None and cur is not None and (prev.hash != cur[1]
                                                 or prev.body.origin != store.snap.header.file_id):
        raise CorruptError("the previous checkpoint does not match its pointer", offset=prev.offset,
                           check="checkpoint")
    now = store.clock()
    origin = store.snap.header.file_id

    def build(seq: int, chain: bytes, merkle: Merkle, pos: int) -> bytes:
        if prev is not None and seq <= prev.body.tree_size:
            raise UsageError("refusing to sign a checkpoint that does not extend the previous one")
        body = CheckpointBody(
            origin=origin, tree_size=seq, root=merkle.root(), chain=chain,
            prev=prev.hash if prev else None, keyset=keyset.digest, state_root=state_root, label=label,
            time=now, runtime=None if runtime is None else hashlib.sha256(runtime).digest(),
        )
        sigs = body.sign(signing)
        raw = encode_checkpoint(body, sigs, prev.offset if prev else None, runtime)
        # what parse_checkpoint(raw) gives; read_checkpoint takes it once the commit names it by hash
        _WRITTEN[store] = CheckpointFrame(pos, body.body_bytes(), body, tuple(sigs), prev.offset if prev else None,
                                          plain_runtime)
        return raw

    after.append((C.FT_CHECKPOINT, build))
    return after


def _without(ids: np.ndarray, gone: set[bytes]) -> np.ndarray:
    """The sorted ``S32`` ids minus ``gone`` (still sorted)."""
    if not gone or not len(ids):
        return ids
    g = np.sort(np.array(list(gone), dtype="S32"))  # both sorted: a binary search, not isin's merge sort
    at = np.searchsorted(g, ids)
    hit: np.ndarray = g[np.minimum(at, len(g) - 1)] == ids
    out: np.ndarray = ids[~hit]
    return out


class StateRoots:
    """The state root of a store's snapshot, kept incrementally for writers (13.1).

    The live set is every stored id minus the ids the events hold dead and the events'
    own: the stored ids come from the sorted id columns of the tables (9.1), the others
    from the liveness fold, which reads only the revert records (``liveness.fold_of``). So
    the root costs the same whether the file holds one revert or none: no record is
    decoded (a fold over every record cost 12-25 s at a million records with reverts).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.cached: str | None = None
        self._roots: RootCache | None = None  # incremental state root over the live ids (writers)
        self._next: RootCache | None = None  # the cache after the commit being written

    def _evented(self) -> bool:
        return any(k in EVENT_KINDS for k in self.store.snap.kinds)

    def root(self) -> str:
        if self.cached is None and self._roots is None and not self._evented() and not self.store.snap.segments:
            # no index table yet (a small capsule): every id was replayed at open; no numpy
            snap = self.store.snap
            self.cached = small_root(rid for rid, loc in snap.mem.copy().items() if loc[0] < snap.end)
        if self.cached is None:
            if self._roots is None:
                ids = self.store.all_ids()
                if self._evented():
                    f = fold_of(self.store)
                    ids = _without(ids, f.dead | f.events)
                self._roots = RootCache(ids)
            self.cached = self._roots.root()
        return self.cached

    def root_with(self, items: Sequence[Item]) -> bytes:
        """The state root once ``items`` (not yet written) are committed."""
        if not items:
            return bytes.fromhex(self.root())
        if self._evented() or any(it[1] in EVENT_KINDS for it in items):
            f = fold_of(self.store)
            dead, red, events = set(f.dead), set(f.redacted), set(f.events)
            for rid, kind, data in items:
                if kind in EVENT_KINDS:  # 13.1: this commit's own events, in order
                    events.add(rid)
                    apply_revert(dead, red, decode_record(canon.decode(data), rid))
            new = np.array([it[0] for it in items], dtype="S32")
            ids = np.sort(np.concatenate([self.store.all_ids(), new]), kind="stable")
            self._next = RootCache(_without(ids, dead | events))
            return bytes.fromhex(self._next.root())
        if self._roots is None:
            self._roots = RootCache(self.store.all_ids())
        root, self._next = self._roots.root_with([it[0] for it in items])
        return bytes.fromhex(root)

    def committed(self, new_ids: Sequence[bytes]) -> None:
        """After a commit: adopt the cache computed for its checkpoint, or extend."""
        if self._next is not None:
            self._roots, self._next = self._next, None
        elif self._roots is not None:
            ids = list(new_ids)
            if self._evented():
                f = fold_of(self.store)  # folds the new commit's reverts, if it has any
                if any(x in f.events or x in f.dead for x in ids):
                    self._roots = None  # liveness changed beyond "these ids are new": start again
            if self._roots is not None:
                self._roots.add(ids)
        self.cached = None

    def abandon(self) -> None:
        """A commit that computed ``root_with`` did not happen."""
        self._next = None

    def reset(self) -> None:
        self.cached, self._roots, self._next = None, None, None
