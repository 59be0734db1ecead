"""Hybrid fusion and the choice ``auto`` makes (spec 16.6).

Theory of operation
-------------------
Hybrid search runs a lexical and a vector search, each ``max(50, 4k)`` deep
with the same filters, and fuses the two lists. Files whose header minor is 3
or less fuse by reciprocal rank, as they always did (their golden results must
not move). Files of minor 4 or more fuse by a weighted sum of z-scores: on
LoCoMo, RRF lost to the better of its two sides in 46 of 48 pairings, because a
weak side drags the strong one down as hard as it helps; weighting the sides by
a lexical weight fitted per embedder did not lose in 45 of 48. A weight of 1
(``hash``: a lexical embedder adds nothing to BM25) is the lexical list itself,
so ``auto`` does not fuse at all then.

Everything here is pure: lists of ``(id, score, record)`` in, the same out;
plain float64 arithmetic in a written order (no numpy reductions, whose
summation order is theirs), so every host gets the same bits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from ..core.errors import UsageError

#: 16.6: a file created with header minor >= this fuses by weighted z-scores; older ones by RRF.
WEIGHTED_MINOR = 4
RRF_K = 60  # 16.6: reciprocal rank fusion constant (Cormack et al. 2009)
FUSIONS = ("rrf", "weighted")
#: 16.6: the lexical weight per embedder name, fitted on LoCoMo conv-26, conv-30 and conv-41
#: (recall@10, grid of 0.1) with the lexical side of minor 4 (benchmarks/fit_fusion.py).
LEXICAL_WEIGHTS: Mapping[str, float] = MappingProxyType({"hash": 1.0, "minilm": 0.7, "e5-small": 0.8})
#: 16.6: the weight for an embedder not in the table, and for a query vector the caller gives.
DEFAULT_LEXICAL_WEIGHT = 0.5

Scored = tuple[bytes, float, Any]  # (record id, score, the record if already read)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Ranking:
    """How a search ranked its results: the mode it ran and why (``auto`` says what it chose).

    ``mode`` is ``lexical``, ``vector``, ``hybrid`` or ``list`` (no query: newest first);
    ``fusion`` (``weighted`` or ``rrf``) and ``lexical_weight`` are set for hybrid only."""

    mode: str
    fusion: str | None = None
    lexical_weight: float | None = None
    why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "fusion": self.fusion, "lexical_weight": self.lexical_weight, "why": self.why}


class Results(list[_T], Generic[_T]):
    """The hits of a search, best first (a plain list to all that read it as one), and
    ``ranking``: how they were ranked (the mode ``auto`` chose, and why).

    >>> with cap.commit() as tx:
    ...     _ = tx.remember("the deploy key lives in vault")
    >>> hits = cap.search("deploy key")
    >>> [h.text for h in hits], hits.ranking.mode, hits.ranking.why
    (['the deploy key lives in vault'], 'lexical', 'auto: this capsule has no vectors')
    """

    __slots__ = ("ranking",)

    def __init__(self, hits: Iterable[_T] = (), ranking: Ranking | None = None) -> None:
        super().__init__(hits)
        self.ranking = ranking or Ranking("list")

    def with_hits(self, hits: Iterable[_T]) -> Results[_T]:
        """Other hits (a filtered few of these), ranked the same way."""
        return Results(hits, self.ranking)


def lexical_weight_for(embedder: str) -> float:
    """16.6: the table's weight for an embedder name (``hash-<dim>`` is ``hash`` at another size)."""
    if embedder in LEXICAL_WEIGHTS:
        return LEXICAL_WEIGHTS[embedder]
    if embedder.startswith("hash-") and embedder[5:].isdigit():
        return LEXICAL_WEIGHTS["hash"]
    return DEFAULT_LEXICAL_WEIGHT


def parse_fusion(fusion: object, lexical_weight: object) -> tuple[str | None, float | None]:
    """A caller's ``fusion`` (None, ``rrf`` or ``weighted``) and ``lexical_weight`` (None or 0..1)."""
    if fusion is not None and (not isinstance(fusion, str) or fusion not in FUSIONS):
        raise UsageError(f"fusion must be one of {', '.join(FUSIONS)}, not {fusion!r}")
    if lexical_weight is None:
        return fusion, None
    if isinstance(lexical_weight, bool) or not isinstance(lexical_weight, int | float) \
            or not 0.0 <= lexical_weight <= 1.0:  # NaN fails the range test too
        raise UsageError(f"lexical weight must be a number from 0 to 1, not {lexical_weight!r}")
    if fusion == "rrf":
        raise UsageError("a lexical weight applies to weighted fusion, not rrf")
    return fusion, float(lexical_weight)


# --- the two fusions ------------------------------------------------------------------------


def fuse_rrf(lists: Sequence[Sequence[Scored]], k: int) -> list[Scored]:
    """16.6: reciprocal rank fusion, sum of 1 / (60 + rank), ties by id."""
    score: dict[bytes, float] = {}
    rec: dict[bytes, Any] = {}
    for hits in lists:
        for rank, (rid, _, r) in enumerate(hits, 1):
            score[rid] = score.get(rid, 0.0) + 1.0 / (RRF_K + rank)
            if r is not None:
                rec[rid] = r
    order = sorted(score, key=lambda r: (-score[r], r))[:k]
    return [(r, score[r], rec.get(r)) for r in order]


def zscores(scores: Sequence[float]) -> list[float]:
    """16.6: (s - mean) / population standard deviation, summed left to right in float64.

    All scores equal (one score, say), or a deviation that underflows to 0: every z is 1, so
    the list still lifts its records over the ones it lacks (which take 0, :func:`fuse_weighted`)."""
    n = len(scores)
    if n == 0:
        return []
    first = scores[0]
    if all(s == first for s in scores):
        return [1.0] * n
    total = 0.0
    for s in scores:
        total += s
    mean = total / n
    sq = 0.0
    for s in scores:
        d = s - mean
        sq += d * d
    sd = math.sqrt(sq / n)
    if sd == 0.0:
        return [1.0] * n
    return [(s - mean) / sd for s in scores]


