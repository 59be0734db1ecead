"""The two tokenizers of the lexical index (spec 16.4): what a text's BM25 terms are.

Theory of operation
-------------------
Tokenizer 1 (``nfkc-casefold-alnum/1``) ranks files created before 1.4 and feeds
the ``hash`` embedder everywhere (16.5): the NFKC, case-folded runs of letters
and digits. Tokenizer 2 (``fold-ident-stop-snowball-en/2``) ranks 1.4 files:
accents stripped, identifiers kept whole *and* in parts (``CMAKE_BUILD_TYPE``,
``node.js``, ``C++``, ``camelCase``), English stop words dropped and English
words stemmed (Snowball's Porter2, 16.4.1 gives every rule).

Both cut many texts at once the same way (:func:`_cut`): ASCII texts are
joined by a NUL and cut by ``bytes.translate`` (a byte table keeps what a token
may hold and turns the rest into spaces); any other text is normalised and cut
alone and its pieces joined by spaces. The runs of non-space bytes are then
numbered in NumPy (a run of up to 8 bytes by its bytes read as a big-endian
u64, longer ones by a dict), which needs a Python call per *distinct* run, not
per occurrence. Tokenizer 1's runs are its tokens. Tokenizer 2's runs are
*chunks* (case kept, ``_ . + #`` kept): each distinct chunk is mapped once
through :func:`_chunk_tokens` (cut into raw tokens, expanded, stop words
dropped, stemmed; cached across calls) and the occurrences are expanded with
NumPy. So ingest pays a stem per distinct word, not per word.
"""

from __future__ import annotations

import os
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import TYPE_CHECKING, Any

from ..core.errors import UsageError
from ..core.lazy import lazy
from .runs import _places, _shift, _token_keys

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

#: 16.4: the tokenizers' names, as a lexical snapshot names them (16.8)
TOKENIZER_1 = "nfkc-casefold-alnum/1"
TOKENIZER_2 = "fold-ident-stop-snowball-en/2"

Terms = tuple[list[bytes], "np.ndarray", "np.ndarray"]


class TokenizerUnavailable(UsageError):
    """Tokenizer 2 cannot run here: the Snowball English stemmer installed is not the one
    16.4.1 names (its stems, and so every score and snapshot, would differ)."""


# --- tokenizer 1 (16.4) --------------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")
_WORD = re.compile(r"\w+")  # the same runs when there is no "_" (and about twice as fast)


def tokenize1(text: str) -> list[str]:
    """16.4, tokenizer 1: the maximal runs of letters and digits of the NFKC, case-folded text."""
    # NFKC leaves ASCII as it is, and casefold() of ASCII is lower()
    s = text.lower() if text.isascii() else unicodedata.normalize("NFKC", text).casefold()
    return (_TOKEN if "_" in s else _WORD).findall(s)


# Bytes of ASCII text to themselves when they are letters or digits (upper case to lower case),
# to a space otherwise; NUL (the document separator) and bytes >= 0x80 (UTF-8 of the tokens of
# a non-ASCII text, already cut) to themselves.
_TABLE_1 = bytes(c if (48 <= c <= 57 or 97 <= c <= 122 or c == 0 or c >= 128) else c + 32 if 65 <= c <= 90
                 else 32 for c in range(256))
# Tokenizer 2's chunks: letters (case kept), digits and the identifier characters _ . + #.
_TABLE_2 = bytes(c if (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in b"\x00_.+#" or c >= 128)
                 else 32 for c in range(256))
_SEP = " \x00 "
_CHUNK_CHARS = 1 << 19


def _prepare1(t: str) -> str:
    return t if t.isascii() and "\x00" not in t else " ".join(tokenize1(t))


def term_ids1(texts: Sequence[str]) -> Terms:
    """16.4, tokenizer 1, for many texts at once: the distinct tokens as UTF-8, sorted; each
    token of each text, in order, as an index into them (int64, texts back to back); and each
    text's token count (int64). The same tokens as :func:`tokenize1`, text by text."""
    return _cut(texts, _prepare1, _TABLE_1)


def _join(texts: Sequence[str], prepare: Callable[[str], str]) -> bytes:
    """The texts' buffer: joined by _SEP as they are when all of them are ASCII without a NUL
    (``str.isascii`` is O(1) and one ``count`` finds a NUL), else each one ``prepare``-d."""
    s = _SEP.join(texts)
    if not (s.isascii() and s.count("\x00") == len(texts) - 1):
        s = _SEP.join(map(prepare, texts))
    return s.encode()


