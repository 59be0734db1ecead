"""The integer codes of a lexical snapshot (spec 16.8): small ints and Elias-Fano posting blocks.

Theory of operation
-------------------
A snapshot stores two kinds of integer arrays compactly, each readable with a
few NumPy operations and no Python loop over its values.

*Small ints* (token counts, term lengths, document frequencies) are mostly
below 255: each value is one byte, and a value of 255 or more is the byte 255
with the value itself in the snapshot's ``escapes`` list (u32, in order).

*Posting blocks.* The documents holding a term are an ascending list of p
positions below n (the segment's documents). A block codes them with
Elias-Fano: with L = floor(log2(floor(n / p))), the low L bits of each position
are packed back to back, then the high parts (position >> L) as a bitmap of
p + ((n - 1) >> L) bits with bit (high_i + i) set for the i-th position; for a
term whose documents hold it x > 0 times more than once (x = sum of tf - p),
p + x more bits give the term frequencies in unary (tf - 1 ones, then a zero).
The block is padded with zero bits to a byte. Its size is a function of
(n, p, x) alone, so a reader finds every term's block from the dictionary's
document frequencies, with no offsets stored; it costs 2 + log2(n / p) bits a
position (about 7 at 100,000 documents of English), and term frequencies,
mostly 1, cost a bit an occurrence only in the terms that repeat.

Why Elias-Fano: on 100,000 English-like records the positions take 22 bytes a
record this way against 30 with delta + varint bytes (which also need an offset
a term, or a pass over every byte before it, to be found) and 80 as u32; the
size of a block is known from its header fields, so nothing locates it; and it
decodes with whole-array bit operations (unpackbits, flatnonzero), where a
varint or a per-term zstd frame needs a loop or a call per value or term. The
unary term frequencies cost about 2 bytes a record (a u8 a posting: 25).

Bits are numbered little-endian within bytes (bit k is bit k % 8 of byte
k // 8), as ``np.packbits(..., bitorder="little")`` lays them out. Encoding and
decoding work on many blocks at once (all of a segment's terms, in chunks of
bounded size), grouping the low parts by their width L.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

ESCAPE = 255  # 16.8: a small int of this value or more is in `escapes`
#: blocks are coded this many postings at a time (bounds the temporary arrays)
_CHUNK = 1 << 18
# The encoder spells out a byte per bit and several int64 arrays per posting (~200 bytes a
# posting at its peak): it takes fewer at a time, so a snapshot's transient stays ~10 MB (F22).
_ENCODE_CHUNK = 1 << 15


class CodeError(ValueError):
    """A block or small-int array that is not what 16.8 says (the caller names the blob)."""


# --- small ints ----------------------------------------------------------------------


def small_encode(v: np.ndarray) -> tuple[bytes, np.ndarray]:
    """16.8: the bytes of a small-int array and its escapes (uint32, in order)."""
    v = np.asarray(v, np.int64)
    return np.minimum(v, ESCAPE).astype(np.uint8).tobytes(), v[v >= ESCAPE].astype("<u4")


def small_escapes(b: np.ndarray) -> int:
    """How many escapes the small-int bytes ``b`` use."""
    return int(np.count_nonzero(b == ESCAPE))


def small_decode(b: np.ndarray, esc: np.ndarray) -> np.ndarray:
    """The values of small-int bytes ``b`` whose escapes are ``esc`` (exactly as many as
    ``b`` holds bytes of 255: the caller counted them)."""
    out = b.astype(np.int64)
    if len(esc):
        if int(esc.min()) < ESCAPE:
            raise CodeError("an escaped small int is below 255")
        out[b == ESCAPE] = esc
    return out


# --- block geometry ------------------------------------------------------------------


def low_width(n: int, p: np.ndarray) -> np.ndarray:
    """16.8: L = floor(log2(floor(n / p))) for each p in 1..n (int64)."""
    q = n // np.asarray(p, np.int64)
    # frexp is exact for q < 2^53: q = m * 2^e with 0.5 <= m < 1, so e = bit_length(q)
    return (np.frexp(q.astype(np.float64))[1] - 1).astype(np.int64)


def block_bits(n: int, p: np.ndarray, x: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L, high bits, tf bits) of blocks of p positions and x extra occurrences."""
    p = np.asarray(p, np.int64)
    L = low_width(n, p)
    H = p + ((n - 1) >> L)
    T = np.zeros(len(p), np.int64) if x is None else np.where(x > 0, p + x, 0)
    return L, H, T


