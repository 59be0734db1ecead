"""A simulated power-loss file layer: SQLite's ``test6.c`` crash model for capsule.

Theory of operation. The writer reaches the disk only through
``capsule.format.file._pwrite``, ``_fsync`` and ``_ftruncate``. :class:`Recorder`
wraps them: writes and truncates still happen (the workload runs on a real
file, with fsync a no-op, since durability is what is simulated here) and each
call is logged as an :class:`Op`. The log splits at every fsync into *crash
points*: at crash point j everything up to the j-th fsync is durable, and the
writes and truncates issued after it are pending.

A power loss at a crash point may persist any subset of the pending writes,
one 512-byte sector at a time and in any order. A sector that did not persist
holds its old bytes, which past the old end of the file are zeros or garbage
(random bytes). The file size may be the size before the pending operations,
after all of them, or after any prefix of them. Sectors are clipped to the byte
ranges actually written: a write never damages bytes it did not cover (what
SQLite calls power-safe overwrite), so durable bytes are never disturbed.

:func:`images` enumerates those crash images exhaustively when there are few,
else takes a fixed structured set (all persisted, none, one sector missing,
prefixes) plus a seeded random sample. Nothing here knows the capsule format;
the checks live in ``tests/test_powerloss.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

import capsule.format.file as cfile

SECTOR = 512
NEW, ZERO, JUNK = "n", "z", "j"  # a pending sector persisted, left zero, or left as garbage
FILLS = (NEW, ZERO, JUNK)


@dataclass(frozen=True)
class Op:
    kind: str  # "write", "truncate" or "sync"
    offset: int = 0  # where a write starts, or the size a truncate sets
    data: bytes = b""


def apply(image: bytes, ops: Sequence[Op]) -> bytes:
    """The file after ``ops`` all reached the disk in order."""
    buf = bytearray(image)
    for op in ops:
        if op.kind == "write":
            end = op.offset + len(op.data)
            if len(buf) < end:
                buf.extend(bytes(end - len(buf)))
            buf[op.offset : end] = op.data
        elif op.kind == "truncate":
            if op.offset < len(buf):
                del buf[op.offset :]
            else:
                buf.extend(bytes(op.offset - len(buf)))
    return bytes(buf)


class Recorder:
    """Log every write, truncate and fsync the writer makes while :meth:`record` is active."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ops: list[Op] = []
        self.recording = False
        self._inode: int | None = None
        monkeypatch.setattr(cfile, "_pwrite", self._pwrite)
        monkeypatch.setattr(cfile, "_fsync", self._fsync)
        monkeypatch.setattr(cfile, "_ftruncate", self._ftruncate)

    def _note(self, fd: int) -> None:
        ino = os.fstat(fd).st_ino
        assert self._inode in (None, ino), "one recorded operation wrote to two files"
        self._inode = ino

    def _pwrite(self, fd: int, data: object, offset: int) -> int:
        buf = bytes(data)  # type: ignore[call-overload]
        n = os.pwrite(fd, buf, offset)
        if self.recording:
            self._note(fd)
            self.ops.append(Op("write", offset, buf[:n]))
        return n

    def _fsync(self, fd: int) -> None:
        if self.recording:
            self._note(fd)
            self.ops.append(Op("sync"))

    def _ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)
        if self.recording:
            self._note(fd)
            self.ops.append(Op("truncate", size))

    @contextlib.contextmanager
    def record(self) -> Iterator[list[Op]]:
        self.ops, self._inode, self.recording = [], None, True
        try:
            yield self.ops
        finally:
            self.recording = False


