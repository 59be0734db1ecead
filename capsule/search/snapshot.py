"""Graph invariants of a vector index snapshot (spec 16.2), checked before hnswlib sees it.

hnswlib follows its link lists without checking them: a neighbour on level L whose own
element has no list on L, a count past the list, an entry point off the top level, send
it into memory that is not there (the F4 segfault). Every check here is one vectorised
pass over the snapshot's arrays, with no copy of the level-0 table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.errors import CorruptError
from ..core.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


def check_graph(arr: dict[str, np.ndarray], *, n: int, ep: int, top: int, m: int, m0: int, dim: int,
                per: int, link0: int, per_links: int,
                bad: Callable[[str], CorruptError]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check levels, level-0 and upper-level lists, labels and vectors; return
    (levels, the vectors as a float32 view, the upper-level links)."""
    levels = arr["levels"].view("<i4").astype(np.int64)
    # 16.2: hnswlib starts every search at the entry point on the top level.
    if n and (int(levels.min()) < 0 or int(levels.max()) != top or levels[ep] != top):
        raise bad("levels disagree with the top level")
    # Level 0: per element, a u32 count, 2M neighbour ids, the vector, the label.
    # Checked through strided u32 views: no copy of the 100+ MB table.
    l0u = arr["level0"].view("<u4").reshape(n, per // 4)
    cnt = l0u[:, 0]
    # 16.2: hnswlib reads the count as a u16 and its deleted flag from the third
    # byte; a u32 <= 2M proves both (no deletions in a snapshot).
    if n and int(cnt.max()) > m0:
        raise bad("a level-0 neighbour count exceeds 2M")
    # 16.2: every slot, used or not, holds a label < n (hnswlib zeroes new slots
    # and only ever writes labels), so one max over the block checks them all.
    nb0 = l0u[:, 1 : 1 + m0]
    if n and int(nb0.max()) >= n:
        raise bad("a level-0 neighbour is out of range")
    if _self_linked(nb0, cnt, np.arange(n)):
        raise bad("a level-0 list names its own element")
    lab = (per - 8) // 4
    if n and (not np.array_equal(l0u[:, lab], np.arange(n, dtype=np.uint32)) or int(l0u[:, lab + 1].max())):
        raise bad("labels are not in commit order")
    vecs = l0u[:, link0 // 4 : link0 // 4 + dim].view("<f4")
    if n and not np.isfinite(vecs.sum(axis=1, dtype=np.float64)).all():
        raise bad("a stored vector is not finite")
    links = arr["links"]
    upper = levels[levels > 0]
    if len(links) != per_links * int(upper.sum()):
        raise bad("upper-level links have the wrong size")
    if len(links):
        lk = links.view("<u4").reshape(-1, m + 1)
        cnt_up, nb = lk[:, 0], lk[:, 1:]
        if int(cnt_up.max()) > m:
            raise bad("an upper-level neighbour count exceeds M")
        if int(nb.max()) >= n:
            raise bad("an upper-level neighbour is out of range")
        # Row r is the list on level lvl[r] of element own[r] (label order, levels
        # ascending). 16.2: hnswlib follows a neighbour on level L into that
        # neighbour's own list on level L, which an element below L does not have
        # (a null or short pointer in C++: the F4 segfault).
        own = np.repeat(np.flatnonzero(levels > 0), upper)
        lvl = np.arange(len(lk)) - np.repeat(np.cumsum(upper) - upper, upper) + 1
        used = np.arange(m) < cnt_up[:, None]
        if np.any(used & (levels[nb] < lvl[:, None])):
            raise bad("an upper-level neighbour has no list on that level")
        if _self_linked(nb, cnt_up, own):
            raise bad("an upper-level list names its own element")
    return levels, vecs, links


def _self_linked(nb: np.ndarray, counts: np.ndarray, owners: np.ndarray) -> bool:
    """Whether a used slot of some list names the list's own element (16.2: hnswlib
    never links an element to itself). Cheap when, as in every real graph, no slot does."""
    if not len(nb):
        return False
    same = nb == owners.astype(nb.dtype)[:, None]
    if not same.any():
        return False
    rows, cols = np.nonzero(same)
    return bool(np.any(cols < counts[rows]))
