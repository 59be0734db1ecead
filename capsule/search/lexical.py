"""BM25 over record text (spec 16.4, 16.4.1): the ranking rule of a file, and the scoring.

A file's *rule* is fixed by its header minor (12.8): files created before 1.4
rank with tokenizer 1 (the NFKC, case-folded runs of letters and digits) and
each document alone; 1.4 files with tokenizer 2 (accents stripped, identifiers
whole and in parts, stop words, Snowball stems; ``tokenize``) and a context
window: a memory is scored with the nearest live memory of its session before
and after it. Scores are Okapi BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N - df +
0.5) / (df + 0.5))) summed over the distinct query terms in sorted order in
float64, so the same records give the same scores on every host. The documents
and their postings live in segments (``lexsnap``), read from a snapshot blob or
built from the records; the scores do not depend on which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.lazy import lazy
from .tokenize import _TOKEN, T1, T2, TOKENIZER_1, Tokenizer, term_ids1, tokenize1

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


K1 = 1.2
B = 0.75
#: 16.8: names tokenizer 1 in a lexical snapshot (the ``hash`` embedder's tokens, 16.5)
TOKENIZER_ID = TOKENIZER_1
tokenize = tokenize1  # 16.4 tokenizer 1: what the hash embedder (16.5) and files before 1.4 use
term_ids = term_ids1


@dataclass(frozen=True, slots=True)
class Rule:
    """How a file's lexical index ranks (16.4): its tokenizer and its context window c
    (16.4.1; 0: each document alone). A window needs the documents' session keys, so a
    catalog of a rule with one keeps them (and its snapshots hold them, CAPLEX03)."""

    tok: Tokenizer
    window: int

    @property
    def sessions(self) -> bool:
        return self.window > 0


RULE_1 = Rule(T1, 0)  # files of header minor 0-3
RULE_2 = Rule(T2, 1)  # 1.4: tokenizer 2 and a window of one memory each side


def rule_of(minor: int) -> Rule:
    """12.8: the rule of a file whose header says ``minor`` (a later minor ranks as 1.4 does)."""
    return RULE_1 if minor <= 3 else RULE_2


@dataclass(frozen=True, slots=True)
class Window:
    """16.4.1 over a catalog of n documents: each one's neighbours (``nbr``, n x 2c catalog
    positions, -1 where none), its window's token count, and their total."""

    nbr: np.ndarray
    lens: np.ndarray
    total: int

    def spread(self, docs: np.ndarray, tf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The windows holding a term that the documents ``docs`` hold ``tf`` times each: their
        positions (ascending) and the term's count in each. A window holds document j exactly
        when j's window holds it (16.4.1), so j's count goes to j and to its neighbours."""
        nb = self.nbr[docs]
        at = np.concatenate([docs, nb.reshape(-1)])
        w = np.concatenate([tf, np.repeat(tf, nb.shape[1])])
        keep = at >= 0
        at, w = at[keep], w[keep]
        # sums of small integers in float64: exact in any order, so either way gives the same bits
        if 16 * len(at) >= len(self.lens):  # a common term: one pass over the catalog
            dense = np.bincount(at, weights=w, minlength=len(self.lens))
            u = np.flatnonzero(dense)
            return u, dense[u]
        u, inv = np.unique(at, return_inverse=True)
        return u, np.bincount(inv, weights=w, minlength=len(u))


def bm25(query: str, segments: Sequence[Any], n: int, total: int, tok: Tokenizer = T1,
         window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
    """16.4: the catalog positions (ascending) of the documents matching a term of
    ``query`` (with a ``window``, 16.4.1: whose window holds one) and their BM25 scores.

    ``segments`` cut the catalog of ``n`` documents and ``total`` tokens into runs,
    each with ``start``, ``lens`` and ``postings(term) -> (positions, tf) | None``.
    N, the average length and each term's document frequency are over the whole
    catalog; a document's score adds its terms in sorted order in float64, so how
    the catalog is cut changes no bit of it. A window whose documents have no
    neighbour gives every bit of the score without it.
    """
    out = np.zeros(n, np.float64)
    if n == 0:
        return np.zeros(0, np.int64), out
    if window is not None:
        total = window.total
    avg = total / n if total else 1.0
    for t in sorted(set(tok.tokenize(query))):
        key = t.encode()
        hits = [(s, p) for s in segments if (p := s.postings(key)) is not None]
        if not hits:
            continue
        if window is not None:
            at, tfw = window.spread(np.concatenate([p[0].astype(np.int64) + s.start for s, p in hits]),
                                    np.concatenate([p[1] for _, p in hits]).astype(np.float64))
            idf = math.log(1.0 + (n - len(at) + 0.5) / (len(at) + 0.5))
            norm = K1 * (1.0 - B + B * window.lens[at].astype(np.float64) / avg)
            out[at] += idf * tfw * (K1 + 1.0) / (tfw + norm)
            continue
        df = sum(len(p[0]) for _, p in hits)
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        for s, (docs, tf32) in hits:
            tf = tf32.astype(np.float64)
            norm = K1 * (1.0 - B + B * s.lens[docs].astype(np.float64) / avg)
            out[docs.astype(np.int64) + s.start] += idf * tf * (K1 + 1.0) / (tf + norm)
    cand = np.flatnonzero(out > 0)
    return cand, out[cand]


def snippet(text: str, query: str, width: int = 160, lead: int = 24,
            tok: Tokenizer | None = None) -> tuple[str, list[tuple[int, int]]]:
    """One line of ``text`` (whitespace collapsed) of at most ``width`` characters,
    starting up to ``lead`` characters before the first occurrence of the longest
    query term it holds, and the ``(start, end)`` spans of the query terms in it.
    A word (a run of letters and digits) is marked when one of its tokens is one of
    the query's under ``tok`` (the file's tokenizer, 16.4), so what is marked is
    what scored; without ``tok``, when it is under either tokenizer.

    >>> snippet("Alice pages Bob for payments outages", "PAYMENTS", width=30, lead=6)
    ('…for payments outages', [(5, 13)])
    >>> snippet("deploys froze on Friday", "deploy freezing", tok=T2)[1]
    [(0, 7)]
    """
    line = " ".join(text.split())
    toks = [tok] if tok is not None else [T1, T2]
    terms = [set(t.tokenize(query)) for t in toks]
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(line)
             if any(not want.isdisjoint(t.tokenize(m.group())) for t, want in zip(toks, terms, strict=True))]
    anchor = min(spans, key=lambda sp: (sp[0] - sp[1], sp[0]))[0] if spans else 0  # "payments" over "for"
    start = max(0, anchor - lead)
    if start:  # begin at a word
        space = line.find(" ", start, anchor)
        start = space + 1 if space >= 0 else start
    end = min(len(line), start + width)
    head, tail = "…" if start else "", "…" if end < len(line) else ""
    shift = len(head) - start
    return head + line[start:end] + tail, [(a + shift, b + shift) for a, b in spans if start <= a and b <= end]


__all__ = ["B", "K1", "RULE_1", "RULE_2", "TOKENIZER_ID", "Rule", "Window", "bm25", "rule_of", "snippet", "term_ids",
           "tokenize"]