@dataclass(frozen=True)
class CrashPoint:
    """Power is lost after ``index`` fsyncs of the operation, before the next completes."""

    index: int
    durable: bytes
    pending: tuple[Op, ...]
    final: bytes  # what the pending operations meant to leave

    def sizes(self) -> list[int]:
        out, img = {len(self.durable)}, self.durable
        for op in self.pending:
            img = apply(img, [op])
            out.add(len(img))
        return sorted(out)

    def pieces(self, sector: int = SECTOR) -> list[tuple[int, int]]:
        """The pending written bytes, cut at sector boundaries."""
        spans = sorted((op.offset, op.offset + len(op.data)) for op in self.pending if op.kind == "write" and op.data)
        merged: list[list[int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        out = []
        for lo, hi in merged:
            pos = lo
            while pos < hi:
                nxt = min(hi, (pos // sector + 1) * sector)
                out.append((pos, nxt))
                pos = nxt
        return out


def crash_points(base: bytes, ops: Sequence[Op]) -> list[CrashPoint]:
    """One crash point per fsync-delimited run of writes and truncates."""
    out: list[CrashPoint] = []
    durable, pending = base, []
    for op in [*ops, Op("sync")]:
        if op.kind != "sync":
            pending.append(op)
            continue
        if pending:
            final = apply(durable, pending)
            out.append(CrashPoint(len(out), durable, tuple(pending), final))
            durable = final
            pending = []
    return out


@dataclass(frozen=True)
class Image:
    point: CrashPoint
    size: int
    fill: tuple[str, ...]  # one of FILLS per piece; "-" for pieces past ``size``
    sector: int = SECTOR

    def render(self) -> bytes:
        p = self.point
        seed = hashlib.sha256(repr((p.index, self.size, self.fill, self.sector)).encode()).digest()
        rng = random.Random(seed)
        full = max(len(p.durable), len(p.final), self.size)
        buf = bytearray(p.durable) + bytearray(full - len(p.durable))
        for (lo, hi), f in zip(p.pieces(self.sector), self.fill, strict=True):
            if f == NEW:
                buf[lo:hi] = p.final[lo:hi]
                continue
            # Not persisted: the old bytes where there were any, past them zeros or garbage.
            old_end = max(lo, min(hi, len(p.durable)))
            fresh = hi - old_end
            buf[old_end:hi] = rng.randbytes(fresh) if f == JUNK else bytes(fresh)
        return bytes(buf[: self.size])

    def describe(self) -> str:
        p = self.point
        size = "old" if self.size == len(p.durable) else "new" if self.size == len(p.final) else "mid"
        return (f"crash point {p.index} (durable {len(p.durable)} B, pending {len(p.final)} B), "
                f"size {self.size} ({size}), {self.sector}-byte sectors {''.join(self.fill) or '-'}")


def _normal(point: CrashPoint, size: int, fill: Sequence[str], sector: int) -> Image:
    pieces = point.pieces(sector)
    return Image(point, size, tuple("-" if lo >= size else f for (lo, _), f in zip(pieces, fill, strict=True)),
                 sector)


def count(point: CrashPoint, sector: int = SECTOR) -> int:
    """How many crash images ``point`` has at this sector size (before duplicates merge)."""
    return len(point.sizes()) * len(FILLS) ** len(point.pieces(sector))


def images(point: CrashPoint, limit: int, rng: random.Random, sector: int = SECTOR) -> list[Image]:
    """Every distinct crash image of ``point`` if there are at most ``limit``, else
    a structured set plus a seeded random sample, ``limit`` in all.

    A smaller ``sector`` than the disk's is a strictly harsher model (every
    512-byte image is also a 64-byte one) with more boundaries to fall on."""
    pieces, sizes = point.pieces(sector), point.sizes()
    n = len(pieces)
    seen: dict[Image, None] = {}
    if count(point, sector) <= limit:
        for size in sizes:
            for fill in itertools.product(FILLS, repeat=n):
                seen.setdefault(_normal(point, size, fill, sector))
        return list(seen)
    for size in sizes:
        for f in FILLS:
            seen.setdefault(_normal(point, size, [f] * n, sector))
        for i in range(n):
            for f in (ZERO, JUNK):
                one = [NEW] * n
                one[i] = f
                seen.setdefault(_normal(point, size, one, sector))  # one sector lost
                only = [f] * n
                only[i] = NEW
                seen.setdefault(_normal(point, size, only, sector))  # one sector persisted
            seen.setdefault(_normal(point, size, [NEW] * i + [ZERO] * (n - i), sector))  # an in-order prefix
    structured = list(seen)
    if len(structured) > limit:
        return rng.sample(structured, limit)
    tries = 0
    while len(seen) < limit and tries < 20 * limit:
        tries += 1
        seen.setdefault(_normal(point, rng.choice(sizes), [rng.choice(FILLS) for _ in range(n)], sector))
    return list(seen)


@dataclass
class Tally:
    """Images tried and survived, with the first few failures."""

    name: str
    points: int = 0
    tried: int = 0
    survived: int = 0
    failures: list[str] = field(default_factory=list)

    def add(self, image: Image, error: str | None) -> None:
        self.tried += 1
        if error is None:
            self.survived += 1
        elif len(self.failures) < 5:
            self.failures.append(f"{image.describe()}: {error}")

    def line(self) -> str:
        return (f"power-loss {self.name}: {self.survived} of {self.tried} images survived "
                f"({self.points} crash points)")
