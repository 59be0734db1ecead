"""The Capsule handle: open, read, group commit, recovery (spec 6-9).

One writer at a time holds an exclusive lock; any number of readers open
lock-free and each sees the snapshot fixed at the last commit it observed.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import time_ns
from types import TracebackType
from typing import Any, Literal

import numpy as np

from ..core import constants as C
from ..core.clock import Clock, default_clock, iso, source_date_epoch
from ..core.errors import (
    AlreadyExists,
    CapsuleError,
    CorruptError,
    DataError,
    InvalidRecordError,
    NotFound,
    ReadOnlyError,
    UsageError,
)
from ..format import canonical as canon
from ..format.blob import BlobRef, blob_parts
from ..format.checkpoint import (
    CheckpointFrame,
    KeysetFrame,
    encode_checkpoint,
    encode_keyset,
    parse_checkpoint,
    parse_keyset,
)
from ..format.commit import (
    CommitInfo,
    IndexMeta,
    decode_records_payload,
    encode_commit_payload,
    encode_records_payload,
    encode_recovery,
)
from ..format.commit import (
    record_bounds as _record_bounds,
)
from ..format.file import ReadHandle, WriteHandle, fsync_dir
from ..format.frames import (
    FileHeader,
    Merkle,
    encode_frame,
    new_file_id,
    parse_frame_header,
    raw_payload,
)
from ..format.index import Segment, SegmentRef, build_table, merge_inputs, plan_merge
from ..format.keys import PrivateKey
from ..format.records import (
    decode_record,
    encode_record,
    encode_value,
    memory_value,
    parse_iso_time,
    record_from_input,
)
from ..format.records import record_id as content_id
from ..format.scan import Reader, Snapshot, label_key, load, read_commit_at, read_frame_at, replay
from ..format.signing import CheckpointBody, Keyset
from ..run.actions import ActionHandle, ActionState, Journal
from ..run.tasks import Tasks
from ..search.engine import CLOSE_BUILD_MAX, SNAPSHOT_EVERY, SNAPSHOT_ON_CLOSE, Hit, Searcher
from ..search.engine import search as _search
from ..search.vindex import BLOB_TYPE, VectorIndex, VectorParams
from ..state.fold import EVENT_KINDS, State, fold
from ..state.stateroot import RootCache, state_root_of

Mode = Literal["r", "a"]


@dataclass(frozen=True, slots=True)
class CommitRow:
    """One line of ``capsule log``."""

    commits: int
    seq: int
    offset: int
    end: int
    records: int
    time: int
    root: str

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commits, "seq": self.seq, "offset": self.offset, "end": self.end,
                "records": self.records, "time": iso(self.time), "root": self.root}


@dataclass(frozen=True, slots=True)
class Summary:
    """What ``capsule open`` prints."""

    path: str
    file_id: str
    format_version: str
    commits: int
    records: int
    kinds: dict[str, int]
    bytes: int
    state_root: str
    last_commit_time: str | None
    torn_tail_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "file_id": self.file_id, "format_version": self.format_version,
                "commits": self.commits, "records": self.records, "records_by_kind": dict(self.kinds),
                "bytes": self.bytes, "state_root": self.state_root, "last_commit_time": self.last_commit_time,
                "torn_tail_bytes": self.torn_tail_bytes}


class Capsule:
    """An open capsule. Use :func:`capsule.open` or :func:`capsule.create`.

    >>> import capsule, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.capsule")
    >>> with capsule.create(p) as cap:
    ...     with cap.commit() as tx:
    ...         rid = tx.remember("the build server is ci-7", tags=["infra"])
    ...     cap.get(rid).text
    'the build server is ci-7'
    """

    def __init__(self, path: Path, handle: ReadHandle, snap: Snapshot, mode: Mode, clock: Clock) -> None:
        self.path = path
        self._h = handle
        self._snap = snap
        self.mode: Mode = mode
        self.clock = clock
        self._frame_cache: OrderedDict[int, tuple[bytes, list[int]]] = OrderedDict()
        self._state_root: str | None = None
        self._tx_open = False
        self._pending_recovery: list[tuple[int, bytes]] = []
        #: set when close() could not write its optional final INDEX (disk full...):
        #: every acknowledged commit is still durable, the next open is just slower.
        self.close_error: BaseException | None = None
        self._pinned = False  # a view of an older commit never moves
        self._roots: RootCache | None = None  # incremental state root (writers)
        self._roots_next: RootCache | None = None  # the cache after the commit being written
        self._journal: Journal | None = None
        self._tasks: Tasks | None = None
        # A handle that never committed writes no INDEX on close; the one thing it may
        # write is a vector snapshot of an index it built (16.3), so that work is kept.
        self._committed = False
        self._search: Searcher | None = None
        self._vector_defaults: VectorParams | None = None  # configure_vectors() before the first embedding

    # --- lifecycle -------------------------------------------------------------
    def __enter__(self) -> Capsule:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Write a final INDEX (writers) so the next open is fast, then release."""
        if self._h.fd < 0:
            return
        try:
            if (self.mode == "a" and isinstance(self._h, WriteHandle) and self._h.poisoned is None
                    and self._search is not None):
                # 16.3: a snapshot of the vector index, so the next open need not insert much.
                s = self._search
                try:
                    if s.vi is None and s.pending_vectors >= SNAPSHOT_ON_CLOSE:
                        # Not loaded this session: bring it up only if that is cheap; a
                        # larger catch-up is left to the first search or build_index().
                        base = (s._blob_params() or (None, 0))[1]
                        if self._snap.kinds.get("memory", 0) - base <= CLOSE_BUILD_MAX:
                            s.vectors()
                    if s.vi is not None:
                        s.vectors()
                        if len(s.vi) - s.snapshot_count >= SNAPSHOT_ON_CLOSE:
                            self._write_snapshot(reload=False)
                except (CapsuleError, OSError) as e:
                    self.close_error = e.with_traceback(None)
            if (self.mode == "a" and isinstance(self._h, WriteHandle) and self._h.poisoned is None
                    and self._committed and self.close_error is None
                    and (len(self._snap.mem) >= C.INDEX_ON_CLOSE_RECORDS
                         or self._snap.frames_since_index >= C.INDEX_ON_CLOSE_FRAMES)):
                # Best effort: the index only speeds up the next open. Every commit
                # acknowledged so far is durable, so a failure here (disk full) must
                # not surface as if they had failed.
                try:
                    self._write_commit([], force_index=True)
                except (CapsuleError, OSError) as e:
                    self.close_error = e.with_traceback(None)
        finally:
            self._h.close()

    @property
    def closed(self) -> bool:
        return self._h.fd < 0

    def _check_open(self) -> None:
        if self._h.fd < 0:
            raise UsageError("capsule is closed")

    # --- reading ---------------------------------------------------------------
    @property
    def file_id(self) -> str:
        return self._snap.header.file_id.hex()

    @property
    def format_version(self) -> str:
        h = self._snap.header
        return f"{h.major}.{h.minor}"

    @property
    def commit_count(self) -> int:
        return self._snap.commits

    @property
    def size(self) -> int:
        """Committed bytes (the reader's snapshot)."""
        return self._snap.end

    @property
    def root(self) -> str:
        """Merkle root named by the last commit (hex)."""
        c = self._snap.commit
        return (c.root if c else Merkle().root()).hex()

    def __len__(self) -> int:
        return self._snap.records

    def kinds(self) -> dict[str, int]:
        return dict(sorted(self._snap.kinds.items()))

    def _locate(self, rid: bytes) -> tuple[int, int] | None:
        loc = self._snap.mem.get(rid)
        if loc is not None:
            return loc
        # A hit needs no table hash: get() checks the record against its id.
        for seg in reversed(self._snap.segments):
            loc = seg.find(rid)
            if loc is not None:
                return loc
        # Before saying "absent", make sure no table was tampered with (9.2).
        for seg in self._snap.segments:
            seg.verify()
        return None

    def __contains__(self, rid: object) -> bool:
        try:
            return self._locate(_parse_id(rid)) is not None
        except (ValueError, TypeError):
            return False

    def _frame_slots(self, offset: int) -> tuple[bytes, list[int]]:
        """The raw payload of a RECORDS frame and the byte offsets of its records.

        Reading one record skips to its slot instead of decoding the whole
        (~1 MB) frame: the record itself is then canonical-checked and matched
        against its id, which is what makes the read trustworthy.
        """
        hit = self._frame_cache.get(offset)
        if hit is not None:
            self._frame_cache.move_to_end(offset)
            return hit
        if not C.HEADER_SIZE <= offset < self._snap.end:
            raise CorruptError("record location outside the file", offset=offset, check="index-location")
        prev = self._snap.header.chain_seed if offset == C.HEADER_SIZE else None
        fh, payload, _, _ = read_frame_at(self._h, offset, max_frame=self._snap.header.max_frame_len,
                                          prev_chain=prev)
        if fh.ftype != C.FT_RECORDS or fh.end > self._snap.end:
            raise CorruptError("record location is not a RECORDS frame", offset=offset, check="index-location")
        raw = raw_payload(fh, payload)
        bounds = _record_bounds(raw, fh.offset, fh.seq)
        self._frame_cache[offset] = (raw, bounds)
        if len(self._frame_cache) > 8:
            self._frame_cache.popitem(last=False)
        return raw, bounds

    def get(self, record_id: str | bytes) -> Any:
        """The record with this content id (hex), checked against its id.

        Raises :class:`NotFound` when there is none.
        """
        self._check_open()
        rid = _parse_id(record_id)
        loc = self._locate(rid)
        if loc is None:
            raise NotFound(f"no record {rid.hex()}")
        raw, bounds = self._frame_slots(loc[0])
        if loc[1] + 1 >= len(bounds):
            raise CorruptError("record slot outside its frame", offset=loc[0], check="index-location")
        data = raw[bounds[loc[1]] : bounds[loc[1] + 1]]
        try:
            value = canon.decode(data)
        except DataError as e:
            raise CorruptError(str(e), offset=loc[0], check="canonical") from None
        kind = value.get("kind") if isinstance(value, dict) else None
        if not isinstance(kind, str) or content_id(kind, data) != rid:
            raise CorruptError(f"record {rid.hex()} does not match its content id", offset=loc[0],
                               check="content-id")
        if canon.depth(value) > C.MAX_DEPTH:
            raise CorruptError("record nested too deeply", offset=loc[0], check="canonical")
        return decode_record(value, rid)

    def records(self, kind: str | None = None) -> Iterator[Any]:
        """Every committed record in commit order, each checked on the way."""
        self._check_open()
        snap = self._snap
        rd = Reader(self._h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
        for fh, payload, _ in rd.frames():
            if fh.ftype != C.FT_RECORDS:
                continue
            for value, data in decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq):
                k = value.get("kind") if isinstance(value, dict) else None
                if kind is not None and k != kind:
                    continue
                if not isinstance(k, str):
                    raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
                yield decode_record(value, content_id(k, data))

    def all_ids(self) -> np.ndarray:
        """Sorted content ids of every committed record (``S32`` array)."""
        for seg in self._snap.segments:
            seg.verify()
        ids, _, _ = merge_inputs(self._snap.segments, self._snap.mem)
        return np.sort(ids, kind="stable")

    @property
    def state_root(self) -> str:
        """13.1: the hash over the sorted ids of the live records (hex)."""
        if self._state_root is None and any(k in EVENT_KINDS for k in self._snap.kinds):
            self._state_root = self.state().root  # events change liveness: fold
        if self._state_root is None:
            if self._roots is None:
                self._roots = RootCache(self.all_ids())
            self._state_root = self._roots.root()
        return self._state_root

    def summary(self) -> Summary:
        c = self._snap.commit
        return Summary(str(self.path), self.file_id, self.format_version, self.commit_count, len(self),
                       self.kinds(), self._snap.end, self.state_root, iso(c.time) if c else None,
                       self._snap.torn[1] if self._snap.torn else 0)

    def log(self) -> list[CommitRow]:
        """Every commit, oldest first, by walking the COMMIT back-pointers."""
        self._check_open()
        rows: list[CommitInfo] = []
        c = self._snap.commit
        while c is not None:
            rows.append(c)
            if c.prev is None:
                if c.commits != 1:
                    raise CorruptError("commit chain ends early", offset=c.offset, check="commit-prev")
                break
            p = read_commit_at(self._h, c.prev, self._snap.header)
            if p.commits != c.commits - 1 or p.end > c.offset:
                raise CorruptError("commit back-pointer is inconsistent", offset=c.offset, check="commit-prev")
            c = p
        rows.reverse()
        out, before = [], 0
        for c in rows:
            out.append(CommitRow(c.commits, c.seq, c.offset, c.end, c.records - before, c.time, c.root.hex()))
            before = c.records
        return out

    def state(self) -> State:
        """The agent's state at this snapshot: a pure fold over its records (13)."""
        return fold(self.records())

    def _commits(self) -> Iterator[CommitInfo]:
        """Commits newest first, by walking COMMIT back-pointers."""
        c = self._snap.commit
        while c is not None:
            yield c
            if c.prev is None:
                return
            p = read_commit_at(self._h, c.prev, self._snap.header)
            if p.commits != c.commits - 1 or p.end > c.offset:
                raise CorruptError("commit back-pointer is inconsistent", offset=c.offset, check="commit-prev")
            c = p

    # --- checkpoints and keys (14.9) ---------------------------------------------
    def _read_checkpoint(self, offset: int) -> CheckpointFrame:
        fh, payload, _, _ = read_frame_at(self._h, offset, max_frame=self._snap.header.max_frame_len)
        if fh.ftype != C.FT_CHECKPOINT:
            raise CorruptError("checkpoint pointer does not name a CHECKPOINT frame", offset=offset,
                               check="checkpoint")
        return parse_checkpoint(payload, offset, fh.seq)

    def checkpoints(self) -> list[CheckpointFrame]:
        """Every checkpoint up to this snapshot, oldest first (walks the prev pointers)."""
        self._check_open()
        out: list[CheckpointFrame] = []
        cur = self._snap.checkpoint
        expect = cur[1] if cur else None
        off = cur[0] if cur else None
        while off is not None:
            ck = self._read_checkpoint(off)
            if ck.hash != expect:
                raise CorruptError("checkpoint chain is broken", offset=off, check="checkpoint-prev")
            out.append(ck)
            off, expect = ck.prev_offset, ck.body.prev
        out.reverse()
        return out

    def find_checkpoint(self, label: str) -> CheckpointFrame | None:
        """The newest checkpoint with this label, or None: one table lookup (14.9)."""
        key = label_key(label)
        loc = self._snap.label_mem.get(key)
        if loc is None:
            for seg in reversed(self._snap.labels):
                loc = seg.find(key)
                if loc is not None:
                    break
        if loc is None:
            return None
        ck = self._read_checkpoint(loc[0])
        if ck.body.label != label:
            raise CorruptError("label table points at another checkpoint", offset=loc[0], check="index-label")
        return ck

    def commit_of(self, ck: CheckpointFrame) -> CommitInfo:
        """The commit that made a checkpoint durable: the first COMMIT after it,
        found by reading forward over the few frames of the same commit."""
        hdr = self._snap.header
        pos = ck.offset
        for _ in range(16):
            fh = parse_frame_header(self._h.pread(pos, C.FRAME_HEADER_SIZE), pos, expect_seq=None,
                                    max_frame_len=hdr.max_frame_len)
            if fh.ftype == C.FT_COMMIT and pos != ck.offset:
                c = read_commit_at(self._h, pos, hdr)
                if c.end > self._snap.end:
                    break
                return c
            pos = fh.end
            if pos >= self._snap.end:
                break
        raise CorruptError("checkpoint has no commit", offset=ck.offset, check="checkpoint")

    def keysets(self) -> list[KeysetFrame]:
        """The keyset history, oldest first: the first keyset, then each rotation."""
        out: list[KeysetFrame] = []
        off = self._snap.keyset
        while off is not None:
            fh, payload, _, _ = read_frame_at(self._h, off, max_frame=self._snap.header.max_frame_len)
            if fh.ftype != C.FT_KEYSET:
                raise CorruptError("keyset pointer does not name a KEYSET frame", offset=off, check="keyset")
            kf = parse_keyset(payload, off, fh.seq)
            out.append(kf)
            off = kf.prev_offset
        out.reverse()
        return out

    @property
    def keyset(self) -> Keyset | None:
        """The keyset in force (None before the first checkpoint)."""
        ks = self.keysets()
        return ks[-1].keyset if ks else None

    def checkpoint(self, label: str, *, key: PrivateKey | Sequence[PrivateKey], runtime_state: bytes | None = None,
                   ) -> CheckpointFrame:
        """Sign and commit a checkpoint of the current state (14.9).

        The first checkpoint also records the signing keys as the capsule's
        keyset. Later ones must be signed by a threshold of the keyset in force
        (rotate with :meth:`rotate_keys`), and must extend the previous checkpoint.
        To checkpoint a step's records in the same commit (one fsync), call
        :meth:`Transaction.checkpoint` inside ``with cap.commit()``.
        """
        self._check_writer()
        try:
            after = self._checkpoint_frames(label, key, runtime_state, [])
            self._write_commit([], after=after, force_index=self._index_due_for_checkpoint())
        finally:
            self._roots_next = None
        assert self._snap.checkpoint is not None
        return self._read_checkpoint(self._snap.checkpoint[0])

    def _index_due_for_checkpoint(self) -> bool:
        # Index with the checkpoint when much is pending, so a view at any
        # checkpoint replays at most a few hundred records (6.3).
        return (len(self._snap.mem) >= C.INDEX_AT_CHECKPOINT_RECORDS
                or self._snap.frames_since_index >= C.INDEX_AT_CHECKPOINT_FRAMES)

    def _root_with(self, items: list[tuple[bytes, str, bytes]]) -> bytes:
        """The state root once ``items`` (not yet written) are committed."""
        if not items:
            return bytes.fromhex(self.state_root)
        if any(k in EVENT_KINDS for k in self._snap.kinds) or any(it[1] in EVENT_KINDS for it in items):
            from ..state.fold import live_records

            extra = [decode_record(canon.decode(data), rid) for rid, _, data in items]
            return bytes.fromhex(state_root_of([bytes.fromhex(r.id) for r in
                                                live_records([*self.records(), *extra])]))
        if self._roots is None:
            self._roots = RootCache(self.all_ids())
        root, self._roots_next = self._roots.root_with([it[0] for it in items])
        return bytes.fromhex(root)

    def _checkpoint_frames(self, label: str, key: PrivateKey | Sequence[PrivateKey], runtime_state: bytes | None,
                           items: list[tuple[bytes, str, bytes]],
                           ) -> list[tuple[int, Callable[[int, bytes, Merkle, int], bytes]]]:
        keys = [key] if isinstance(key, PrivateKey) else list(key)
        if not keys:
            raise UsageError("a checkpoint needs at least one signing key")
        if runtime_state is not None and not isinstance(runtime_state, bytes | bytearray | memoryview):
            raise UsageError("runtime_state must be bytes")
        runtime = None if runtime_state is None else bytes(runtime_state)
        ks_frames = self.keysets()
        after: list[tuple[int, Callable[[int, bytes, Merkle, int], bytes]]] = []
        if ks_frames:
            keyset = ks_frames[-1].keyset
            signers = {k.key_id for k in keys}
            inside = [k for k in keyset.keys if k.key_id in signers]
            if len(inside) < keyset.threshold:
                raise UsageError(
                    f"the capsule's keyset v{keyset.version} needs {keyset.threshold} of its keys; "
                    f"{len(inside)} given ({', '.join(sorted(signers))}): rotate keys first"
                )
        else:
            keyset = Keyset.of([k.public_key for k in keys], threshold=len({k.key_id for k in keys}))
            after.append((C.FT_KEYSET, lambda seq, chain, m, pos: encode_keyset(keyset, [], None)))
        prev = self._read_checkpoint(self._snap.checkpoint[0]) if self._snap.checkpoint else None
        if prev is not None and (prev.hash != self._snap.checkpoint[1]  # type: ignore[index]
                                 or prev.body.origin != self._snap.header.file_id):
            raise CorruptError("the previous checkpoint does not match its pointer", offset=prev.offset,
                               check="checkpoint")
        state_root = self._root_with(items)
        now = self.clock()

        def build(seq: int, chain: bytes, merkle: Merkle, pos: int) -> bytes:
            if prev is not None and seq <= prev.body.tree_size:
                raise UsageError("refusing to sign a checkpoint that does not extend the previous one")
            body = CheckpointBody(
                origin=self._snap.header.file_id, tree_size=seq, root=merkle.root(), chain=chain,
                prev=prev.hash if prev else None, keyset=keyset.digest, state_root=state_root, label=label,
                time=now, runtime=None if runtime is None else hashlib.sha256(runtime).digest(),
            )
            return encode_checkpoint(body, body.sign(keys), prev.offset if prev else None, runtime)

        after.append((C.FT_CHECKPOINT, build))
        return after

    def rotate_keys(self, new: Keyset, *, old_signers: Sequence[PrivateKey], new_signers: Sequence[PrivateKey],
                    ) -> KeysetFrame:
        """Replace the keyset; accepted only with a threshold of the old keys and of
        the new keys (each counted once). Keys left out of ``new`` are revoked."""
        from ..format.signing import rotate

        self._check_writer()
        ks = self.keysets()
        if not ks:
            raise UsageError("no keyset yet: the first checkpoint sets it")
        rot = rotate(ks[-1].keyset, new, old_signers, new_signers)
        prev_off = ks[-1].offset
        self._write_commit([], after=[(C.FT_KEYSET, lambda seq, chain, m, pos: encode_keyset(
            rot.new, rot.signatures, prev_off))])
        return self.keysets()[-1]

    def rollback(self, to: str, *, key: PrivateKey | Sequence[PrivateKey] | None = None) -> str | None:
        """Append a ``revert`` so the live state equals checkpoint ``to``'s again;
        history stays in the file. With ``key``, also sign a checkpoint
        ``rollback-to-<label>``. Returns the revert record's id, or None when the
        live state already equals the checkpoint's (nothing is written)."""
        self._check_writer()
        ck = self.find_checkpoint(to)
        if ck is None:
            raise NotFound(f"no checkpoint labelled {to!r} (see `capsule checkpoints`)")
        from ..state.fold import live_records

        with self.view(self.commit_of(ck)) as then:
            then_ids = {bytes.fromhex(r.id) for r in live_records(then.records())}
        if state_root_of(list(then_ids)) != ck.body.state_root.hex():
            # checked before anything is written: the checkpoint and its records disagree
            raise CorruptError(f"checkpoint {to!r} does not match the records before it",
                               offset=ck.offset, check="checkpoint-state")
        now_ids = {bytes.fromhex(r.id) for r in live_records(self.records())}
        if now_ids == then_ids:
            return None  # already there: nothing to write
        with self.commit() as tx:
            rid = tx._put_kind("revert", after=bytes.fromhex(self.root), to=ck.hash,
                               drop=sorted(now_ids - then_ids), restore=sorted(then_ids - now_ids))
        if key is not None:
            self.checkpoint(f"rollback-to-{to}", key=key)
        return rid

    # --- durable tasks (7.9) ------------------------------------------------------
    @property
    def tasks(self) -> Tasks:
        """The durable task queue: ``cap.tasks.add/due/claim/complete/fail/cancel``.
        Everything is computed from committed task records and the injected clock."""
        if self._tasks is None:
            self._tasks = Tasks(self)
        return self._tasks

    # --- idempotent actions (7.8) ----------------------------------------------
    @property
    def _actions(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self)
        return self._journal

    def run_once(self, key: str, fn: Callable[[], Any], *, reconcile: Callable[[str], Any] | None = None,
                 policy: str = "at-most-once", what: str = "", inputs: Mapping[str, Any] | None = None) -> Any:
        """Run the side effect ``fn`` at most once for ``key``, across crashes and hosts.

        The intent is committed (fsynced) before ``fn`` runs and the result after.
        A key already done returns its stored value without calling ``fn``; a key
        whose intent has no result is *in doubt*: ``reconcile(key)`` decides (its
        value, or ``capsule.NOT_DONE`` to run ``fn``), else :class:`InDoubt` is
        raised. ``policy="retry-safe"`` re-runs in-doubt effects; ``"ask"`` leaves
        them to ``capsule actions --resolve``.

        >>> sent = cap.run_once("email:42", lambda: mailer.send(msg), reconcile=mailer.lookup)  # doctest: +SKIP
        """
        self._check_writer()
        return self._actions.run_once(key, fn, reconcile=reconcile, policy=policy, what=what, inputs=inputs)

    def action(self, key: str, *, reconcile: Callable[[str], Any] | None = None, policy: str = "at-most-once",
               what: str = "", inputs: Mapping[str, Any] | None = None) -> ActionHandle:
        """``with cap.action(key) as a: if not a.done: a.complete(send(...))``."""
        self._check_writer()
        return self._actions.begin(key, what=what, inputs=inputs, reconcile=reconcile, policy=policy)

    def actions(self) -> list[ActionState]:
        """Every action key's state, in key order."""
        return [st for _, st in sorted(self._actions.states().items())]

    def resolve_action(self, key: str, *, done: bool, value: Any = None) -> ActionState:
        """Settle an in-doubt action by hand: it happened (``done=True``) or not."""
        self._check_writer()
        return self._actions.resolve(key, done=done, value=value)

    def _dead_ids(self) -> set[bytes]:
        """Ids that revert events currently hold dead (13.1)."""
        dead: set[bytes] = set()
        for rec in self.records(kind="revert"):
            dead.update(rec.drop)
            dead.difference_update(rec.restore)
        return dead

    @staticmethod
    def _kind(name: str) -> Any:
        from ..format.records import _REGISTRY

        return _REGISTRY[name]

    def _check_writer(self) -> None:
        self._check_open()
        if self.mode != "a":
            raise ReadOnlyError(f"{self.path}: opened read-only; open with mode='a' to write")
        if self._tx_open:
            raise UsageError("a commit is open on this capsule")

    def resolve(self, at: str | int) -> CommitInfo:
        """Find the commit a view names (6.5): a checkpoint label, a commit seq (as
        ``log`` shows it), a hex prefix of a commit root (>= 4 digits), or an
        ISO-8601 time (the last commit at or before it)."""
        self._check_open()
        text = str(at).strip()
        ck = self.find_checkpoint(text) if self._snap.checkpoint else None
        if ck is not None:
            return self.commit_of(ck)  # labels first: a label may look like a number
        if text.isdigit():
            # A seq names the commit that made frame N durable: N itself when N is a
            # COMMIT's seq (as `log` shows), else the first commit after it (so a
            # checkpoint's seq from `checkpoints` works too).
            seq = int(text)
            found = None
            for c in self._commits():
                if c.seq < seq:
                    break
                found = c
            if found is not None:
                return found
            if len(text) < 4:
                raise NotFound(f"no commit at or after seq {seq} (see `capsule log`)")
            # an all-digit root prefix: fall through
        low = text.lower()
        if len(low) >= 4 and all(ch in "0123456789abcdef" for ch in low):
            hits = [c for c in self._commits() if c.root.hex().startswith(low)]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise UsageError(f"commit prefix {text!r} is ambiguous ({len(hits)} commits)")
            raise NotFound(f"no commit with seq {text} and no commit root starting with {text!r}"
                           if text.isdigit() else f"no commit root starts with {text!r}")
        try:
            t = parse_iso_time(text)
        except InvalidRecordError:
            raise UsageError(
                f"--at {text!r} is not a checkpoint label, a commit seq, a commit hash prefix or an ISO-8601 time"
            ) from None
        for c in self._commits():
            if c.time <= t:
                return c
        raise NotFound(f"no commit at or before {text}")

    def view(self, at: str | int | CommitInfo) -> Capsule:
        """A read-only capsule fixed at an earlier commit (time travel, audit)."""
        c = at if isinstance(at, CommitInfo) else self.resolve(at)
        h = ReadHandle(self.path)
        try:
            snap = replay(h, self._snap.header, c, strict=False)
        except BaseException:
            h.close()
            raise
        v = Capsule(self.path, h, snap, "r", self.clock)
        v._pinned = True
        return v

    def refresh(self) -> bool:
        """Readers: move the snapshot to the newest commit. True if it moved."""
        self._check_open()
        if self.mode == "a" or self._pinned:
            return False
        size = self._h.size()
        if size == self._snap.end:
            return False
        snap = load(self._h, size, strict=False)
        if snap.end == self._snap.end:
            return False
        self._snap, self._state_root, self._roots = snap, None, None
        self._frame_cache.clear()
        return True

    # --- search (16) ---------------------------------------------------------------
    def _searcher(self) -> Searcher:
        self._check_open()
        if self._search is None:
            self._search = Searcher(self)
        return self._search

    def search(self, query: str | None = None, *, vector: Any = None, k: int = 10, mode: str = "auto",
               tags: Any = None, any_tags: Any = None, tier: Any = None, kind: Any = None, since: Any = None,
               until: Any = None, meta: Mapping[str, Any] | None = None, ef: int = 64,
               embedder: Any = None, now: int | None = None) -> list[Hit]:
        """Find live memories (and notes and decisions, lexically) by meaning or by words.

        ``mode``: ``vector`` (needs ``vector`` or an embedder for ``query``), ``lexical``
        (BM25 over text), ``hybrid`` (both, fused by reciprocal rank) or ``auto``.
        Filters: ``tags`` (all of), ``any_tags``, ``tier``, ``kind``, ``since`` /
        ``until`` (int ns or ISO-8601, inclusive), ``meta`` (equality per key).
        Expired (``time + ttl <= now``) and rolled-back records are never returned.
        Results are exactly scored, best first, ties by id: the same on every host.

        >>> import capsule, tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "s.capsule")
        >>> with capsule.create(p) as cap:
        ...     with cap.commit() as tx:
        ...         _ = tx.remember("the deploy key lives in vault", embedding=[1.0, 0.0])
        ...         _ = tx.remember("lunch is at noon", embedding=[0.0, 1.0])
        ...     [h.text for h in cap.search(vector=[0.9, 0.1], k=1)]
        ...     [h.text for h in cap.search("deploy key", mode="lexical")]
        ['the deploy key lives in vault']
        ['the deploy key lives in vault']
        """
        return _search(self, query, vector=vector, k=k, mode=mode, ef=ef, embedder=embedder, now=now, tags=tags,
                       any_tags=any_tags, tier=tier, kind=kind, since=since, until=until, meta=meta)

    def vector_config(self) -> VectorParams | None:
        """The vector index parameters fixed at first use (16.1), or None."""
        return self._searcher().config()

    def configure_vectors(self, *, space: str = "cosine", dim: int | None = None, M: int = 16,
                          ef_construction: int = 200, seed: int = 100, embedder: str = "") -> VectorParams:
        """Fix how the vector index is built, before the first embedding (16.1).

        With ``dim`` the choice is committed now; without, it is committed with the
        first embedding. Asking for other parameters once they are fixed is an error."""
        self._check_writer()
        want = VectorParams(space, dim or 0, M, ef_construction, seed, embedder)
        have = self._searcher().config()
        if have is not None:
            if (dim is not None and have != want) or (dim is None and have != VectorParams(
                    space, have.dim, M, ef_construction, seed, embedder)):
                raise UsageError(f"this capsule's vector index is already fixed: {have.space}, dim {have.dim}, "
                                 f"M {have.M}, ef_construction {have.ef_construction}, seed {have.seed}")
            return have
        if dim is None:
            self._vector_defaults = want
            return want
        with self.commit() as tx:
            tx._vector_config(dim, want)
        return want

    def build_index(self) -> int:
        """Bring the vector index up to date now (load its snapshot, insert newer
        memories, single-threaded); returns the number of indexed vectors."""
        vi = self._searcher().vectors()
        return 0 if vi is None else len(vi)

    def index_info(self) -> dict[str, Any]:
        """What the search indexes hold: vector parameters and counts, snapshot, doubts."""
        s = self._searcher()
        p = s.config()
        ref = self._snap.blobs.get(BLOB_TYPE)
        return {"vectors": None if p is None else {**p.to_value(), "embedder": p.embedder},
                "indexed": None if s.vi is None else len(s.vi),
                "snapshot": None if ref is None else {"offset": ref.offset, "bytes": ref.size, "parts": ref.parts,
                                                      "sha256": ref.id.hex(),
                                                      "vectors": s.snapshot_count if s.vi is not None
                                                      else (s._blob_params() or (None, None))[1]},
                "doubt": s.doubt, "notice": s.notice}

    def save_index(self) -> bool:
        """Write a snapshot of the vector index now if it holds vectors the newest
        snapshot lacks. True if one was written."""
        self._check_writer()
        s = self._searcher()
        vi = s.vectors()
        if vi is None or (len(vi) == s.snapshot_count and BLOB_TYPE in self._snap.blobs):
            return False
        self._write_snapshot()
        return True

    def _write_snapshot(self, *, reload: bool = True) -> None:
        s = self._search
        assert s is not None and s.vi is not None
        blob = s.vi.encode()
        self._write_commit([], blob=(BLOB_TYPE, blob))
        if not reload:  # closing: nothing will search this handle again
            s.snapshot_count = len(s.vi)
            return
        # Continue from the blob as a reader would load it: the graph's level
        # generator restarts there too, so writer and readers stay identical (7).
        s.vi = VectorIndex.decode(blob)
        s.snapshot_count, s.pending_vectors = len(s.vi), 0
        s._vpos = self._snap.end

    # --- writing ---------------------------------------------------------------
    def commit(self) -> Transaction:
        """Start a group commit: every record added in the block lands in one
        atomic commit with one fsync when the block exits without error."""
        self._check_open()
        if self.mode != "a":
            raise ReadOnlyError(f"{self.path}: opened read-only; open with mode='a' to write")
        if self._tx_open:
            raise UsageError("a commit is already open on this capsule")
        if isinstance(self._h, WriteHandle):
            self._h._check()  # a poisoned writer refuses every commit, even an empty one
        return Transaction(self)

    def _write_commit(self, items: list[tuple[bytes, str, bytes]], *, force_index: bool = False,
                      extra: list[tuple[int, bytes]] = (),  # type: ignore[assignment]
                      after: list[tuple[int, Callable[[int, bytes, Merkle, int], bytes]]] = (),  # type: ignore[assignment]
                      blob: tuple[str, bytes] | None = None,
                      ) -> CommitInfo:
        """Append records (+ INDEX when due) + COMMIT, fsync once, then publish.

        ``extra`` frames go first; ``after`` frames are built by callbacks that get
        (seq, chain, Merkle so far, offset) once everything before them is laid out.
        """
        assert isinstance(self._h, WriteHandle)
        if self._snap.torn is not None:
            # 8.3: a torn tail is dropped, durably and on the record, before any write.
            self._recover()
            extra = [*self._pending_recovery, *extra]
        self._pending_recovery = []
        self._committed = True
        snap = self._snap
        seq, chain, merkle = snap.next_seq, snap.chain, snap.merkle.copy()
        pos = snap.end
        parts: list[bytes] = []
        # New entries go to side tables and are merged into the snapshot only
        # after the fsync, so a failed commit leaves the in-memory state as it was.
        new_mem: dict[bytes, tuple[int, int]] = {}
        kinds = dict(snap.kinds)

        def emit(ftype: int, raw: bytes, compress: bool = False) -> int:
            nonlocal seq, chain, pos
            fr = encode_frame(ftype, seq, raw, chain, compress=compress)
            at = pos
            parts.append(fr.data)
            merkle.append(fr.leaf)
            chain, pos, seq = fr.chain, pos + len(fr.data), seq + 1
            return at

        frames = 0
        for ftype, raw in extra:
            emit(ftype, raw)
            frames += 1
        blobs = snap.blobs
        if blob is not None:
            # 3.4: the parts go first; the INDEX this commit must write names them.
            btype, content = blob
            payloads, bid = blob_parts(btype, content)
            first = pos
            for raw in payloads:
                emit(C.FT_BLOB, raw)
                frames += 1
            blobs = {**blobs, btype: BlobRef(btype, first, len(payloads), len(content), bid)}
            force_index = True
        i = 0
        while i < len(items):
            batch: list[bytes] = []
            size = 0
            start = i
            while i < len(items) and (not batch or size + len(items[i][2]) <= C.FRAME_TARGET_RAW):
                batch.append(items[i][2])
                size += len(items[i][2])
                i += 1
            at = emit(C.FT_RECORDS, encode_records_payload(batch), compress=True)
            frames += 1
            for slot, (rid, kind, _) in enumerate(items[start:i]):
                new_mem[rid] = (at, slot)
                kinds[kind] = kinds.get(kind, 0) + 1
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
        records = snap.records + len(items)
        segments = list(snap.segments)
        index_at, index_hash = (snap.commit.index, snap.commit.index_hash) if snap.commit else (None, None)
        since = snap.frames_since_index + frames
        wrote_index = False
        n_mem = len(snap.mem) + len(new_mem)
        if force_index or n_mem >= C.INDEX_EVERY_RECORDS or since >= C.INDEX_EVERY_FRAMES:
            mem = {**snap.mem, **new_mem}
            k = plan_merge([s.ref.count for s in segments], len(mem))
            if k:
                for s in segments[-k:]:
                    s.verify()
            new_table: Segment | None = None
            if mem or k:
                ids, fr_offs, slots = merge_inputs(segments[len(segments) - k:], mem)
                table = build_table(ids, fr_offs, slots)
                t_at = emit(C.FT_TABLE, table)
                ref = SegmentRef(t_at + C.FRAME_HEADER_SIZE, len(ids), hashlib.sha256(table).digest())
                new_table = Segment(ref, table, verified=True)
                segments = segments[: len(segments) - k] + [new_table]
            labels = list(snap.labels)
            lmem = {**snap.label_mem, **new_labels}
            if lmem:
                # Label tables: same layout and merge rule as record tables, but a
                # later checkpoint with the same label replaces the entry (14.9).
                k = plan_merge([s.ref.count for s in labels], len(lmem))
                merged: dict[bytes, tuple[int, int]] = {}
                for seg in labels[len(labels) - k:]:
                    seg.verify()
                    for j in range(seg.ref.count):
                        merged[bytes(seg.ids[j]).ljust(32, b"\0")] = (int(seg.frames[j]), int(seg.slots[j]))
                merged.update(lmem)
                ids, fr_offs, slots = merge_inputs([], merged)
                table = build_table(ids, fr_offs, slots)
                t_at = emit(C.FT_TABLE, table)
                ref = SegmentRef(t_at + C.FRAME_HEADER_SIZE, len(ids), hashlib.sha256(table).digest())
                labels = labels[: len(labels) - k] + [Segment(ref, table, verified=True)]
            meta = IndexMeta(seq, merkle.peaks, records, kinds, [s.ref for s in segments], ckpt, keyset_at,
                             [s.ref for s in labels], blobs)
            payload = meta.encode()
            index_at, index_hash = emit(C.FT_INDEX, payload), hashlib.sha256(payload).digest()
            wrote_index = True
            since = 1
        info = CommitInfo(
            offset=pos, end=0, seq=seq, time=self.clock(), root=merkle.root(), records=records,
            commits=snap.commits + 1, prev=snap.commit.offset if snap.commit else None, index=index_at,
            index_hash=index_hash,
        )
        cframe = encode_frame(C.FT_COMMIT, seq, encode_commit_payload(info), chain)
        parts.append(cframe.data)
        merkle.append(cframe.leaf)
        data = b"".join(parts)
        self._h.append_at(snap.end, data)
        self._h.sync()  # the commit exists from here on (6.4)
        end = snap.end + len(data)
        info = CommitInfo(info.offset, end, info.seq, info.time, info.root, info.records, info.commits,
                          info.prev, info.index, info.index_hash, cframe.chain)
        if wrote_index:
            mem_after: dict[bytes, tuple[int, int]] = {}
            label_mem: dict[bytes, tuple[int, int]] = {}
        else:
            mem_after, label_mem, labels = snap.mem, snap.label_mem, snap.labels
            mem_after.update(new_mem)
            label_mem.update(new_labels)
        self._snap = Snapshot(
            snap.header, end, info, cframe.chain, merkle, seq + 1, segments, mem_after, kinds, records, since + 1,
            checkpoint=ckpt, keyset=keyset_at, labels=labels, label_mem=label_mem, blobs=blobs,
        )
        if self._roots_next is not None:
            self._roots, self._roots_next = self._roots_next, None  # computed for the checkpoint
        elif self._roots is not None:
            self._roots.add(list(new_mem))
        self._state_root = None
        return info

    def _recover(self) -> None:
        """8.3: drop a torn tail, durably, and say so in a RECOVERY frame."""
        assert isinstance(self._h, WriteHandle)
        torn = self._snap.torn
        if torn is None:
            return
        dropped = self._h.pread(torn[0], torn[1])
        self._h.truncate(torn[0])
        self._h.sync()
        self._pending_recovery = [(C.FT_RECOVERY, encode_recovery(torn[0], dropped))]
        self._snap.torn = None