def _cut(texts: Sequence[str], prepare: Callable[[str], str], table: bytes) -> Terms:
    """The runs of ``table``-kept bytes of many texts: distinct runs sorted by their bytes, each
    occurrence's index into them, each text's run count.

    ASCII texts go into the buffer as they are (``prepare`` returns them) and are cut by
    ``bytes.translate``; ``prepare`` turns any other text into its pieces joined by spaces.
    Runs are numbered in NumPy by their bytes read as big-endian u64s, zero-padded: no run
    holds a zero byte, so that is exact and sorts as the bytes do. A run of up to 8 bytes
    (most of them) is one u64: the distinct ones are sorted and each occurrence found among
    them by a binary search (faster than an argsort, and fewer arrays of an entry per
    occurrence); one of 9 to 16 bytes is two, grouped by a lexsort; only longer ones are
    numbered with a dict, a Python step per occurrence. Texts go about _CHUNK_CHARS
    characters at a time."""
    first: dict[bytes, int] = {}  # each distinct run of more than 16 bytes: its first occurrence
    shorts, codes, mid1, mid2, longs, lens = [], [], [], [], [], []
    done = 0
    size = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
    lo = 0
    while lo < len(texts):
        hi = max(lo + 1, int(np.searchsorted(size, (size[lo - 1] if lo else 0) + _CHUNK_CHARS)))
        buf = _join(texts[lo:hi], prepare).translate(table)
        key, ln, st, word = _token_keys(buf)
        sep = (ln == 1) & (key == 0)  # b"\x00": the texts' boundaries, hi - lo - 1 of them
        lens.append(np.diff(np.flatnonzero(sep), prepend=-1, append=len(key)) - 1)
        short = ln <= 8
        if short.all():
            shorts.append(key[~sep])
            codes.append(np.zeros(len(shorts[-1]), np.uint8))
        else:
            shorts.append(key[short & ~sep])
            codes.append(((ln > 8).astype(np.uint8) + (ln > 16))[~sep])  # 0: short, 1: 9-16 bytes, 2: longer
            mid = (ln > 8) & (ln <= 16)
            mid1.append(key[mid])
            mid2.append((word[st[mid] + 8].astype(np.uint64) >> _shift(ln[mid] - 8)) << _shift(ln[mid] - 8))
            big = ln > 16
            if big.any():
                objs = [buf[a : a + n] for a, n in zip(st[big].tolist(), ln[big].tolist(), strict=True)]
                longs.append(np.fromiter(map(first.setdefault, objs, range(done, done + len(objs))), np.int64,
                                         len(objs)))
                done += len(objs)
        del key, ln, st, word, sep, short
        lo = hi
    del size
    allk = np.concatenate(shorts) if shorts else np.zeros(0, np.uint64)
    del shorts
    # the short runs' numbers: the distinct keys sorted, each occurrence's place among them
    sk = np.sort(allk)
    new = np.empty(len(sk), bool)
    new[:1] = True
    np.not_equal(sk[1:], sk[:-1], out=new[1:])
    u = sk[new]  # the distinct short runs, in byte order
    del sk, new
    short_tid = _places(u, allk)
    del allk
    vocab = u.astype(">u8").view("S8").tolist()  # an S item drops its trailing zero bytes
    lens_all = np.concatenate(lens) if lens else np.zeros(0, np.int64)
    if not mid1:  # only short runs: their numbers are the answer
        return vocab, short_tid, lens_all
    # the runs of 9 to 16 bytes: distinct (first, second) u64 pairs, and each occurrence's
    m1, m2 = np.concatenate(mid1), np.concatenate(mid2)
    order = np.lexsort((m2, m1))
    s1, s2 = m1[order], m2[order]
    new = np.empty(len(order), bool)
    new[:1] = True
    new[1:] = (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])
    mid_inv = np.empty(len(order), np.int64)
    mid_inv[order] = np.cumsum(new) - 1
    pairs = np.stack([s1[new], s2[new]], axis=1).astype(">u8")
    mids = pairs.view("S16").reshape(-1).tolist() if len(pairs) else []
    ns = len(vocab)
    # 16.4's order is the bytes': a long run goes after every short one its first 8 bytes
    # are not below, and the long ones among themselves by their bytes
    longs_sorted = sorted([*mids, *first])
    lrank = {t: i for i, t in enumerate(longs_sorted)}
    nl = len(longs_sorted)
    pre = np.frombuffer(b"".join(t[:8] for t in longs_sorted), ">u8").astype(np.uint64) if nl \
        else np.zeros(0, np.uint64)
    at = np.searchsorted(u, pre, side="right") + np.arange(nl)  # each long one's place
    rank_short = np.arange(ns) + np.searchsorted(pre, u, side="left") if ns else np.zeros(0, np.int64)
    placed = np.empty(ns + nl, object)
    placed[rank_short] = vocab
    placed[at] = longs_sorted
    terms: list[bytes] = placed.tolist()
    code = np.concatenate(codes)
    tid = np.empty(len(code), np.int64)
    tid[code == 0] = rank_short[short_tid]
    del short_tid
    tid[code == 1] = at[np.fromiter(map(lrank.__getitem__, mids), np.int64, len(mids))[mid_inv]]
    if first:
        dense = np.empty(done, np.int64)  # first occurrence -> rank among the long runs
        dense[np.fromiter(first.values(), np.int64, len(first))] = np.fromiter(map(lrank.__getitem__, first),
                                                                                np.int64, len(first))
        tid[code == 2] = at[dense[np.concatenate(longs)]]
    return terms, tid, lens_all


