"""The state root (spec 13.1): a two-level hash over the sorted live ids.

Theory of operation: ids are spread over 4,096 buckets by their first 12 bits.
Each bucket's digest is SHA-256 over its ids, sorted, concatenated; the root is
SHA-256 over the tag, the id count and the 4,096 digests in bucket order. The
value depends only on the *set* of live ids, like one hash over all sorted ids,
but a writer that adds k ids re-hashes only the <= k buckets they land in (a
few hundred bytes each) plus 128 KiB of digests, instead of every id: that is
what keeps a checkpoint's cost flat as the capsule grows.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ._constants import STATE_ROOT_TAG

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS
EMPTY = hashlib.sha256(b"").digest()


def _bucket_index(sorted_ids: np.ndarray) -> np.ndarray:
    """Bucket of each id: its first 12 bits (the ids must be an ``S32`` array)."""
    if len(sorted_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(sorted_ids.tobytes(), dtype=np.uint8).reshape(-1, 32)
    return (raw[:, 0].astype(np.int64) << 4) | (raw[:, 1].astype(np.int64) >> 4)


def _bucket_digest(sorted_ids: np.ndarray, bounds: np.ndarray, b: int) -> bytes:
    lo, hi = int(bounds[b]), int(bounds[b + 1])
    if lo == hi:
        return EMPTY
    return hashlib.sha256(sorted_ids[lo:hi].tobytes()).digest()


def _bucket_key(b: int) -> bytes:
    """The smallest id in bucket ``b`` (NumPy's ``S32`` compare ignores trailing NULs,
    which for equal-length ids is still byte order)."""
    return bytes([b >> 4, (b & 15) << 4]) + bytes(30)


_KEYS = np.array([_bucket_key(b) for b in range(BUCKETS)] + [b"\xff" * 32], dtype="S32")


def _root(n: int, digests: bytearray) -> str:
    h = hashlib.sha256(STATE_ROOT_TAG)
    h.update(n.to_bytes(8, "little"))
    h.update(digests)
    return h.hexdigest()


def state_root_of(ids: object) -> str:
    """13.1 from scratch, for any iterable of 32-byte ids or an ``S32`` array."""
    arr = ids if isinstance(ids, np.ndarray) else np.array(sorted(ids), dtype="S32")  # type: ignore[call-overload]
    arr = np.sort(arr, kind="stable")
    return RootCache(arr).root()


class RootCache:
    """A writer's incrementally maintained state root."""

    __slots__ = ("_ids", "_digests", "_pending")

    def __init__(self, sorted_ids: np.ndarray) -> None:
        self._ids = sorted_ids
        self._pending: list[bytes] = []
        bounds = np.searchsorted(_bucket_index(sorted_ids), np.arange(BUCKETS + 1))
        self._digests = bytearray(b"".join(_bucket_digest(sorted_ids, bounds, b) for b in range(BUCKETS)))

    def add(self, ids: list[bytes]) -> None:
        self._pending.extend(ids)

    def root_with(self, extra: list[bytes]) -> tuple[str, RootCache]:
        """The root once ``extra`` ids are added, leaving this cache as it is; also
        the cache for that future state, to adopt once it is committed."""
        self.root()  # settle what is pending
        probe = RootCache.__new__(RootCache)
        probe._ids, probe._digests, probe._pending = self._ids, bytearray(self._digests), list(extra)
        return probe.root(), probe

    def root(self) -> str:
        if self._pending:
            new = np.sort(np.array(self._pending, dtype="S32"), kind="stable")
            self._pending = []
            pos = np.searchsorted(self._ids, new)
            self._ids = np.insert(self._ids, pos, new)
            dirty = np.unique(_bucket_index(new))
            los = np.searchsorted(self._ids, _KEYS[dirty])
            his = np.searchsorted(self._ids, _KEYS[dirty + 1])
            his[dirty + 1 == BUCKETS] = len(self._ids)
            buf = self._ids
            for b, lo, hi in zip(dirty.tolist(), los.tolist(), his.tolist(), strict=True):
                self._digests[32 * b : 32 * b + 32] = hashlib.sha256(buf[lo:hi].tobytes()).digest() if hi > lo else EMPTY
        return _root(len(self._ids), self._digests)