class Transaction:
    """A group of records that commit together (one COMMIT, one fsync)."""

    def __init__(self, cap: Capsule) -> None:
        self._cap = cap
        self._items: dict[bytes, tuple[bytes, str, bytes]] = {}
        self.info: CommitInfo | None = None
        self.new_ids: list[str] = []  # after exit: ids actually written (not already committed)
        self._checkpoint: tuple[str, Any, bytes | None] | None = None
        self.checkpoint_frame: CheckpointFrame | None = None
        self._vconfig: VectorParams | None = None  # a vindex record this commit adds
        self._vectors = 0

    def __enter__(self) -> Transaction:
        self._cap._tx_open = True
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self._cap._tx_open = False
        if et is not None:
            return  # nothing was written: the batch is discarded
        self.info = self._flush()
        cap = self._cap
        s = cap._searcher() if self._vectors else cap._search
        if self.info is not None and s is not None:
            if self._vconfig is not None and s.params is None:
                s.params = self._vconfig
            s.pending_vectors += self._vectors
            if s.vi is not None and s.pending_vectors >= max(SNAPSHOT_EVERY, s.snapshot_count):
                try:
                    s.vectors()  # 16.3: catch up and snapshot at the threshold
                    cap._write_snapshot()
                except (CapsuleError, OSError) as e:
                    # The commit above is durable; only the optional snapshot failed (an
                    # I/O error also poisons the writer, so the next commit says so).
                    cap.close_error = e.with_traceback(None)

    def __len__(self) -> int:
        return len(self._items)

    def _flush(self) -> CommitInfo | None:
        cap = self._cap
        if isinstance(cap._h, WriteHandle):
            cap._h._check()
        items = list(self._items.values())
        if items:
            # Content addressing: a record already committed is not written again.
            ids = [it[0] for it in items]
            dup = np.zeros(len(ids), dtype=bool)
            if cap._snap.segments and len(ids) <= 16:
                # a few scalar lookups beat the vectorised path's setup cost
                for j, rid in enumerate(ids):
                    dup[j] = any(seg.find(rid) is not None for seg in cap._snap.segments)
            elif cap._snap.segments:
                prefixes = np.frombuffer(b"".join(r[:8] for r in ids), dtype=">u8").astype(np.uint64)
                for seg in cap._snap.segments:
                    seg.verify()
                    dup |= seg.contains_many(prefixes, ids)
            mem = cap._snap.mem
            dup |= np.array([it[0] in mem for it in items], dtype=bool)
            if dup.any() and "revert" in cap._snap.kinds:
                # A record a rollback dropped is live again only through a restore event.
                dead = cap._dead_ids()
                again = sorted(it[0] for it, d in zip(items, dup, strict=True) if d and it[0] in dead)
                if again:
                    rev = cap._kind("revert").build(time=cap.clock(), after=bytes.fromhex(cap.root), restore=again)
                    rid, data = encode_record(rev)
                    items.append((rid, "revert", data))
                    dup = np.append(dup, False)
            items = [it for it, d in zip(items, dup, strict=True) if not d]
        if self._checkpoint is not None:
            label, key, runtime = self._checkpoint
            try:
                after = cap._checkpoint_frames(label, key, runtime, items)
                info = cap._write_commit(items, after=after, force_index=cap._index_due_for_checkpoint())
            finally:
                cap._roots_next = None
            self.new_ids = [it[0].hex() for it in items]
            assert cap._snap.checkpoint is not None
            self.checkpoint_frame = cap._read_checkpoint(cap._snap.checkpoint[0])
            return info
        if not items:
            return None
        info = cap._write_commit(items)
        self.new_ids = [it[0].hex() for it in items]
        return info

    def checkpoint(self, label: str, *, key: Any, runtime_state: bytes | None = None) -> None:
        """Sign a checkpoint of the state *including this commit's records*, written
        in the same commit (one fsync for the whole agent step)."""
        if self._checkpoint is not None:
            raise UsageError("one checkpoint per commit")
        self._checkpoint = (label, key, runtime_state)

    def _vector_config(self, dim: int, want: VectorParams | None = None) -> None:
        """16.1: the first embedding fixes the index; later ones must match it."""
        have = self._vconfig or self._cap._searcher().config()
        if have is None:
            base = want or self._cap._vector_defaults
            if base is None:
                # 16.1: no vindex record needed; the defaults and this dimension govern.
                self._vconfig = VectorParams(dim=dim)
                return
            have = VectorParams(base.space, dim, base.M, base.ef_construction, base.seed, base.embedder)
            cfg = self._cap._kind("vindex").build(time=self._cap.clock(), dim=dim, space=have.space, M=have.M,
                                                  ef_construction=have.ef_construction, seed=have.seed,
                                                  embedder=have.embedder)
            rid, data = encode_record(cfg)
            self._items.setdefault(rid, (rid, "vindex", data))
            self._vconfig = have
        elif have.dim != dim:
            raise InvalidRecordError(f"embedding has dimension {dim}, but this capsule's vectors have {have.dim} "
                                     f"(fixed by its first embedding)")

    def put(self, record: Any) -> str:
        """Add a record object (e.g. :class:`Memory`); returns its content id (hex)."""
        emb = getattr(record, "embedding", None) if getattr(record, "kind", None) == "memory" else None
        if emb is not None:
            self._vector_config(len(emb))
            self._vectors += 1
        rid, data = encode_record(record)
        self._items.setdefault(rid, (rid, record.kind, data))
        return rid.hex()

    def remember(
        self,
        text: str,
        *,
        tags: Any = (),
        meta: Mapping[str, Any] | None = None,
        embedding: Any = None,
        tier: str = "working",
        ttl: int | None = None,
        source: str | None = None,
        time: int | None = None,
    ) -> str:
        """Add a memory; returns its content id (hex).

        ``time`` (int ns) defaults to the capsule's clock; ``embedding`` is any
        1-D sequence of floats and is stored as little-endian float32.
        """
        value = memory_value(text, time=self._cap.clock() if time is None else time, tags=tags, meta=meta,
                             embedding=embedding, tier=tier, ttl=ttl, source=source)
        if "embedding" in value:
            self._vector_config(value["embedding"]["shape"][0])
            self._vectors += 1
        rid, data = encode_value("memory", value)
        self._items.setdefault(rid, (rid, "memory", data))
        return rid.hex()

    def _put_kind(self, kind: str, **kw: Any) -> str:
        from ..format.records import _REGISTRY

        time = kw.pop("time", None)
        rec = _REGISTRY[kind].build(time=self._cap.clock() if time is None else time, **kw)
        return self.put(rec)

    def decide(self, summary: str, *, rationale: str = "", evidence: Any = (), inputs: Mapping[str, Any] | None = None,
               alternatives: Any = (), time: int | None = None) -> str:
        """Record an immutable decision and the evidence (record ids) behind it."""
        return self._put_kind("decision", summary=summary, rationale=rationale, evidence=evidence, inputs=inputs,
                              alternatives=alternatives, time=time)

    def constrain(self, text: str, *, scope: str = "global", status: str = "active", time: int | None = None) -> str:
        """Add (or, with ``status="revoked"``, lift) a rule for ``scope``."""
        return self._put_kind("constraint", text=text, scope=scope, status=status, time=time)

    def approve(self, subject: str | bytes, key: Any, *, time: int | None = None) -> str:
        """Sign approval of the record ``subject`` with a :class:`capsule.PrivateKey`."""
        from ..state.kinds import approval_message, parse_id

        sid = parse_id(subject, "subject")
        sig = key.sign(approval_message(sid))
        return self._put_kind("approval", subject=sid, approver=key.key_id, signature=sig, time=time)

    def set_identity(self, agent_id: str, *, name: str = "", model: str = "", config: Mapping[str, Any] | None = None,
                     keys: Any = (), time: int | None = None) -> str:
        """Record who the agent is now; identity history is the chain of these records."""
        raw = [k.raw if hasattr(k, "raw") else k for k in keys]
        return self._put_kind("identity", agent_id=agent_id, name=name, model=model, config=config, keys=raw,
                              time=time)

    def note(self, text: str, *, time: int | None = None) -> str:
        """A free-text note (task progress and the like)."""
        return self._put_kind("note", text=text, time=time)

    def put_value(self, obj: Mapping[str, Any]) -> str:
        """Add a record given as a JSON-like map (a JSONL line); ``kind`` defaults to memory."""
        if not isinstance(obj, Mapping):
            raise InvalidRecordError("a record must be a JSON object")
        try:
            rec = record_from_input(obj, time=self._cap.clock())
        except TypeError as e:
            raise InvalidRecordError(f"missing or bad field: {e}") from e
        return self.put(rec)


