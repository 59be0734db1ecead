"""Snapshot entries against the records they name (spec 16.1, 16.3).

The hash of a vector snapshot (3.4) binds it to the file, not to the records. A
reader does not rescan history to prove every entry; it checks the ones it is
about to use: each result a search takes from the snapshot names a committed
memory whose embedding (as indexed), time, ttl, tier and tags are the entry's.
The first disagreement makes the snapshot absent (the caller rebuilds, 16.2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..core.errors import CorruptError
from ..core.lazy import lazy
from ..format.records import Memory
from .vindex import TIERS, VectorIndex

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


def check_ids_distinct(ids: bytes, *, where: int) -> None:
    """16.1: entry i is the i-th memory in commit order, so no id appears twice."""
    arr = np.frombuffer(ids, "S32")
    if len(np.unique(arr)) != len(arr):
        raise CorruptError("vector index snapshot: an id appears twice", offset=where, check="vindex")


def entries_disagree(vi: VectorIndex, labels: Iterable[int], get: Callable[[bytes], Any]) -> str | None:
    """Why the snapshot entries at ``labels`` are not the memories they name (16.3),
    or None: each id must name a committed memory whose embedding (as indexed: unit
    length for cosine), time, ttl, tier and tags are the entry's. ``get`` reads a
    record by id (None when absent). A search checks the entries it returns."""
    dim = vi.params.dim
    for label in labels:
        rid = vi.ids[label]
        rec = get(rid)
        if not isinstance(rec, Memory) or rec.embedding is None or len(rec.embedding) != dim:
            return f"entry {label} names {rid.hex()[:16]}, not a committed memory with a {dim}-dimension embedding"
        want = np.asarray(rec.embedding, np.float64)
        if vi.params.space == "cosine":
            norm = float(np.sqrt(want @ want))
            want = want / (norm or 1.0)
        entry = (rec.time, rec.ttl or 0, TIERS[rec.tier], sorted(rec.tags))
        have = (int(vi.times[label]), int(vi.ttls[label]), int(vi.tiers[label]), sorted(vi.tags_of(label)))
        if entry != have or not np.allclose(vi._vecs[label], want, rtol=1e-5, atol=1e-6):  # as stored
            return f"entry {label} does not hold the embedding, time, ttl, tier and tags of {rid.hex()[:16]}"
    return None
