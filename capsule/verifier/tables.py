"""13.3: the tables of the INDEX in force against the committed records."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy
from ..format.index import Segment, merge_inputs
from .fast import tables_list

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


def tables_match(segs: list[Segment], ids: bytearray, locs: list[tuple[int, int]], n: int) -> bool:
    """13.3: the tables of the INDEX in force list exactly the first ``n`` committed
    records at their places, each table sorted by id (9.1) with the right prefixes
    (a reader binary-searches the prefix column, so a wrong one would hide a record)."""
    for seg in segs:
        if len(seg.ids) > 1 and not bool(np.all(seg.ids[1:] > seg.ids[:-1])):
            return False  # 9.1: strictly increasing ids (NumPy's S order is byte order here)
        heads = np.frombuffer(seg.ids.tobytes(), dtype=">u8").reshape(-1, 4)[:, 0] if len(seg.ids) else seg.prefix
        if not np.array_equal(heads.astype(np.uint64), seg.prefix):
            return False
    tids, tframes, tslots = merge_inputs(segs, {})
    if (same := tables_list(tids, tframes, tslots, ids, locs, n)) is not None:
        return same  # fast.py: the comparison below, in NumPy
    torder = np.argsort(tids, kind="stable")
    expect = {(bytes(ids[32 * i : 32 * i + 32])): locs[i] for i in range(n)}
    got = {bytes(segs_id): (int(f), int(s)) for segs_id, f, s in
           zip(np.frombuffer(tids[torder].tobytes(), dtype="V32"), tframes[torder], tslots[torder], strict=True)}
    return got == expect


__all__ = ["tables_match"]