def block_sizes(n: int, p: np.ndarray, x: np.ndarray | None = None) -> np.ndarray:
    """16.8: the bytes of each block (int64)."""
    if not len(p):
        return np.zeros(0, np.int64)
    L, H, T = block_bits(n, p, x)
    size: np.ndarray = (np.asarray(p, np.int64) * L + H + T + 7) >> 3
    return size


def _runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + l)`` for each (s, l)."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, np.int64)
    before = np.cumsum(lengths) - lengths
    out: np.ndarray = np.arange(total, dtype=np.int64) + np.repeat(starts - before, lengths)
    return out


def _excl(a: np.ndarray) -> np.ndarray:
    out = np.zeros(len(a) + 1, np.int64)
    np.cumsum(a, out=out[1:])
    return out


def _chunks(p: np.ndarray, chunk: int = _CHUNK) -> list[tuple[int, int]]:
    """[a, b) term ranges of about ``chunk`` postings each (at least one term)."""
    if len(p) == 0:
        return []
    c = np.cumsum(p)
    out, a = [], 0
    while a < len(p):
        b = int(np.searchsorted(c, (int(c[a - 1]) if a else 0) + chunk, side="right"))
        b = max(b, a + 1)
        out.append((a, b))
        a = b
    return out


# --- encoding ------------------------------------------------------------------------


def encode_blocks(n: int, off: np.ndarray, docs: np.ndarray, tf: np.ndarray | None) -> bytes:
    """16.8: the blocks of the lists ``docs[off[i]:off[i + 1]]`` (ascending positions below
    ``n``) and, for terms, their frequencies ``tf``; back to back, in order."""
    off = np.asarray(off, np.int64)
    out = []
    p_all = np.diff(off)
    for a, b in _chunks(p_all, _ENCODE_CHUNK):
        if b - a == 1 and p_all[a] > _ENCODE_CHUNK:  # one frequent term: its block, a slice at a time
            out.append(_encode_one(n, docs[off[a] : off[b]], None if tf is None else tf[off[a] : off[b]]))
            continue
        out.append(_encode_chunk(n, p_all[a:b], docs[off[a] : off[b]].astype(np.int64),
                                 None if tf is None else tf[off[a] : off[b]].astype(np.int64)))
    return b"".join(out)


def _encode_one(n: int, d: np.ndarray, tf: np.ndarray | None) -> bytes:
    """:func:`_encode_chunk` of a single term's list, its postings taken _ENCODE_CHUNK at a
    time: the bit per byte of the block (a few bits a posting) is all that grows with it."""
    m = len(d)
    x = None if tf is None else np.array([int(tf.sum(dtype=np.int64)) - m], np.int64)
    Ls, Hs, Ts = block_bits(n, np.array([m], np.int64), x)
    L, H, T = int(Ls[0]), int(Hs[0]), int(Ts[0])
    bits = np.zeros(8 * ((m * L + H + T + 7) >> 3), np.uint8)
    high, unary = m * L, m * L + H  # where the high bitmap and the tf bits start
    if T:
        bits[unary : unary + T] = 1
    seen = 0  # tf summed over the postings before the slice
    for s in range(0, m, _ENCODE_CHUNK):
        e = min(m, s + _ENCODE_CHUNK)
        dd = d[s:e].astype(np.int64)
        bits[high + (dd >> L) + np.arange(s, e, dtype=np.int64)] = 1
        if L:
            low = dd.astype("<u4").view(np.uint8).reshape(-1, 4)[:, : (L + 7) >> 3]
            bits[s * L : e * L] = np.unpackbits(low, axis=1, bitorder="little")[:, :L].reshape(-1)
        if T and tf is not None:
            c = np.cumsum(tf[s:e], dtype=np.int64) + seen
            bits[unary + c - 1] = 0  # the zero ending each posting's run of tf - 1 ones
            seen = int(c[-1])
    return np.packbits(bits, bitorder="little").tobytes()


