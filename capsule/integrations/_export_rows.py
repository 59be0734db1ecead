"""The two shapes export writes: a record as ``put --jsonl`` reads it back, and a row for
analytics (spec 7, 13.2).

*Record form* (``--format jsonl``): the record's canonical map (7) as JSON, field names as
stored, times as int ns, ids, keys and signatures as hex (which the kinds' validators read
back), an embedding as a list of floats (each float32 printed as its exact float64 value,
which reads back to the same float32). ``put --jsonl`` re-encodes it to the same canonical bytes,
so the same content id. A bin value *inside* a map (a memory's ``meta``, a decision's
``inputs``) has no JSON form: it is written as hex, as every JSON output of capsule writes
it, and such a record is counted as *lossy* (it re-imports as text, under another id).

*Row form* (``--format parquet``, :func:`capsule.integrations.export.rows`): one flat row per
record, the columns of :data:`COLUMNS`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ._export_read import Entry

if TYPE_CHECKING:
    import numpy as np

#: (name, what) of every row column, in order; docs/export.md says the same
COLUMNS: tuple[tuple[str, str], ...] = (
    ("agent_id", "the view's agent (the latest live identity's agent_id), else null"),
    ("file_id", "the capsule's file id (32 hex digits)"),
    ("id", "the record's content id (64 hex digits)"),
    ("kind", "memory, decision, constraint, approval, identity, note, ... "),
    ("seq", "seq of the COMMIT that made the record durable (as `capsule log` shows; `--at SEQ` takes it)"),
    ("commit_time", "that commit's time"),
    ("time", "the record's time (when the agent observed or wrote it)"),
    ("valid_from", "a memory's world-time window start (1.3), else null"),
    ("valid_to", "its end (exclusive), else null"),
    ("tier", "a memory's tier: scratch, working or validated; else null"),
    ("text", "searchable text: a memory's, note's or constraint's text, a decision's summary; else null"),
    ("tags", "a memory's tags (a list, possibly empty); else null"),
    ("meta", "a memory's meta as a JSON object; else null"),
    ("embedding", "a memory's embedding (float32, fixed size), else null"),
    ("fields", "every other field of the record as a JSON object (a decision's evidence, a memory's ttl ...)"),
    ("live", "true when the record is in the view's live state (13.1)"),
    ("redacted", "true for a redacted record (7.7.1): only id, kind, seq and commit_time are given"),
)
NAMES = tuple(n for n, _ in COLUMNS)

#: the record fields that have a column of their own (for a memory)
_MEMORY_COLUMNS = frozenset({"kind", "time", "text", "tags", "meta", "embedding", "tier", "valid_from", "valid_to"})
#: the field shown as ``text`` per kind
_TEXT_FIELD = {"memory": "text", "note": "text", "constraint": "text", "decision": "summary"}


def _plain(v: Any, inside_map: bool, lossy: list[bool]) -> Any:
    """A canonical value (5.1) as JSON: bin as hex (noted as lossy inside a map)."""
    if isinstance(v, bytes):
        if inside_map:
            lossy[0] = True
        return v.hex()
    if isinstance(v, dict):
        return {k: _plain(x, True, lossy) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x, inside_map, lossy) for x in v]
    return v


def record_form(rec: Any) -> tuple[dict[str, Any], bool]:
    """(the record as ``put --jsonl`` reads it, whether a bin value had to become text)."""
    value = rec.to_value()
    lossy = [False]
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k == "embedding" and value.get("kind") == "memory" and rec.embedding is not None:
            out[k] = rec.embedding.tolist()
        else:
            out[k] = _plain(v, False, lossy)
    return out, lossy[0]


def json_line(obj: dict[str, Any]) -> str:
    """One JSON line: UTF-8 text as is, no spaces (keys keep the canonical order)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_text(v: Any) -> str:
    return json.dumps(_plain(v, True, [False]), ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def row_values(e: Entry) -> tuple[list[Any], np.ndarray | None]:
    """The row of an entry in :data:`NAMES` order, with the embedding apart (None in the row):
    times as int ns, ``meta`` and ``fields`` as JSON text."""
    rec = e.rec
    kind = rec.kind
    row: list[Any] = [None, None, e.rid.hex(), kind, e.seq, e.commit_time, None, None, None, None, None, None,
                      None, None, None, e.live, e.redacted]
    if e.redacted:
        return row, None
    value = rec.to_value()
    row[6] = value.get("time")
    emb = None
    if kind == "memory":
        row[7], row[8] = value.get("valid_from"), value.get("valid_to")
        row[9] = value.get("tier", "working")
        row[11] = list(value.get("tags", ()))
        row[12] = _json_text(value.get("meta", {}))
        emb = rec.embedding
        rest = {k: v for k, v in value.items() if k not in _MEMORY_COLUMNS}
    else:
        rest = {k: v for k, v in value.items() if k not in ("kind", "time")}
    tf = _TEXT_FIELD.get(kind)
    if tf is not None and isinstance(value.get(tf), str):
        row[10] = value[tf]
    row[14] = _json_text(rest)
    return row, emb


def row_dict(e: Entry, agent_id: str | None, file_id: str) -> dict[str, Any]:
    """The row as a plain dict (the public row iterator's shape): ``meta`` and ``fields`` as
    dicts, the embedding as a list of floats."""
    row, emb = row_values(e)
    row[0], row[1] = agent_id, file_id
    d = dict(zip(NAMES, row, strict=True))
    d["embedding"] = None if emb is None else emb.tolist()
    for k in ("meta", "fields"):
        if d[k] is not None:
            d[k] = json.loads(d[k])
    return d


__all__ = ["COLUMNS", "NAMES", "json_line", "record_form", "row_dict", "row_values"]
