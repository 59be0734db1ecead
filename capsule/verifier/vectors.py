"""``verify``: a vector index snapshot against the records it claims to index (spec 16.1, 16.3).

The hash of a snapshot (3.4) binds it to the file, not to the records, so the
verifier compares it with them: its parameters are those of 16.1 and its ids
are exactly the entries of 16.1 before its first BLOB frame, in commit order
(entry i has label i). The walk records every memory with an embedding as it
passes; a snapshot is checked when the INDEX that names it is reached.
"""

from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any

from ..core.errors import CorruptError
from ..core.lazy import lazy
from ..format.blob import BlobRef
from ..search.vindex import VectorIndex, VectorParams

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy")


class VectorEntries:
    """The memories with an embedding, in commit order: id, dimension, frame offset."""

    def __init__(self) -> None:
        self._ids = bytearray()
        self._dims = array("q")
        self._at = array("q")

    def record(self, kind: str, rid: bytes, rec: Any, offset: int) -> None:
        emb = getattr(rec, "embedding", None) if kind == "memory" else None
        if emb is not None:
            self.add(rid, len(emb), offset)

    def add(self, rid: bytes, dim: int, offset: int) -> None:
        """A memory with a ``dim``-dimension embedding, in the RECORDS frame at ``offset``."""
        self._ids += rid
        self._dims.append(dim)
        self._at.append(offset)

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