def _encode_chunk(n: int, p: np.ndarray, d: np.ndarray, tf: np.ndarray | None) -> bytes:
    x = None if tf is None else np.add.reduceat(tf - 1, _excl(p)[:-1])  # every p >= 1
    L, H, T = block_bits(n, p, x)
    size = (p * L + H + T + 7) >> 3
    start = 8 * _excl(size)[:-1]  # bit where each block starts
    bits = np.zeros(8 * int(size.sum()), np.uint8)
    P0 = _excl(p)
    j = np.arange(len(d), dtype=np.int64) - np.repeat(P0[:-1], p)
    Lp = np.repeat(L, p)
    # high parts: bit (d >> L) + j of the bitmap after the low bits
    bits[np.repeat(start + p * L, p) + (d >> Lp) + j] = 1
    # low parts, grouped by width: the group's low bits, in order, fill its terms' low regions
    for w in np.unique(L[L > 0]).tolist():
        g = np.flatnonzero(np.equal(L, w))
        low = d[_runs(P0[g], p[g])].astype("<u4").view(np.uint8).reshape(-1, 4)[:, : (w + 7) >> 3]
        mat = np.unpackbits(low, axis=1, bitorder="little")[:, :w]  # its w low bits, least significant first
        bits[_runs(start[g], p[g] * w)] = mat.reshape(-1)
    if tf is not None and x is not None and (x > 0).any():
        g = np.flatnonzero(x > 0)
        bits[_runs(start[g] + p[g] * L[g] + H[g], T[g])] = 1
        # the zero ending each posting's run follows its tf - 1 ones: at (tf summed up to it) - 1
        ctf = np.cumsum(tf[_runs(P0[g], p[g])]) - np.repeat(_excl(T[g])[:-1], p[g])
        bits[np.repeat(start[g] + p[g] * L[g] + H[g], p[g]) + ctf - 1] = 0
    return np.packbits(bits, bitorder="little").tobytes()


# --- decoding ------------------------------------------------------------------------


