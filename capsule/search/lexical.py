"""BM25 over record text (spec 16.4): the tokenizer and the scoring.

Tokens are the maximal runs of Unicode letters and digits of the NFKC, case-folded
text. Scores are Okapi BM25 (k1 = 1.2, b = 0.75, idf = ln(1 + (N - df + 0.5) /
(df + 0.5))) summed over the distinct query terms in sorted order in float64, so
the same records give the same scores on every host. The documents and their
postings live in segments (``lexsnap``), read from a snapshot blob or built from
the records; the scores do not depend on which.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


K1 = 1.2
B = 0.75
#: 16.8: names this tokenizer in a lexical snapshot; a snapshot of another one is rebuilt.
TOKENIZER_ID = "nfkc-casefold-alnum/1"
_TOKEN = re.compile(r"[^\W_]+")
_WORD = re.compile(r"\w+")  # the same runs when there is no "_" (and about twice as fast)


def tokenize(text: str) -> list[str]:
    # NFKC leaves ASCII as it is, and casefold() of ASCII is lower()
    s = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return (_TOKEN if "_" in s else _WORD).findall(s)


# Bytes of ASCII text to themselves when they are letters or digits (upper case to lower case),
# to a space otherwise; NUL (the document separator) and bytes >= 0x80 (UTF-8 of the tokens of
# a non-ASCII text, already cut by tokenize()) to themselves.
_ASCII_TOKENS = bytes(c if (48 <= c <= 57 or 97 <= c <= 122 or c == 0 or c >= 128) else c + 32 if 65 <= c <= 90
                      else 32 for c in range(256))
_SEP = " \x00 "
_CHUNK_CHARS = 1 << 19


def term_ids(texts: Sequence[str]) -> tuple[list[bytes], np.ndarray, np.ndarray]:
    """16.4 for many texts at once: the distinct tokens as UTF-8, sorted; each token of
    each text, in order, as an index into them (int64, texts back to back); and each
    text's token count (int64). The same tokens as :func:`tokenize`, text by text.

    ASCII texts are joined by a NUL and cut by bytes.translate (letters and digits
    kept, upper case lowered, anything else a space), which is tokenize() for
    ASCII without a regular expression or a call per text; any other text (or one
    holding a NUL) is tokenized alone and its tokens joined by spaces, so every
    token is a run of bytes other than spaces in one buffer. Tokens of up to 8
    bytes (most of them) are numbered in NumPy by their bytes read as a big-endian
    u64, zero-padded: no token holds a zero byte, so that is exact and sorts as
    the bytes do; longer ones are numbered with a dict. Texts go about
    _CHUNK_CHARS characters at a time."""
    first: dict[bytes, int] = {}  # each distinct long token: its first occurrence
    shorts, kinds, longs, lens = [], [], [], []
    done = 0
    size = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
    lo = 0
    while lo < len(texts):
        hi = max(lo + 1, int(np.searchsorted(size, (size[lo - 1] if lo else 0) + _CHUNK_CHARS)))
        buf = _SEP.join(t if t.isascii() and "\x00" not in t else " ".join(tokenize(t))
                        for t in texts[lo:hi]).encode().translate(_ASCII_TOKENS)
        key, ln, st = _token_keys(buf)
        sep = (ln == 1) & (key == 0)  # b"\x00": the texts' boundaries, hi - lo - 1 of them
        cut = np.flatnonzero(sep)
        lens.append(np.diff(np.concatenate(([-1], cut, [len(key)]))) - 1)
        short = ln <= 8
        is_long = ~short
        shorts.append(key[short & ~sep])
        kinds.append(short[~sep])
        where = st[is_long].tolist()
        objs = [buf[a : a + n] for a, n in zip(where, ln[is_long].tolist(), strict=True)]
        longs.append(np.fromiter(map(first.setdefault, objs, range(done, done + len(objs))), np.int64, len(objs)))
        done += len(objs)
        lo = hi
    allk = np.concatenate(shorts) if shorts else np.zeros(0, np.uint64)
    # the short tokens' numbers: sorted (a stable radix sort), each new key a new number
    by_key = np.argsort(allk, kind="stable")
    sk = allk[by_key]
    new = np.empty(len(sk), bool)
    new[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    u = sk[new]  # the distinct short tokens, in byte order
    raw = u.astype(">u8").tobytes()
    vocab = [raw[i : i + 8].rstrip(b"\x00") for i in range(0, len(raw), 8)]
    ns = len(vocab)
    # 16.4's order is the bytes': a long token goes after every short one its first 8 bytes
    # are not below, and the long ones among themselves by their bytes
    longs_sorted = sorted(first)
    lrank = {t: i for i, t in enumerate(longs_sorted)}
    pre = np.frombuffer(b"".join(t[:8] for t in longs_sorted), ">u8").astype(np.uint64) if first \
        else np.zeros(0, np.uint64)
    at = np.searchsorted(u, pre, side="right") + np.arange(len(first))  # each long one's place
    rank_short = np.arange(ns) + np.searchsorted(pre, u, side="left") if ns else np.zeros(0, np.int64)
    placed = np.empty(ns + len(first), object)
    placed[rank_short] = vocab
    placed[at] = longs_sorted
    terms: list[bytes] = placed.tolist()
    is_short = np.concatenate(kinds) if kinds else np.zeros(0, bool)
    tid = np.empty(len(is_short), np.int64)
    short_tid = np.empty(len(allk), np.int64)
    short_tid[by_key] = rank_short[np.cumsum(new) - 1]
    tid[is_short] = short_tid
    if first:
        dense = np.empty(done, np.int64)  # first occurrence -> rank among the long tokens
        dense[np.fromiter(first.values(), np.int64, len(first))] = np.fromiter(map(lrank.__getitem__, first),
                                                                                np.int64, len(first))
        tid[~is_short] = at[dense[np.concatenate(longs)]]
    return terms, tid, np.concatenate(lens) if lens else np.zeros(0, np.int64)


def _token_keys(buf: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of bytes other than spaces in ``buf``: each one's first 8 bytes as a
    big-endian u64 (zero past its end), length and start."""
    b = np.zeros(len(buf) + 8, np.uint8)
    b[: len(buf)] = np.frombuffer(buf, np.uint8)
    space = np.empty(len(buf) + 2, bool)
    space[0] = space[-1] = True
    np.equal(b[: len(buf)], 32, out=space[1:-1])
    edge = np.flatnonzero(space[1:] != space[:-1])
    st, ln = edge[0::2], edge[1::2] - edge[0::2]
    word = np.ndarray((len(buf) + 1,), ">u8", b, 0, (1,))  # the 8 bytes from each offset on
    shift = (8 * (8 - np.minimum(ln, 8))).astype(np.uint64)
    return (word[st].astype(np.uint64) >> shift) << shift, ln, st


