"""The valid-time view as a search filter (spec 13.6, 16.6).

A search with ``valid_at`` T returns what the view at T holds: the ids it leaves out
(:meth:`~capsule.state.validtime.ValidTime.hidden`) take the place of the dead ids in the
entry masks of the vector index and the lexical catalog, so a superseded memory that was
true at T can be found and a live one that was not cannot. Since the filter is a mask
applied before ranking (inside the graph walk, or over the catalog's candidates), a
view that leaves out most entries still gives the k best that remain: no result is
fetched and then dropped. The facts are read once per searcher and extended as its
snapshot grows (only the frames after what was read).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.lazy import lazy
from ..state.validtime import ValidTime

if TYPE_CHECKING:
    import numpy as np

    from ..format.store import Store
else:
    np = lazy("numpy")


class ValidView:
    """Which entries of an index (the catalog's documents, the vector index's labels) the
    view at a time hides. Per index and snapshot the ids are matched once; a new time then
    costs one comparison per bounded memory and one copy of a boolean per entry."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.facts = ValidTime()
        self._at: dict[str, tuple[object, tuple[int, int], np.ndarray, np.ndarray, np.ndarray]] = {}

    def hidden(self, t: int) -> frozenset[bytes]:
        """The ids a search at valid time ``t`` must not return (dead ones included)."""
        return self.facts.update(self.store).hidden(t)

    def hides(self, index: object, n: int, ids: Callable[[], np.ndarray], t: int) -> np.ndarray:
        """A boolean per entry of ``index`` (a catalog or a vector index of ``n`` entries, whose
        ``S32`` ids ``ids()`` gives): hidden by the view at ``t``."""
        sp = self.facts.update(self.store).split()
        got = self._at.get(type(index).__name__)
        if got is None or got[0] is not index or got[1] != (n, self.facts.end):
            arr = ids()
            always = np.isin(arr, sp.always_arr)
            pos = np.flatnonzero(np.isin(arr, sp.window_arr))  # every label an id has (16.3: forged repeats)
            order = np.argsort(sp.window_arr, kind="stable")
            which = order[np.searchsorted(sp.window_arr[order], arr[pos])]
            got = self._at[type(index).__name__] = (index, (n, self.facts.end), always, pos, which)
        _, _, always, pos, which = got
        out = always.copy()
        out[pos[~sp.holds(t)[which]]] = True
        return out


__all__ = ["ValidView"]