def _parse_id(v: object) -> bytes:
    from ..state.kinds import parse_id

    try:
        return parse_id(v, "record id")
    except InvalidRecordError:
        raise NotFound(f"{v!r} is not a record id (64 hex digits)") from None


# --- entry points ------------------------------------------------------------------


def create(path: str | Path, *, clock: Clock | None = None, file_id: bytes | None = None,
           exist_ok: bool = False, lineage: bytes | None = None) -> Capsule:
    """Create a new, empty capsule and open it for writing.

    With ``SOURCE_DATE_EPOCH`` set (and no explicit ``file_id``/``clock``) the
    file id and every timestamp are fixed, so the same operations give
    byte-identical files wherever they run (2.5).
    """
    p = Path(path)
    if exist_ok and p.exists():
        return open(p, "a", clock=clock)
    clock = clock or default_clock()
    if file_id is None:
        file_id = new_file_id(source_date_epoch())
    if len(file_id) != 16:
        raise UsageError("file_id must be 16 bytes")
    if not p.parent.exists():
        raise UsageError(f"{p.parent}: no such directory")
    try:
        h = WriteHandle(p, create=True)
    except FileExistsError:
        raise AlreadyExists(f"{p}: already exists") from None
    try:
        header = FileHeader(file_id)
        hb = header.encode()
        h.append_at(0, hb)
        snap = Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0)
        cap = Capsule(p, h, snap, "a", clock)
        cap._write_commit([], extra=[(C.FT_LINEAGE, lineage)] if lineage is not None else [])
        fsync_dir(p)
    except BaseException:
        h.close()
        p.unlink(missing_ok=True)
        raise
    return cap


