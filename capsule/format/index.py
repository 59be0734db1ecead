"""Record-location tables (spec section 9). Sans-IO over buffers.

Theory of operation: opening must not read history, so the id -> location map
is kept on disk as sorted, fixed-width tables that are binary-searched in
place (mmap) instead of loaded. Each INDEX adds one table for the records
since the previous one; tables are merged like a binary counter (a table is
merged into the newer one while it is no more than twice its size), so a
capsule of n records has at most log2(n) tables and each record is rewritten
O(log n) times over its life.

A table of n entries is four little-endian column arrays, back to back (9.1):
``prefix u64[n] | id [n][32] | frame_offset u64[n] | slot u32[n]``, sorted by id,
where ``prefix`` is the first 8 id bytes read big-endian, so sorting by id sorts it.
A lookup binary-searches the prefix column in place and compares whole ids only
among the (almost always one) entries with that prefix; the caller checks the
record it reads against the id (5.3), so a hit needs no table hash (9.2).
"""

from __future__ import annotations

import bisect
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.errors import CorruptError
from ..core.lazy import lazy

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

ENTRY_SIZE = 8 + 32 + 8 + 4  # 9.1: record and label tables alike


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """Where a table lives and the hash that authenticates it (9.2)."""

    offset: int  # file offset of the table bytes (a TABLE frame payload)
    count: int
    sha256: bytes

    def to_value(self) -> list[object]:
        return [self.offset, self.count, self.sha256]


class Segment:
    """One table, mapped in place."""

    __slots__ = ("ref", "prefix", "ids", "frames", "slots", "_buf", "_col", "_verified")

    def __init__(self, ref: SegmentRef, buf: memoryview | bytes | bytearray, *, verified: bool = False) -> None:
        n = ref.count
        if len(buf) != n * ENTRY_SIZE:
            raise CorruptError("index table has the wrong size", offset=ref.offset, check="index-table")
        self.ref = ref
        self._buf = buf
        self._verified = verified
        self.prefix = np.frombuffer(buf, dtype="<u8", count=n, offset=0)
        # The prefix column as Python sees it, for scalar binary search in place. A table
        # starts at any byte of the file, and NumPy copies an unaligned array on every
        # searchsorted (40 us for 80k entries), so one lookup must not go through it.
        self._col = memoryview(buf)[: 8 * n].cast("B").cast("Q") if sys.byteorder == "little" else None
        self.ids = np.frombuffer(buf, dtype="S32", count=n, offset=8 * n)
        self.frames = np.frombuffer(buf, dtype="<u8", count=n, offset=40 * n)
        self.slots = np.frombuffer(buf, dtype="<u4", count=n, offset=48 * n)

    @property
    def verified(self) -> bool:
        return self._verified

    def verify(self) -> None:
        """Hash the table once before trusting it for more than a lookup hint."""
        if not self._verified:
            if hashlib.sha256(self._buf).digest() != self.ref.sha256:
                raise CorruptError("index table hash mismatch", offset=self.ref.offset, check="index-table")
            self._verified = True

    def first(self, p: int) -> int:
        """Position of the first entry whose prefix is >= ``p`` (a binary search in place)."""
        if self._col is not None:
            return bisect.bisect_left(self._col, p)
        return int(np.searchsorted(self.prefix, np.uint64(p)))

    def prefix_at(self, i: int) -> int:
        return int(self._col[i]) if self._col is not None else int(self.prefix[i])

    def find(self, rid: bytes) -> tuple[int, int] | None:
        """The place of the entry with exactly this id (or label key), or None."""
        p = int.from_bytes(rid[:8], "big")
        i = self.first(p)
        n = self.ref.count
        while i < n and self.prefix_at(i) == p:
            if self.key(i) == rid:
                return int(self.frames[i]), int(self.slots[i])
            i += 1
        return None

    def key(self, i: int) -> bytes:
        """The whole 32-byte id (or label key) of entry ``i``."""
        n = self.ref.count
        return bytes(self._buf[8 * n + 32 * i : 8 * n + 32 * i + 32])

    def prefix_hits(self, prefixes: np.ndarray) -> np.ndarray:
        """Vectorised first step of a batch lookup: the query indices whose prefix is in
        this table."""
        n = self.ref.count
        if n == 0 or len(prefixes) == 0:
            return np.zeros(0, np.int64)
        if len(prefixes) <= 16:  # a few scalar searches beat copying an unaligned column
            pos = np.array([self.first(p) for p in prefixes.tolist()], dtype=np.int64)
        else:
            pos = np.searchsorted(self.prefix, prefixes)
        inside = np.nonzero(pos < n)[0]
        hit: np.ndarray = inside[self.prefix[pos[inside]] == prefixes[inside]]
        return hit

    def contains_many(self, prefixes: np.ndarray, ids: Sequence[bytes]) -> np.ndarray:
        """Vectorised exact membership test for a batch of ids (``prefixes`` from
        :func:`prefixes_of`)."""
        out = np.zeros(len(ids), dtype=bool)
        for j in self.prefix_hits(prefixes).tolist():
            out[j] = self.find(ids[j]) is not None
        return out


