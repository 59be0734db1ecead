"""Where the vector index parameters come from without reading history (spec 9.2, 16.1).

16.1 defines the parameters by the records: the first ``vindex`` record, else the
defaults with the dimension of the first memory with an embedding. Looking for
them in the records costs a read of every record when there are none (a capsule
of text), so a 1.2 writer states them in every INDEX of a file whose header says
minor 2 or more (`vectors`, 9.2; a file created before 1.2 never gets the key, so
its 1.1 readers can still read it, 12.6) and a reader looks in the records only
after the INDEX in force. This module reads what an INDEX says and works out what
the next one must say.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from ..format import canonical as canon
from ..format.batch import Item, as_batch
from ..format.records import decode_record
from .vindex import VectorParams

_EMBEDDING_KEY = canon.pack("embedding")  # the map key before a memory's embedding (5.1, 7.1)


def params_of(rec: Any) -> VectorParams:
    """The parameters a ``vindex`` record fixes (7.10)."""
    return VectorParams(rec.space, rec.dim, rec.M, rec.ef_construction, rec.seed, rec.embedder)


def index_params(said: tuple[int, dict[str, int | str]] | None) -> tuple[int, VectorParams | None] | None:
    """What the INDEX in force says (9.2): (the offset just after it, its parameters, or
    None when it says none are fixed). None when it does not say (an INDEX of a file
    created before 1.2, 12.6) or says something no writer writes (the reader then looks in the records, and
    verification reports the INDEX)."""
    if said is None:
        return None
    after, value = said
    if not value:
        return after, None
    try:
        p = VectorParams.from_value(value)
    except ValueError:
        return None
    return (after, p) if p.dim >= 1 else None


def first_params(items: Sequence[Item]) -> VectorParams | None:
    """16.1 over one commit's records alone: its first vindex record, else the defaults
    with the dimension of its first memory with an embedding, else None. Only records
    whose bytes hold the key ``embedding`` are decoded, so a commit of text costs one
    byte search."""
    batch = as_batch(items)
    kinds = batch.kind_counts()
    if "vindex" in kinds:
        i = batch.codes.index(batch.kinds.index("vindex"))
        rid, _, data = batch[i]
        return params_of(decode_record(canon.decode(data), rid))
    if "memory" in kinds:
        pos = batch.data.find(_EMBEDDING_KEY)
        while pos >= 0:
            i = bisect.bisect_right(batch.ends, pos)
            rid, kind, data = batch[i]
            if kind == "memory":
                rec = decode_record(canon.decode(data), rid)
                if rec.embedding is not None:
                    return VectorParams(dim=len(rec.embedding))
            pos = batch.data.find(_EMBEDDING_KEY, batch.ends[i])
    return None


__all__ = ["first_params", "index_params", "params_of"]


def same_value(have: Any, want: bytes) -> bool:
    """A meta filter's test (16.6): ``have``'s canonical bytes are ``want``."""
    try:
        return canon.pack(have) == want
    except Exception:
        return False