# --- tokenizer 2 (16.4.1) --------------------------------------------------------------------

#: 16.4.1: a raw token: words joined by one `.` or a run of `_`, then optionally a run of `+`
#: and `#` that no word character follows (C++, C#). A word character is a letter or digit
#: (``[^\W_]``) or a spacing or enclosing mark (``_patterns`` adds those a text holds).
#: ``[+#]++(?!W)`` is 16.4.1's ``[+#]+(?![+#]*W)``: when a word character follows the whole run
#: of + and # it follows every shorter one too. Taken whole (possessive), the run is looked past
#: once, not once per shorter run: a run of n + before a word costs n steps, not n squared.
_RAW_FORM = r"{w}+(?:(?:_+|\.){w}+)*(?:[+#]++(?!{w}))?"
_RAW = re.compile(_RAW_FORM.format(w=r"[^\W_]"))
_UNICODE: dict[frozenset[str], tuple[re.Pattern[str], re.Pattern[str]]] = {}
_CAMEL_ASCII = re.compile(r"[a-z][A-Z]")
_ALPHA = re.compile(r"[a-z]+")  # 16.4.1: the tokens that are stemmed


_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A fork taken while another thread classified marks under _LOCK leaves the child a lock
    nobody releases: its first text with a new character would wait forever. The sets are
    whole in the child (set updates are atomic under the GIL), so a fresh lock is all it needs."""
    global _LOCK
    _LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
_MARKS: set[str] = set()  # the spacing and enclosing marks (Mc, Me) met so far
_SEEN: set[str] = set()  # every non-ASCII character classified so far


def _patterns(s: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The raw-token and word patterns for ``s``: marks are word characters too (16.4.1).

    ``[^\\W_]`` already holds every letter and digit; the marks a text holds are found as it
    comes (each character classified once) and added to the class, which is compiled again
    only when a new one appears. A class holding marks the text does not hold cuts it the
    same, so the result depends on the text alone."""
    if s.isascii():
        return _RAW, _TOKEN
    chars = set(s)
    with _LOCK:  # another thread may be adding marks: iterating a set while it grows raises
        new = chars - _SEEN
        if new:
            _MARKS.update(ch for ch in new if unicodedata.category(ch) in ("Mc", "Me"))
            _SEEN.update(new)
        if chars.isdisjoint(_MARKS):
            return _RAW, _TOKEN
        marks = frozenset(_MARKS)  # holds this text's marks
    got = _UNICODE.get(marks)
    if got is None:
        w = rf"(?:[^\W_]|[{''.join(re.escape(m) for m in sorted(marks))}])"
        got = (re.compile(_RAW_FORM.format(w=w)), re.compile(rf"{w}+"))
        if len(_UNICODE) > 16:
            _UNICODE.clear()
        _UNICODE[marks] = got
    return got


