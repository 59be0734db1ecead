"""Rows to Parquet through pyarrow, a row group at a time (so memory follows the batch size,
not the capsule's size).

pyarrow is imported here only, on first use: without it the error says which extra to
install. Times are ``timestamp[ns, UTC]`` (int ns, 7.0, exactly); the embedding is
``fixed_size_list<float32, d>`` with d the capsule's vector dimension (16.1: one per capsule),
or ``list<float32>`` (all null) for a capsule that holds no embedding and no ``dim`` was given.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import CorruptError, UsageError
from ..core.lazy import lazy
from ._export_rows import NAMES

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa
else:
    np = lazy("numpy")

INSTALL_HINT = "Parquet export needs pyarrow: pip install 'agent-capsule[parquet]'"


def arrow() -> Any:
    """The pyarrow module (UsageError with the install hint when it is not installed)."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return pyarrow


def schema(dim: int | None) -> pa.Schema:
    pa = arrow()
    ts = pa.timestamp("ns", tz="UTC")
    emb = pa.list_(pa.float32(), dim) if dim else pa.list_(pa.float32())
    types = {"seq": pa.int64(), "commit_time": ts, "time": ts, "valid_from": ts, "valid_to": ts,
             "tags": pa.list_(pa.string()), "embedding": emb, "live": pa.bool_(), "redacted": pa.bool_()}
    return pa.schema([pa.field(n, types.get(n, pa.string())) for n in NAMES])


class ParquetSink:
    """Rows gathered column by column and written as one row group per ``batch`` rows."""

    def __init__(self, path: Path, dim: int | None, *, batch: int = 65_536) -> None:
        pa = arrow()
        self.pa = pa
        self.dim = dim
        self.batch = batch
        self.schema = schema(dim)
        self.cols: list[list[Any]] = [[] for _ in NAMES]
        self.vectors: list[np.ndarray] = []
        self.mask: list[bool] = []
        self.writer = pa.parquet.ParquetWriter(str(path), self.schema, compression="zstd")
        self._emb = NAMES.index("embedding")

    def add(self, row: list[Any], emb: np.ndarray | None, rid: str) -> None:
        for col, v in zip(self.cols, row, strict=True):
            col.append(v)
        if emb is not None:
            if self.dim is None or len(emb) != self.dim:
                # 16.1: one dimension per capsule; a file that breaks it fails `verify` too
                raise CorruptError(f"memory {rid} has an embedding of dimension {len(emb)}, but this capsule's "
                                   f"vectors have {self.dim or 'none'} (16.1)", check="vindex")
            self.vectors.append(emb)
        self.mask.append(emb is None)
        if len(self.mask) >= self.batch:
            self.flush()

    def flush(self) -> None:
        n = len(self.mask)
        if not n:
            return
        pa = self.pa
        arrays = []
        for i, (col, field) in enumerate(zip(self.cols, self.schema, strict=True)):
            if i == self._emb:
                arrays.append(self._embeddings(n))
            else:
                arrays.append(pa.array(col, type=field.type))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema), row_group_size=n)
        self.cols = [[] for _ in NAMES]
        self.vectors, self.mask = [], []

    def _embeddings(self, n: int) -> Any:
        pa = self.pa
        t = self.schema.field("embedding").type
        if not self.dim:
            return pa.nulls(n, type=t)
        flat = np.zeros((n, self.dim), dtype=np.float32)
        present = ~np.array(self.mask, dtype=bool)
        if self.vectors:
            flat[present] = np.stack(self.vectors)
        values = pa.array(flat.reshape(-1), type=pa.float32())
        # the validity bitmap of a bool array is its data buffer (from_arrays takes a mask only in newer pyarrow)
        validity = None if present.all() else pa.array(present, type=pa.bool_()).buffers()[1]
        return pa.Array.from_buffers(t, n, [validity], children=[values])

    def close(self) -> None:
        self.flush()
        self.writer.close()

    def abort(self) -> None:
        # the file is removed anyway; the first error is what matters
        with contextlib.suppress(Exception):
            self.writer.close()


__all__ = ["INSTALL_HINT", "ParquetSink", "arrow", "schema"]
