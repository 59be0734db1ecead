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
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..core.constants import STATE_ROOT_TAG
from ..core.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

BUCKET_BITS = 12
BUCKETS = 1 << BUCKET_BITS


def _bucket_index(sorted_ids: np.ndarray) -> np.ndarray:
    """Bucket of each id: its first 12 bits (the ids must be an ``S32`` array)."""
    if len(sorted_ids) == 0:
        return np.zeros(0, dtype=np.int64)
    raw = np.frombuffer(sorted_ids.tobytes(), dtype=np.uint8).reshape(-1, 32)
    return (raw[:, 0].astype(np.int64) << 4) | (raw[:, 1].astype(np.int64) >> 4)


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


def small_root(ids: Iterable[bytes]) -> str:
    """13.1 for a few ids without numpy (a capsule too small to have an index table yet,
    opened for its summary): the same value as :func:`state_root_of`."""
    buckets: dict[int, list[bytes]] = {}
    n = 0
    for rid in ids:
        buckets.setdefault((rid[0] << 4) | (rid[1] >> 4), []).append(rid)
        n += 1
    digests = bytearray(hashlib.sha256(b"").digest() * BUCKETS)
    for b, got in buckets.items():
        digests[32 * b : 32 * b + 32] = hashlib.sha256(b"".join(sorted(got))).digest()
    return _root(n, digests)


class RootCache:
    """A writer's incrementally maintained state root: one sorted byte string per bucket."""

    __slots__ = ("_buckets", "_digests", "_pending", "_n")

    def __init__(self, sorted_ids: np.ndarray) -> None:
        self._pending: list[bytes] = []
        self._n = len(sorted_ids)
        bounds = np.searchsorted(_bucket_index(sorted_ids), np.arange(BUCKETS + 1)).tolist()
        raw = sorted_ids.tobytes()
        self._buckets = [raw[32 * bounds[b] : 32 * bounds[b + 1]] for b in range(BUCKETS)]
        self._digests = bytearray(b"".join(hashlib.sha256(x).digest() for x in self._buckets))

    def add(self, ids: list[bytes]) -> None:
        self._pending.extend(ids)

    def root_with(self, extra: list[bytes]) -> tuple[str, RootCache]:
        """The root once ``extra`` ids are added, leaving this cache as it is; also
        the cache for that future state, to adopt once it is committed."""
        self.root()  # settle what is pending
        probe = RootCache.__new__(RootCache)
        probe._buckets, probe._digests, probe._n = list(self._buckets), bytearray(self._digests), self._n
        probe._pending = list(extra)
        return probe.root(), probe

    def root(self) -> str:
        if self._pending:
            by_bucket: dict[int, list[bytes]] = {}
            for rid in self._pending:
                by_bucket.setdefault((rid[0] << 4) | (rid[1] >> 4), []).append(rid)
            self._n += len(self._pending)
            self._pending = []
            sha = hashlib.sha256
            for b, new in by_bucket.items():
                buf = self._buckets[b]
                for rid in new:
                    # binary search in place of split + sort + join: a bucket holds n / 4096 ids
                    lo, hi = 0, len(buf) >> 5
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if buf[mid << 5 : (mid << 5) + 32] < rid:
                            lo = mid + 1
                        else:
                            hi = mid
                    buf = buf[: lo << 5] + rid + buf[lo << 5 :]
                self._buckets[b] = buf
                self._digests[32 * b : 32 * b + 32] = sha(buf).digest()
        return _root(self._n, self._digests)