#: 16.4.1: the stop list (tokens equal to one of these, after folding, are dropped)
_STOP_TEXT = """
a about above after again against all am an and any are aren as at be because been before being below between
both but by can could couldn d did didn do does doesn doing don down during each few for from further had hadn
has hasn have haven having he her here hers herself him himself his how i if in into is isn it its itself just
ll m me mightn more most mustn my myself needn no nor not of off on once only or other ought our ours ourselves
out over own re s same she should shouldn so some such t than that the their theirs them themselves then there
these they this those through to too under until up ve very was wasn we were weren what when where which while
who whom why will with would wouldn you your yours yourself yourselves
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())

_UPPER = frozenset({"Lu", "Lt"})


class _StripMn(dict[int, Any]):
    """A ``str.translate`` table dropping nonspacing marks (Mn), filled as code points are met."""

    def __missing__(self, c: int) -> int | None:
        v = None if unicodedata.category(chr(c)) == "Mn" else c
        self[c] = v
        return v


_STRIP_MN = _StripMn()


def _norm_text(text: str) -> str:
    """16.4.1 step 1: NFKD, nonspacing marks removed, NFC (ASCII text is left as it is)."""
    if text.isascii():
        return text
    d = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", d if d.isascii() else d.translate(_STRIP_MN))


def _fold(s: str) -> str:
    """16.4.1: case folding, then NFKD, nonspacing marks removed, NFC."""
    return s.lower() if s.isascii() else _norm_text(s.casefold())


def _camel(w: str) -> list[str]:
    """16.4.1: a word with a lower-case letter right before an upper-case one, cut before
    each upper-case letter that follows a lower-case one or that follows an upper-case
    one and precedes a lower-case one; any other word whole."""
    if w.isascii() and not _CAMEL_ASCII.search(w):
        return [w]
    cat = [unicodedata.category(c) for c in w]
    if not any(a == "Ll" and b in _UPPER for a, b in zip(cat, cat[1:], strict=False)):
        return [w]
    out, start = [], 0
    for i in range(1, len(w)):
        if cat[i] in _UPPER and (cat[i - 1] == "Ll" or (cat[i - 1] in _UPPER and i + 1 < len(w)
                                                        and cat[i + 1] == "Ll")):
            out.append(w[start:i])
            start = i
    out.append(w[start:])
    return out


def _expand(raw: str) -> list[str]:
    """16.4.1: the folded tokens of one raw token, before stop words and stemming: the raw
    token itself when it has more than one part or ends in + or #, then its parts."""
    parts = [p for w in _patterns(raw)[1].findall(raw) for p in _camel(w)]
    whole = len(parts) > 1 or raw[-1] in "+#"
    return [t for t in map(_fold, [raw, *parts] if whole else parts) if t]


_STEMS: dict[str, str] = {}
_STEMMER: list[Callable[[str], str]] = []
#: 16.4.1: Snowball 3.1's English stemmer; these stems differ in the releases before it
#: (2.2 stems `internal` to `intern`, 3.0 leaves `skis`), so they pin the one in use.
PROBES = {"added": "add", "evening": "evening", "internal": "internal", "interval": "interval",
          "organization": "organiz", "skis": "ski", "university": "universiti", "generously": "generous",
          "running": "run", "dying": "die", "news": "news"}
_CACHE_MAX = 1 << 20
#: longer words and chunks are not cached: they seldom come again, and entries are counted, not
#: weighed (a 100 MB identifier would stay in the process)
_CACHE_LEN = 256


_LOCAL = threading.local()  # a stemmer object holds its word while it works: one per thread


def _builds() -> list[tuple[str, Callable[[], Any]]]:
    """The Snowball English stemmers installed, fastest first: PyStemmer (Snowball's C
    code, ~60x faster) and snowballstemmer (the same algorithm compiled to Python)."""
    found: list[tuple[str, Callable[[], Any]]] = []
    try:
        import Stemmer  # PyStemmer

        found.append(("PyStemmer", lambda: Stemmer.Stemmer("english", 0)))  # 0: no cache of its own
    except ImportError:
        pass
    try:
        from snowballstemmer.english_stemmer import EnglishStemmer

        found.append(("snowballstemmer", EnglishStemmer))
    except ImportError:
        pass
    return found


