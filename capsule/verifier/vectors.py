"""``verify``: a vector index snapshot against the records it claims to index (spec 16.1, 16.3).

The hash of a snapshot (3.4) binds it to the file, not to the records, so the
verifier compares it with them: its parameters are those of 16.1 and its ids
are exactly the entries of 16.1 before its first BLOB frame, in commit order
(entry i has label i). The walk records every memory with an embedding as it
passes; a snapshot is checked when the INDEX that names it is reached. Then every
entry's vector (as indexed), time, ttl, tier and tags are compared with its memory,
read back from its RECORDS frame: a reader checks only the entries a search returns
(``search.entries``), so an entry moved away from its memory would otherwise make a
search leave that memory out without a word.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

import msgspec

from ..core import constants as C
from ..core.errors import CorruptError
from ..core.lazy import lazy
from ..format import canonical as canon
from ..format.blob import BlobRef
from ..format.file import ReadHandle
from ..format.frames import FileHeader, raw_payload
from ..format.scan import read_frame_at
from ..search.vindex import TIERS, VectorIndex, VectorParams

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


class VectorEntries:
    """The memories with an embedding, in commit order: id, dimension, frame offset and slot."""

    def __init__(self, h: ReadHandle | None = None, header: FileHeader | None = None) -> None:
        self._h, self._header = h, header
        self._prev: tuple[bytes, Any, Any, Any, Any, list[tuple[str, ...]]] | None = None  # last snapshot checked
        self._ids = bytearray()
        self._dims = array("q")
        self._at = array("q")
        self._slot = array("q")

    def record(self, kind: str, rid: bytes, rec: Any, offset: int, slot: int) -> None:
        emb = getattr(rec, "embedding", None) if kind == "memory" else None
        if emb is not None:
            self.add(rid, len(emb), offset, slot)

    def add(self, rid: bytes, dim: int, offset: int, slot: int) -> None:
        """A memory with a ``dim``-dimension embedding, record ``slot`` of the RECORDS frame at ``offset``."""
        self._ids += rid
        self._dims.append(dim)
        self._at.append(offset)
        self._slot.append(slot)

    def check(self, ref: BlobRef, vi: VectorIndex, params: VectorParams | None) -> None:
        """16.3: raise ``vindex`` unless ``vi`` indexes exactly the entries of 16.1 before ``ref``."""

        def bad(msg: str) -> CorruptError:
            return CorruptError(f"vector index snapshot: {msg}", offset=ref.offset, check="vindex")

        if params is None or vi.params.to_value() != params.to_value():
            raise bad("its parameters are not those the records fix (16.1)")
        at = np.frombuffer(self._at, np.int64)
        dims = np.frombuffer(self._dims, np.int64)
        ids = np.frombuffer(bytes(self._ids), "S32")
        want = ids[(at < ref.offset) & (dims == params.dim)]
        got = np.frombuffer(vi.ids.tobytes(), "S32")
        if len(got) != len(want):
            raise bad(f"{len(got)} entries, but {len(want)} memories with a {params.dim}-dimension embedding "
                      "come before it")
        if not np.array_equal(got, want):
            i = int(np.flatnonzero(got != want)[0])
            raise bad(f"entry {i} is not the memory 16.1 puts there (ids out of place or not memories)")
        if self._h is not None and self._header is not None:
            why = self._entries(vi, ref, at, dims, params.dim)
            if why is not None:
                raise bad(why)

    def _entries(self, vi: VectorIndex, ref: BlobRef, at: np.ndarray, dims: np.ndarray, dim: int) -> str | None:
        """16.3: why the entries of ``vi`` are not the memories they name (vector as indexed,
        time, ttl, tier, tags), or None. Entries equal to those of the last snapshot checked
        (the same memories in the same places) are not read again."""
        n = len(vi)
        m = 0
        tags = [vi.tags_of(i) for i in range(n)]
        prev = self._prev
        if prev is not None:
            m = min(n, len(prev[1]))
            same = (prev[0][: 32 * m] == vi.ids.tobytes()[: 32 * m] and np.array_equal(prev[1][:m], vi._vecs[:m])
                    and np.array_equal(prev[2][:m], vi.times[:m]) and np.array_equal(prev[3][:m], vi.ttls[:m])
                    and np.array_equal(prev[4][:m], vi.tiers[:m])
                    and prev[5][:m] == tags[:m])
            m = m if same else 0
        raw = bytes(self._ids)  # not ids.tolist(): NumPy drops an S32 value's trailing NULs
        slot = self._slot
        at_of = {raw[32 * i : 32 * i + 32]: (int(at[i]), slot[i])
                 for i in np.flatnonzero((at < ref.offset) & (dims == dim))}
        labels = list(range(m, n))
        values = self._values(vi, labels, at_of)
        want = np.empty((len(labels), dim), np.float64)
        for j, (label, v) in enumerate(zip(labels, values, strict=True)):
            emb = v.get("embedding") if v is not None else None
            if not isinstance(emb, dict) or emb.get("shape") != [dim]:
                return f"entry {label} names {vi.ids[label].hex()[:16]}, not a committed memory with a " \
                       f"{dim}-dimension embedding"
            want[j] = np.frombuffer(emb["data"], "<f4")
            entry = (v.get("time", 0), v.get("ttl", 0), TIERS.get(v.get("tier", "working")), sorted(v.get("tags", ())))
            have = (int(vi.times[label]), int(vi.ttls[label]), int(vi.tiers[label]), sorted(tags[label]))
            if entry != have:
                return f"entry {label} does not hold the time, ttl, tier and tags of {vi.ids[label].hex()[:16]}"
        if vi.params.space == "cosine" and len(want):
            norm = np.sqrt(np.einsum("ij,ij->i", want, want))
            want /= np.where(norm == 0, 1.0, norm)[:, None]
        ok = np.isclose(vi._vecs[m:n], want, rtol=1e-5, atol=1e-6).all(axis=1)  # as entries_disagree compares
        if not ok.all():
            label = m + int(np.flatnonzero(~ok)[0])
            return f"entry {label} does not hold the embedding of {vi.ids[label].hex()[:16]}"
        self._prev = (vi.ids.tobytes(), vi._vecs.copy(), vi.times.copy(), vi.ttls.copy(), vi.tiers.copy(),
                      tags)
        return None

    def _values(self, vi: VectorIndex, labels: list[int], at_of: dict[bytes, tuple[int, int]]) -> list[Any]:
        """The stored maps of the memories ``labels`` name (None for an id that names none),
        each RECORDS frame read once. The walk has checked every record's bytes, schema and
        id, so only the slots wanted are unpacked, without checking them again."""
        h, hdr = self._h, self._header
        assert h is not None and hdr is not None
        out: list[Any] = [None] * len(labels)
        by_frame: dict[int, list[tuple[int, int]]] = {}
        for j, label in enumerate(labels):
            place = at_of.get(vi.ids[label])
            if place is not None:
                by_frame.setdefault(place[0], []).append((j, place[1]))
        for off, js in by_frame.items():
            prev = hdr.chain_seed if off == C.HEADER_SIZE else None
            fh, payload, _, _ = read_frame_at(h, off, max_frame=hdr.max_frame_len, prev_chain=prev)
            parts = canon._bulk_codecs()[2].decode(raw_payload(fh, payload))  # the records' bytes, unread
            for j, slot in js:
                out[j] = msgspec.msgpack.decode(parts[slot])
        return out

