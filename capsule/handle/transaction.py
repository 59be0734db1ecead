"""A group commit: records gathered in a ``with cap.commit() as tx`` block (spec 6.4).

Records are encoded and content-addressed as they are added, and kept compactly
in a :class:`~capsule.format.batch.RecordBatch` (no Python object per record, so
a commit of a million records costs tens of MB, not a GB); on a clean exit the
first of each id not already in the file is written in one commit with one
fsync (a checkpoint asked for in the block joins the same commit). An exception
in the block discards the batch: nothing is written. :meth:`Transaction.put_many`
is the bulk path that ``put --jsonl`` and ``pack`` share (``format.bulk``).

Entering the block takes the handle's writer lock and leaving it releases it,
so a commit from another thread waits for this one (see ``handle.locking``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..core.errors import InvalidRecordError, UsageError
from ..core.lazy import lazy
from ..format.batch import IdList, RecordBatch
from ..format.checkpoint import CheckpointFrame
from ..format.commit import CommitInfo
from ..format.file import WriteHandle
from ..format.records import (
    _REGISTRY,
    encode_record,
    encode_value,
    memory_value,
    parse_iso_time,
    parse_when,
    record_id,
)
from ..questions._lifecycle import dead_ids, redacted
from ..search.vindex import VectorParams
from ..state.kinds import approval_message, parse_id
from .lifecycle import LifecycleMethods

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

if TYPE_CHECKING:
    from .capsule import Capsule

_TEXT_KINDS = frozenset({"memory", "note", "decision", "revert"})  # what the lexical catalog reads (16.4, 16.8)



_INPUTS = frozenset({dict, str, bytes, bytearray, memoryview})  # maps and JSON text: their kinds are checked later


def _not_own(records: Iterable[Any]) -> Iterator[Any]:
    """``records``, refusing a record object of a kind :meth:`Transaction.put` refuses (a map or
    a JSON line of such a kind is refused by the reference path: unknown kind)."""
    for obj in records:
        if type(obj) not in _INPUTS:
            own = _OWN_API.get(getattr(obj, "kind", None))  # type: ignore[arg-type]
            if own is not None:
                raise UsageError(f"{obj.kind} records are written by {own}, not put directly")
        yield obj

#: kinds :meth:`Transaction.put` refuses, with the API that writes them (7.7 - 7.10)
_OWN_API = {"action": "run_once or cap.action (7.8)", "task": "cap.tasks (7.9)",
            "revert": "forget, redact, supersede, promote, demote or rollback (7.7)",
            "vindex": "configure_vectors or the first embedding (7.10)"}

class Transaction(LifecycleMethods):
    """A group of records that commit together (one COMMIT, one fsync): ``with cap.commit() as tx``.

    Each ``tx`` method returns the new record's id (hex) at once; the records are written
    when the block exits without an exception, and an exception discards them all.

    >>> with cap.commit() as tx:
    ...     rid = tx.remember("the staging database is db-stg-2", tags=["ops"])
    ...     len(tx), rid in cap  # gathered, not written yet
    (1, False)
    >>> rid in cap, len(tx.new_ids)
    (True, 1)
    >>> try:
    ...     with cap.commit() as tx:
    ...         _ = tx.remember("half a step")
    ...         raise RuntimeError("the step failed")
    ... except RuntimeError:
    ...     len(cap)  # nothing of the failed block was written
    1
    """

    def __init__(self, cap: Capsule) -> None:
        self._cap = cap
        self._batch = RecordBatch()  # in the order added, duplicates and all (dropped at exit)
        self.info: CommitInfo | None = None
        self.new_ids = IdList()  # after exit: ids actually written (not already committed)
        self._checkpoint: tuple[str, Any, bytes | None] | None = None
        self.checkpoint_frame: CheckpointFrame | None = None
        self._vconfig: VectorParams | None = None  # a vindex record this commit adds
        self._vectors = 0
        self._fed: tuple[RecordBatch, int, int] | None = None  # written records for the lexical catalog (16.8)

    def __enter__(self) -> Transaction:
        cap = self._cap
        me = threading.get_ident()
        if cap._tx_owner == me:
            raise UsageError("a commit is already open on this capsule (in this thread)")
        cap._lock.acquire()  # another thread's open block: wait for it
        try:
            # While we waited, that thread may have closed the handle or poisoned the writer.
            cap._check_open()
            if isinstance(cap._h, WriteHandle):
                cap._h._check()
        except BaseException:
            cap._lock.release()
            raise
        cap._tx_owner = me
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        cap = self._cap
        cap._tx_owner = None
        self._batch.sealed = True  # done, written or not: a late record is refused, not silently lost
        try:
            if et is not None:
                return  # nothing was written: the batch is discarded
            self.info = self._flush()
            if self._fed is not None:
                self._fed[0].sealed = True  # what was written (the batch, or its first occurrences)
            if self.info is not None:
                with cap._view_lock:  # a handle that never searched and adds no vector or text: nothing to do
                    busy = self._vectors or self._vconfig is not None or cap._search_part is not None or self._fed
                    err = cap._search.committed(self._vectors, self._vconfig, self._fed) if busy else None
                    self._fed = None
                if err is not None:
                    cap.close_error = err
        finally:
            cap._lock.release()

    def __len__(self) -> int:
        """Distinct records gathered so far."""
        return int(self._batch.first_occurrences().sum())

    def _flush(self) -> CommitInfo | None:
        cap = self._cap
        snap = cap._snap
        if isinstance(cap._h, WriteHandle):
            cap._h._check()
        items = self._batch
        if len(items):
            reverts = "revert" in snap.kinds
            red = redacted(cap._store) if reverts else set()
            # Content addressing: the first of each id counts, and a record already
            # committed is not written again (7.0).
            keep = items.first_occurrences()
            first = items.select(keep)
            if red:
                # 7.7.1: a redacted id's bytes are not stored again, whether the file still holds
                # them (a re-add) or a compaction purged them (15.1: the redact event stays)
                hit = np.isin(np.frombuffer(bytes(first.ids), dtype="S32"), np.array(list(red), dtype="S32"))
                if hit.any():
                    raise UsageError(f"record {first.rid(int(np.flatnonzero(hit)[0])).hex()} was redacted: its "
                                     "bytes are not stored again (7.7.1)")
            dup = cap._store.present(first.id_seq(), snap)
            keep[np.flatnonzero(keep)[dup]] = False
            # A dropped record is live again only through a restore event (7.7): one still stored
            # is restored instead of stored again; one whose bytes a compaction purged (15.1: its
            # event stays) is stored and restored, so adding it means what it meant before. Dead at
            # the last commit (13.1, cached per snapshot end) or dropped by an earlier event of
            # this block: the restore stands before the next event that drops it (lifecycle.py).
            dead = dead_ids(cap._store) if reverts else set()
            if self._lc is not None:
                plan = self._lc.restores(items, dead, red)
            else:
                raw = bytes(items.ids)  # set lookups: O(batch), whatever the size of the dead set
                again = list(dict.fromkeys(r for i in range(0, len(raw), 32) if (r := raw[i : i + 32]) in dead))
                plan = [(len(items), again)] if again else []
            if plan:
                after, taken = bytes.fromhex(cap.root), set(items.id_seq())
                inserts = []
                for at, ids in plan:
                    t = cap.clock()
                    while True:  # two restores of one id (a fixed clock) are two records: a ns apart
                        rid, data = encode_record(_REGISTRY["revert"].build(time=t, after=after, restore=sorted(ids)))
                        if rid not in taken:
                            break
                        t += 1
                    taken.add(rid)
                    inserts.append((at, (rid, "revert", data)))
                items = items.spliced(keep, inserts)
            else:
                items = items.select(keep)
        start = snap.end
        if self._checkpoint is not None:
            label, key, runtime = self._checkpoint
            self.checkpoint_frame = cap._commit_checkpoint(items, label, key, runtime)
            self.new_ids = IdList(items.ids, copy=False)  # the batch is done: share its ids
            self._feed(items, start)
            return cap._snap.commit
        if not len(items):
            return None
        info = cap._write_commit(items)
        self.new_ids = IdList(items.ids, copy=False)
        self._feed(items, start)
        return info

    def _feed(self, items: RecordBatch, start: int) -> None:
        """16.8: the records just written, for the lexical catalog, which then need not read
        them back (exactly the records of the commit between ``start`` and the new end)."""
        if len(items) and _TEXT_KINDS.intersection(items.kinds):
            self._fed = (items, start, self._cap._snap.end)

    def checkpoint(self, label: str, *, key: Any, runtime_state: bytes | None = None) -> None:
        """Sign a checkpoint of the state *including this commit's records*, written
        in the same commit (one fsync for the whole agent step).

        >>> with cap.commit() as tx:
        ...     _ = tx.note("step 1 done")
        ...     tx.checkpoint("step-1", key=key)
        >>> tx.checkpoint_frame.label, tx.checkpoint_frame.state_root == cap.state_root, cap.commit_count
        ('step-1', True, 2)
        """
        self._batch.check_open()
        if self._checkpoint is not None:
            raise UsageError("one checkpoint per commit")
        self._checkpoint = (label, key, runtime_state)

    def _vector_config(self, dim: int, want: VectorParams | None = None) -> None:
        """16.1: the first embedding fixes the index; later ones must match it."""
        with self._cap._view_lock:
            params, rec = self._cap._search.params_for(dim, self._vconfig, want, self._cap.clock)
        if rec is not None:
            self._batch.add(*rec)
        if params is not None:
            self._vconfig = params

    def put(self, record: Any) -> str:
        """Add a record object (e.g. :class:`Memory`); returns its content id (hex). The kinds
        with an API of their own are refused here (spec 7.7-7.10): an action record written
        by hand would skip the policy gate (7.3.1) and could settle a key no effect ran for.

        >>> with cap.commit() as tx: rid = tx.put(capsule.Memory(text="a fact", time=0))
        >>> cap.get(rid) == capsule.Memory(text="a fact", time=0)
        True
        """
        own = _OWN_API.get(getattr(record, "kind", None))  # type: ignore[arg-type]
        if own is not None:
            raise UsageError(f"{record.kind} records are written by {own}, not put directly")
        return self._put(record)

    def _put(self, record: Any) -> str:
        """:meth:`put` for every kind: the journal, the scheduler and the tests that forge files."""
        emb = getattr(record, "embedding", None) if getattr(record, "kind", None) == "memory" else None
        if emb is not None:
            self._vector_config(len(emb))
            self._vectors += 1
        rid, data = encode_record(record)
        self._batch.add(rid, record.kind, data)
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
        time: int | str | None = None,
        valid_from: int | str | None = None,
        valid_to: int | str | None = None,
    ) -> str:
        """Add a memory; returns its content id (hex).

        ``time`` (int ns or ISO-8601, as a JSONL line's) defaults to the capsule's clock; ``embedding`` is any
        1-D sequence of floats and is stored as little-endian float32.
        ``valid_from`` / ``valid_to`` (int ns or ISO-8601, 7.1) bound when the fact is
        true in the world: ``cap.state(valid_at=T)`` shows it for T in [from, to).

        >>> with cap.commit() as tx:
        ...     rid = tx.remember("p95 budget is 300 ms", tags=["slo"], meta={"ms": 300}, embedding=[0.5, 0.25])
        >>> m = cap.get(rid)
        >>> m.text, m.tags, m.meta, m.tier, m.embedding.tolist()
        ('p95 budget is 300 ms', ('slo',), {'ms': 300}, 'working', [0.5, 0.25])
        """
        when = self._cap.clock() if time is None else parse_iso_time(time) if isinstance(time, str) else time
        value = memory_value(text, time=when, tags=tags, meta=meta,
                             embedding=embedding, tier=tier, ttl=ttl, source=source,
                             valid_from=parse_when(valid_from), valid_to=parse_when(valid_to))
        if "embedding" in value:
            self._vector_config(value["embedding"]["shape"][0])
            self._vectors += 1
        rid, data = encode_value("memory", value)
        self._batch.add(rid, "memory", data)
        return rid.hex()

    def _put_kind(self, kind: str, **kw: Any) -> str:
        time = kw.pop("time", None)  # int ns or ISO-8601, as remember() and a JSONL line take it
        when = self._cap.clock() if time is None else parse_iso_time(time) if isinstance(time, str) else time
        rec = _REGISTRY[kind].build(time=when, **kw)
        return self._put(rec)  # the verbs' own kinds (a rollback's revert among them)

    def _resolve(self, v: Any, name: str) -> Any:
        """A record id given as a unique hex prefix (>= 4 digits) becomes the whole id, found
        by a table lookup among the committed records and this block's own; anything else
        is left for the kind's validator."""
        if isinstance(v, str) and 4 <= len(v) < 64 and not v.lower().strip("0123456789abcdef"):
            try:
                return self._cap._store.resolve_prefix(v, self._batch.id_seq())
            except UsageError as e:
                raise type(e)(f"{name}: {e}") from None
        return v

    def _resolve_ids(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        """The id fields of an input record (decision evidence, approval subject), resolved."""
        kind = obj.get("kind")
        if kind == "decision" and isinstance(obj.get("evidence"), list):
            return {**obj, "evidence": [self._resolve(x, "evidence") for x in obj["evidence"]]}
        if kind == "approval" and "subject" in obj:
            return {**obj, "subject": self._resolve(obj["subject"], "subject")}
        return obj

    def decide(self, summary: str, *, rationale: str = "", evidence: Any = (), inputs: Mapping[str, Any] | None = None,
               alternatives: Any = (), time: int | str | None = None) -> str:
        """Record an immutable decision and the evidence (record ids, or unique prefixes of
        >= 4 hex digits) behind it.

        >>> with cap.commit() as tx:
        ...     fact = tx.remember("deploys are frozen on Fridays")
        ...     d = tx.decide("ship on Thursday", rationale="the Friday freeze", evidence=[fact[:8]])
        >>> cap.get(d).to_dict()["evidence"] == [fact]
        True
        """
        if isinstance(evidence, list | tuple):
            evidence = [self._resolve(x, "evidence") for x in evidence]
        return self._put_kind("decision", summary=summary, rationale=rationale, evidence=evidence, inputs=inputs,
                              alternatives=alternatives, time=time)

    def constrain(self, text: str, *, scope: str = "global", status: str = "active",
                  rule: Mapping[str, Any] | None = None, time: int | str | None = None) -> str:
        """Add (or, with ``status="revoked"``, lift) a rule for ``scope``. ``rule`` makes it
        machine-readable (spec 7.3.1): ``{"action": "email.*", "approvals": 1, "approvers": [key ids]}``
        gates ``run_once`` on matching keys until enough verified approvals are committed."""
        return self._put_kind("constraint", text=text, scope=scope, status=status, rule=rule, time=time)

    def approve(self, subject: str | bytes, key: Any, *, time: int | str | None = None) -> str:
        """Sign approval of the record ``subject`` (an id or a unique prefix) with a :class:`capsule.PrivateKey`."""
        sid = parse_id(self._resolve(subject, "subject"), "subject")
        sig = key.sign(approval_message(sid))
        return self._put_kind("approval", subject=sid, approver=key.key_id, signature=sig, time=time)

    def set_identity(self, agent_id: str, *, name: str = "", model: str = "", config: Mapping[str, Any] | None = None,
                     keys: Any = (), time: int | str | None = None) -> str:
        """Record who the agent is now; identity history is the chain of these records."""
        raw = [k.raw if hasattr(k, "raw") else k for k in keys]
        return self._put_kind("identity", agent_id=agent_id, name=name, model=model, config=config, keys=raw,
                              time=time)

    def note(self, text: str, *, time: int | str | None = None) -> str:
        """A free-text note (task progress and the like).

        >>> with cap.commit() as tx: n = tx.note("step 3 of 5 done")
        >>> cap.get(n).kind, cap.get(n).text
        ('note', 'step 3 of 5 done')
        """
        return self._put_kind("note", text=text, time=time)

    def put_value(self, obj: Mapping[str, Any]) -> str:
        """Add a record given as a JSON-like map (a JSONL line); ``kind`` defaults to memory."""
        if not isinstance(obj, Mapping):
            raise InvalidRecordError("a record must be a JSON object")
        from ..format.bulk import encode_input  # msgspec loads on first use, not at start-up

        return self._add(obj, encode_input).hex()

    def _add(self, obj: object, encode_input: Callable[..., tuple[str, bytes, int]]) -> bytes:
        """Encode one input record (``format.bulk``), settle its vector index, keep it."""
        kind, data, dim = encode_input(obj, self._cap.clock(), self._resolve_ids)
        if dim:
            self._vector_config(dim)
            self._vectors += 1
        rid = record_id(kind, data)
        self._batch.add(rid, kind, data)
        return rid

    def put_many(self, records: Iterable[Any], *, names: Callable[[int], str] | None = None) -> IdList:
        """Add many records; returns their ids (hex), in order. The bulk path: ``capsule put
        --jsonl`` and :func:`capsule.pack` go through it.

        A record is a map (as :meth:`put_value` takes it), one JSON object as ``str`` or
        ``bytes`` (a JSONL line), or a record object (as :meth:`put` takes it). Memories
        of the plain shape (text, tags, flat ``meta``, time, tier, ttl, source,
        embedding) are decoded, checked and encoded in C by msgspec; any other record
        takes the reference path. Both give the same bytes (spec 5) and the same errors.
        The records are kept compactly until the commit (about 45 bytes each beside
        their encoded bytes), so memory follows the commit's size, not a Python object
        per record. An invalid record raises :class:`InvalidRecordError` naming it
        ("record 3: ...", or ``names(i)`` for the i-th from 0), and then none of this
        call's records stays in the transaction.

        >>> import capsule, os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "bulk.capsule")
        >>> with capsule.create(p) as cap:
        ...     with cap.commit() as tx:
        ...         ids = tx.put_many([{"text": "deploys freeze on Fridays", "tags": ["ops"]},
        ...                            b'{"text": "the user prefers metric units", "time": 0}'])
        ...     print(len(ids), len(cap), cap.get(ids[1]).text)
        2 2 the user prefers metric units
        """
        from ..format.bulk import encode_many  # msgspec loads on first use, not at start-up

        batch = self._batch
        start, vconfig, vectors = len(batch), self._vconfig, self._vectors
        extra: list[int] = []  # where a vindex record went in among this call's records (16.1)

        def on_vector(dim: int) -> None:
            at = len(batch)
            self._vector_config(dim)
            if len(batch) > at:
                extra.append(at)
            self._vectors += 1

        try:
            encode_many(batch, _not_own(records), self._cap.clock, prepare=self._resolve_ids, on_vector=on_vector,
                        names=names)
        except BaseException:
            # all or nothing: the records of this call leave the batch (a vindex record too)
            batch.truncate(start)
            self._vconfig, self._vectors = vconfig, vectors
            raise
        if extra:  # the ids of the records given, not the vindex record added among them
            keep = np.ones(len(batch) - start, dtype=bool)
            keep[np.array(extra) - start] = False
            ids = np.frombuffer(batch.ids[32 * start :], "S32")[keep]  # a slice: a copy, no view of the batch
            return IdList(ids.tobytes(), copy=False)
        return IdList.later(batch.ids, start, len(batch))  # copied when read (the batch only grows past it)


__all__ = ["Transaction"]
