"""The search side of the :class:`~capsule.handle.capsule.Capsule` handle (spec 16).

A mixin, so the handle stays a facade under the module size limit: each method
takes the handle's locks and delegates to its :class:`~capsule.search.part.SearchPart`,
made on first use (opening to read loads no search engine).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..questions._lifecycle import redacted
from ..search.vindex import VectorParams

if TYPE_CHECKING:
    from ..format.store import Store
    from ..search.engine import Hit
    from ..search.fusion import Results
    from ..search.part import SearchPart
    from .transaction import Transaction


class SearchMethods:
    """``search``, the vector index's parameters, building and snapshots."""

    if TYPE_CHECKING:  # what the handle provides
        _lock: threading.RLock
        _view_lock: threading.RLock
        _store: Store

        @property
        def _search(self) -> SearchPart: ...

        def _check_writer(self) -> None: ...

        def commit(self) -> Transaction: ...

    def search(self, query: str | None = None, *, vector: Any = None, k: int = 10, mode: str = "auto",
               tags: Any = None, any_tags: Any = None, tier: Any = None, kind: Any = None, since: Any = None,
               until: Any = None, meta: Mapping[str, Any] | None = None, ef: int = 64,
               embedder: Any = None, now: int | None = None, valid_at: int | str | None = None,
               fusion: str | None = None, lexical_weight: float | None = None) -> Results[Hit]:
        """Find live memories (and notes and decisions, lexically) by meaning or by words.

        ``mode``: ``vector`` (needs ``vector`` or an embedder for ``query``), ``lexical``
        (BM25 over text), ``hybrid`` (both, fused, 16.6) or ``auto`` (lexical when the
        capsule's embedder adds nothing to the words, as ``hash``; hybrid with a semantic
        one; vector for a query vector alone). Hybrid fuses by weighted z-scores in a file
        created as format 1.4 or later, by reciprocal rank in older ones; ``fusion``
        (``"weighted"`` or ``"rrf"``) and ``lexical_weight`` (0..1) override that.
        The result is a list with ``ranking``: the mode it ran, and why.
        Filters: ``tags`` (all of), ``any_tags``, ``tier``, ``kind``, ``since`` /
        ``until`` (int ns or ISO-8601, inclusive), ``meta`` (equality per key).
        Expired (``time + ttl <= now``) and rolled-back records are never returned.
        ``valid_at`` (int ns or ISO-8601) searches the valid-time view (13.6): the memories
        true at that world time, a superseded one included while it was true; expiry is
        then judged at ``valid_at``.
        Results are exactly scored, best first, ties by id: the same on every host.
        With neither ``query`` nor ``vector`` it lists: the records passing the filters, newest first, score 0.

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
        red = redacted(self._store)  # 7.7.1: a view from before a redaction still hides it
        want = k
        while True:
            with self._view_lock:
                hits = self._search.search(query, vector=vector, k=want, mode=mode, ef=ef, embedder=embedder,
                                           now=now, tags=tags, any_tags=any_tags, tier=tier, kind=kind,
                                           since=since, until=until, meta=meta, valid_at=valid_at,
                                           fusion=fusion, lexical_weight=lexical_weight, hidden=red)
            if not red:
                return hits
            kept = [h for h in hits if bytes.fromhex(h.id) not in red]
            if len(kept) >= k or len(hits) < want or want >= 10_000:  # k left, or no more to find (16.6's cap)
                return hits.with_hits(kept[:k])
            want = min(10_000, max(2 * want, k + len(hits) - len(kept)))  # past the redacted ones, log steps

    def vector_config(self) -> VectorParams | None:
        """The vector index parameters fixed at first use (16.1), or None."""
        with self._view_lock:
            return self._search.config()

    def configure_vectors(self, *, space: str = "cosine", dim: int | None = None, M: int = 16,
                          ef_construction: int = 200, seed: int = 100, embedder: str = "") -> VectorParams:
        """Fix how the vector index is built, before the first embedding (16.1).

        With ``dim`` the choice is committed now; without, it is committed with the
        first embedding. Asking for other parameters once they are fixed is an error."""
        self._check_writer()
        want = VectorParams(space, dim or 0, M, ef_construction, seed, embedder)
        with self._lock:
            with self._view_lock:
                have = self._search.check_configure(want, dim)
                if have is not None:
                    return have
                if dim is None:
                    self._search.defaults = want
                    return want
            with self.commit() as tx:
                tx._vector_config(dim, want)
            return want

    def build_index(self) -> int:
        """Bring the vector index up to date now (load its snapshot, insert newer
        memories, single-threaded); returns the number of indexed vectors."""
        with self._view_lock:
            return self._search.build()

    def index_info(self) -> dict[str, Any]:
        """What the search indexes hold: vector parameters and counts, snapshot, doubts."""
        with self._view_lock:
            return self._search.info()

    def save_index(self, *, full: bool = False) -> bool:
        """Write a snapshot of the vector index now if it holds vectors the newest
        snapshot lacks (and of the lexical catalog from 256 records it lacks, or any with
        ``full``). True if one was written."""
        self._check_writer()
        with self._lock, self._view_lock:
            return self._search.save(full)


__all__ = ["SearchMethods"]
