"""Runs of bytes numbered in NumPy, for the tokenizers' bulk path (spec 16.4; tokenize._cut).

A run of up to 8 bytes is keyed by its bytes read as a big-endian u64, zero-padded (no run
holds a zero byte, so the key is exact and sorts as the bytes do). :func:`_token_keys` finds
the runs of a buffer and their keys; :func:`_places` finds each key's number among the
distinct keys through a hash table built and probed in NumPy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

_MUL = 0x9E3779B97F4A7C15  # Fibonacci hashing: the top bits of key * 2^64 / golden ratio
_PROBES = 32  # rounds of linear probing before a binary search is used instead


def _places(u: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Each of ``keys``'s index in ``u`` (sorted, distinct, holding every one of them): as
    ``np.searchsorted(u, keys)``, about 4x faster, through an open-addressing hash table of
    ``u`` built and probed in NumPy (a binary search per key misses the cache 17 times at
    100,000 distinct keys, a probe about once). Keys that collide much (a text made to)
    cost at most _PROBES rounds, then the binary search answers."""
    bits = max(4, (2 * len(u)).bit_length())  # load factor at most 1/2
    mask, shift, mul = (1 << bits) - 1, np.uint64(64 - bits), np.uint64(_MUL)
    slot = np.full(mask + 1, -1, np.int64)
    h = ((u * mul) >> shift).astype(np.int64)
    todo = np.arange(len(u))
    for _ in range(_PROBES):
        if not len(todo):
            break
        hh = h[todo]
        free = slot[hh] < 0
        slot[hh[free]] = todo[free]  # of keys meeting at a free slot, one wins; the others probe on
        won = np.zeros(len(todo), bool)
        won[free] = slot[hh[free]] == todo[free]
        todo = todo[~won]
        h[todo] = (h[todo] + 1) & mask
    else:
        if len(todo):
            return np.searchsorted(u, keys)
    del h, todo
    at = keys * mul
    at >>= shift
    hk = at.view(np.int64)
    res = slot[hk]
    bad = np.flatnonzero(u[res] != keys)  # every key is in u: none meets a free slot first
    for _ in range(_PROBES):
        if not len(bad):
            return res
        hk[bad] = (hk[bad] + 1) & mask
        res[bad] = slot[hk[bad]]
        bad = bad[u[res[bad]] != keys[bad]]
    return np.searchsorted(u, keys)


def _shift(n: np.ndarray) -> np.ndarray:
    """The bits past a run's last byte in a u64 holding ``n`` (at most 8) of its bytes."""
    out: np.ndarray = (8 * (8 - np.minimum(n, 8))).astype(np.uint64)
    return out


def _token_keys(buf: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The runs of bytes other than spaces in ``buf``: each one's first 8 bytes as a
    big-endian u64 (zero past its end), length and start; and the buffer's bytes from each
    offset on as big-endian u64s (zero-padded), for a run's next 8."""
    b = np.zeros(len(buf) + 8, np.uint8)
    b[: len(buf)] = np.frombuffer(buf, np.uint8)
    space = np.empty(len(buf) + 2, bool)
    space[0] = space[-1] = True
    np.equal(b[: len(buf)], 32, out=space[1:-1])
    edge = np.flatnonzero(space[1:] != space[:-1])
    del space
    st, ln = edge[0::2], edge[1::2] - edge[0::2]
    word = np.ndarray((len(buf) + 1,), ">u8", b, 0, (1,))  # the 8 bytes from each offset on
    shift = _shift(ln)
    return (word[st].astype(np.uint64) >> shift) << shift, ln, st, word
