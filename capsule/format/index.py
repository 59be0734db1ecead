"""Record-location tables (spec section 9). Sans-IO over buffers.

Theory of operation: opening must not read history, so the id -> location map
is kept on disk as sorted, fixed-width tables that are binary-searched in
place (mmap) instead of loaded. Each INDEX adds one table for the records
since the previous one; tables are merged like a binary counter (a table is
merged into the newer one while it is no more than twice its size), so a
capsule of n records has at most log2(n) tables and each record is rewritten
O(log n) times over its life.

A table of n entries is four little-endian column arrays, back to back:
``prefix u64[n] | id [n][32] | frame_offset u64[n] | slot u32[n]`` where
``prefix`` is the first 8 id bytes read big-endian, so sorting by id sorts it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..core.errors import CorruptError

ENTRY_SIZE = 8 + 32 + 8 + 4


@dataclass(frozen=True, slots=True)
class SegmentRef:
    """Where a table lives and the hash that authenticates it (9.2)."""

    offset: int  # file offset of the table bytes (a TABLE frame payload)
    count: int
    sha256: bytes

    def to_value(self) -> list[object]:
        return [self.offset, self.count, self.sha256]


class Segment:
    __slots__ = ("ref", "prefix", "ids", "frames", "slots", "_buf", "_verified")

    def __init__(self, ref: SegmentRef, buf: memoryview | bytes, *, verified: bool = False) -> None:
        n = ref.count
        if len(buf) != n * ENTRY_SIZE:
            raise CorruptError("index table has the wrong size", offset=ref.offset, check="index-table")
        self.ref = ref
        self._buf = buf
        self._verified = verified
        self.prefix = np.frombuffer(buf, dtype="<u8", count=n, offset=0)
        self.ids = np.frombuffer(buf, dtype="S32", count=n, offset=8 * n)
        self.frames = np.frombuffer(buf, dtype="<u8", count=n, offset=40 * n)
        self.slots = np.frombuffer(buf, dtype="<u4", count=n, offset=48 * n)

    def verify(self) -> None:
        """Hash the table once before trusting it for more than a lookup hint."""
        if not self._verified:
            if hashlib.sha256(self._buf).digest() != self.ref.sha256:
                raise CorruptError("index table hash mismatch", offset=self.ref.offset, check="index-table")
            self._verified = True

    def find(self, rid: bytes) -> tuple[int, int] | None:
        p = int.from_bytes(rid[:8], "big")
        i = int(np.searchsorted(self.prefix, p))
        n = self.ref.count
        while i < n and int(self.prefix[i]) == p:
            if bytes(self._buf[8 * n + 32 * i : 8 * n + 32 * i + 32]) == rid:
                return int(self.frames[i]), int(self.slots[i])
            i += 1
        return None

    def contains_many(self, prefixes: np.ndarray, ids: list[bytes]) -> np.ndarray:
        """Vectorised membership test for a batch of ids."""
        n = self.ref.count
        out = np.zeros(len(ids), dtype=bool)
        if n == 0:
            return out
        pos = np.searchsorted(self.prefix, prefixes)
        hit = np.nonzero(pos < n)[0]
        for j in hit[self.prefix[pos[hit]] == prefixes[hit]]:
            out[j] = self.find(ids[j]) is not None
        return out


def build_table(ids: np.ndarray, frames: np.ndarray, slots: np.ndarray) -> bytes:
    """Sort entries by id and lay them out as a table (9.1).

    ``ids`` is an ``S32`` array. NumPy compares ``S`` strings with trailing NULs
    stripped, which for equal-length keys is plain byte order.
    """
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    raw = np.frombuffer(ids.tobytes(), dtype=">u8").reshape(-1, 4)[:, 0] if len(ids) else np.zeros(0, ">u8")
    prefix = raw.astype("<u8")
    return b"".join(
        (prefix.tobytes(), ids.tobytes(), frames[order].astype("<u8").tobytes(), slots[order].astype("<u4").tobytes())
    )


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
