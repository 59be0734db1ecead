"""``CapsuleStore``: LangGraph's long-term memory (``BaseStore``) as a capsule's memories.

>>> import tempfile, os
>>> from capsule.integrations.langgraph import CapsuleStore
>>> path = os.path.join(tempfile.mkdtemp(), "graph.capsule")
>>> with CapsuleStore(path) as store:
...     store.put(("users", "alice"), "prefs", {"text": "prefers metric units"})
...     [i.key for i in store.search(("users",), query="metric units")]
['prefs']
>>> with CapsuleStore(path, read_only=True) as store:  # reopened: the same answers
...     store.get(("users", "alice"), "prefs").value
{'text': 'prefers metric units'}

Each item is one live memory (how, in ``_store_map``); the mapping and the differences from
``InMemoryStore`` are written down in ``docs/langgraph-store.md``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import heapq
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from ...core.clock import Clock
from ...core.errors import AlreadyExists, FileReplaced, InvalidRecordError, UsageError
from ...handle.capsule import Capsule
from ...handle.entry import create as _create
from ...handle.entry import open as _open
from ...state.liveness import fold_of
from ._follow import replaced
from ._store_embed import StoreEmbedder
from ._store_map import (
    TAG,
    Entry,
    Index,
    does_match,
    entry_of,
    item_meta,
    item_tags,
    matches,
    nfc,
    nfc_clash,
    ns_tag,
    ttl_ns,
    value_text,
)

__all__ = ["CapsuleStore"]

log = logging.getLogger(__name__)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SOURCE = "langgraph-store"
_MAX_K = 10_000  # the capsule's search cap (16.6)

Key = tuple[tuple[str, ...], str]
Prepared = dict[Key, tuple[str, "list[float] | None"]]


def _create_or_open(path: Path, clock: Clock | None, timeout: float | None) -> Capsule:
    """Open ``path`` for writing, creating it when missing. Another process may create it
    between the check and the create (``create`` then raises AlreadyExists): open theirs."""
    try:
        return _create(path, exist_ok=True, clock=clock, timeout=timeout)
    except AlreadyExists:
        return _open(path, "a", clock=clock, timeout=timeout)


def _name(k: Key) -> str:
    name = f"{'.'.join(k[0])}/{k[1]}"
    return name if len(name) <= 120 else f"{name[:117]}..."  # a 20 MB key makes no one-line message


def _dt(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


class CapsuleStore(BaseStore):
    """A LangGraph ``BaseStore`` whose items are the memories of one capsule file.

    ``path``: the capsule file (created when missing), or an open :class:`capsule.Capsule`
    handle to share (the store then never closes it).

    ``index``: LangGraph's ``IndexConfig`` (``fields``, ``dims``, ``embed``); ``embed`` may be a
    capsule embedder name (``"hash"``, ``"minilm"``, ...) or object, or LangGraph's usual
    ``Embeddings`` / function. ``None`` (the default) indexes the whole value with the ``hash``
    embedder; ``False`` stores no vectors (a query then only filters, as in ``InMemoryStore``
    without an index). ``ttl``: LangGraph's ``TTLConfig``. ``clock``: int ns, for tests.
    ``read_only`` opens a lock-free snapshot that refuses writes. ``timeout``: seconds to wait
    for another writer. ``actor`` is written on every supersede and forget event.
    """

    supports_ttl: bool = True

    def __init__(self, path: str | os.PathLike[str] | Capsule, *, index: IndexConfig | Literal[False] | None = None,
                 ttl: TTLConfig | None = None, clock: Clock | None = None, read_only: bool = False,
                 timeout: float | None = None, actor: str = "langgraph") -> None:
        self.ttl_config = ttl
        self.actor = actor
        self._embed = None if index is False else StoreEmbedder(index or None)
        #: the index in force (the default's too), as LangGraph's stores expose it
        self.index_config: IndexConfig | None = None if self._embed is None else IndexConfig(
            dims=self._embed.dim, fields=list(self._embed.fields),
            embed=(index or {}).get("embed", self._embed.name))
        self._lock = threading.RLock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="capsule-store")
        self._owned = not isinstance(path, Capsule)
        self._clock = clock
        if isinstance(path, Capsule):  # shared with the caller (e.g. a CapsuleSaver's): never closed here
            self._cap: Capsule = path
        elif read_only:
            self._cap = _open(Path(path), "r", clock=clock)
        else:
            self._cap = _create_or_open(Path(path), clock, timeout)
        self.path = self._cap.path
        try:
            self._check_vectors()
            self._index = self._load()
        except BaseException:
            self._pool.shutdown(wait=False)
            if self._owned:
                self._cap.close()
            raise

    def _load(self) -> Index:
        """The one pass over history: the live store items, by namespace and key."""
        index = Index()
        live = fold_of(self._cap._store)  # 13.1: the ids revert events hold dead, folded once
        index.load(self._cap.records(kind="memory"), live.dead)
        return index

    # -- the handle -------------------------------------------------------------------------

    @property
    def capsule(self) -> Capsule:
        """The open capsule (for ``verify``-style reads; write through the store)."""
        return self._cap

    @property
    def read_only(self) -> bool:
        return self._cap.mode != "a"

    def close(self) -> None:
        """Stop the TTL sweeper (if any) and close the capsule (unless it was handed in open)."""
        self.stop_ttl_sweeper()
        self._pool.shutdown(wait=True)
        if self._owned:
            self._cap.close()

    def refresh(self) -> bool:
        """Read-only stores: move to the newest commit another process wrote and rebuild the
        item index (one pass). True if there was anything new."""
        with self._lock:
            reopen = self._owned and self.read_only and replaced(self._cap)  # compacted in place
            if not reopen:
                try:
                    if not self._cap.refresh():
                        return False
                except FileReplaced:  # replaced since the look above
                    if not (self._owned and self.read_only):
                        raise
                    reopen = True
            if reopen:
                k = self._cap._h.keys  # 10: reopened with the key the first open used (capsule.unlocking)
                cap = _open(Path(self.path), "r", clock=self._clock, identity=getattr(k, "identity", None),
                            passphrase=getattr(k, "passphrase", None))
                old, self._cap = self._cap, cap
                old.close()
            self._index = self._load()
            return True

    def __enter__(self) -> CapsuleStore:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __len__(self) -> int:
        """The live items: an item whose ttl has run out is not one (nothing returns it)."""
        with self._lock:
            now = self._cap.clock()
            return sum(1 for d in self._index.by_ns.values() for e in d.values() if not e.expired(now))

    def _check_vectors(self) -> None:
        if self._embed is None:
            return
        have = self._cap.vector_config()
        if have is None:
            if not self.read_only:  # fixed with the first embedding (16.1), recording the embedder
                self._cap.configure_vectors(space="cosine", embedder=self._embed.name)
            return
        if have.dim != self._embed.dim:
            raise UsageError(f"{self.path}: the capsule's vectors are {have.dim}-d ({have.embedder or 'unnamed'}),"
                             f" the store's embedder gives {self._embed.dim}")
        if self._embed.name and have.embedder != self._embed.name:
            # 16.5: an agent's own vectors (no embedder named) are not this embedder's either
            made = repr(have.embedder) if have.embedder else "the agent (no embedder named)"
            raise UsageError(f"{self.path}: the capsule's vectors come from {made},"
                             f" not {self._embed.name!r}; open it with that embedder")

    # -- batch --------------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        puts = self._plan(ops)
        texts, need = self._texts(puts)
        vecs = self._embed.docs([texts[k][0] for k in need]) if self._embed and need else []
        queries = self._queries(ops)
        qv = {q: self._embed.query(q) for q in queries} if self._embed else {}
        return self._run(ops, puts, self._prepared(texts, need, vecs), qv)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        ops = list(ops)
        loop = asyncio.get_running_loop()
        if self._embed is None or self._embed.local:  # nothing to await: the whole batch off the loop
            return await loop.run_in_executor(self._pool, self.batch, ops)
        puts = self._plan(ops)
        texts, need = self._texts(puts)
        vecs = await self._embed.adocs([texts[k][0] for k in need]) if self._embed and need else []
        queries = self._queries(ops)
        qv = {q: await self._embed.aquery(q) for q in queries} if self._embed else {}
        # One worker: concurrent abatch calls are applied in the order they got here, off the loop.
        return await loop.run_in_executor(
            self._pool, self._run, ops, puts, self._prepared(texts, need, vecs), qv)

    def _plan(self, ops: list[Op]) -> dict[Key, PutOp]:
        puts: dict[Key, PutOp] = {}
        for op in ops:
            if not isinstance(op, (GetOp, PutOp, SearchOp, ListNamespacesOp)):
                raise ValueError(f"Unknown operation type: {type(op)}")
            validate_op_namespace(op)
            if isinstance(op, SearchOp | ListNamespacesOp) and (
                    type(op.offset) is not int or type(op.limit) is not int or op.offset < 0 or op.limit < 0):
                # a negative offset counted from the end in InMemoryStore (a slice), and was read as 0 here
                raise UsageError(f"offset and limit are integers >= 0, not {op.offset!r} and {op.limit!r}")
            if isinstance(op, PutOp):
                if not op.namespace:
                    raise InvalidNamespaceError("Namespace cannot be empty.")
                if not isinstance(op.key, str):
                    raise UsageError(f"a store key is a str, not {type(op.key).__name__}")
                if op.value is not None and not isinstance(op.value, Mapping):
                    raise UsageError(f"a store value is a dict, not {type(op.value).__name__}")
                if op.ttl is not None and (type(op.ttl) not in (int, float) or not math.isfinite(op.ttl)):
                    # "10" * 60e9 ns was a 120 GB string; NaN and infinity have no expiry time
                    raise UsageError(f"a store ttl is minutes (a finite number), not {op.ttl!r}")
                # the last put of a key wins, as in InMemoryStore; in NFC, as the capsule stores it
                puts[(nfc(tuple(op.namespace)), nfc(op.key))] = op
        if puts and self.read_only:
            raise UsageError(f"{self.path} is open read-only: the store cannot put or delete")
        return puts

    def _texts(self, puts: dict[Key, PutOp]) -> tuple[dict[Key, tuple[str, bool]], list[Key]]:
        texts: dict[Key, tuple[str, bool]] = {}
        need: list[Key] = []
        for k, op in puts.items():
            if op.value is None:
                continue
            fields = None if op.index is None or op.index is False else list(op.index)
            try:
                text, indexed = (value_text(op.value), False) if self._embed is None else \
                    self._embed.text(op.value, fields)
            except (TypeError, ValueError, RecursionError) as e:  # the value is not JSON: say which item
                raise InvalidRecordError(f"store item {_name(k)}: the value is not JSON ({e})") from None
            clash = nfc_clash(op.value)
            if clash is not None:
                raise InvalidRecordError(f"store item {_name(k)}: two keys of one map are {clash!r} in NFC "
                                         "(spec 5.1 stores text in NFC; one would replace the other)")
            texts[k] = (text, indexed)
            if indexed and op.index is not False:
                need.append(k)
        return texts, need

    @staticmethod
    def _prepared(texts: dict[Key, tuple[str, bool]], need: list[Key], vecs: list[list[float]]) -> Prepared:
        if len(vecs) != len(need):
            raise ValueError(f"the embedder returned {len(vecs)} vectors for {len(need)} texts")
        out: Prepared = {k: (t, None) for k, (t, _) in texts.items()}
        for k, v in zip(need, vecs, strict=True):
            out[k] = (texts[k][0], v)
        return out

    def _queries(self, ops: list[Op]) -> list[str]:
        if self._embed is None:
            return []
        return sorted({op.query for op in ops if isinstance(op, SearchOp) and op.query})

    def _refreshing(self, flag: bool) -> bool:
        cfg = self.ttl_config
        return bool(flag and cfg and cfg.get("refresh_on_read", True) and not self.read_only)

    def _run(self, ops: list[Op], puts: dict[Key, PutOp], prepared: Prepared,
             qv: dict[str, list[float]]) -> list[Result]:
        with self._lock:
            now = self._cap.clock()
            results: list[Result] = []
            refresh: dict[Key, Entry] = {}
            for op in ops:  # reads see the store before this batch's puts, as in InMemoryStore
                if isinstance(op, GetOp):
                    e = self._index.get(nfc(tuple(op.namespace)), nfc(op.key))
                    if e is None or e.expired(now):
                        results.append(None)
                        continue
                    if e.ttl is not None and self._refreshing(op.refresh_ttl):
                        refresh[(e.namespace, e.key)] = e
                    results.append(self._item(e))
                elif isinstance(op, SearchOp):
                    found = self._search(op, qv, now)
                    if self._refreshing(op.refresh_ttl):
                        refresh.update(((e.namespace, e.key), e) for e, _ in found if e.ttl is not None)
                    results.append([self._item(e, score) for e, score in found])
                elif isinstance(op, ListNamespacesOp):
                    results.append(self._namespaces(op, now))
                else:
                    results.append(None)
            if puts or refresh:
                self._write(puts, prepared, refresh, now)
            return results

    def _item(self, e: Entry, score: float | None | Literal[False] = False) -> Item:
        value = copy.deepcopy(e.value)  # the caller may change it; the index must not
        if score is False:
            return Item(value=value, key=e.key, namespace=e.namespace,
                        created_at=_dt(e.created), updated_at=_dt(e.updated))
        return SearchItem(namespace=e.namespace, key=e.key, value=value, created_at=_dt(e.created),
                          updated_at=_dt(e.updated), score=score)

    # -- reads --------------------------------------------------------------------------------

    def _search(self, op: SearchOp, qv: dict[str, list[float]], now: int) -> list[tuple[Entry, float | None]]:
        prefix, flt = nfc(tuple(op.namespace_prefix)), nfc(op.filter)
        offset, limit = max(0, op.offset), max(0, op.limit)
        cands = [e for e in self._index.under(prefix) if not e.expired(now) and matches(e.value, flt)]
        if op.query and op.query in qv and any(e.vector for e in cands):
            scored = self._vector(prefix, flt, qv[op.query], now, offset + limit)
            rest = sorted((e for e in cands if not e.vector), key=lambda e: e.order)
            ranked: list[tuple[Entry, float | None]] = [*scored, *((e, None) for e in rest)]
        else:  # only the first offset + limit in order are needed: a heap, not a sort of them all
            ranked = [(e, None) for e in heapq.nsmallest(offset + limit, cands, key=lambda e: e.order)]
        return ranked[offset:offset + limit]

    def _vector(self, prefix: tuple[str, ...], flt: dict[str, Any] | None, vector: list[float], now: int,
                need: int) -> list[tuple[Entry, float | None]]:
        """Ranked by the capsule's own vector index (16.6: exact scores, ties by id), inside the
        namespace tag; the filter is applied after, asking for more until enough pass."""
        tag = ns_tag(prefix) or TAG  # a prefix too long for a tag: every store item, filtered here
        n = len(prefix)
        k = min(_MAX_K, max(1, need))
        while True:
            hits = self._cap.search(vector=vector, mode="vector", k=k, tags=[tag], now=now)
            out: list[tuple[Entry, float | None]] = []
            for h in hits:
                e = self._index.by_rid.get(h.id)
                if e is not None and e.namespace[:n] == prefix and matches(e.value, flt):
                    out.append((e, float(h.score)))
            if len(out) >= need or len(hits) < k or k >= _MAX_K:
                return out
            k = min(_MAX_K, k * 4)

    def _namespaces(self, op: ListNamespacesOp, now: int) -> list[tuple[str, ...]]:
        nss = self._index.namespaces(now)
        if op.match_conditions:
            conds = [c._replace(path=nfc(tuple(c.path))) for c in op.match_conditions]
            nss = [ns for ns in nss if all(does_match(c, ns) for c in conds)]
        nss = sorted({ns[:op.max_depth] for ns in nss}) if op.max_depth is not None else sorted(nss)
        return nss[op.offset:op.offset + op.limit]

    # -- writes -------------------------------------------------------------------------------

    def _write(self, puts: dict[Key, PutOp], prepared: Prepared, refresh: dict[Key, Entry], now: int) -> None:
        """One commit for the batch: every put, delete and TTL refresh, or none of them."""
        new: list[str] = []
        gone: list[Key] = []
        with self._cap.commit() as tx:
            for k, op in puts.items():
                old = self._index.get(*k)
                for rid in self._index.shadowed.get(k, ()):  # older live copies: never to come back
                    tx.forget(rid, reason="delete" if op.value is None else "put", actor=self.actor)
                if op.value is None:
                    if old is not None:
                        tx.forget(old.rid, reason="delete", actor=self.actor)
                        gone.append(k)
                    continue
                text, emb = prepared[k]
                fresh = old is None or old.expired(now)  # an expired item put again is a new item
                meta = item_meta(k[0], k[1], op.value, created=now if fresh or old is None else old.created,
                                 updated=now, ttl_minutes=op.ttl,
                                 index=None if op.index is None or op.index is False else list(op.index))
                ttl = None if op.ttl is None else ttl_ns(op.ttl)
                put_rid: str | None
                try:
                    if old is None:
                        put_rid = tx.remember(text, tags=item_tags(k[0]), meta=meta, embedding=emb, ttl=ttl,
                                              time=now, source=_SOURCE)
                    else:
                        put_rid = self._supersede(tx, old, text, item_tags(k[0]), meta, emb, ttl, now, "put")
                except InvalidRecordError as err:  # docs: the error names the item; the batch is discarded
                    raise InvalidRecordError(f"store item {_name(k)}: {err}") from None
                if put_rid is not None:
                    new.append(put_rid)
            for k, e in refresh.items():
                if k in puts or e.time == now:
                    continue  # a put renews it anyway; or renewed at this very instant
                rec = self._cap.get(e.rid)
                renewed = self._supersede(tx, e, rec.text, list(rec.tags), rec.meta, rec.embedding, rec.ttl, now,
                                          "ttl refresh")
                if renewed is not None:
                    new.append(renewed)
        for k in puts:
            self._index.shadowed.pop(k, None)
        for k in gone:
            self._index.drop(*k)
        for rid in new:
            entry = entry_of(self._cap.get(rid))  # read back: the stored (canonical, NFC) value
            if entry is not None:
                self._index.set(entry)

    def _supersede(self, tx: Any, old: Entry, text: str, tags: list[str], meta: dict[str, Any], emb: Any,
                   ttl: int | None, now: int, reason: str) -> str | None:
        try:
            rid: str = tx.supersede(old.rid, text, tags=tags, meta=meta, embedding=emb, ttl=ttl, time=now,
                                    source=_SOURCE, reason=reason, actor=self.actor)
        except UsageError as e:
            if "nothing changed" in str(e):  # the same memory at the same instant: nothing to write
                return None
            raise
        return rid

    # -- TTL ----------------------------------------------------------------------------------

    def sweep_ttl(self) -> int:
        """Forget every expired item (one commit); returns how many. Expired items are never
        returned anyway (the capsule's own ``time + ttl`` rule); sweeping takes them out of the
        live state too, and history keeps them."""
        with self._lock:
            if self.read_only:
                raise UsageError(f"{self.path} is open read-only: the store cannot sweep")
            now = self._cap.clock()
            dead = sorted((e for d in self._index.by_ns.values() for e in d.values() if e.expired(now)),
                          key=lambda e: (e.namespace, e.key))
            if not dead:
                return 0
            with self._cap.commit() as tx:
                for e in dead:
                    tx.forget(e.rid, reason="ttl expired", actor=self.actor)
                    for rid in self._index.shadowed.get((e.namespace, e.key), ()):
                        tx.forget(rid, reason="ttl expired", actor=self.actor)
            for e in dead:
                self._index.drop(e.namespace, e.key)
                self._index.shadowed.pop((e.namespace, e.key), None)
            return len(dead)

    def start_ttl_sweeper(self, sweep_interval_minutes: float | None = None) -> concurrent.futures.Future[None]:
        """Sweep every ``sweep_interval_minutes`` (or the TTL config's, default 5) in a daemon
        thread until :meth:`stop_ttl_sweeper` or :meth:`close`. The future ends with the thread."""
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        if not self.ttl_config or self.read_only:
            future.set_result(None)
            return future
        if self._sweeper is not None and self._sweeper.is_alive():
            future.set_result(None)
            return future
        interval = float(sweep_interval_minutes or self.ttl_config.get("sweep_interval_minutes") or 5) * 60
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    n = self.sweep_ttl()
                    if n:
                        log.info("capsule store swept %d expired items", n)
                except Exception:  # a sweep that failed is retried at the next interval
                    log.exception("capsule store TTL sweep failed")
            future.set_result(None)

        self._sweeper = threading.Thread(target=loop, daemon=True, name="capsule-store-ttl")
        self._sweeper.start()
        return future

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper thread; True when it has stopped (or none ran)."""
        t = self._sweeper
        if t is None:
            return True
        self._stop.set()
        t.join(timeout)
        if t.is_alive():
            return False
        self._sweeper = None
        return True
