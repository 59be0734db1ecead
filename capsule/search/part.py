"""The search side of a capsule handle: its Searcher and when to snapshot (spec 16.1, 16.3).

The handle delegates every search call here. This part decides when the vector
index is written back as a BLOB snapshot (after a commit past a threshold, on
close when cheap, on demand) and fixes the index parameters with the first
embedding. It writes only through the ``write_blob`` callback the handle gives
it, so a snapshot is one more commit of the handle's own writer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.errors import CapsuleError, InvalidRecordError, UsageError
from ..format.records import _REGISTRY, encode_record
from ..format.store import Store
from ..format.writer import Item
from .engine import Hit, Searcher
from .engine import search as run_search
from .vindex import BLOB_TYPE, VectorIndex, VectorParams

#: writer policy (16.3): snapshot on close when this many vectors are not in the newest one,
SNAPSHOT_ON_CLOSE = 256
#: and after a commit once the unsnapshotted vectors reach max(this, the snapshot's size).
SNAPSHOT_EVERY = 16_384
#: Close builds an index nobody loaded this session only when this few vectors need inserting.
CLOSE_BUILD_MAX = 16_384


class SearchPart:
    def __init__(self, store: Store, write_blob: Callable[[tuple[str, bytes]], Any]) -> None:
        self.store = store
        self._write_blob = write_blob
        self._s: Searcher | None = None
        self.defaults: VectorParams | None = None  # configure_vectors() before the first embedding

    @property
    def loaded(self) -> Searcher | None:
        """The searcher if this handle made one (nothing is built to answer this)."""
        return self._s

    def searcher(self) -> Searcher:
        self.store.check_open()
        if self._s is None:
            self._s = Searcher(self.store)
        return self._s

    def search(self, query: str | None, **kw: Any) -> list[Hit]:
        return run_search(self.searcher(), query, **kw)

    def config(self) -> VectorParams | None:
        return self.searcher().config()

    def check_configure(self, want: VectorParams, dim: int | None) -> VectorParams | None:
        """The parameters already fixed (if they agree with ``want``), else None."""
        have = self.config()
        if have is None:
            return None
        same = want if dim is not None else VectorParams(want.space, have.dim, want.M, want.ef_construction,
                                                         want.seed, want.embedder)
        if have != same:
            raise UsageError(f"this capsule's vector index is already fixed: {have.space}, dim {have.dim}, "
                             f"M {have.M}, ef_construction {have.ef_construction}, seed {have.seed}")
        return have

    def params_for(self, dim: int, pending: VectorParams | None, want: VectorParams | None,
                   clock: Callable[[], int]) -> tuple[VectorParams | None, Item | None]:
        """16.1: the first embedding fixes the index; later ones must match it.

        For a commit adding an embedding of ``dim``: the parameters this commit
        fixes (None when they were fixed before) and the ``vindex`` record to write
        with it when one is needed."""
        have = pending or self.config()
        if have is not None:
            if have.dim != dim:
                raise InvalidRecordError(f"embedding has dimension {dim}, but this capsule's vectors have "
                                         f"{have.dim} (fixed by its first embedding)")
            return None, None
        base = want or self.defaults
        if base is None:
            # 16.1: no vindex record needed; the defaults and this dimension govern.
            return VectorParams(dim=dim), None
        have = VectorParams(base.space, dim, base.M, base.ef_construction, base.seed, base.embedder)
        # the clock is read only for the record that needs a time (7: every reading of an
        # injected clock is part of the file's bytes)
        cfg = _REGISTRY["vindex"].build(time=clock(), dim=dim, space=have.space, M=have.M,
                                      ef_construction=have.ef_construction, seed=have.seed, embedder=have.embedder)
        rid, data = encode_record(cfg)
        return have, (rid, "vindex", data)

    def committed(self, vectors: int, params: VectorParams | None) -> BaseException | None:
        """After a commit that added ``vectors`` embeddings: snapshot at the threshold (16.3).

        Returns the error of a failed snapshot: the commit before it is durable,
        only the optional snapshot failed (an I/O error also poisons the writer,
        so the next commit says so)."""
        s = self.searcher() if vectors else self._s
        if s is None:
            return None
        if params is not None and s.params is None:
            s.params = params
        s.pending_vectors += vectors
        if s.vi is not None and s.pending_vectors >= max(SNAPSHOT_EVERY, s.snapshot_count):
            try:
                s.vectors()
                self.write_snapshot()
            except (CapsuleError, OSError) as e:
                return e.with_traceback(None)
        return None

    def on_close(self) -> None:
        """16.3: a snapshot of the vector index, so the next open need not insert much."""
        s = self._s
        if s is None:
            return
        if s.vi is None and s.pending_vectors >= SNAPSHOT_ON_CLOSE:
            # Not loaded this session: bring it up only if that is cheap; a
            # larger catch-up is left to the first search or build_index().
            base = (s._blob_params() or (None, 0))[1]
            if self.store.snap.kinds.get("memory", 0) - base <= CLOSE_BUILD_MAX:
                s.vectors()
        if s.vi is not None:
            s.vectors()
            if len(s.vi) - s.snapshot_count >= SNAPSHOT_ON_CLOSE:
                self.write_snapshot(reload=False)

    def build(self) -> int:
        vi = self.searcher().vectors()
        return 0 if vi is None else len(vi)

    def info(self) -> dict[str, Any]:
        s = self.searcher()
        p = s.config()
        ref = self.store.snap.blobs.get(BLOB_TYPE)
        return {"vectors": None if p is None else {**p.to_value(), "embedder": p.embedder},
                "indexed": None if s.vi is None else len(s.vi),
                "snapshot": None if ref is None else {"offset": ref.offset, "bytes": ref.size, "parts": ref.parts,
                                                      "sha256": ref.id.hex(),
                                                      "vectors": s.snapshot_count if s.vi is not None
                                                      else (s._blob_params() or (None, None))[1]},
                "doubt": s.doubt, "notice": s.notice}

    def save(self) -> bool:
        s = self.searcher()
        vi = s.vectors()
        if vi is None or (len(vi) == s.snapshot_count and BLOB_TYPE in self.store.snap.blobs):
            return False
        self.write_snapshot()
        return True

    def write_snapshot(self, *, reload: bool = True) -> None:
        s = self._s
        assert s is not None and s.vi is not None
        blob = s.vi.encode()
        self._write_blob((BLOB_TYPE, blob))
        if not reload:  # closing: nothing will search this handle again
            s.snapshot_count = len(s.vi)
            return
        # Continue from the blob as a reader would load it: the graph's level
        # generator restarts there too, so writer and readers stay identical (7).
        s.vi = VectorIndex.decode(blob)
        s.snapshot_count, s.pending_vectors = len(s.vi), 0
        s._vpos = self.store.snap.end


__all__ = ["SearchPart", "SNAPSHOT_EVERY", "SNAPSHOT_ON_CLOSE", "CLOSE_BUILD_MAX"]
