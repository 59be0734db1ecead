"""The vector index: an hnswlib graph plus the catalog that filters need (spec 16).

Theory of operation
-------------------
Labels are positions: the i-th memory with an embedding, in commit order, has
label i. The graph is built single-threaded, so it is a pure function of the
parameters (including the seed) and the order of insertion; a snapshot of it
is stored in the capsule as a content-addressed blob, and whoever opens the file
loads that snapshot and inserts the newer memories in commit order. Loading
goes through hnswlib's ``__setstate__`` with arrays this module builds and
bounds-checks itself (never pickle): every neighbour id, level, count and size
is checked before the C++ code sees it, because a blob is input like any other.
hnswlib also trusts the graph's shape (a neighbour on level L has a list on level
L, the entry point is on the top level), so decode checks those invariants too
(16.2); what passes is safe to search and to insert into.

Scores are recomputed exactly (float64 over the stored float32 vectors, then
rounded to float32) and ties are broken by record id, so the answer does not
depend on which candidates a search visited first.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import CorruptError, NonCanonicalError, UsageError
from ..core.lazy import lazy
from ..format import canonical as canon
from .snapshot import check_graph

if TYPE_CHECKING:
    import hnswlib
    import numpy as np
else:
    hnswlib = lazy("hnswlib")
    np = lazy("numpy")

SPACES = ("cosine", "ip", "l2")
TIERS = {"scratch": 0, "working": 1, "validated": 2}
TIER_NAMES = {v: k for k, v in TIERS.items()}
BLOB_TYPE = "hnsw"  # 16.2
_F32_MAX = 3.4028234663852886e38  # the largest finite float32
MAGIC = b"CAPHNSW1"  # 16.2
NO_TTL = 0
#: An exact scan is as fast as the graph, and exact by definition, for up to this many
#: candidates and this many multiply-adds (~10k vectors at 384 dims, ~0.25 ms here).
EXACT_BELOW = 20_000
EXACT_WORK = 4_000_000
#: A graph with more than M entries on one vector (copies of a licence) loses its way (a self-query
#: missed 6 in 10): scanned exactly instead, up to this many multiply-adds (~500k vectors of 384).
EXACT_DEGENERATE_WORK = 200_000_000
MAX_LEVEL = 64  # 16.2: a level beyond this is a forged blob (1/M^64 odds)


@dataclass(frozen=True, slots=True)
class VectorParams:
    """16.1: fixed at first use, recorded in the `vindex` record and every snapshot."""

    space: str = "cosine"
    dim: int = 0
    M: int = 16
    ef_construction: int = 200
    seed: int = 100
    embedder: str = ""

    def __post_init__(self) -> None:
        if self.space not in SPACES:
            raise UsageError(f"vector space must be one of {', '.join(SPACES)}, not {self.space!r}")
        if not 0 <= self.dim <= 65536:
            raise UsageError(f"vector dimension {self.dim} is out of range")
        if not 2 <= self.M <= 128:
            raise UsageError(f"M must be in 2..128, not {self.M}")
        if not 1 <= self.ef_construction <= 100_000:
            raise UsageError(f"ef_construction must be in 1..100000, not {self.ef_construction}")
        if not 0 <= self.seed < 1 << 31:
            raise UsageError("seed must be in 0..2^31-1")

    def to_value(self) -> dict[str, Any]:
        v: dict[str, Any] = {"M": self.M, "dim": self.dim, "ef_construction": self.ef_construction,
                             "seed": self.seed, "space": self.space}
        if self.embedder:
            v["embedder"] = self.embedder
        return dict(sorted(v.items()))  # 5.1: canonical key order

    @classmethod
    def from_value(cls, v: object) -> VectorParams:
        if not isinstance(v, dict) or not {"M", "dim", "ef_construction", "seed", "space"} <= set(v) <= {
                "M", "dim", "ef_construction", "seed", "space", "embedder"}:
            raise ValueError("vector index parameters are malformed")
        if any(type(v[k]) is not int for k in ("M", "dim", "ef_construction", "seed")):
            raise ValueError("vector index parameters are malformed")
        if not isinstance(v["space"], str) or not isinstance(v.get("embedder", ""), str):
            raise ValueError("vector index parameters are malformed")
        try:
            return cls(v["space"], v["dim"], v["M"], v["ef_construction"], v["seed"], v.get("embedder", ""))
        except UsageError as e:
            raise ValueError(str(e)) from None


@dataclass(frozen=True, slots=True)
class Entry:
    """What filters need to know of one indexed memory."""

    rid: bytes
    time: int
    ttl: int  # 0: no ttl
    tier: int
    tags: tuple[str, ...]

    @classmethod
    def of(cls, rid: bytes, rec: Any) -> Entry:
        """16.1: the entry of memory ``rec`` (with id ``rid``)."""
        return cls(rid, rec.time, rec.ttl or 0, TIERS[rec.tier], tuple(rec.tags))


class IdArray:
    """Record ids by label, 32 bytes each in one buffer (no object per id)."""

    __slots__ = ("_buf",)

    def __init__(self, buf: bytes | bytearray = b"") -> None:
        self._buf = bytearray(buf)

    def __len__(self) -> int:
        return len(self._buf) // 32

    def __getitem__(self, i: int) -> bytes:
        i = int(i)
        if not 0 <= i < len(self._buf) // 32:
            raise IndexError(i)
        return bytes(self._buf[32 * i : 32 * i + 32])

    def __iter__(self) -> Iterator[bytes]:
        b = bytes(self._buf)
        return (b[i : i + 32] for i in range(0, len(b), 32))

    def extend(self, ids: Iterable[bytes]) -> None:
        for r in ids:
            self._buf += r

    def tobytes(self) -> bytes:
        return bytes(self._buf)


class VectorIndex:
    """An hnswlib graph over memories, labelled in commit order, plus its catalog."""

    def __init__(self, params: VectorParams) -> None:
        if params.dim < 1:
            raise UsageError("a vector index needs its dimension")
        self.params = params
        self.ids = IdArray()
        # Catalog columns with room to grow (read through the properties below), so an
        # agent that commits and searches in turn appends in O(new), not O(all).
        self._times = np.zeros(0, np.int64)
        self._ttls = np.zeros(0, np.int64)
        self._tiers = np.zeros(0, np.uint8)
        self.has_ttl = False
        # Tags: a CSR table for the entries loaded from a snapshot, a list for later ones.
        self._tag_names: list[str] = []
        self._tag_off = np.zeros(1, np.int64)
        self._tag_ix = np.zeros(0, np.int64)
        self._tags_ext: list[tuple[str, ...]] = []
        self._buf = np.zeros((0, params.dim), np.float32)  # as stored by hnswlib (unit vectors for cosine)
        self._n = 0
        self._label_of: dict[bytes, int] | None = None
        self._tag_labels: dict[str, np.ndarray] = {}
        self._sqn: np.ndarray | None = None  # squared norms, for l2 scans
        self._hnsw: Any = None
        #: (entries counted, projection -> entries, most entries sharing one): see _degenerate
        self._copies: tuple[int, dict[float, int], int] = (0, {}, 0)

    # --- building --------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def _graph(self, capacity: int) -> Any:
        if self._hnsw is None:
            p = self.params
            g = hnswlib.Index(space=p.space, dim=p.dim)
            g.init_index(max_elements=max(capacity, 16), ef_construction=p.ef_construction, M=p.M,
                         random_seed=p.seed)
            g.set_num_threads(1)
            self._hnsw = g
        elif self._hnsw.get_max_elements() < capacity:
            self._hnsw.resize_index(max(capacity, 2 * self._hnsw.get_max_elements()))
        return self._hnsw

    def add(self, entries: list[Entry], vectors: np.ndarray) -> None:
        """Insert in order, single-threaded (7, 16.3): the graph stays deterministic."""
        if not entries:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(entries), -1)
        if vectors.shape[1] != self.params.dim:
            raise UsageError(f"vectors have dimension {vectors.shape[1]}, this index has {self.params.dim}")
        if self.params.space == "cosine":
            # Scale in float64 first: hnswlib's float32 sum of squares underflows for
            # tiny vectors and overflows for huge ones (16.2: unit vectors are stored).
            v64 = vectors.astype(np.float64)
            norms = np.sqrt(np.einsum("ij,ij->i", v64, v64))
            norms[norms == 0] = 1.0
            vectors = (v64 / norms[:, None]).astype(np.float32)
        n0, n1 = self._n, self._n + len(entries)
        g = self._graph(n1)
        g.add_items(vectors, np.arange(n0, n1, dtype=np.uint64), num_threads=1)
        stored = vectors
        if self.params.space == "cosine":  # hnswlib stores unit vectors; keep the same ones
            stored = g.get_items(np.arange(n0, n1), return_type="numpy").astype(np.float32)
        self._append(entries, stored)

    def _append(self, entries: list[Entry], stored: np.ndarray) -> None:
        n0, n1 = self._n, self._n + len(entries)
        self._times = _put(self._times, n0, [e.time for e in entries])
        self._ttls = _put(self._ttls, n0, [e.ttl for e in entries])
        self._tiers = _put(self._tiers, n0, [e.tier for e in entries])
        self._buf = _put(self._buf, n0, stored)
        self.ids.extend(e.rid for e in entries)
        self.has_ttl = self.has_ttl or any(e.ttl for e in entries)
        self._tags_ext.extend(e.tags for e in entries)
        self._n = n1
        if self._label_of is not None:
            self._label_of.update((e.rid, n0 + i) for i, e in enumerate(entries))
        for tag, m in self._tag_labels.items():
            self._tag_labels[tag] = np.concatenate([m, [tag in e.tags for e in entries]])
        self._sqn = None

    @property
    def _vecs(self) -> np.ndarray:
        return self._buf[: self._n]

    @property
    def times(self) -> np.ndarray:
        return self._times[: self._n]

    @property
    def ttls(self) -> np.ndarray:
        return self._ttls[: self._n]

    @property
    def tiers(self) -> np.ndarray:
        return self._tiers[: self._n]

    # --- lookup helpers ----------------------------------------------------------
    def labels_in(self, rids: set[bytes]) -> np.ndarray:
        """Every label whose id is in ``rids``: all of them, since a forged snapshot may
        repeat an id under several labels (a dead record must never come back)."""
        if not rids or not len(self):
            return np.zeros(0, np.int64)
        ids = np.frombuffer(self.ids.tobytes(), "S32")
        return np.flatnonzero(np.isin(ids, np.array(sorted(rids), dtype="S32"))).astype(np.int64)

    def label_of(self, rid: bytes) -> int | None:
        if self._label_of is None:
            self._label_of = {r: i for i, r in enumerate(self.ids)}
        return self._label_of.get(rid)

    def tags_of(self, label: int) -> tuple[str, ...]:
        base = len(self._tag_off) - 1
        if label < base:
            names = self._tag_names
            return tuple(names[j] for j in self._tag_ix[self._tag_off[label] : self._tag_off[label + 1]])
        return self._tags_ext[label - base]

    def tag_mask(self, tag: str) -> np.ndarray:
        """Labels carrying ``tag``, as a boolean mask (cached per tag)."""
        hit = self._tag_labels.get(tag)
        if hit is None:
            m = np.zeros(self._n, bool)
            j = _bisect(self._tag_names, tag)
            if j is not None and len(self._tag_ix):
                pos = np.flatnonzero(self._tag_ix == j)
                m[np.searchsorted(self._tag_off, pos, side="right") - 1] = True
            base = len(self._tag_off) - 1
            for i, ts in enumerate(self._tags_ext):
                if tag in ts:
                    m[base + i] = True
            self._tag_labels[tag] = hit = m
        return hit

    # --- search ------------------------------------------------------------------
    def prepare(self, q: Any) -> np.ndarray:
        """A query vector as float64, checked, and normalized for cosine."""
        try:
            v = np.asarray(q, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise UsageError("the query vector is not a list of numbers") from None
        if v.shape[0] != self.params.dim:
            raise UsageError(f"query vector has dimension {v.shape[0]}, this capsule's vectors have "
                             f"{self.params.dim}")
        if not np.all(np.isfinite(v)):
            raise UsageError("the query vector has a NaN or infinite value")
        if v.size and float(np.max(np.abs(v))) > _F32_MAX:
            # embeddings are float32 (7.1); past its range a norm or a product overflows
            raise UsageError("the query vector has a value outside the float32 range of embeddings")
        if self.params.space == "cosine":
            norm = math.sqrt(float(np.dot(v, v)))
            if norm == 0.0:
                raise UsageError("a zero query vector has no cosine similarity")
            v = v / norm
        return v

    def exact_scores(self, labels: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Higher is better: cosine similarity, inner product, or minus squared L2.

        Products of float32 values are exact in float64, so the sums differ between
        hosts only in their last float64 bits, which rounding to float32 removes."""
        v = self._vecs[labels].astype(np.float64)
        if self.params.space == "l2":
            d = v - q
            s = -np.einsum("ij,ij->i", d, d)
        else:
            s = np.einsum("ij,j->i", v, q)
            if self.params.space == "cosine":
                # the stored float32 unit vectors are unit only to float32 precision
                norms = np.sqrt(np.einsum("ij,ij->i", v, v))
                s = np.clip(s / np.where(norms > 0, norms, 1.0), -1.0, 1.0)
        return np.asarray(s, np.float64).astype(np.float32)

    def search(self, q: np.ndarray, k: int, mask: np.ndarray | None, ef: int) -> list[tuple[int, float]]:
        """Top ``k`` labels allowed by ``mask``, exactly scored, ties by record id."""
        n = self._n
        if n == 0 or k <= 0:
            return []
        exact_below = min(EXACT_BELOW, EXACT_WORK // self.params.dim)
        if mask is not None:
            allowed = np.flatnonzero(mask)
            if len(allowed) == 0:
                return []
            if len(allowed) <= exact_below or len(allowed) <= 2 * k:
                return self._rank(allowed, q, k)
        elif n <= exact_below:
            return self._rank(np.arange(n), q, k)
        if self._degenerate():
            span = np.arange(n) if mask is None else np.flatnonzero(mask)
            if len(span) * self.params.dim <= EXACT_DEGENERATE_WORK:
                return self._rank(span, q, k)
        g = self._hnsw
        fetch = min(n if mask is None else int(mask.sum()), max(2 * k, k + 10))
        g.set_ef(max(ef, fetch))
        filt = None if mask is None else (lambda label: bool(mask[label]))
        qq = q.astype(np.float32)[None, :]
        while True:
            try:
                labels, _ = g.knn_query(qq, k=fetch, num_threads=1, filter=filt)
                break
            except RuntimeError:  # fewer than `fetch` reachable: ask for fewer, then scan
                if fetch <= k:
                    return self._rank(np.arange(n) if mask is None else np.flatnonzero(mask), q, k)
                fetch = max(k, fetch // 2)
        return self._rank(labels[0].astype(np.int64), q, k)

    def _degenerate(self) -> bool:
        """Whether more than M entries hold one same vector (EXACT_DEGENERATE_WORK): equal vectors give
        equal projections on one fixed direction, so the largest group of equal projections bounds the
        largest group of equal vectors. Counted over the entries added since the last call."""
        n, (seen, counts, most) = self._n, self._copies
        if seen < n:
            probe = np.random.default_rng(0x5EED).standard_normal(self.params.dim).astype(np.float32)
            vals, c = np.unique(self._vecs[seen:n] @ probe, return_counts=True)
            for v, k in zip(vals.tolist(), c.tolist(), strict=True):
                counts[v] = got = counts.get(v, 0) + k
                most = max(most, got)
            self._copies = (n, counts, most)
        return self._copies[2] > self.params.M

    def _dense(self) -> np.ndarray:
        """All vectors as one C-contiguous array (a snapshot's are a strided view)."""
        v = self._vecs
        if not v.flags.c_contiguous:
            self._buf = v = np.ascontiguousarray(v)
        return v

    def _rank(self, labels: np.ndarray, q: np.ndarray, k: int) -> list[tuple[int, float]]:
        if len(labels) > 4 * k + 64:
            # Pick a generous candidate set in float32, then rank it exactly. A scan
            # of (nearly) everything multiplies the whole matrix in place: no copy.
            q32 = q.astype(np.float32)
            whole = len(labels) * 2 > self._n
            v = self._dense() if whole else self._vecs[labels]
            if self.params.space == "l2":
                if whole:
                    if self._sqn is None:
                        self._sqn = np.einsum("ij,ij->i", v, v)
                    sqn = self._sqn
                else:
                    sqn = np.einsum("ij,ij->i", v, v)
                approx = 2.0 * (v @ q32) - sqn  # -(|v - q|^2) + |q|^2
            else:
                approx = v @ q32
            if whole:
                approx = approx[labels]
            cut = float(np.partition(approx, len(approx) - k)[len(approx) - k])
            # Everything within float32 error of the k-th best goes on to exact
            # ranking, so ties at the cut are settled by id, not by position.
            labels = labels[approx >= cut - 1e-4 * (abs(cut) + 1.0)]
        scores = self.exact_scores(labels, q)
        ids = self.ids
        order = sorted(range(len(labels)), key=lambda i: (-float(scores[i]), ids[int(labels[i])]))
        return [(int(labels[i]), float(scores[i])) for i in order[:k]]

    # --- snapshots (16.2) ------------------------------------------------------------
    def encode(self) -> bytes:
        """The snapshot blob: magic, header length, canonical header, 8-aligned arrays."""
        return b"".join(self.encode_parts())

    def encode_parts(self) -> list[bytes | memoryview]:
        """:meth:`encode` as pieces to be written back to back: the graph's arrays are not
        copied again to be joined (F22: a blob of 100k 384-d vectors is ~170 MB)."""
        p, n = self.params, self._n
        level0: bytes | memoryview
        links: bytes | memoryview
        if n == 0:
            state: dict[str, Any] = {"max_level": 0, "enterpoint_node": 0}
            level0 = links = b""
            levels = np.zeros(0, np.int32)
        else:
            state = self._hnsw.__getstate__()[0]
            level0 = memoryview(np.ascontiguousarray(state["data_level0"])).cast("B")  # type: ignore[arg-type]
            links = memoryview(np.ascontiguousarray(state["link_lists"])).cast("B")  # type: ignore[arg-type]
            levels = np.asarray(state["element_levels"], np.int32)[:n]
        every = [self.tags_of(i) for i in range(n)]
        tag_names = sorted({t for ts in every for t in ts})
        tag_ix = {t: i for i, t in enumerate(tag_names)}
        tag_off = np.zeros(n + 1, np.uint32)
        flat: list[int] = []
        for i, ts in enumerate(every):
            flat.extend(tag_ix[t] for t in ts)
            tag_off[i + 1] = len(flat)
        sections: list[tuple[str, bytes | memoryview]] = [
            ("tag_names", canon.pack(tag_names)),
            ("ids", self.ids.tobytes()),
            ("time", self.times.astype("<i8").tobytes()),
            ("ttl", self.ttls.astype("<i8").tobytes()),
            ("tier", self.tiers.tobytes()),
            ("tag_off", tag_off.astype("<u4").tobytes()),
            ("tag_ix", np.array(flat, "<u4").tobytes()),
            ("levels", levels.astype("<i4").tobytes()),
            ("level0", level0),
            ("links", links),
        ]
        layout: list[list[object]] = []
        pos = 0
        for name, data in sections:
            layout.append([name, pos, len(data)])
            pos += (len(data) + 7) & ~7
        header = canon.pack({"count": n, "enterpoint": int(state["enterpoint_node"]),
                             "max_level": int(state["max_level"]), "params": p.to_value(), "sections": layout})
        head = MAGIC + struct.pack("<I", len(header)) + header
        out: list[bytes | memoryview] = [head + b"\0" * (-len(head) % 8)]
        for _, data in sections:
            out += [data, b"\0" * (-len(data) % 8)]
        return out

    @staticmethod
    def peek(head: bytes) -> tuple[VectorParams, int] | None:
        """Parameters and count from the first bytes of a snapshot, or None."""
        if len(head) < 12 or head[:8] != MAGIC:
            return None
        hlen = struct.unpack_from("<I", head, 8)[0]
        if 12 + hlen > len(head):
            return None
        try:
            h = canon.decode(bytes(head[12 : 12 + hlen]))
            return VectorParams.from_value(h["params"]), int(h["count"])
        except (NonCanonicalError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def decode(cls, blob: bytes | memoryview | np.ndarray, *, where: int = 0) -> VectorIndex:
        """Parse and bounds-check a snapshot (16.2); raise CorruptError on any doubt."""
        buf = np.frombuffer(blob, np.uint8)

        def bad(msg: str) -> CorruptError:
            return CorruptError(f"vector index snapshot: {msg}", offset=where, check="vindex")

        if len(buf) < 12 or buf[:8].tobytes() != MAGIC:
            raise bad("bad magic")
        hlen = int(buf[8:12].view("<u4")[0])
        if hlen > min(len(buf) - 12, 1 << 26):
            raise bad("header length out of range")
        try:
            h = canon.decode(buf[12 : 12 + hlen].tobytes())
        except NonCanonicalError as e:
            raise bad(str(e)) from None
        if not isinstance(h, dict) or set(h) != {"count", "enterpoint", "max_level", "params", "sections"}:
            raise bad("header fields are wrong")
        try:
            p = VectorParams.from_value(h["params"])
        except ValueError as e:
            raise bad(str(e)) from None
        n, ep, top = h["count"], h["enterpoint"], h["max_level"]
        if p.dim < 1 or any(type(x) is not int for x in (n, ep, top)) or not 0 <= n < 1 << 31:
            raise bad("count or dimension out of range")
        if not 0 <= top <= MAX_LEVEL or (n and not 0 <= ep < n) or (not n and (ep or top)):
            raise bad("entry point or top level out of range")
        base = 12 + hlen + (-(12 + hlen) % 8)
        body = buf[base:]
        m0, m = 2 * p.M, p.M
        link0 = 4 + 4 * m0
        per = link0 + 4 * p.dim + 8
        per_links = 4 + 4 * m
        names = ["tag_names", "ids", "time", "ttl", "tier", "tag_off", "tag_ix", "levels", "level0", "links"]
        secs = h["sections"]
        if not isinstance(secs, list) or [s[0] if isinstance(s, list) and s else None for s in secs] != names:
            raise bad("section table is malformed")
        arr: dict[str, np.ndarray] = {}
        pos = 0
        for s in secs:
            if len(s) != 3 or type(s[1]) is not int or type(s[2]) is not int or s[1] != pos or s[2] < 0:
                raise bad("section table is malformed")
            if s[1] + s[2] > len(body):
                raise bad(f"section {s[0]} runs past the blob")
            arr[s[0]] = body[s[1] : s[1] + s[2]]
            pos = s[1] + ((s[2] + 7) & ~7)
        if pos != len(body):
            raise bad("blob has trailing bytes")
        want = {"ids": 32 * n, "time": 8 * n, "ttl": 8 * n, "tier": n, "tag_off": 4 * (n + 1), "levels": 4 * n,
                "level0": per * n}
        for name, size in want.items():
            if len(arr[name]) != size:
                raise bad(f"section {name} has the wrong size")
        try:
            tags = canon.decode(arr["tag_names"].tobytes())
        except NonCanonicalError as e:
            raise bad(str(e)) from None
        if not isinstance(tags, list) or any(not isinstance(t, str) for t in tags) or tags != sorted(set(tags)):
            raise bad("tag table is malformed")
        tier = arr["tier"]
        if n and int(tier.max()) > 2:
            raise bad("tier out of range")
        tag_off = arr["tag_off"].view("<u4").astype(np.int64)
        tag_ix = arr["tag_ix"]
        if len(tag_ix) % 4:
            raise bad("tag index is malformed")
        tag_ix = tag_ix.view("<u4").astype(np.int64)
        if tag_off[0] != 0 or tag_off[-1] != len(tag_ix) or np.any(np.diff(tag_off) < 0):
            raise bad("tag offsets are malformed")
        if len(tag_ix) and int(tag_ix.max()) >= len(tags):
            raise bad("tag index out of range")
        ttl = arr["ttl"].view("<i8")
        if n and int(ttl.min()) < 0:
            raise bad("negative ttl")
        levels, vecs, links = check_graph(arr, n=n, ep=ep, top=top, m=m, m0=m0, dim=p.dim, per=per, link0=link0,
                                          per_links=per_links, bad=bad)
        self = cls(p)
        self.ids = IdArray(arr["ids"].tobytes())
        self._times = arr["time"].view("<i8").astype(np.int64)
        self._ttls = ttl.astype(np.int64)
        self.has_ttl = bool(n and int(self._ttls.max()) > 0)
        self._tiers = tier.astype(np.uint8)
        self._tag_names, self._tag_off, self._tag_ix = tags, tag_off, tag_ix
        self._buf = vecs
        self._n = n
        if n:
            # pybind11 restores into an uninitialised instance; __init__ first would crash.
            g = hnswlib.Index.__new__(hnswlib.Index)
            state = {
                "ser_version": 1, "space": p.space, "dim": p.dim, "index_inited": True, "ep_added": True,
                "normalize": p.space == "cosine", "num_threads": 1, "seed": p.seed, "offset_level0": 0,
                "max_elements": n, "cur_element_count": n, "size_data_per_element": per,
                "label_offset": per - 8, "offset_data": link0, "max_level": top, "enterpoint_node": ep,
                # hnswlib raises ef_construction to at least M when it builds a graph
                "max_M": m, "max_M0": m0, "M": m, "mult": 1.0 / math.log(m),
                "ef_construction": max(p.ef_construction, m),
                "ef": 10, "has_deletions": False, "size_links_per_element": per_links,
                "allow_replace_deleted": False, "label_lookup_external": np.arange(n, dtype=np.uint64),
                "label_lookup_internal": np.arange(n, dtype=np.uint32),
                "element_levels": levels.astype(np.int32), "data_level0": arr["level0"].view(np.int8),
                "link_lists": links.view(np.int8),
            }
            try:
                g.__setstate__((state,))
            except (RuntimeError, ValueError, TypeError) as e:  # hnswlib's own asserts, as a last guard
                raise bad(f"hnswlib refused it: {e}") from None
            g.set_num_threads(1)
            self._hnsw = g
        return self


def _bisect(names: list[str], tag: str) -> int | None:
    import bisect

    j = bisect.bisect_left(names, tag)
    return j if j < len(names) and names[j] == tag else None


def _put(arr: np.ndarray, at: int, values: Any) -> np.ndarray:
    """``arr`` with ``values`` written from row ``at``, grown by doubling when full.
    A read-only or strided array (a snapshot's view) is copied into one of our own."""
    n1 = at + len(values)
    if n1 > len(arr) or not arr.flags.writeable or not arr.flags.c_contiguous:
        grown = np.zeros((max(n1, 2 * len(arr), 64), *arr.shape[1:]), arr.dtype)
        grown[:at] = arr[:at]
        arr = grown
    arr[at:n1] = values
    return arr
