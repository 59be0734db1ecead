"""The MCP tools' table: name, description, JSON Schema of the arguments, whether it writes.

One row per tool; the server lists them and the SDK checks every call's arguments
against the schema before the capsule sees them (a bad call is an error result).
Schemas are closed (``additionalProperties: false``), so a misspelt argument is an
error, not silently ignored. Limits follow the CLI's (``-k`` at most 10000, spec 11).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    title: str
    description: str
    properties: dict[str, Any]
    required: tuple[str, ...] = ()
    writes: bool = False
    output: dict[str, Any] | None = None  # the answer's top-level keys; deeper shapes are the CLI's (docs)

    def schema(self) -> dict[str, Any]:
        return {"type": "object", "properties": self.properties, "required": list(self.required),
                "additionalProperties": False}

    def output_schema(self) -> dict[str, Any] | None:
        if self.output is None:
            return None
        return {"type": "object", "properties": self.output, "required": list(self.output)}


def _s(desc: str, **kw: Any) -> dict[str, Any]:
    return {"type": "string", "description": desc, **kw}


def _strings(desc: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "minLength": 1}, "description": desc}


_ID = _s("A record id (64 hex digits) or any unique prefix of it (at least 4 hex digits).",
         pattern="^[0-9a-fA-F]{4,64}$")
_AT = _s("View the capsule as of an earlier point: a checkpoint label, a commit seq, a commit root prefix "
         "(>= 4 hex digits) or an ISO-8601 time. Default: now.", minLength=1)
_WHEN = "An ISO-8601 time, e.g. 2026-01-05T09:30:00Z (no zone means UTC)."
_TIME = {"anyOf": [{"type": "string", "minLength": 1}, {"type": "integer", "minimum": 0}],
         "description": f"{_WHEN} Or int nanoseconds since the epoch."}
_META_VALUE = {"type": ["string", "number", "boolean", "null"]}
_TIER = {"type": "string", "enum": ["scratch", "working", "validated"]}
_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_PUT = {"id": {**_HEX64, "description": "The new record's content id."},
        "ids": {"type": "array", "items": _HEX64, "description": "The ids written (this one), as `put --json`."},
        "count": {"type": "integer", "description": "Records in the commit (1)."},
        "new": {"type": "integer", "description": "1 if the record is new, 0 if the capsule held it already."}}
_HIT = {"type": "object", "required": ["id", "score", "kind", "tags", "meta", "time"],
        "properties": {"id": _HEX64, "score": {"type": "number"}, "kind": {"type": "string"},
                       "text": {"type": ["string", "null"]}, "tags": {"type": "array", "items": {"type": "string"}},
                       "meta": {"type": "object"}, "time": {"type": "string"}}}
_OBJ = {"type": "object"}
_ARR = {"type": "array"}

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "remember", "Remember a fact",
        "Store one memory (a fact, an observation, a preference) in the capsule as one durable commit. "
        "Returns {id, ids, count, new}: id is the memory's content id (new is 0 when the same memory was "
        "already there). Waits for another writer up to the server's --wait, else fails with a 'locked' error.",
        {"text": _s("The memory's text.", minLength=1),
         "tags": _strings("Tags to find it by (e.g. 'ops', 'people')."),
         "meta": {"type": "object", "additionalProperties": _META_VALUE,
                  "description": "Flat metadata: string keys, scalar values (e.g. {\"team\": \"payments\"})."},
         "tier": {**_TIER, "description": "scratch (tentative), working (default) or validated (confirmed)."},
         "ttl": {"type": "integer", "minimum": 1, "description": "Expire after this many nanoseconds."},
         "source": _s("Where the fact came from (a URL, a tool, a person).", minLength=1),
         "valid_from": {**_TIME, "description": f"When the fact became true in the world. {_WHEN}"},
         "valid_to": {**_TIME, "description": f"When the fact stopped being true in the world. {_WHEN}"},
         "embedding": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 65536,
                       "description": "Your own embedding vector for it (all memories of a capsule share one "
                                      "dimension)."}},
        ("text",), writes=True, output=_PUT),
    ToolSpec(
        "decide", "Record a decision",
        "Record an immutable decision with its rationale and the records it rests on (evidence), as one "
        "durable commit. Returns {id, ids, count, new}. Use `why` on the id later to see its lineage.",
        {"summary": _s("What was decided.", minLength=1),
         "rationale": _s("Why."),
         "evidence": {"type": "array", "items": _ID, "description": "Ids (or unique prefixes) of the records the "
                      "decision rests on; each must be in the capsule."},
         "inputs": {"type": "object", "additionalProperties": _META_VALUE,
                    "description": "Flat inputs the decision was made with."},
         "alternatives": _strings("The options that were not chosen.")},
        ("summary",), writes=True, output=_PUT),
    ToolSpec(
        "search", "Search memories",
        "Search live memories (and notes and decisions) by words (BM25), by meaning (vectors) or both. "
        "Without query and vector it lists the records passing the filters, newest first. Returns "
        "{hits: [{id, score, kind, text, tags, meta, time}], warnings} as `capsule search --json`.",
        {"query": _s("What to look for."),
         "vector": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 65536,
                    "description": "A query vector of the capsule's dimension (instead of or with query)."},
         "k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10, "description": "How many results."},
         "mode": {"type": "string", "enum": ["auto", "lexical", "vector", "hybrid"], "default": "auto",
                  "description": "auto, lexical (BM25), vector, or hybrid (both, fused by reciprocal rank)."},
         "tags": _strings("Only records with all of these tags."),
         "any_tags": _strings("Only records with at least one of these tags."),
         "tier": {"type": "array", "items": _TIER, "description": "Only memories in these tiers."},
         "kind": {"type": "array", "items": {"type": "string", "enum": ["memory", "note", "decision"]},
                  "description": "Only these kinds."},
         "since": _s(f"Only records at or after this time. {_WHEN}", minLength=1),
         "until": _s(f"Only records at or before this time. {_WHEN}", minLength=1),
         "meta": {"type": "object", "additionalProperties": _META_VALUE,
                  "description": "Only records whose meta has each key equal to the value."},
         "valid_at": {**_TIME, "description": "What was true in the world at this time: memories whose "
                      f"valid_from/valid_to window holds it. {_WHEN}"},
         "at": _AT},
        output={"hits": {"type": "array", "items": _HIT, "description": "Best first (newest first when listing)."},
                "warnings": {"type": "array", "items": {"type": "string"},
                             "description": "Notes on the vector index (stale, rebuilt), if any."}}),
    ToolSpec(
        "get", "Get a record",
        "One record of any kind with every field, as `capsule get ID --json`: {id, kind, time, ..., live} "
        "(live: false once forgotten, superseded, redacted or rolled back).",
        {"id": _ID, "at": _AT}, ("id",),
        output={"id": _HEX64, "kind": {"type": "string"}, "time": {"type": "integer"}, "live": {"type": "boolean"}}),
    ToolSpec(
        "beliefs", "What the agent believes",
        "What the agent holds now: memories by tier (counts, newest first), decisions, active constraints, "
        "identity, open tasks, in-doubt actions, and the state root (`capsule beliefs --json`).",
        {"limit": {"type": "integer", "minimum": 0, "maximum": 10000, "default": 10,
                   "description": "At most this many items per group."},
         "at": _AT},
        output={k: _OBJ if k in ("memories", "decisions") else _ARR for k in ("memories", "decisions", "constraints",
                                                                              "tasks_open", "actions_in_doubt")}
        | {"identity": {"type": ["object", "null"]}, "records": {"type": "integer"}, "state_root": _HEX64}),
    ToolSpec(
        "why", "Why a record is there",
        "The lineage of a decision (or any record): its evidence recursively, approvals, the constraints "
        "active when it was committed, the first checkpoint covering it, and later marks (rolled back, "
        "superseded, ...), as `capsule why ID --json`.",
        {"id": _ID, "at": _AT,
         "trust": _s("A keyset hash (64 hex digits) to anchor the checkpoint's signers to.",
                     pattern="^[0-9a-fA-F]{64}$")},
        ("id",),
        output={"root": _OBJ, "constraints": _ARR, "checkpoint": {"type": ["object", "null"]},
                "truncated": {"type": "boolean"}, "nodes": {"type": "integer"}}),
    ToolSpec(
        "timeline", "Timeline of events",
        "Commits, checkpoints, actions, task and lifecycle events in order, each with a one-line summary "
        "(`capsule timeline --json`): {events: [{seq, time, kind, summary, ...}], total}.",
        {"since": _s(f"Only events at or after this time. {_WHEN}", minLength=1),
         "until": _s(f"Only events at or before this time. {_WHEN}", minLength=1),
         "kinds": {"type": "array", "items": {"type": "string", "enum": ["commit", "checkpoint", "action", "task",
                                                                          "lifecycle"]},
                   "description": "Only these event kinds."},
         "limit": {"type": "integer", "minimum": 0, "description": "Only the newest N events."},
         "at": _AT},
        output={"events": {"type": "array", "items": {"type": "object", "required": ["seq", "time", "kind", "summary"]}},
                "total": {"type": ["integer", "null"],
                          "description": "Events in the range before the limit; null when the newest `limit` "
                                         "were found without reading back to the first commit."}}),
    ToolSpec(
        "checkpoint", "Sign a checkpoint",
        "Sign and commit a checkpoint of the current state under a label (for time travel and rollback), "
        "with the signing key the server was started with (--key); a client never supplies a key. "
        "Returns the checkpoint as `capsule checkpoint --json`. Fails if the server has no key.",
        {"label": _s("A name for this checkpoint, e.g. 'day-1'.", minLength=1, maxLength=256)},
        ("label",), writes=True,
        output={"label": {"type": "string"}, "seq": {"type": "integer"}, "state_root": _HEX64, "root": _HEX64,
                "signers": {"type": "array", "items": {"type": "string"}}, "time": {"type": "string"}}),
)

BY_NAME = {t.name: t for t in TOOLS}

__all__ = ["BY_NAME", "TOOLS", "ToolSpec"]