def bm25(query: str, segments: Sequence[Any], n: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """16.4: the catalog positions (ascending) of the documents matching a term of
    ``query`` and their BM25 scores.

    ``segments`` cut the catalog of ``n`` documents and ``total`` tokens into runs,
    each with ``start``, ``lens`` and ``postings(term) -> (positions, tf) | None``.
    N, the average length and each term's document frequency are over the whole
    catalog; a document's score adds its terms in sorted order in float64, so how
    the catalog is cut changes no bit of it.
    """
    out = np.zeros(n, np.float64)
    if n == 0:
        return np.zeros(0, np.int64), out
    avg = total / n if total else 1.0
    for t in sorted(set(tokenize(query))):
        key = t.encode()
        hits = [(s, p) for s in segments if (p := s.postings(key)) is not None]
        if not hits:
            continue
        df = sum(len(p[0]) for _, p in hits)
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        for s, (docs, tf32) in hits:
            tf = tf32.astype(np.float64)
            norm = K1 * (1.0 - B + B * s.lens[docs].astype(np.float64) / avg)
            out[docs.astype(np.int64) + s.start] += idf * tf * (K1 + 1.0) / (tf + norm)
    cand = np.flatnonzero(out > 0)
    return cand, out[cand]


def snippet(text: str, query: str, width: int = 160, lead: int = 24) -> tuple[str, list[tuple[int, int]]]:
    """One line of ``text`` (whitespace collapsed) of at most ``width`` characters,
    starting up to ``lead`` characters before the first occurrence of the longest
    query term it holds, and the ``(start, end)`` spans of the query terms in it.
    Terms match as BM25 tokens do (NFKC, case-folded runs of letters and digits),
    so what is marked is what scored.

    >>> snippet("Alice pages Bob for payments outages", "PAYMENTS", width=30, lead=6)
    ('…for payments outages', [(5, 13)])
    """
    line = " ".join(text.split())
    terms = set(tokenize(query))
    spans = [(m.start(), m.end()) for m in _TOKEN.finditer(line)
             if unicodedata.normalize("NFKC", m.group()).casefold() in terms]
    anchor = min(spans, key=lambda sp: (sp[0] - sp[1], sp[0]))[0] if spans else 0  # "payments" over "for"
    start = max(0, anchor - lead)
    if start:  # begin at a word
        space = line.find(" ", start, anchor)
        start = space + 1 if space >= 0 else start
    end = min(len(line), start + width)
    head, tail = "…" if start else "", "…" if end < len(line) else ""
    shift = len(head) - start
    return head + line[start:end] + tail, [(a + shift, b + shift) for a, b in spans if start <= a and b <= end]
