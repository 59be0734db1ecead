"""BM25 over record text (spec 16.4), rebuilt deterministically from the records.

Tokens are the maximal runs of Unicode letters and digits of the NFKC, case-folded
text. Scores are Okapi BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N - df + 0.5) /
(df + 0.5))) summed over the distinct query terms in sorted order in float64, so
the same records give the same scores on every host.
"""

from __future__ import annotations

import math
import re
import unicodedata

import numpy as np

K1 = 1.2
B = 0.75
_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


class Lexical:
    """An append-only BM25 index: documents are numbered in the order added."""

    def __init__(self) -> None:
        self._post: dict[str, tuple[list[int], list[int]]] = {}
        self._frozen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._lens: list[int] = []
        self._total = 0

    def __len__(self) -> int:
        return len(self._lens)

    def add(self, text: str) -> None:
        doc = len(self._lens)
        counts: dict[str, int] = {}
        toks = tokenize(text)
        for t in toks:
            counts[t] = counts.get(t, 0) + 1
        for t, c in counts.items():
            docs, tfs = self._post.setdefault(t, ([], []))
            docs.append(doc)
            tfs.append(c)
            self._frozen.pop(t, None)
        self._lens.append(len(toks))
        self._total += len(toks)

    def _postings(self, t: str) -> tuple[np.ndarray, np.ndarray] | None:
        hit = self._frozen.get(t)
        if hit is None:
            p = self._post.get(t)
            if p is None:
                return None
            hit = self._frozen[t] = (np.array(p[0], np.int64), np.array(p[1], np.float64))
        return hit

    def scores(self, query: str) -> np.ndarray:
        """BM25 of every document for ``query`` (0 where no term matches)."""
        n = len(self._lens)
        out = np.zeros(n, np.float64)
        if n == 0:
            return out
        lens = np.array(self._lens, np.float64)
        avg = self._total / n if self._total else 1.0
        norm = K1 * (1.0 - B + B * lens / avg)
        for t in sorted(set(tokenize(query))):
            p = self._postings(t)
            if p is None:
                continue
            docs, tf = p
            idf = math.log(1.0 + (n - len(docs) + 0.5) / (len(docs) + 0.5))
            out[docs] += idf * tf * (K1 + 1.0) / (tf + norm[docs])
        return out
