"""A LangGraph checkpointer on a capsule: every checkpoint is a capsule commit.

``CapsuleSaver(path)`` is a ``BaseCheckpointSaver`` (sync and async): ``put``, ``put_writes``,
``get_tuple``, ``list``, ``delete_thread``, ``delete_for_runs``, ``copy_thread`` and ``prune``.
A thread's history is the capsule's history (``capsule log``, ``--at``). Checkpoints and
writes are records of the application kinds ``langgraph.checkpoint`` and ``langgraph.writes``
(spec 12.3), so the agent's memories, search and listings never see them; deleting is a
``forget`` event (spec 7.7.1), so deleted checkpoints leave the live state at once and
``capsule compact`` drops their bytes. The record schemas are in docs/langgraph-saver.md.

>>> import os, tempfile
>>> from capsule.integrations.langgraph import CapsuleSaver
>>> from langgraph.checkpoint.base import empty_checkpoint
>>> path = os.path.join(tempfile.mkdtemp(), "graph.capsule")
>>> with CapsuleSaver(path) as saver:
...     cfg = saver.put({"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}, empty_checkpoint(),
...                     {"source": "input", "step": -1}, {})
...     saver.get_tuple({"configurable": {"thread_id": "t1"}}).metadata["source"]
'input'
>>> with CapsuleSaver(path, read_only=True) as reader:  # reopened: the same answers
...     [t.config["configurable"]["checkpoint_id"] for t in reader.list(None)] == [cfg["configurable"]["checkpoint_id"]]
True

Graph nodes reach the capsule through ``saver.capsule`` (e.g. ``saver.capsule.run_once(key, fn)``
for an effect that must happen once even if the process is killed and the graph resumed).
"""

from __future__ import annotations

import asyncio
import random
import threading
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from ...core.clock import Clock
from ...core.errors import AlreadyExists, FileReplaced, InvalidRecordError, UsageError
from ...format.records import GenericRecord
from ...handle.capsule import Capsule
from ...handle.entry import create
from ...handle.entry import open as open_capsule
from . import _saver_records as r
from ._follow import replaced
from ._saver_index import Ckpt, RecordCache, SaverIndex

T = TypeVar("T")

#: forget events are chunked so one event stays far under the record caps (spec 11)
_DROP_CHUNK = 50_000


def _text(x: object) -> str:
    """An id as the record stores it: text in NFC (spec 5.1), so that the index this process
    builds as it writes and the one a reopen replays from the file agree on every key."""
    s = str(x)
    return s if s.isascii() else unicodedata.normalize("NFC", s)


def _cid(config: RunnableConfig) -> str | None:
    cid = get_checkpoint_id(config)
    return None if cid is None else _text(cid)


def _thread(config: RunnableConfig | None) -> tuple[str, str]:
    """(thread_id, checkpoint_ns) of a config; LangGraph's own ValueError when it names no thread."""
    conf = config.get("configurable") if isinstance(config, dict) else None
    if not isinstance(conf, dict) or conf.get("thread_id") in (None, ""):
        raise ValueError("Checkpointer requires one or more of the following 'configurable' keys: "
                         "thread_id, checkpoint_ns, checkpoint_id (CapsuleSaver: no thread_id in the config)")
    ns = conf.get("checkpoint_ns") or ""
    return _text(conf["thread_id"]), _text(ns)


def default_serde() -> JsonPlusSerializer:
    """The saver's serializer when none is given: LangGraph's own, with no pickle and *strict*
    msgpack: decoding constructs only LangGraph's allowlisted types (``SAFE_MSGPACK_TYPES``:
    messages, datetimes, uuids, sets, ...), never a callable a file names. A file is input:
    another tool (or an attacker) may have written it. A graph compiled with the saver adds its
    state schema's types itself (``BaseCheckpointSaver.with_allowlist``)."""
    return JsonPlusSerializer(pickle_fallback=False, allowed_msgpack_modules=None)