def open(path: str | Path, mode: Mode = "r", *, clock: Clock | None = None, at: str | int | None = None) -> Capsule:  # noqa: A001
    """Open a capsule: ``"r"`` a lock-free read-only snapshot, ``"a"`` the single writer.

    ``at`` opens a read-only view as of an earlier commit (see :meth:`Capsule.resolve`).
    A writer that finds a torn tail truncates it durably and records a
    RECOVERY frame with its first commit (8.3). Damage before the last commit
    raises :class:`CorruptError` and is never repaired.
    """
    if mode not in ("r", "a"):
        raise UsageError(f"mode must be 'r' or 'a', not {mode!r}")
    if at is not None:
        if mode != "r":
            raise UsageError("a view (at=...) is read-only; open it with mode 'r'")
        with open(path, "r", clock=clock) as cap:
            return cap.view(at)
    p = Path(path)
    if p.exists() and not p.is_file() and not p.is_dir():
        raise UsageError(f"{p}: not a regular file")
    # A reader never writes a timestamp, so it never needs SOURCE_DATE_EPOCH.
    clock = clock or (default_clock() if mode == "a" else time_ns)
    h: ReadHandle = WriteHandle(p) if mode == "a" else ReadHandle(p)
    try:
        snap = _load_stable(h, strict=mode == "a")
        if mode == "a":
            for seg in [*snap.segments, *snap.labels]:
                seg.verify()  # a writer must not build on damaged index tables (8.2)
        cap = Capsule(p, h, snap, mode, clock)
    except BaseException:
        h.close()
        raise
    return cap