def _stemmer() -> Callable[[str], str]:
    """The Snowball English stemmer: the first installed build whose stems of PROBES are
    Snowball 3.1's (TokenizerUnavailable when none is)."""
    if not _STEMMER:
        builds = _builds()
        if not builds:
            raise TokenizerUnavailable("tokenizer 2 (16.4.1) needs the Snowball English stemmer: "
                                       "pip install 'PyStemmer>=3.1,<3.2' or 'snowballstemmer>=3.1.1,<3.2'")
        wrong = ""
        for name, make in builds:
            probe = make()
            bad = {w: str(probe.stemWord(w)) for w, want in PROBES.items() if probe.stemWord(w) != want}
            if not bad:
                break
            w, got = next(iter(bad.items()))
            wrong = wrong or f"the installed {name} stems {w!r} as {got!r}, not {PROBES[w]!r}"
        else:
            raise TokenizerUnavailable(f"{wrong}: tokenizer 2 (16.4.1) needs Snowball 3.1's English stemmer "
                                       "(pip install 'PyStemmer>=3.1,<3.2' or 'snowballstemmer>=3.1.1,<3.2')")

        def stem(word: str, make: Callable[[], Any] = make) -> str:
            mine = getattr(_LOCAL, "stemmers", None)
            if mine is None:
                mine = _LOCAL.stemmers = {}
            s = mine.get(make)
            if s is None:
                s = mine[make] = make()
            return str(s.stemWord(word))

        _STEMMER.append(stem)
    return _STEMMER[0]


def _final(tokens: list[str]) -> list[str]:
    """16.4.1: stop words dropped, words of a-z stemmed."""
    out = []
    for t in tokens:
        if t in STOP_WORDS:
            continue
        if _ALPHA.fullmatch(t):
            s = _STEMS.get(t)
            if s is None:
                s = _stemmer()(t)
                if len(t) <= _CACHE_LEN:
                    if len(_STEMS) > _CACHE_MAX:
                        _STEMS.clear()
                    _STEMS[t] = s
            t = s
        out.append(t)
    return out


def tokenize2(text: str) -> list[str]:
    """16.4.1, tokenizer 2: the tokens of ``text``, in order.

    >>> tokenize2("Set CMAKE_BUILD_TYPE for C++ and node.js in the Café's runningTotal")
    ['set', 'cmake_build_type', 'cmake', 'build', 'type', 'c++', 'c', 'node.js', 'node', 'js', 'cafe', \
'runningtot', 'run', 'total']
    """
    s = _norm_text(text)
    return [t for m in _patterns(s)[0].finditer(s) for t in _final(_expand(m.group()))]


def _prepare2(t: str) -> str:
    """What goes into the buffer for one text: an ASCII one as it is (the table cuts it into
    chunks), any other its raw tokens joined by spaces."""
    if t.isascii() and "\x00" not in t:
        return t
    s = _norm_text(t)
    return " ".join(m.group() for m in _patterns(s)[0].finditer(s))


_CHUNKS: dict[bytes, tuple[bytes, ...]] = {}


_CAMEL_BYTES = re.compile(rb"[a-z][A-Z]")


def _chunk_tokens(c: bytes) -> tuple[bytes, ...]:
    """The tokens of one chunk (a run of letters, digits and ``_ . + #``, or a raw token)."""
    got = _CHUNKS.get(c)
    if got is None:
        # no raw token starts with _ . + # or ends with . _ (16.4.1), so those ends are cut off
        core = c.lstrip(b"_.+#").rstrip(b"._")
        if not core or core.isdigit():  # digits: one token, never stemmed
            got = (core,) if core else ()
        elif core.isalpha() and (core.islower() or not _CAMEL_BYTES.search(core)):  # one ASCII word
            got = tuple(t.encode() for t in _final([core.decode().lower()]))
        else:
            s = core.decode()
            got = tuple(t.encode() for m in _patterns(s)[0].finditer(s) for t in _final(_expand(m.group())))
        if len(c) <= _CACHE_LEN:
            if len(_CHUNKS) > _CACHE_MAX:
                _CHUNKS.clear()
            _CHUNKS[c] = got
    return got


