"""The Capsule handle: a facade over the store and the parts of each layer (spec 6-9).

One writer at a time holds an exclusive lock; any number of readers open lock-free
and each sees the snapshot fixed at the last commit it observed. The handle keeps
the open file, the snapshot and the writer (a :class:`~capsule.format.store.Store`)
and delegates: record reads and commits to ``format``, checkpoints, keys, views and
rollback to ``state``, search to ``search``, actions and tasks to ``run``.

A handle may be shared by threads: ``handle.locking`` says how.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.clock import Clock, iso
from ..core.errors import (
    CapsuleError,
    InvalidRecordError,
    NotFound,
    ReadOnlyError,
    UsageError,
)
from ..core.lazy import lazy
from ..format.checkpoint import CheckpointFrame, KeysetFrame, encode_keyset
from ..format.commit import CommitInfo
from ..format.file import ReadHandle, WriteHandle
from ..format.keys import PrivateKey
from ..format.records import _REGISTRY
from ..format.scan import Snapshot, replay
from ..format.signing import Keyset, rotate
from ..format.store import CommitRow, Mode, Store
from ..format.writer import Build, Item, item_ids, write_commit
from ..questions._lifecycle import inherit, redacted, scrub, scrub_state
from ..run.actions import ActionHandle, ActionState, Journal
from ..run.tasks import Tasks
from ..state import checkpoints as ck
from ..state import validtime as vt
from ..state.carried import CarriedCheckpoint, carried_checkpoints
from ..state.fold import State, fold_store
from ..state.history import resolve as resolve_at
from ..state.kinds import parse_id
from .compacting import CompactMethods
from .encrypting import reopen
from .lifecycle import check_purged, check_readable
from .locking import track
from .questions import QuestionMethods
from .rollback import rollback_to
from .searching import SearchMethods
from .summary import Summary
from .transaction import Transaction

if TYPE_CHECKING:
    import numpy as np

    from ..search.part import SearchPart
else:
    np = lazy("numpy")


class Capsule(SearchMethods, QuestionMethods, CompactMethods):
    """An open capsule. Use :func:`capsule.open` or :func:`capsule.create`.

    Threads: a handle may be shared. Commits from several threads are
    serialised (a ``with cap.commit()`` block holds the handle's lock until it
    exits; another thread's commit waits, the same thread nesting one gets
    :class:`UsageError`); ``run_once`` with one key runs the effect once and every
    caller gets the stored result, while different keys run side by side; reads
    and searches may run during commits. A writer belongs to the process that
    opened it: after ``os.fork()`` the child may read but every write raises
    :class:`UsageError`; the child opens its own handle to write.

    >>> import capsule
    >>> with capsule.create("agent.capsule") as cap:
    ...     with cap.commit() as tx:
    ...         rid = tx.remember("the build server is ci-7", tags=["infra"])
    ...     cap.get(rid).text
    'the build server is ci-7'

    The method examples run in an empty folder with ``cap = capsule.create("example.capsule")``
    (open for writing) and ``key = capsule.generate_key()`` (tests/test_doctests.py).
    """

    def __init__(self, path: Path, handle: ReadHandle, snap: Snapshot, mode: Mode, clock: Clock) -> None:
        self._store = Store(path, handle, snap, mode, clock)
        self._roots = ck.StateRoots(self._store)
        self._search_part: SearchPart | None = None  # made on first use (start-up: `_search`)
        self._init_locks()
        self._tx_owner: int | None = None  # the thread whose ``with cap.commit()`` block is open
        #: set when close() could not write its optional final INDEX (disk full...):
        #: every acknowledged commit is still durable, the next open is just slower.
        self.close_error: BaseException | None = None
        self._journal = Journal(self)
        self._tasks = Tasks(self)
        track(self)

    def _init_locks(self) -> None:
        """The writer's lock, the view lock (``handle.locking``), and the condition
        the action journal waits on for a key another thread owns."""
        self._lock = threading.RLock()
        self._view_lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._compacting = False  # an in-place compaction of this handle is running (its thread)

    @property
    def _search(self) -> SearchPart:
        """The search side, made on first use (opening to read loads no search engine)."""
        if self._search_part is None:
            from ..search.part import SearchPart

            with self._view_lock:
                self._search_part = self._search_part or SearchPart(self._store, lambda b: self._write_commit([], blob=b))
        return self._search_part

    def _after_fork(self) -> None:
        """In a fork child: fresh locks; the parent's threads own no commit or key here."""
        self._init_locks()
        self._tx_owner = None
        self._store.reinit_after_fork()
        self._journal.after_fork()

    # --- what the store holds (kept as attributes for the layers that read them) -----
    @property
    def path(self) -> Path:
        return self._store.path

    @path.setter
    def path(self, value: Path) -> None:  # a plain attribute before the facade: keep it settable
        self._store.path = value

    @property
    def mode(self) -> Mode:
        return self._store.mode

    @mode.setter
    def mode(self, value: Mode) -> None:  # a plain attribute before the facade: keep it settable
        self._store.mode = value

    @property
    def clock(self) -> Clock:
        return self._store.clock

    @clock.setter
    def clock(self, value: Clock) -> None:  # a plain attribute before the facade: keep it settable
        self._store.clock = value

    @property
    def _h(self) -> ReadHandle:
        return self._store.h

    @property
    def _snap(self) -> Snapshot:
        return self._store.snap

    # --- lifecycle -------------------------------------------------------------
    def __enter__(self) -> Capsule:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Write a final INDEX (writers) so the next open is fast, then release.

        Waits for a commit open in another thread, and (up to 30 s) for the results of ``run_once``
        effects running in other threads. In a fork child of the writer it only drops the child's
        descriptor: nothing is written, and the lock stays the parent's."""
        st = self._store
        if isinstance(st.h, WriteHandle) and st.h.forked:
            st.h.close()
            return
        # 7.8: the results of effects in flight in other threads land first, then the close, in one
        # hold of the lock; new effects are not held back (one may wait on one it started elsewhere)
        with self._lock, self._cv:  # (the Condition is on this lock)
            if self.mode == "a" and not st.closed:
                self._journal.drain("close", 30.0, strict=False, gate=False)
            self._close_locked(st)

    def _close_locked(self, st: Any) -> None:
        with self._view_lock:
            if st.closed:
                return
            try:
                writer = st.mode == "a" and isinstance(st.h, WriteHandle) and st.h.poisoned is None
                if writer:
                    try:
                        part = self._search_part
                        if part is None and st.committed:  # 16.8: what it added may need a lexical snapshot
                            from ..search.catalog import lexical_due

                            part = self._search if lexical_due(st, 1) else None  # no numpy: counts, one header
                        if part is not None:  # nothing was searched or indexed otherwise
                            part.on_close()
                    except (CapsuleError, OSError) as e:
                        self.close_error = e.with_traceback(None)
                if (writer and st.committed and self.close_error is None
                        and (len(st.snap.mem) >= C.INDEX_ON_CLOSE_RECORDS
                             or st.snap.frames_since_index >= C.INDEX_ON_CLOSE_FRAMES)):
                    # Best effort: the index only speeds up the next open. Every commit
                    # acknowledged so far is durable, so a failure here (disk full) must
                    # not surface as if they had failed.
                    try:
                        self._write_commit([], force_index=True)
                    except (CapsuleError, OSError) as e:
                        self.close_error = e.with_traceback(None)
            finally:
                st.h.close()

    @property
    def closed(self) -> bool:
        return self._store.closed

    def _check_open(self) -> None:
        self._store.check_open()

    # --- reading ---------------------------------------------------------------
    @property
    def file_id(self) -> str:
        return self._snap.header.file_id.hex()

    @property
    def encrypted(self) -> bool:  # spec 10: the contents are sealed (this handle opened them with a key)
        return self._snap.header.encrypted

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
        return self._store.root

    def __len__(self) -> int:
        return self._snap.records

    def kinds(self) -> dict[str, int]:
        return dict(sorted(self._snap.kinds.items()))

    def __contains__(self, rid: object) -> bool:
        try:
            return self._store.locate(_parse_id(rid)) is not None
        except (ValueError, TypeError):
            return False

    def get(self, record_id: str | bytes) -> Any:
        """The record with this content id (hex, or any unique prefix of >= 4 hex digits),
        checked against its id. :class:`NotFound` if none, :class:`UsageError` if ambiguous.

        >>> with cap.commit() as tx: rid = tx.remember("the build server is ci-7")
        >>> cap.get(rid[:8]).text, cap.get(rid).id == rid
        ('the build server is ci-7', True)
        """
        self._check_open()
        try:
            rid = self._store.resolve_prefix(record_id) if isinstance(record_id, str) else _parse_id(record_id)
        except NotFound:  # an id (or a prefix) whose bytes a compaction purged: its redact event
            check_purged(self._store, record_id)  # still says when, who and why (15.1)
            raise
        check_purged(self._store, record_id, rid)  # a purged id with the prefix too: ambiguous
        check_readable(self._store, rid)  # 7.7.1: a redacted payload is never returned (Redacted)
        rec = self._store.get(rid)
        if rec is None:
            raise NotFound(f"no record {rid.hex()}")
        return rec

    def records(self, kind: str | None = None, *, valid_at: int | str | None = None) -> Iterator[Any]:
        """Every committed record in commit order, each checked on the way: typed objects
        (:class:`Memory`, :class:`Decision`, ...), each with ``.id`` and ``.to_dict()``.
        ``valid_at`` (int ns or ISO-8601): only the memories of the valid-time view (13.6).
        A redacted record (7.7.1) comes as a ``RedactedRecord``: id, kind, ``redacted=True``.

        >>> with cap.commit() as tx: _ = tx.remember("one"), tx.note("two")
        >>> [(r.kind, r.text) for r in cap.records()]
        [('memory', 'one'), ('note', 'two')]
        """
        recs = self._store.records(kind) if valid_at is None else vt.records_at(self._store, kind, valid_at)
        return scrub(recs, redacted(self._store))

    def all_ids(self) -> np.ndarray:
        """Sorted content ids of every committed record (``S32`` array)."""
        return self._store.all_ids()

    @property
    def state_root(self) -> str:
        """13.1: the hash over the sorted ids of the live records (hex)."""
        with self._view_lock:
            return self._roots.root()

    def summary(self) -> Summary:
        """What ``capsule open`` prints. ``cap.summary().records`` -> ``0`` on a new capsule.

        >>> cap.summary().to_dict()["records_by_kind"]
        {}
        """
        with self._view_lock:  # one snapshot for every field
            snap, root = self._snap, self.state_root
        c = snap.commit
        h = snap.header
        return Summary(str(self.path), h.file_id.hex(), f"{h.major}.{h.minor}", snap.commits, snap.records,
                       dict(sorted(snap.kinds.items())), snap.end, root, iso(c.time) if c else None,
                       snap.torn[1] if snap.torn else 0)

    def log(self, limit: int | None = None) -> list[CommitRow]:
        """Every commit, oldest first, by walking the COMMIT back-pointers (``limit``: the newest only).

        >>> with cap.commit() as tx: _ = tx.remember("x")
        >>> [row.records for row in cap.log()]  # create() writes an empty first commit
        [0, 1]
        """
        return self._store.log(limit)

    def state(self, *, valid_at: int | str | None = None) -> State:
        """The agent's state at this snapshot: a pure fold over its records (13); with
        ``valid_at`` (int ns or ISO-8601) its memories are the valid-time view's (13.6).

        Its ``to_dict()`` is the ``capsule state --json`` document, and its memories,
        decisions and notes are that document's dicts (whole ids, times as ISO-8601), not
        the typed objects of :meth:`records`: ``cap.get(d["id"])`` gives the object.

        >>> with cap.commit() as tx: d = tx.decide("ship", evidence=[tx.remember("tests pass")])
        >>> [doc] = cap.state().decisions
        >>> doc["id"] == d, cap.get(doc["id"]).summary, cap.get(doc["evidence"][0]).text
        (True, 'ship', 'tests pass')
        """
        st = fold_store(self._store) if valid_at is None else vt.fold_at(self._store, valid_at)
        st = ck.vouch_approvals(self._store, st)  # 7.4: the keyset in force
        return scrub_state(st, redacted(self._store))  # a view from before a redaction: no payload

    # --- checkpoints and keys (14.9) ---------------------------------------------
    def checkpoints(self, limit: int | None = None) -> list[CheckpointFrame]:
        """Every checkpoint up to this snapshot, oldest first (walks the prev pointers; ``limit``: the newest only).

        >>> _ = cap.checkpoint("day-1", key=key), cap.checkpoint("day-2", key=key)
        >>> [c.label for c in cap.checkpoints()]
        ['day-1', 'day-2']
        """
        return ck.checkpoints(self._store, limit)

    def carried_checkpoints(self) -> list[CarriedCheckpoint]:
        """The parent's signed checkpoints a fork or a compacted file carries (15.2), oldest
        first: not in :meth:`checkpoints` (the parent signed them), but their labels name
        views and rollback targets as the file's own do (own labels win)."""
        return carried_checkpoints(self._store)

    def find_checkpoint(self, label: str) -> CheckpointFrame | None:
        """The newest checkpoint with this label, or None: one table lookup (14.9).

        >>> _ = cap.checkpoint("day-1", key=key)
        >>> cap.find_checkpoint("day-1").label, cap.find_checkpoint("day-9")
        ('day-1', None)
        """
        return ck.find_checkpoint(self._store, label)

    def commit_of(self, checkpoint: CheckpointFrame) -> CommitInfo:
        """The commit that made a checkpoint durable."""
        return ck.commit_of(self._store, checkpoint)

    def keysets(self) -> list[KeysetFrame]:
        """The keyset history, oldest first: the first keyset, then each rotation."""
        return ck.keysets(self._store)

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

        >>> c = cap.checkpoint("day-1", key=key, runtime_state=b"cursor=7")
        >>> c.label, c.state_root == cap.state_root, c.signers == (key.key_id,)
        ('day-1', True, True)
        """
        self._check_writer()
        with self._lock:
            return self._commit_checkpoint([], label, key, runtime_state)

    def _commit_checkpoint(self, items: Sequence[Item], label: str, key: Any, runtime: bytes | None) -> CheckpointFrame:
        with self._lock, self._view_lock:  # the root computed is the root written
            try:
                after = ck.checkpoint_frames(self._store, label, key, runtime, self._roots.root_with(items))
                self._write_commit(items, after=after, force_index=ck.index_due_for_checkpoint(self._store))
            finally:
                self._roots.abandon()
            assert self._snap.checkpoint is not None
            return ck.read_checkpoint(self._store, self._snap.checkpoint[0])

    def rotate_keys(self, new: Keyset, *, old_signers: Sequence[PrivateKey], new_signers: Sequence[PrivateKey],
                    ) -> KeysetFrame:
        """Replace the keyset; accepted only with a threshold of the old keys and of
        the new keys (each counted once). Keys left out of ``new`` are revoked."""
        self._check_writer()
        with self._lock:  # the keyset rotated from is the one in force when it is written
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
        ``rollback-to-<label>``. ``to`` may name a checkpoint the parent signed that a fork or
        a compacted file carries (:meth:`carried_checkpoints`). Returns the revert record's id, or None when the
        live state already equals the checkpoint's (nothing is written). A record redacted since
        is not restored (7.7.1): the state (and root) then differ from the checkpoint's by it.

        >>> _ = cap.checkpoint("clean", key=key)
        >>> with cap.commit() as tx: _ = tx.remember("a mistake")
        >>> _ = cap.rollback("clean"); len(cap.state().memories["working"]), len(cap.log())
        (0, 4)
        """
        self._check_writer()
        with self._lock:  # the live set read is the one the revert is written against
            return rollback_to(self, to, key)

    # --- durable tasks (7.9) ------------------------------------------------------
    @property
    def tasks(self) -> Tasks:
        """The durable task queue: ``cap.tasks.add/due/claim/complete/fail/cancel``.
        Everything is computed from committed task records and the injected clock.

        >>> cap.tasks.add("fetch"), [t.id for t in cap.tasks.due()]
        ('fetch', ['fetch'])
        """
        return self._tasks

    # --- idempotent actions (7.8) ----------------------------------------------
    @property
    def _actions(self) -> Journal:
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

        Threads: callers with the same key wait for the one running it and get
        its stored result; other keys run side by side (the handle's lock is held
        only while journal records are written, not while ``fn`` runs).

        >>> cap.run_once("email:42", lambda: {"sent": 1})
        {'sent': 1}
        >>> cap.run_once("email:42", lambda: {"sent": 2})  # done: the stored result; fn is not called
        {'sent': 1}
        """
        self._check_writer()
        return self._actions.run_once(key, fn, reconcile=reconcile, policy=policy, what=what, inputs=inputs)

    def action(self, key: str, *, reconcile: Callable[[str], Any] | None = None, policy: str = "at-most-once",
               what: str = "", inputs: Mapping[str, Any] | None = None) -> ActionHandle:
        """``with cap.action(key) as a: if not a.done: a.complete(send(...))``.

        Until ``complete`` or the end of the ``with`` block the handle owns ``key``:
        another thread asking for it waits."""
        self._check_writer()
        return self._actions.begin(key, what=what, inputs=inputs, reconcile=reconcile, policy=policy)

    def actions(self, *, in_doubt: bool = False) -> list[ActionState]:
        """Every action key's state, in key order (``in_doubt``: only those in doubt, read from the journal's doubt lists).

        >>> _ = cap.run_once("email:42", lambda: "sent")
        >>> [(a.key, a.status) for a in cap.actions()], cap.actions(in_doubt=True)
        ([('email:42', 'done')], [])
        """
        with self._lock:
            return self._actions.in_doubt() if in_doubt else [st for _, st in sorted(self._actions.states().items())]

    def resolve_action(self, key: str, *, done: bool, value: Any = None) -> ActionState:
        """Settle an in-doubt action by hand: it happened (``done=True``) or not."""
        self._check_writer()
        return self._actions.resolve(key, done=done, value=value)

    @staticmethod
    def _kind(name: str) -> Any:
        return _REGISTRY[name]

    def _check_writer(self) -> None:
        """Refuse a write this caller may not make; checked before taking any lock."""
        self._check_open()
        if self.mode != "a":
            raise ReadOnlyError(f"{self.path}: opened read-only; open with mode='a' to write")
        if isinstance(self._h, WriteHandle):
            self._h.check_owner()  # a fork child may not write through its parent's writer
        if self._tx_owner == threading.get_ident():
            raise UsageError("a commit is open on this capsule (in this thread): write inside it, or after it")

    # --- views ------------------------------------------------------------------------
    def resolve(self, at: str | int) -> CommitInfo:
        """Find the commit a view names (6.5): a checkpoint label, a commit seq (as
        ``log`` shows it), a hex prefix of a commit root (>= 4 digits), or an
        ISO-8601 time (the last commit at or before it)."""
        return resolve_at(self._store, at)

    def view(self, at: str | int | CommitInfo) -> Capsule:
        """A read-only capsule fixed at an earlier commit (time travel, audit).

        >>> _ = cap.checkpoint("before", key=key)
        >>> with cap.commit() as tx: _ = tx.remember("later")
        >>> with cap.view("before") as then: len(then), len(cap)
        (0, 1)
        """
        c = at if isinstance(at, CommitInfo) else self.resolve(at)
        h = reopen(self.path, self._h)  # 10: the view reads with this handle's key
        try:
            snap = replay(h, self._snap.header, c, strict=False)
        except BaseException:
            h.close()
            raise
        v = Capsule(self.path, h, snap, "r", self.clock)
        v._store.pinned = True
        inherit(v._store, self._store)  # 7.7.1: what is redacted now stays hidden in the past
        return v

    def refresh(self) -> bool:
        """Readers: move the snapshot to the newest commit. True if it moved."""
        with self._view_lock:
            moved = self._store.refresh()
            if moved:
                self._roots.reset()
            return moved

    # --- writing ---------------------------------------------------------------
    def commit(self) -> Transaction:
        """Start a group commit: every record added in the block lands in one
        atomic commit with one fsync when the block exits without error.

        The block holds the handle's lock from entry to exit: a commit from
        another thread waits for it; one from the same thread is an error.

        >>> with cap.commit() as tx:
        ...     ids = [tx.remember("a"), tx.remember("b")]
        >>> len(cap), cap.commit_count, len(tx.new_ids)
        (2, 2, 2)
        """
        self._check_open()
        if self.mode != "a":
            raise ReadOnlyError(f"{self.path}: opened read-only; open with mode='a' to write")
        if self._tx_owner == threading.get_ident():
            raise UsageError("a commit is already open on this capsule (in this thread)")
        if isinstance(self._h, WriteHandle):
            self._h._check()  # a fork child, or a poisoned writer, refuses every commit, even an empty one
        return Transaction(self)

    def _write_commit(self, items: Sequence[Item], *, force_index: bool = False,
                      extra: Sequence[tuple[int, bytes]] = (), after: Sequence[tuple[int, Build]] = (),
                      blob: tuple[str, Any] | None = None, defer_index: bool = False) -> CommitInfo:
        """One durable commit; the state root and the journal (18) follow it under the writer's guard."""
        if self._compacting:  # a compaction's own thread (its progress callback): the rename would lose it
            raise UsageError("the capsule is being compacted in place: write after compact returns")
        def published() -> None:
            self._roots.committed(item_ids(items))
            self._journal.index.committed(items)  # it folds its records and adopts its new head
        with self._lock, self._view_lock:  # searches and state_root see the snapshot and root move together
            return write_commit(self._store, items, force_index=force_index, extra=extra, after=after, blob=blob,
                                at_index=lambda: self._journal.index.blobs_at_index(items), published=published,
                                vectors=lambda: self._search.searcher().index_value(items), defer_index=defer_index)


def _parse_id(v: object) -> bytes:
    try:
        return parse_id(v, "record id")
    except InvalidRecordError:
        raise NotFound(f"{v!r} is not a record id (64 hex digits)") from None


__all__ = ["Capsule", "CommitRow", "Summary"]