def _cfg(thread: str, ns: str, cid: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": cid}}


class _Live:
    """The open handle and its index, in one object that a saver and its clones share
    (``with_allowlist``, which LangGraph calls when it compiles a graph, is a shallow copy): a
    reader that moves to a newer commit, or reopens a compacted file, moves them all."""

    __slots__ = ("cap", "ix")

    def __init__(self, cap: Capsule) -> None:
        self.cap = cap
        self.ix = SaverIndex()


class CapsuleSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer whose storage is one capsule file.

    ``path``: the capsule (created when missing, unless ``read_only``). ``serde``: LangGraph's
    serializer (default ``JsonPlusSerializer`` with pickle fallback off: no pickles in the file).
    ``read_only``: open lock-free, see what another process's saver commits (refreshed on every
    read); writes raise :class:`capsule.ReadOnlyError`. ``timeout``: seconds to wait for another
    writer before :class:`capsule.Locked`. ``actor``: named in the forget events deletions write.
    ``cache_bytes``: how many bytes of serialised checkpoints and writes to keep parsed in memory
    (least recently used out first; ``0`` reads every tuple from the file).

    Checkpoints and writes are records of the application kinds ``langgraph.checkpoint`` and
    ``langgraph.writes`` (spec 12.3), never memories. Opening replays the live ones once into an
    in-memory index (ids and metadata, no channel values), so reads never scan history; see
    docs/langgraph-saver.md.
    """

    def __init__(self, path: str | Path, *, serde: SerializerProtocol | None = None, read_only: bool = False,
                 timeout: float | None = None, clock: Clock | None = None, actor: str = "langgraph",
                 cache_bytes: int = 64 * 2**20) -> None:
        super().__init__(serde=serde or default_serde())
        if type(cache_bytes) is not int or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative int, not {cache_bytes!r}")
        p = Path(path)
        self.path = p
        self.actor = actor
        self._mu = threading.RLock()
        self._clock = clock
        self._cache = RecordCache(cache_bytes)
        if read_only:
            cap = open_capsule(p, "r", clock=clock)
        else:
            try:
                cap = create(p, exist_ok=True, clock=clock, timeout=timeout)
            except AlreadyExists:  # another process created it between create's check and its create
                cap = open_capsule(p, "a", clock=clock, timeout=timeout)
        self._live = _Live(cap)
        try:
            self._ix = self._build(self._cap)
        except BaseException:
            self._cap.close()
            raise

    # --- the handle -------------------------------------------------------------------------
    @property
    def _cap(self) -> Capsule:
        return self._live.cap

    @property
    def _ix(self) -> SaverIndex:
        return self._live.ix

    @_ix.setter
    def _ix(self, ix: SaverIndex) -> None:
        self._live.ix = ix

    @property
    def capsule(self) -> Capsule:
        """The open capsule (for ``run_once``, ``remember``, questions ...)."""
        return self._cap

    def close(self) -> None:
        self._cap.close()

    def __enter__(self) -> CapsuleSaver:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    async def __aenter__(self) -> CapsuleSaver:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()

    def _build(self, cap: Capsule) -> SaverIndex:
        """Replay the live saver records (13.1), both kinds in one commit-order pass, into a fresh
        index."""
        ix = SaverIndex()
        stored = cap.kinds()
        if any(kind in stored for kind in r.KINDS):
            for rec in cap.live(r.KINDS):
                kind = rec.kind
                try:
                    self._apply(ix, bytes.fromhex(rec.id), kind, rec.value)
                except Exception as e:  # a record of our kind that is not what put writes
                    raise self._invalid(rec.id, kind, e) from None
        return ix

    def _invalid(self, rid: str, kind: str, e: BaseException) -> InvalidRecordError:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return InvalidRecordError(f"{self.path}: {kind} record {rid} is not one this saver can read: {msg}")

    def _loads(self, rid: bytes, kind: str, typed: r.Typed, what: str) -> Any:
        """A stored value through the serde; what it cannot decode (a planted pickle, bytes that
        are not msgpack) is the record's fault: :class:`InvalidRecordError` naming it."""
        try:
            return self.serde.loads_typed(typed)
        except Exception as e:
            raise self._invalid(rid.hex(), kind, ValueError(f"its {what} cannot be decoded "
                                                            f"({type(e).__name__}: {e})")) from None

    def _apply(self, ix: SaverIndex, rid: bytes, kind: str, value: Any) -> None:
        """One stored record into the index (and the cache: it is parsed already)."""
        if kind == r.CHECKPOINT:
            c = r.parse_checkpoint(value)
            md = self.serde.loads_typed(c.metadata)
            if not isinstance(md, dict):
                raise ValueError(f"its metadata is {type(md).__name__}, not a map")
            ix.add_checkpoint(*c.key, rid, c.parent, md)
            self._cache.add(rid, c)
        else:
            w = r.parse_writes(value)
            ix.add_writes(w.key, rid, w.task_id, w.task_path, [(i, ch) for i, ch, _ in w.writes])
            self._cache.add(rid, w)

    def _sync(self) -> None:
        """A reader follows the file: when another process committed, rebuild the index; when
        ``capsule compact`` replaced the file (a new inode at the path), reopen it first."""
        if self._cap.mode != "r":
            return
        if not replaced(self._cap):
            try:
                if self._cap.refresh():
                    self._ix = self._build(self._cap)
                return
            except FileReplaced:  # replaced since the look above: reopen as if seen there
                pass
        k = self._cap._h.keys  # 10: reopened with the key the first open used (capsule.unlocking)
        cap = open_capsule(self.path, "r", clock=self._clock, identity=getattr(k, "identity", None),
                           passphrase=getattr(k, "passphrase", None))
        try:
            ix = self._build(cap)
        except BaseException:
            cap.close()
            raise
        old = self._cap
        self._live.cap, self._live.ix = cap, ix
        old.close()

    def _checkpoint(self, rid: bytes) -> r.CheckpointRec:
        rec = self._cache.get(rid)
        if not isinstance(rec, r.CheckpointRec):
            rec = r.parse_checkpoint(self._cap.get(rid).value)
            self._cache.add(rid, rec)
        return rec

    def _writes(self, rid: bytes) -> r.WritesRec:
        rec = self._cache.get(rid)
        if not isinstance(rec, r.WritesRec):
            rec = r.parse_writes(self._cap.get(rid).value)
            self._cache.add(rid, rec)
        return rec

    # --- reads -------------------------------------------------------------------------------
    def _tuple(self, key: r.Key, c: Ckpt) -> CheckpointTuple:
        """A fresh tuple (LangGraph may change what it is given): the serde decodes every time."""
        thread, ns, cid = key
        rec = self._checkpoint(c.rid)
        checkpoint: Checkpoint = self._loads(c.rid, r.CHECKPOINT, rec.checkpoint, "checkpoint")
        if not isinstance(checkpoint, dict):
            raise self._invalid(c.rid.hex(), r.CHECKPOINT, ValueError(
                f"its checkpoint is {type(checkpoint).__name__}, not a map"))
        metadata: CheckpointMetadata = self._loads(c.rid, r.CHECKPOINT, rec.metadata, "metadata")
        pending = [(w.task_id, w.channel,
                    self._loads(w.rid, r.WRITES, self._writes(w.rid).writes[w.pos][2], f"write to {w.channel!r}"))
                   for w in self._ix.ordered_writes(key)]
        return CheckpointTuple(config=_cfg(thread, ns, cid), checkpoint=checkpoint, metadata=metadata,
                               parent_config=_cfg(thread, ns, c.parent) if c.parent else None,
                               pending_writes=pending)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``), or the thread's latest."""
        thread, ns = _thread(config)
        with self._mu:
            self._sync()
            found = self._ix.get(thread, ns, _cid(config))
            if found is None:
                return None
            cid, c = found
            return self._tuple((thread, ns, cid), c)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,  # noqa: A002
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of one thread (``config``; its ``checkpoint_ns`` and
        ``checkpoint_id`` narrow it) or of every thread (``config=None``), whose metadata
        has every ``filter`` item, older than ``before``, at most ``limit``."""
        with self._mu:
            self._sync()
            if config is not None:
                thread, _ = _thread(config)
                threads = [thread]
                ns_given = config["configurable"].get("checkpoint_ns")
                want_ns = None if ns_given is None else _text(ns_given)
                want_id = _cid(config)
            else:
                threads, want_ns, want_id = list(self._ix.threads), None, None
            before_id = _cid(before) if before else None
            keys: list[r.Key] = []
            left = limit
            for thread in threads:
                for ns in self._ix.namespaces(thread):
                    if want_ns is not None and ns != want_ns:
                        continue
                    by_id = self._ix.threads[thread][ns]
                    for cid in ([want_id] if want_id else self._ix.ids_desc(thread, ns)):
                        c = by_id.get(cid)
                        if c is None or (before_id and cid >= before_id):
                            continue
                        if filter and not all(c.metadata.get(k) == v for k, v in filter.items()):
                            continue
                        if left is not None:
                            if left <= 0:
                                break
                            left -= 1
                        keys.append((thread, ns, cid))
        # Tuples are read one at a time, so a caller that stops early reads no more records; a
        # checkpoint deleted meanwhile (another thread) is skipped.
        for key in keys:
            with self._mu:
                found = self._ix.get(*key)
                if found is None:
                    continue
                tup = self._tuple(key, found[1])
            yield tup

    # --- writes ----------------------------------------------------------------------------
    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Store a checkpoint: one ``langgraph.checkpoint`` record, one capsule commit. Returns its config."""
        thread, ns = _thread(config)
        key = (thread, ns, _text(checkpoint["id"]))
        parent = _cid(config)
        md = get_checkpoint_metadata(config, metadata)
        md_t, ck_t = self.serde.dumps_typed(md), self.serde.dumps_typed(checkpoint)
        with self._mu:
            self._put(r.CHECKPOINT, lambda now: r.checkpoint_value(key, parent, ck_t, md_t, md, time=now))
        return _cfg(*key)

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Store a task's writes for a checkpoint: one ``langgraph.writes`` record, one commit (none
        when every write is already stored: a regular write is stored once per (task, index))."""
        thread, ns = _thread(config)
        cid = _cid(config)
        if cid is None:
            raise ValueError("put_writes needs config['configurable']['checkpoint_id']")
        key, task, path = (thread, ns, cid), _text(task_id), _text(task_path)
        chans = [(_text(c), WRITES_IDX_MAP.get(c, i)) for i, (c, _) in enumerate(writes)]
        with self._mu:
            todo = self._ix.new_writes(key, task, chans)
            if not todo:
                return
            entries = [(chans[i][1], chans[i][0], self.serde.dumps_typed(writes[i][1])) for i in todo]
            self._put(r.WRITES, lambda now: r.writes_value(key, task, path, entries, time=now))

    def _put(self, kind: str, build: Callable[[int], dict[str, Any]]) -> None:
        """One record of ``kind`` in one commit, then into the index through the replay's own
        path (:meth:`_apply` on the stored, canonical map): what a reopen would build."""
        with self._cap.commit() as tx:
            value = GenericRecord(kind, build(self._cap.clock())).to_value()
            rid = tx.put(GenericRecord(kind, value))
        self._apply(self._ix, bytes.fromhex(rid), kind, value)

    def _forget(self, keys: Sequence[r.Key], reason: str) -> None:
        """One commit of forget events for every live record of ``keys``; then the index drops them."""
        rids = list(dict.fromkeys(x for k in keys for x in self._ix.checkpoint_rids(k)))
        if rids:
            with self._cap.commit() as tx:
                for i in range(0, len(rids), _DROP_CHUNK):
                    tx.lifecycle("forget", rids[i : i + _DROP_CHUNK], reason=reason, actor=self.actor)
        for k in keys:
            self._ix.drop_checkpoint(k)

    def delete_thread(self, thread_id: str) -> None:
        """Forget every checkpoint and write of the thread (one commit; history keeps the bytes
        until ``capsule compact``)."""
        with self._mu:
            self._check_writer()
            self._forget(self._ix.thread_keys(_text(thread_id)), f"langgraph: delete thread {thread_id}")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Forget the checkpoints (and their writes) whose metadata names one of ``run_ids``."""
        with self._mu:
            self._check_writer()
            want = {str(r) for r in run_ids}
            if want:
                self._forget(self._ix.run_keys(want), f"langgraph: delete runs {', '.join(sorted(want))}"[:1000])

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """``"keep_latest"``: forget all but the newest checkpoint of each namespace of each
        thread; ``"delete"``: forget them all."""
        if strategy not in ("keep_latest", "delete"):
            raise ValueError(f"unknown prune strategy {strategy!r}: 'keep_latest' or 'delete'")
        with self._mu:
            self._check_writer()
            keys: list[r.Key] = []
            for t in map(_text, thread_ids):
                for k in self._ix.thread_keys(t):
                    latest = self._ix.get(t, k[1], None)
                    if strategy == "delete" or latest is None or latest[0] != k[2]:
                        keys.append(k)
            self._forget(keys, f"langgraph: prune ({strategy})")

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of a thread to another thread id, in one commit."""
        src, dst = _text(source_thread_id), _text(target_thread_id)
        with self._mu:
            self._check_writer()
            if src == dst:  # a copy onto itself would only duplicate every live record
                return
            keys = [k for k in self._ix.thread_keys(src) if self._ix.get(*k) is not None]
            if not keys:
                return
            old = [rid for k in sorted(keys, key=lambda k: (k[1], k[2]))
                   for rid in [self._ix.threads[src][k[1]][k[2]].rid, *self._ix.write_rids.get(k, [])]]
            with self._cap.commit() as tx:
                now = self._cap.clock()
                added = []
                for rid in old:
                    rec = self._cap.get(rid)
                    value = GenericRecord(rec.kind, r.copied(rec.value, dst, time=now)).to_value()
                    added.append((bytes.fromhex(tx.put(GenericRecord(rec.kind, value))), rec.kind, value))
            for args in added:
                self._apply(self._ix, *args)

    def _check_writer(self) -> None:
        if self._cap.mode != "a":
            self._cap.commit()  # raises ReadOnlyError (a CapsuleError), one line
            raise UsageError("this CapsuleSaver is read-only")  # not reached

    def get_next_version(self, current: str | None, channel: None) -> str:
        """String versions, as LangGraph's own savers make them: ``<int>.<random>``."""
        if current is None:
            v = 0
        elif isinstance(current, int):
            v = current
        else:
            v = int(current.split(".")[0])
        return f"{v + 1:032}.{random.random():016}"

    # --- async: the sync methods in a worker thread (a commit waits for an fsync) ----------
    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kw)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await self._run(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,  # noqa: A002
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        items = await self._run(lambda: list(self.list(config, filter=filter, before=before, limit=limit)))
        for item in items:
            yield item

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await self._run(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await self._run(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self._run(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        await self._run(self.delete_for_runs, run_ids)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        await self._run(self.prune, thread_ids, strategy=strategy)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        await self._run(self.copy_thread, source_thread_id, target_thread_id)


__all__ = ["CapsuleSaver", "default_serde"]
