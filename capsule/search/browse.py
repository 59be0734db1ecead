"""Listing without a query: the live records that pass the filters, newest first (spec 16.6).

A search with neither a query text nor a query vector lists instead of ranking:
the searchable records (memories, notes, decisions) that are live, not expired
and pass every filter, ordered by time descending, ties by the smaller id, each
with score 0. It filters the whole lexical catalog (16.4, 16.8) with the same
mask a lexical search applies to its candidates, so a listing and a search
agree on what may be returned, and it is the same on every host.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from ..core.lazy import lazy
from ..format import canonical as canon
from .catalog import rid_at
from .params import same_value

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

if TYPE_CHECKING:
    from .engine import Filter, Searcher


def browse(s: Searcher, k: int, flt: Filter, now: int) -> list[tuple[bytes, float, Any]]:
    """Up to ``k`` of the searchable records passing ``flt`` at ``now``, newest first."""
    d = s.docs()
    if d.n == 0:
        return []
    cand = np.arange(d.n, dtype=np.int64)
    if flt.meta:
        return _newest_with_meta(s, d, cand, k, flt, now)
    # The newest documents first, the filters on them only, widened until k pass: a mask over a
    # million (the dead set's is a sort of every id) for a listing of 5 cost seconds. Every
    # document at least as new as the m-th newest is taken, so ties at any cut come whole, and
    # once k pass, no older document can be among the k newest that pass.
    every = d.column("time", cand).astype(np.int64)
    m = min(d.n, max(8 * k, 256))
    while True:
        sub = cand if m >= d.n else np.flatnonzero(every >= np.partition(every, d.n - m)[d.n - m])
        ok = sub[s.catalog_mask(d, sub, flt, now)]
        if len(ok) >= k or len(sub) == d.n:
            break
        m *= 16
    cand = ok
    times = every[cand]
    if len(cand) > k:  # the k newest, and every record tied with the k-th on time
        keep = times >= np.partition(times, len(times) - k)[len(times) - k]
        cand, times = cand[keep], times[keep]
    ids = d.column("ids", cand)
    order = np.lexsort((ids, -times))[:k]  # time descending, then id ascending (S32 is byte order)
    return [(rid_at(ids, int(i)), 0.0, None) for i in order]


__all__ = ["browse"]


def _newest_with_meta(s: Searcher, d: Any, cand: np.ndarray, k: int, flt: Filter, now: int
                      ) -> list[tuple[bytes, float, Any]]:
    """The same list when ``flt`` has meta filters, which read each record: every other filter
    first, then the records newest first, each read only until ``k`` pass (a listing of 5 of a
    million records reads about 5 of them when most match, not a million)."""
    cand = cand[s.catalog_mask(d, cand, dataclasses.replace(flt, meta=()), now)]
    times = d.column("time", cand).astype(np.int64)
    ids = d.column("ids", cand)
    out: list[tuple[bytes, float, Any]] = []
    needles = tuple(canon.pack(key) + v for key, v in flt.meta)  # a record lacking one is not decoded
    for i in np.lexsort((ids, -times)).tolist():  # time descending, then id ascending
        if len(out) >= k:
            break
        rid = rid_at(ids, i)
        meta = s._meta(rid, needles)
        if all(key in meta and same_value(meta[key], v) for key, v in flt.meta):
            out.append((rid, 0.0, None))
    return out