def prefixes_of(ids: Sequence[bytes]) -> np.ndarray:
    """9.1: the ``prefix`` of each id, its first 8 bytes read big-endian, as ``uint64``."""
    if len(ids) == 0:
        return np.zeros(0, np.uint64)
    return np.frombuffer(b"".join(r[:8].ljust(8, b"\0") for r in ids), dtype=">u8").astype(np.uint64)


def build_table(ids: np.ndarray, frames: np.ndarray, slots: np.ndarray,
                order: np.ndarray | None = None) -> bytearray:
    """Sort entries by id and lay them out as a table (9.1).

    ``ids`` is an ``S32`` array. NumPy compares ``S`` strings with trailing NULs
    stripped, which for equal-length keys is plain byte order. ``order``, when given,
    is the sorted order of the entries to take (a slice of an argsort of ``ids``).

    Each column is gathered straight into its place in one buffer of 52 bytes an
    entry: a table of a million entries costs its 52 MB and the order, not a sorted
    copy of every column and then a joined copy of them all (F22)."""
    if order is None:
        order = np.argsort(ids, kind="stable")
    n = len(order)
    buf = bytearray(ENTRY_SIZE * n)
    if n:
        col = np.frombuffer(buf, np.uint8)
        sorted_ids = col[8 * n : 40 * n].view("S32")
        np.take(ids, order, out=sorted_ids, mode="clip")  # "raise" would gather into a temporary first
        prefix = col[: 8 * n].view("<u8")
        prefix[:] = col[8 * n : 40 * n].view(">u8")[0::4]  # the first 8 bytes of each id, big-endian
        np.take(frames.astype("<u8", copy=False), order, out=col[40 * n : 48 * n].view("<u8"), mode="clip")
        np.take(slots.astype("<u4", copy=False), order, out=col[48 * n :].view("<u4"), mode="clip")
        del col, sorted_ids, prefix  # the views export the buffer: none outlives the call
    return buf


def merge_inputs(segments: list[Segment], extra: dict[bytes, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate tables and in-memory entries into unsorted columns."""
    ids = [s.ids for s in segments]
    frames = [s.frames for s in segments]
    slots = [s.slots for s in segments]
    if extra:
        ids.append(np.array(list(extra.keys()), dtype="S32"))
        locs = np.array(list(extra.values()), dtype=np.uint64).reshape(-1, 2)
        frames.append(locs[:, 0])
        slots.append(locs[:, 1].astype(np.uint32))
    if not ids:
        return np.zeros(0, "S32"), np.zeros(0, np.uint64), np.zeros(0, np.uint32)
    return np.concatenate(ids), np.concatenate(frames).astype(np.uint64), np.concatenate(slots).astype(np.uint32)


def plan_merge(counts: list[int], new: int) -> int:
    """How many trailing tables to fold into the new one (9.3): binary-counter rule."""
    k = 0
    size = new
    while k < len(counts) and counts[-1 - k] <= 2 * size:
        size += counts[-1 - k]
        k += 1
    return k
