"""A group commit: records gathered in a ``with cap.commit() as tx`` block (spec 6.4).

Records are encoded and content-addressed as they are added; on a clean exit
the ones not already in the file are written in one commit with one fsync
(a checkpoint asked for in the block joins the same commit). An exception in
the block discards the batch: nothing is written.

Entering the block takes the handle's writer lock and leaving it releases it,
so a commit from another thread waits for this one (see ``handle.locking``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import InvalidRecordError, UsageError
from ..format.checkpoint import CheckpointFrame
from ..format.commit import CommitInfo
from ..format.file import WriteHandle
from ..format.records import _REGISTRY, encode_record, encode_value, memory_value, record_from_input
from ..format.writer import Item
from ..search.vindex import VectorParams
from ..state.kinds import approval_message, parse_id

if TYPE_CHECKING:
    from .capsule import Capsule


class Transaction:
    """A group of records that commit together (one COMMIT, one fsync)."""

    def __init__(self, cap: Capsule) -> None:
        self._cap = cap
        self._items: dict[bytes, Item] = {}
        self.info: CommitInfo | None = None
        self.new_ids: list[str] = []  # after exit: ids actually written (not already committed)
        self._checkpoint: tuple[str, Any, bytes | None] | None = None
        self.checkpoint_frame: CheckpointFrame | None = None
        self._vconfig: VectorParams | None = None  # a vindex record this commit adds
        self._vectors = 0

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
        try:
            if et is not None:
                return  # nothing was written: the batch is discarded
            self.info = self._flush()
            if self.info is not None:
                with cap._view_lock:
                    err = cap._search.committed(self._vectors, self._vconfig)
                if err is not None:
                    cap.close_error = err
        finally:
            cap._lock.release()

    def __len__(self) -> int:
        return len(self._items)

    def _flush(self) -> CommitInfo | None:
        cap = self._cap
        snap = cap._snap
        if isinstance(cap._h, WriteHandle):
            cap._h._check()
        items = list(self._items.values())
        if items:
            # Content addressing: a record already committed is not written again.
            ids = [it[0] for it in items]
            dup = np.zeros(len(ids), dtype=bool)
            if snap.segments and len(ids) <= 16:
                # a few scalar lookups beat the vectorised path's setup cost
                for j, rid in enumerate(ids):
                    dup[j] = any(seg.find(rid) is not None for seg in snap.segments)
            elif snap.segments:
                prefixes = np.frombuffer(b"".join(r[:8] for r in ids), dtype=">u8").astype(np.uint64)
                for seg in snap.segments:
                    seg.verify()
                    dup |= seg.contains_many(prefixes, ids)
            mem = snap.mem
            dup |= np.array([it[0] in mem for it in items], dtype=bool)
            if dup.any() and "revert" in snap.kinds:
                # A record a rollback dropped is live again only through a restore event.
                dead = cap._dead_ids()
                again = sorted(it[0] for it, d in zip(items, dup, strict=True) if d and it[0] in dead)
                if again:
                    rev = _REGISTRY["revert"].build(time=cap.clock(), after=bytes.fromhex(cap.root), restore=again)
                    rid, data = encode_record(rev)
                    items.append((rid, "revert", data))
                    dup = np.append(dup, False)
            items = [it for it, d in zip(items, dup, strict=True) if not d]
        if self._checkpoint is not None:
            label, key, runtime = self._checkpoint
            self.checkpoint_frame = cap._commit_checkpoint(items, label, key, runtime)
            self.new_ids = [it[0].hex() for it in items]
            return cap._snap.commit
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
        with self._cap._view_lock:
            params, rec = self._cap._search.params_for(dim, self._vconfig, want, self._cap.clock)
        if rec is not None:
            self._items.setdefault(rec[0], rec)
        if params is not None:
            self._vconfig = params

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


__all__ = ["Transaction"]