def decode_blocks(region: np.ndarray, n: int, p: np.ndarray, x: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The positions (uint32) and term frequencies (uint32, all 1 without ``x``) of the
    blocks laid back to back in ``region`` (uint8), checked: each block's high bitmap
    has exactly p bits set, its positions strictly increase and are below n, its tf bits
    hold exactly x ones and end with a zero, and every padding bit is zero. CodeError
    if not."""
    p = np.asarray(p, np.int64)
    x = None if x is None else np.asarray(x, np.int64)
    sizes = block_sizes(n, p, x)
    if int(sizes.sum()) != len(region):
        raise CodeError("posting blocks do not fill their section")
    bo = _excl(sizes)
    docs, tfs = [], []
    for a, b in _chunks(p):
        d, t = _decode_chunk(region[bo[a] : bo[b]], n, p[a:b], None if x is None else x[a:b])
        docs.append(d)
        tfs.append(t)
    if not docs:
        return np.zeros(0, np.uint32), np.zeros(0, np.uint32)
    if len(docs) == 1:
        return docs[0], tfs[0]
    return np.concatenate(docs), np.concatenate(tfs)


def decode_one(block: np.ndarray, n: int, p: int, x: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decode_blocks` for one block (what a query reads), with the same checks."""
    L = (n // p).bit_length() - 1 if 1 <= p <= n else -1
    H = p + ((n - 1) >> L) if L >= 0 else 0
    T = p + x if x > 0 else 0
    used = p * L + H + T
    if L < 0 or x < 0 or len(block) != (used + 7) >> 3:
        raise CodeError("a posting block does not have its size")
    bits = np.unpackbits(block, bitorder="little")
    high = np.flatnonzero(bits[p * L : p * L + H])
    if len(high) != p:
        raise CodeError("a high-bits bitmap does not hold one bit per posting")
    val = (high - np.arange(p)) << L
    ones = p
    if L:
        mat = bits[: p * L].reshape(p, L)
        ones += int(np.count_nonzero(mat))
        wide = np.zeros((p, 4), np.uint8)
        wide[:, : (L + 7) >> 3] = np.packbits(mat, axis=1, bitorder="little")
        val |= wide.view("<u4").reshape(-1)
    if (p > 1 and bool(np.any(val[1:] <= val[:-1]))) or int(val[-1]) >= n:
        raise CodeError("positions of a posting list are out of range or out of order")
    tf = np.ones(p, np.int64)
    if T:
        tb = bits[p * L + H : used]
        zero = np.flatnonzero(tb == 0)
        if len(zero) != p or zero[-1] != T - 1:
            raise CodeError("term frequency bits do not match the block's count")
        tf = np.diff(zero, prepend=-1)
        ones += x
    if int(np.count_nonzero(bits)) != ones:
        raise CodeError("a padding bit of a posting block is set")
    return val.astype(np.uint32), tf.astype(np.uint32)


def _decode_chunk(region: np.ndarray, n: int, p: np.ndarray, x: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    L, H, T = block_bits(n, p, x)
    size = (p * L + H + T + 7) >> 3
    start = 8 * _excl(size)[:-1]
    bits = np.unpackbits(region, bitorder="little")
    P0 = _excl(p)
    P = int(P0[-1])
    ones = 0  # bits set in the low, high and tf parts: the rest (padding) must be zero
    # high parts: exactly p bits set in each bitmap
    hb = bits[_runs(start + p * L, H)]
    set_at = np.flatnonzero(hb)
    Hc = _excl(H)
    if len(set_at) != P or not np.array_equal(np.searchsorted(set_at, Hc[1:]), P0[1:]):
        raise CodeError("a high-bits bitmap does not hold one bit per posting")
    ones += P
    blk = np.repeat(np.arange(len(p), dtype=np.int64), p)
    j = np.arange(P, dtype=np.int64) - P0[blk]
    Lp = L[blk]
    val = (set_at - Hc[blk] - j) << Lp
    for w in np.unique(L[L > 0]).tolist():
        g = np.flatnonzero(np.equal(L, w))
        mat = bits[_runs(start[g], p[g] * w)].reshape(-1, w)
        ones += int(np.count_nonzero(mat))
        packed = np.packbits(mat, axis=1, bitorder="little")
        wide = np.zeros((len(mat), 4), np.uint8)
        wide[:, : packed.shape[1]] = packed
        val[_runs(P0[g], p[g])] |= wide.view("<u4").reshape(-1).astype(np.int64)
    # strictly increasing within each block, and below n
    if P:
        step = np.diff(val)
        inner = np.ones(P - 1, bool)
        inner[P0[1:-1] - 1] = False  # the step from one block's last position to the next block's first
        if int(val.min()) < 0 or int(val[P0[1:] - 1].max()) >= n or bool(np.any(step[inner] <= 0)):
            raise CodeError("positions of a posting list are out of range or out of order")
    tf = np.ones(P, np.int64)
    if x is not None and (x > 0).any():
        g = np.flatnonzero(x > 0)
        tb = bits[_runs(start[g] + p[g] * L[g] + H[g], T[g])]
        Tc = _excl(T[g])
        set_at = np.flatnonzero(tb)
        if (len(set_at) != int(x[g].sum()) or not np.array_equal(np.searchsorted(set_at, Tc[1:]), _excl(x[g])[1:])
                or bool(tb[Tc[1:] - 1].any())):
            raise CodeError("term frequency bits do not match the block's count")
        ones += len(set_at)
        gb = np.repeat(np.arange(len(g), dtype=np.int64), x[g])
        rank = np.arange(len(set_at), dtype=np.int64) - _excl(x[g])[:-1][gb]
        posting = set_at - Tc[gb] - rank  # zeros before a one = postings ended before it
        tf += np.bincount(P0[g][gb] + posting, minlength=P)
    if int(np.count_nonzero(bits)) != ones:
        raise CodeError("a padding bit of a posting block is set")
    return val.astype(np.uint32), tf.astype(np.uint32)


__all__ = ["CodeError", "ESCAPE", "block_sizes", "decode_blocks", "decode_one", "encode_blocks", "low_width",
           "small_decode", "small_encode", "small_escapes"]
