"""Reading and forging vector index snapshots (spec 16.2), for tests and the fuzz target.

Independent of ``capsule.search.vindex.decode``: it walks the layout of 16.2 on its
own, so a forgery lands exactly where the spec says the field lives. ``mutate`` is
the mutation engine shared by ``tests/test_vindex_fuzz.py`` and
``tests/fuzz/fuzz_vindex.py``: bit flips anywhere, and rewrites of the integer
fields hnswlib trusts (neighbour ids, counts, levels, entry point, top level).
"""

from __future__ import annotations

import contextlib
import random
import struct
from dataclasses import dataclass

import numpy as np

from capsule.format import canonical as canon
from capsule.search.vindex import MAGIC, Entry, VectorIndex, VectorParams


@dataclass
class Layout:
    """Where each field of a snapshot lives (absolute byte offsets into the blob)."""

    header: dict[str, object]
    body: int  # offset of the first section byte
    sec: dict[str, tuple[int, int]]  # name -> (absolute offset, length)
    n: int
    m: int
    m0: int
    dim: int
    levels: np.ndarray  # int64, per label

    @property
    def per(self) -> int:  # one level-0 row
        return 4 + 4 * self.m0 + 4 * self.dim + 8

    @property
    def per_links(self) -> int:  # one upper-level list
        return 4 + 4 * self.m

    @property
    def top(self) -> int:
        return int(self.header["max_level"])  # type: ignore[call-overload]

    @property
    def ep(self) -> int:
        return int(self.header["enterpoint"])  # type: ignore[call-overload]

    def level0(self, i: int) -> int:
        """Offset of element i's level-0 count word (its neighbour ids follow)."""
        return self.sec["level0"][0] + i * self.per

    def vector(self, i: int) -> int:
        return self.level0(i) + 4 + 4 * self.m0

    def link(self, i: int, level: int) -> int:
        """Offset of element i's list on ``level`` (>= 1): count word, then m ids."""
        assert 1 <= level <= self.levels[i]
        before = int(self.levels[:i].sum())
        return self.sec["links"][0] + (before + level - 1) * self.per_links

    def upper_rows(self) -> list[tuple[int, int]]:
        """(element, level) of every upper-level list, in storage order."""
        return [(i, lv) for i in range(self.n) for lv in range(1, int(self.levels[i]) + 1)]


def layout(blob: bytes | bytearray) -> Layout:
    assert blob[:8] == MAGIC
    hlen = struct.unpack_from("<I", blob, 8)[0]
    h = canon.decode(bytes(blob[12 : 12 + hlen]))
    body = 12 + hlen + (-(12 + hlen) % 8)
    sec = {s[0]: (body + s[1], s[2]) for s in h["sections"]}
    n, m = h["count"], h["params"]["M"]
    at, ln = sec["levels"]
    levels = np.frombuffer(bytes(blob[at : at + ln]), "<i4").astype(np.int64)
    return Layout(h, body, sec, n, m, 2 * m, h["params"]["dim"], levels)


def u32(blob: bytes | bytearray, at: int) -> int:
    return int(struct.unpack_from("<I", blob, at)[0])


def put_u32(blob: bytearray, at: int, value: int) -> None:
    struct.pack_into("<I", blob, at, value & 0xFFFFFFFF)


def put_i32(blob: bytearray, at: int, value: int) -> None:
    struct.pack_into("<i", blob, at, value)


def with_header(blob: bytes | bytearray, **fields: object) -> bytes:
    """The blob with header fields replaced (the header is re-encoded, the body kept)."""
    lay = layout(blob)
    h = dict(lay.header)
    h.update(fields)
    raw = canon.pack(dict(sorted(h.items())))
    head = MAGIC + struct.pack("<I", len(raw)) + raw
    head += b"\0" * (-len(head) % 8)
    return head + bytes(blob[lay.body :])


def build(n: int = 200, dim: int = 8, M: int = 4, seed: int = 7, space: str = "cosine",
          ef_construction: int = 16) -> tuple[bytes, np.ndarray]:
    """A real snapshot of ``n`` random vectors, built as the library builds one, and the vectors."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    vi = VectorIndex(VectorParams(space=space, dim=dim, M=M, ef_construction=ef_construction))
    vi.add([Entry(i.to_bytes(32, "big"), i, 0, i % 3, ("even",) if i % 2 == 0 else ()) for i in range(n)], x)
    return vi.encode(), x


def level_below(lay: Layout, level: int, rnd: random.Random) -> int | None:
    """Some element whose level is below ``level`` (it has no list there)."""
    low = np.flatnonzero(lay.levels < level)
    return int(low[rnd.randrange(len(low))]) if len(low) else None


def point_level_at_lower(blob: bytearray, lay: Layout, level: int, target: int, *, every: bool = True) -> list[int]:
    """F4: make the first neighbour of the lists on ``level`` name ``target`` (count >= 1).
    Every such list, or only the entry point's. Returns the elements changed."""
    rows = [(i, lv) for i, lv in lay.upper_rows() if lv == level and (every or i == lay.ep)]
    for i, lv in rows:
        at = lay.link(i, lv)
        put_u32(blob, at, max(1, u32(blob, at)))
        put_u32(blob, at + 4, target)
    return [i for i, _ in rows]