def fork(path: str | Path, out: str | Path, *, at: str | int | None = None, clock: Clock | None = None) -> Capsule:
    """Write a new capsule holding the live state of ``path`` (at ``at``, default
    now), whose first commit starts with a LINEAGE frame naming the parent and
    the fork point (spec 15). Returns the new capsule open for writing."""
    from ..format.checkpoint import Lineage
    from ..state.fold import live_records

    with open(path, "r") as src:
        if src._snap.commit is None:
            raise UsageError(f"{path}: has no commit to fork from")
        view = src.view(at if at is not None else src._snap.commit)
    with view:
        c = view._snap.commit
        if c is None:
            raise UsageError(f"{path}: has no commit to fork from")
        lin = Lineage(view._snap.header.file_id, c.root, c.seq, c.chain,
                      view._snap.checkpoint[1] if view._snap.checkpoint else None)
        recs = live_records(view.records())
    new = create(out, clock=clock, lineage=canon.pack(lin.to_value()))
    try:
        items = []
        for rec in recs:
            rid, data = encode_record(rec)
            items.append((rid, rec.kind, data))
        if items:
            new._write_commit(items)
    except BaseException:
        new.close()
        raise
    return new


def _load_stable(h: ReadHandle, *, strict: bool = True) -> Snapshot:
    """Load; a reader that raced a writer's append retries on a steady size."""
    for _ in range(20):
        size = h.size()
        try:
            snap = load(h, size, strict=strict)
        except CorruptError:
            if h.size() != size:
                continue
            raise
        return snap
    return load(h, h.size(), strict=strict)


__all__ = ["Capsule", "Transaction", "CommitRow", "Summary", "create", "fork", "open", "replay"]