def _tokens_of(chunks: list[bytes]) -> list[tuple[bytes, ...]]:
    """Each distinct chunk's tokens, as :func:`_chunk_tokens` gives them, most in bulk.

    No raw token starts with _ . + # or ends with . _ (16.4.1), so a chunk's tokens are
    those of its core, its other bytes cut off. A core of ASCII digits is one token, itself,
    never stemmed; a core of a-z is a word: none when a stop word, else its stem (``_final``,
    for all of them at once). Those (most of an ingest's distinct chunks: numbers, ids,
    ``#12``, words) are found by C methods over the list and not cached one by one; only
    the rest go through :func:`_chunk_tokens`."""
    n = len(chunks)
    cores = list(map(bytes.rstrip, map(bytes.lstrip, chunks, repeat(b"_.+#")), repeat(b"._")))
    out: list[tuple[bytes, ...]] = list(zip(cores))  # a digits core: itself
    digits = np.fromiter(map(bytes.isdigit, cores), bool, n)
    words = np.fromiter(map(bytes.isalpha, cores), bool, n) & np.fromiter(map(bytes.islower, cores), bool, n)
    for i in np.flatnonzero(~(digits | words)).tolist():
        out[i] = _chunk_tokens(cores[i])
    at = np.flatnonzero(words).tolist()
    ws = list(map(bytes.decode, map(cores.__getitem__, at)))
    stems = iter(_final([w for w in ws if w not in STOP_WORDS]))  # one stem a word kept, in order
    for i, w in zip(at, ws, strict=True):
        out[i] = () if w in STOP_WORDS else (next(stems).encode(),)
    return out


def term_ids2(texts: Sequence[str]) -> Terms:
    """:func:`term_ids1` for tokenizer 2: the same tokens as :func:`tokenize2`, text by text."""
    chunks, cid, clens = _cut(texts, _prepare2, _TABLE_2)
    exp = _tokens_of(chunks)
    del chunks
    flat_tokens = list(chain.from_iterable(exp))
    terms = sorted(dict.fromkeys(flat_tokens))  # about in order already: a fast sort
    rank = dict(zip(terms, range(len(terms)), strict=True))
    flat = np.fromiter(map(rank.__getitem__, flat_tokens), np.int64, len(flat_tokens))
    del flat_tokens, rank
    cnt = np.fromiter(map(len, exp), np.int64, len(exp))
    del exp
    if len(cnt) == len(flat) and (not len(cnt) or (int(cnt.min()) == 1)):  # a token a chunk: a gather
        return terms, flat[cid], clens
    # each chunk occurrence's tokens: flat[off[c] : off[c] + cnt[c]], back to back
    off = np.zeros(len(cnt) + 1, np.int64)
    np.cumsum(cnt, out=off[1:])
    per = cnt[cid]  # tokens of each chunk occurrence
    ends = np.zeros(len(per) + 1, np.int64)  # tokens before each occurrence
    np.cumsum(per, out=ends[1:])
    total = int(ends[-1])
    # a text's token count: the tokens before its first chunk after it, less those before it
    lens = np.diff(ends[np.cumsum(clens)], prepend=0) if len(clens) else np.zeros(0, np.int64)
    start = off[cid]
    start -= ends[:-1]
    del ends, cid
    idx = np.repeat(start, per)  # minus the occurrence's first token's place, plus its own
    del start, per
    idx += np.arange(total, dtype=np.int64)
    return terms, flat[idx] if total else np.zeros(0, np.int64), lens


# --- the registry --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Tokenizer:
    """A tokenizer of 16.4: its name (16.8), one text's tokens, and many texts' at once."""

    id: str
    tokenize: Callable[[str], list[str]]
    term_ids: Callable[[Sequence[str]], Terms]

    def check(self) -> None:
        """Raise TokenizerUnavailable when this tokenizer cannot run here."""
        if self.id == TOKENIZER_2:
            _stemmer()


T1 = Tokenizer(TOKENIZER_1, tokenize1, term_ids1)
T2 = Tokenizer(TOKENIZER_2, tokenize2, term_ids2)
TOKENIZERS = {t.id: t for t in (T1, T2)}


def available(name: object) -> Tokenizer | None:
    """The tokenizer of that name when it can run here, else None (an unknown name, or
    tokenizer 2 without its stemmer)."""
    tok = TOKENIZERS.get(name) if isinstance(name, str) else None
    if tok is None:
        return None
    try:
        tok.check()
    except TokenizerUnavailable:
        return None
    return tok


__all__ = ["PROBES", "STOP_WORDS", "T1", "T2", "TOKENIZERS", "TOKENIZER_1", "TOKENIZER_2", "Tokenizer",
           "TokenizerUnavailable", "available", "term_ids1", "term_ids2", "tokenize1", "tokenize2"]