# --- the mutation engine --------------------------------------------------------------

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def _pick_value(rnd: random.Random, lay: Layout, i: int) -> int:
    """A neighbour id worth trying: any node, a node low in the graph, itself, n, or an edge value."""
    r = rnd.random()
    if r < 0.35:
        return rnd.randrange(lay.n)
    if r < 0.65:
        return level_below(lay, max(1, int(lay.levels[i])), rnd) or 0
    if r < 0.75:
        return i
    if r < 0.85:
        return lay.n + rnd.randrange(3) - 1
    return rnd.choice(INTERESTING)


def mutate(seed_blob: bytes, rnd: random.Random) -> tuple[bytes, list[int], str]:
    """One mutant of a valid snapshot: (bytes, elements worth querying near, what was done)."""
    blob = bytearray(seed_blob)
    lay = layout(blob)
    hints: list[int] = [lay.ep]
    rows = lay.upper_rows()
    kinds = []
    header: dict[str, object] = {}
    for _ in range(rnd.choice((1, 1, 1, 2, 3))):
        kind = rnd.choice(("flip", "flip-graph", "upper-id", "upper-count", "l0-id", "l0-count", "level-swap",
                           "level-set", "header", "f4"))
        kinds.append(kind)
        if kind == "flip":
            for _ in range(rnd.randint(1, 4)):
                blob[rnd.randrange(len(blob))] ^= 1 << rnd.randrange(8)
        elif kind == "flip-graph":
            name = rnd.choice(("levels", "level0", "links"))
            at, ln = lay.sec[name]
            if ln:
                blob[at + rnd.randrange(ln)] ^= 1 << rnd.randrange(8)
        elif kind == "upper-id" and rows:
            i, lv = rows[rnd.randrange(len(rows))]
            at = lay.link(i, lv)
            slot = rnd.randrange(max(1, min(u32(blob, at), lay.m)) if rnd.random() < 0.8 else lay.m)
            v = _pick_value(rnd, lay, i)
            put_u32(blob, at + 4 + 4 * slot, v)
            hints += [i, v]
        elif kind == "upper-count" and rows:
            i, lv = rows[rnd.randrange(len(rows))]
            put_u32(blob, lay.link(i, lv), rnd.choice((0, 1, lay.m, lay.m + 1, rnd.randrange(lay.m + 1),
                                                       *INTERESTING)))
            hints.append(i)
        elif kind == "l0-id":
            i = rnd.randrange(lay.n)
            at = lay.level0(i)
            slot = rnd.randrange(max(1, min(u32(blob, at), lay.m0)) if rnd.random() < 0.8 else lay.m0)
            v = _pick_value(rnd, lay, i)
            put_u32(blob, at + 4 + 4 * slot, v)
            hints += [i, v]
        elif kind == "l0-count":
            i = rnd.randrange(lay.n)
            at = lay.level0(i)
            if rnd.random() < 0.3:
                blob[at + 2] |= 1  # hnswlib's "deleted" flag
            else:
                put_u32(blob, at, rnd.choice((0, lay.m0, lay.m0 + 1, rnd.randrange(lay.m0 + 1), *INTERESTING)))
            hints.append(i)
        elif kind == "level-swap":
            # keeps the links section's size right, so only the shape checks can object
            i, j = rnd.randrange(lay.n), rnd.randrange(lay.n)
            at = lay.sec["levels"][0]
            li, lj = lay.levels[i], lay.levels[j]
            put_i32(blob, at + 4 * i, int(lj))
            put_i32(blob, at + 4 * j, int(li))
            hints += [i, j]
        elif kind == "level-set":
            i = rnd.randrange(lay.n)
            put_i32(blob, lay.sec["levels"][0] + 4 * i, rnd.choice((-1, 0, 1, lay.top, lay.top + 1, 64, 65)))
            hints.append(i)
        elif kind == "header":  # applied last: it moves the body
            field = rnd.choice(("enterpoint", "max_level"))
            header[field] = rnd.choice((0, 1, lay.top - 1, lay.top + 1, lay.n - 1, lay.n, rnd.randrange(lay.n), 64,
                                        65))
        elif kind == "f4":
            level = rnd.randint(1, max(1, lay.top))
            target = level_below(lay, level, rnd)
            if target is not None and level <= lay.top:
                point_level_at_lower(blob, lay, level, target, every=rnd.random() < 0.7)
                hints.append(target)
    if header:
        # an earlier flip may have broken the header: that mutant is kept as it is
        with contextlib.suppress(Exception):
            blob = bytearray(with_header(blob, **header))
    return bytes(blob), [h for h in hints if 0 <= h < lay.n], "+".join(kinds)