def fuse_weighted(lexical: Sequence[Scored], vector: Sequence[Scored], w_lex: float, k: int) -> list[Scored]:
    """16.6: w_lex * z_lex + (1 - w_lex) * z_vec over the union of both lists, ties by id.

    Each list is z-scored over itself (in its own order); a record missing from a list
    takes the lesser of that list's lowest z and 0 (0 for an empty list). ``w_lex`` 1 (0) is the lexical
    (vector) list itself, with its own scores."""
    if w_lex == 1.0:
        return list(lexical[:k])
    if w_lex == 0.0:
        return list(vector[:k])
    w_vec = 1.0 - w_lex
    zl = zscores([s for _, s, _ in lexical])
    zv = zscores([s for _, s, _ in vector])
    floor_l = min([0.0, *zl])
    floor_v = min([0.0, *zv])
    lz = {rid: z for (rid, _, _), z in zip(lexical, zl, strict=True)}
    vz = {rid: z for (rid, _, _), z in zip(vector, zv, strict=True)}
    rec = {rid: r for rid, _, r in (*vector, *lexical) if r is not None}
    score = {rid: w_lex * lz.get(rid, floor_l) + w_vec * vz.get(rid, floor_v) for rid in lz.keys() | vz.keys()}
    order = sorted(score, key=lambda r: (-score[r], r))[:k]
    return [(r, score[r], rec.get(r)) for r in order]


# --- what to run ------------------------------------------------------------------------------


def check_query_text(query: object) -> None:
    """A query text is a string of valid Unicode, as `put` refuses other text (none is stored)."""
    if query is not None and not isinstance(query, str):
        raise UsageError("query must be a string")
    if query is not None and not query.isascii():
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:
            raise UsageError("query is not valid Unicode (lone surrogate or undecodable byte)") from None


def check_query_vector(vector: object) -> None:
    """A query vector is checked as a stored one would be (7.1): numbers, finite as float32 (a
    wrong dimension is the index's to name; with no vectors yet there is nothing to find)."""
    import numpy as np

    try:
        with np.errstate(over="ignore"):
            v32 = np.asarray(vector, dtype=np.float64).astype(np.float32)
    except (TypeError, ValueError):
        raise UsageError("a query vector must be a list of numbers") from None
    if not np.isfinite(v32).all():
        raise UsageError("a query vector must hold finite float32 numbers (beyond +-3.4e38 is infinite)")


def plan(mode: str, *, minor: int, text: bool, vector: bool, embedder: str, has_vectors: bool,
         fusion: str | None, lexical_weight: float | None) -> Ranking:
    """16.6: the ranking a search runs, before any embedder is loaded.

    ``embedder``: the name of the embedder that would embed the query text (the
    caller's, else the capsule's; "" when the vectors name none); ``vector``: the
    caller gave a query vector; ``has_vectors``: the capsule's vector parameters
    are fixed. ``mode`` is checked by the caller; ``text`` or ``vector`` is true."""
    if (fusion is not None or lexical_weight is not None) and mode in ("lexical", "vector"):
        raise UsageError(f"fusion and lexical weight apply to hybrid search, not {mode} (use mode hybrid or auto)")
    if fusion is not None:
        how, fsrc = fusion, "asked for"
    elif lexical_weight is not None:
        how, fsrc = "weighted", "a lexical weight was given"
    else:
        how, fsrc = ("weighted" if minor >= WEIGHTED_MINOR else "rrf"), f"the default for a format 1.{minor} file"
    if lexical_weight is not None:
        w, wsrc = lexical_weight, "asked for"
    elif vector:
        w, wsrc = DEFAULT_LEXICAL_WEIGHT, "the default with a query vector"
    else:
        w, wsrc = lexical_weight_for(embedder), f"the weight for the embedder {embedder or '(none)'}"
    if how == "rrf":
        fused = f"reciprocal rank fusion ({fsrc})"
    else:
        alone = {1.0: ", i.e. the lexical ranking", 0.0: ", i.e. the vector ranking"}.get(w, "")
        fused = f"weighted z-score fusion ({fsrc}), lexical weight {w:g} ({wsrc}){alone}"

    def hybrid(reason: str) -> Ranking:
        return Ranking("hybrid", how, w if how == "weighted" else None, f"{reason}; {fused}")

    if mode != "auto":
        return hybrid("asked for") if mode == "hybrid" else Ranking(mode, why="asked for")
    if vector:
        return hybrid("auto: a query vector and a query text") if text else \
            Ranking("vector", why="auto: a query vector and no query text")
    if not has_vectors:
        return Ranking("lexical", why="auto: this capsule has no vectors")
    if not embedder:
        return Ranking("lexical", why="auto: this capsule's vectors came from the agent, not a named embedder "
                                      "(give a query vector to search them)")
    if w == 1.0 and fusion != "rrf":
        return Ranking("lexical", why=f"auto: the lexical weight is 1 ({wsrc}): the vectors add nothing to the words")
    return hybrid("auto: a fusion was asked for" if w == 1.0 else f"auto: the lexical weight {w:g} ({wsrc}) is below 1")


__all__ = ["DEFAULT_LEXICAL_WEIGHT", "FUSIONS", "LEXICAL_WEIGHTS", "RRF_K", "Ranking", "Results", "WEIGHTED_MINOR",
           "fuse_rrf", "fuse_weighted", "lexical_weight_for", "parse_fusion", "plan",
           "zscores"]
