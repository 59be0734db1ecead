"""The records of one commit, held compactly until they are written (spec 6.4, 7.0).

A commit of a million records must not cost a million Python objects: a
:class:`RecordBatch` keeps the ids back to back (32 bytes each), the canonical
bytes back to back, an end offset and a kind code per record, about 45 bytes
beside the record itself. The writer slices RECORDS payloads straight out of it,
and duplicates (within the batch, or already in the file) are found with NumPy
at the end instead of a dict entry per record along the way.

A batch is also a ``Sequence[Item]`` (``(id, kind, bytes)`` tuples made on
demand), so code that takes a short list of items takes a batch as well.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, overload

from ..core.lazy import lazy
from .commit import array_header

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")

#: (content id, kind, canonical bytes) of one record to write
Item = tuple[bytes, str, bytes]


def _at(raw: bytes | bytearray, i: int) -> int:
    """Where the i-th 32-byte id starts in ``raw`` (negative i counts from the end)."""
    n = len(raw) // 32
    if not -n <= i < n:
        raise IndexError("id index out of range")
    return 32 * (i % n)


class IdList(Sequence[str]):
    """Record ids as hex strings, kept as 32 raw bytes each (``raw``)."""

    __slots__ = ("_raw", "_src")

    def __init__(self, raw: bytes | bytearray | memoryview = b"", *, copy: bool = True) -> None:
        # copy=False only for a buffer nothing will change again (a finished batch's ids)
        self._raw: bytes | bytearray | None = bytes(raw) if copy or isinstance(raw, memoryview) else raw
        self._src: tuple[bytearray, int, int] | None = None

    @classmethod
    def later(cls, buf: bytearray, start: int, stop: int) -> IdList:
        """Ids ``start .. stop - 1`` of ``buf``, a buffer that only ever grows or shrinks
        past ``stop`` (a batch's ids): copied when first read, not when made. A million
        ids handed back by ``put_many`` cost nothing until the caller looks (F22)."""
        out = cls.__new__(cls)
        out._raw, out._src = None, (buf, start, stop)
        return out

    @property
    def raw(self) -> bytes | bytearray:
        raw, src = self._raw, self._src
        if raw is None:
            if src is None:  # another thread copied them in between (it sets _raw first)
                return self._raw  # type: ignore[return-value]
            buf, a, b = src
            # one slice, one step under the GIL: a view held over several steps would stop the
            # batch's owner, in another thread, from growing it meanwhile (BufferError)
            raw = self._raw = buf[32 * a : 32 * b]
            self._src = None
        return raw

    def __len__(self) -> int:
        return len(self.raw) // 32

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = _at(self.raw, i)
        return self.raw[j : j + 32].hex()

    def __iter__(self) -> Iterator[str]:
        raw = self.raw
        return (raw[i : i + 32].hex() for i in range(0, len(raw), 32))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IdList):
            return self.raw == other.raw
        if isinstance(other, Sequence) and not isinstance(other, str | bytes):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"IdList({list(self)!r})"


class RecordBatch(Sequence[Item]):
    """Encoded records in the order they were added, duplicates and all."""

    __slots__ = ("ids", "data", "ends", "codes", "kinds", "_code_of", "sealed")

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self.sealed = False  # a finished transaction's: takes no record again, so views of it stay valid
        self.ids = bytearray()  # 32 bytes per record
        self.data = bytearray()  # canonical bytes, back to back
        self.ends = array("Q")  # where each record's bytes end in ``data``
        self.codes = array("I")  # each record's kind, as an index into ``kinds``
        self.kinds: list[str] = []
        self._code_of: dict[str, int] = {}
        for rid, kind, data in items:
            self.add(rid, kind, data)

    def code(self, kind: str) -> int:
        c = self._code_of.get(kind)
        if c is None:
            c = self._code_of[kind] = len(self.kinds)
            self.kinds.append(kind)
        return c

    def check_open(self) -> None:
        if self.sealed:
            from ..core.errors import UsageError

            raise UsageError("this commit is finished: records go into a new `with cap.commit()` block")

    def add(self, rid: bytes, kind: str, data: bytes) -> None:
        if self.sealed:
            self.check_open()
        self.ids += rid
        self.data += data
        self.ends.append(len(self.data))
        self.codes.append(self.code(kind))

    def __len__(self) -> int:
        return len(self.ends)

    def span(self, i: int) -> tuple[int, int]:
        return (self.ends[i - 1] if i else 0), self.ends[i]

    @overload
    def __getitem__(self, i: int) -> Item: ...
    @overload
    def __getitem__(self, i: slice) -> list[Item]: ...
    def __getitem__(self, i: int | slice) -> Item | list[Item]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError("record index out of range")
        i %= n
        lo, hi = self.span(i)
        return bytes(self.ids[32 * i : 32 * i + 32]), self.kinds[self.codes[i]], bytes(self.data[lo:hi])

    def rid(self, i: int) -> bytes:
        return bytes(self.ids[32 * i : 32 * i + 32])

    def id_seq(self) -> Sequence[bytes]:
        """The ids as a sequence of 32-byte ``bytes``, each made when it is read (the
        batch must not change while it is in use)."""
        return _Ids(self.ids)

    def truncate(self, n: int) -> None:
        """Drop every record from the ``n``-th on (undoes a failed ``put_many``)."""
        self.check_open()
        del self.ids[32 * n :]
        del self.data[(self.ends[n - 1] if n else 0) :]
        del self.ends[n:]
        del self.codes[n:]

    # --- what the writer and the transaction ask of a whole batch -------------------

    def id_array(self) -> np.ndarray:
        """The ids as an ``S32`` array (a copy: a view would pin the batch's size)."""
        return np.frombuffer(self.ids, dtype="S32").copy()

    def prefixes(self) -> np.ndarray:
        """Each id's first 8 bytes as a big-endian integer (the index tables' sort key, 9.1)."""
        return np.frombuffer(self.ids, dtype=">u8").reshape(-1, 4)[:, 0].astype(np.uint64)

    def first_occurrences(self) -> np.ndarray:
        """A mask of the records whose id no earlier record of the batch has."""
        n = len(self)
        keep = np.ones(n, dtype=bool)
        if n < 2:
            return keep
        # Sort by the 8-byte prefix (cheap), stably, so equal ids stay in the order they came.
        pre = self.prefixes()
        order = np.argsort(pre, kind="stable")
        same = pre[order[1:]] == pre[order[:-1]]
        if not same.any():
            return keep
        ids = self.id_array()
        pairs = order[1:][same], order[:-1][same]
        if (ids[pairs[0]] == ids[pairs[1]]).all():
            keep[pairs[0]] = False  # each run of one prefix holds one id: all but its first go
            return keep
        order = np.argsort(ids, kind="stable")  # two ids share a prefix: sort by the whole id
        s = ids[order]
        keep[order[1:][s[1:] == s[:-1]]] = False
        return keep

    def select(self, keep: np.ndarray, *, copy: bool = False) -> RecordBatch:
        """A batch of the records where ``keep`` is true, in order (``self`` when that is
        all of them, unless ``copy``)."""
        if keep.all() and not copy:
            return self
        out = RecordBatch()
        out.kinds, out._code_of = list(self.kinds), dict(self._code_of)
        idx = np.flatnonzero(keep)
        if not len(idx):
            return out
        ends = np.array(self.ends, dtype=np.int64)
        starts = np.concatenate(([0], ends[:-1]))
        # contiguous runs of kept records are copied in one slice each
        cut = np.flatnonzero(np.diff(idx) != 1) + 1
        for run in np.split(idx, cut):
            a, b = int(run[0]), int(run[-1]) + 1
            out.ids += self.ids[32 * a : 32 * b]
            base = len(out.data) - int(starts[a])
            out.data += self.data[int(starts[a]) : int(ends[b - 1])]
            out.ends.extend((ends[a:b] + base).tolist())
            out.codes.extend(self.codes[a:b])
        return out

    def spliced(self, keep: np.ndarray, inserts: list[tuple[int, Item]]) -> RecordBatch:
        """The records where ``keep`` is true, in order, each of ``inserts`` (position, item;
        ascending) placed before the record at that position (``len(self)``: at the end)."""
        out = RecordBatch()
        out.kinds, out._code_of = list(self.kinds), dict(self._code_of)
        pos = np.arange(len(self))
        lo = 0
        for at, item in [*inserts, (len(self), None)]:
            part = self.select(keep & (pos >= lo) & (pos < at), copy=True)
            base = len(out.data)
            out.ids += part.ids
            out.data += part.data
            out.ends.extend(e + base for e in part.ends)
            out.codes.extend(out.code(part.kinds[c]) for c in part.codes)
            if item is not None:
                out.add(*item)
            lo = at
        return out

    def kind_counts(self) -> dict[str, int]:
        counts = np.bincount(np.array(self.codes, dtype=np.int64), minlength=len(self.kinds))
        return {k: int(c) for k, c in zip(self.kinds, counts, strict=True) if c}

    def frames(self, target: int) -> Iterator[tuple[int, int]]:
        """[lo, hi) record ranges of about ``target`` bytes each: as many records
        as fit, and at least one (a record larger than ``target`` goes alone)."""
        ends = np.array(self.ends, dtype=np.uint64)  # a copy: a view would pin the array's size
        n, lo = len(ends), 0
        while lo < n:
            base = int(ends[lo - 1]) if lo else 0
            hi = int(np.searchsorted(ends, base + target, side="right"))
            hi = max(hi, lo + 1)
            yield lo, hi
            lo = hi

    def payload(self, lo: int, hi: int) -> bytes:
        """7.0: records ``lo`` .. ``hi`` - 1 as one RECORDS payload (a canonical array)."""
        a = self.ends[lo - 1] if lo else 0
        return array_header(hi - lo) + self.data[a : self.ends[hi - 1]]


class _Ids(Sequence[bytes]):
    __slots__ = ("_raw",)

    def __init__(self, raw: bytearray) -> None:
        self._raw = raw

    def __len__(self) -> int:
        return len(self._raw) // 32

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> list[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | list[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        j = _at(self._raw, i)
        return bytes(self._raw[j : j + 32])

    def __iter__(self) -> Iterator[bytes]:
        raw = self._raw
        return (bytes(raw[i : i + 32]) for i in range(0, len(raw), 32))


def as_batch(items: Sequence[Item]) -> RecordBatch:
    """``items`` as a batch (a batch is taken as it is)."""
    return items if isinstance(items, RecordBatch) else RecordBatch(items)


def item_ids(items: Sequence[Item]) -> Sequence[bytes]:
    """The ids of ``items``, without copying a batch's records."""
    return items.id_seq() if isinstance(items, RecordBatch) else [it[0] for it in items]


__all__ = ["IdList", "Item", "RecordBatch", "as_batch", "item_ids"]
