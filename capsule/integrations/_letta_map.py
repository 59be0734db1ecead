"""The mapping between a Letta agent file and capsule records (pure: no files, no clock).

Theory of operation. An agent file becomes records of two sorts (docs/letta.md has the table):

- *projections* in the capsule's own kinds, so its tools see the agent: each memory block
  is a ``memory`` (text = the block's value, tags ``letta:block`` and ``letta:label:<label>``,
  the block's other fields in ``meta``), each message with text is a ``note``
  (``role: text``, time = ``created_at``), and the first agent is the ``identity``
  (agent id, name, model, config = its system prompt, llm and embedding configs);
- *application records* (spec 12.3) holding what the capsule has no kind for, each object
  whole: ``letta.document`` (the file's own fields, schema, whether it was encoded twice),
  ``letta.agent``, ``letta.tool`` and ``letta.message``.

Export rebuilds the document from the application records, the *live* block memories (a
block superseded in the capsule exports its new text; a forgotten one leaves the file) and
the current identity's config. Nothing is dropped on the way: an object is stored as a
canonical map (plus the order of its keys) when that map says exactly what the JSON said,
and otherwise (text that is not NFC, -0.0, an integer beyond 64 bits, NaN) as its JSON text
in a ``*_json`` bin field. Record times come from the file (``created_at``), so the records,
and their ids, depend on the file alone.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from typing import Any

from ..core import constants as C
from ..core.errors import NonCanonicalError
from ..format import canonical as canon
from ._letta_parse import AgentFile, AgentFileError, expect, parse_time

K_DOC, K_AGENT, K_TOOL, K_MESSAGE = "letta.document", "letta.agent", "letta.tool", "letta.message"
APP_KINDS = (K_DOC, K_AGENT, K_TOOL, K_MESSAGE)
TAG_BLOCK = "letta:block"
LABEL_TAG = "letta:label:"
M_BLOCK, M_KEYS, M_ORDER = "letta_block", "letta_keys", "letta_order"
M_INDEX, M_VALUE = "letta_index", "letta_value"
IDENTITY_KEYS = ("system", "llm_config", "embedding_config")
_MAX_TAG = 256


def _as_list(v: object) -> list[Any]:
    return v if isinstance(v, list) else []


def _as_dict(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _json(v: object) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def lossless(v: object, depth: int) -> Any:
    """``v`` as a canonical value (5.1) at nesting ``depth`` when that value means exactly
    what the JSON meant; None when it would not (NFC, -0.0, range, NaN, nesting)."""
    try:
        norm = canon.normalize(v, depth)
        same = _json(norm) == _json(v)
    except (NonCanonicalError, ValueError, RecursionError):
        return None
    return norm if same else None


def key_order(obj: dict[str, Any], keys: list[str]) -> list[list[str] | None]:
    """The key order of every map below ``obj``, depth first in ``keys`` order; None for a map
    whose keys are sorted already (a canonical map's order). :func:`restore_order` undoes
    the sorting with it, so an export is the file's own bytes, not only its meaning."""
    out: list[list[str] | None] = []

    def walk(v: object) -> None:
        if isinstance(v, dict):
            ks = list(v)
            out.append(None if ks == sorted(ks) else ks)
            for k in ks:
                walk(v[k])
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for k in keys:
        if k in obj:
            walk(obj[k])
    while out and out[-1] is None:
        out.pop()
    return out


def restore_order(obj: dict[str, Any], keys: list[str], order: list[Any]) -> dict[str, Any]:
    """``obj``'s maps below the top in the order :func:`key_order` kept (keys it names
    first, any others after)."""
    it = iter(order)

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            ks = next(it, None)
            ks = [k for k in ks if isinstance(k, str) and k in v] if isinstance(ks, list) else sorted(v)
            ks += [k for k in v if k not in ks]
            return {k: walk(v[k]) for k in ks}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    ks = [k for k in keys if k in obj] + [k for k in obj if k not in keys]
    return {k: walk(obj[k]) for k in ks}


def _pack(obj: dict[str, Any], name: str, depth: int, keys: list[str]) -> dict[str, Any]:
    """An object as record fields: ``{name: map}`` or, when no canonical map says exactly
    what its JSON said, ``{name_json: bytes}``; ``keys``, the original key order (including
    keys whose values live elsewhere, e.g. an agent's ``messages``); ``order``, the order
    of the maps inside it (:func:`key_order`)."""
    norm = lossless(obj, depth)
    out: dict[str, Any] = {name: norm} if norm is not None else {
        f"{name}_json": json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")}
    order = lossless(keys, depth)
    if order is not None:
        out["keys"] = order
    inner = lossless(key_order(obj, keys), depth) if norm is not None else None
    if inner:
        out["order"] = inner
    return out


def _unpack(rec: Mapping[str, Any], name: str, where: str) -> tuple[dict[str, Any], list[str]]:
    """(object, key order) of a record :func:`_pack` made."""
    keys = [k for k in rec.get("keys") or [] if isinstance(k, str)] if isinstance(rec.get("keys"), list) else []
    if isinstance(rec.get(f"{name}_json"), bytes):
        try:
            obj = json.loads(rec[f"{name}_json"])
        except (ValueError, RecursionError):
            obj = None
        if isinstance(obj, dict):
            return obj, keys or list(obj)
    elif isinstance(rec.get(name), dict):
        return restore_order(rec[name], keys, _as_list(rec.get("order"))), keys
    raise AgentFileError(where, f"record holds no `{name}` object")


def _app(kind: str, time: int, fields: dict[str, Any], where: str) -> dict[str, Any]:
    value = {"kind": kind, "time": time, **fields}
    _fits(value, where)
    return value


def _fits(value: dict[str, Any], where: str) -> None:
    try:
        size = len(canon.encode(value))
    except NonCanonicalError as e:
        raise AgentFileError(where, f"cannot be stored: {e}") from None
    if size > C.MAX_RECORD_BYTES:
        raise AgentFileError(where, f"too large for one record ({size} bytes, at most {C.MAX_RECORD_BYTES})")


def message_text(msg: Mapping[str, Any]) -> str:
    """The searchable text of a message: its text parts, then its tool calls as ``name(args)``."""
    parts: list[str] = []
    content = msg.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                for key in ("text", "reasoning"):
                    if isinstance(part.get(key), str):
                        parts.append(part[key])
                        break
    for call in msg.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            args = fn.get("arguments")
            parts.append(f"{fn['name']}({args if isinstance(args, str) else ''})")
    return "\n".join(p for p in parts if p)


def _nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def af_to_records(af: AgentFile, *, now: int = 0) -> list[dict[str, Any]]:
    """The records of an agent file, in the order they are written; each a map with ``kind``.

    ``now`` is the time of what the file dates nowhere (v2 blocks and tools take the file's
    ``created_at``; with none, the first message's time; with none, ``now``).

    >>> from capsule.integrations._letta_parse import parse_af
    >>> af = parse_af('{"agents": [{"id": "agent-0", "name": "a", "messages": [{"role": "user", '
    ...               '"content": [{"type": "text", "text": "hi"}], "created_at": "2025-01-01T00:00:00Z"}]}], '
    ...               '"blocks": [{"label": "human", "value": "Chad"}], "tools": []}')
    >>> [(r["kind"], r.get("text")) for r in af_to_records(af)]
    [('letta.document', None), ('letta.agent', None), ('memory', 'Chad'), ('letta.message', None), ('note', 'user: hi'), ('identity', None)]
    """
    doc = af.document
    v1 = af.schema == "v1"
    agents = af.agents()
    first = _first_time(af)
    t_doc = parse_time(doc.get("created_at"), "created_at") or first or now
    out: list[dict[str, Any]] = []
    counts: dict[str, Any] = {"agents": len(agents), "messages": [len(a.get("messages") or []) for a in agents]}
    if not v1:  # the file's block ids: export leaves out of block_ids only those of blocks forgotten since
        counts["blocks"] = [b.get("id") if isinstance(b, dict) and isinstance(b.get("id"), str) else None
                            for b in (doc.get("blocks") or [])]
    top = {} if v1 else {k: v for k, v in doc.items() if k not in ("agents", "blocks", "tools")}
    out.append(_app(K_DOC, t_doc, {"schema": af.schema, "encoded_twice": af.encoded_twice, "newline": af.newline,
                                   "counts": counts,
                                   **_pack(top, "document", 1, list(doc) if not v1 else [])}, "$"))
    inner = ("messages", "core_memory", "tools") if v1 else ("messages",)
    for i, agent in enumerate(agents):
        at = "" if v1 else f"agents[{i}]"
        t = _item_time(agent, at) or t_doc
        rest = {k: v for k, v in agent.items() if k not in inner}
        out.append(_app(K_AGENT, t, {"index": i, **_pack(rest, "agent", 1, list(agent))}, at or "$"))
    tools = (agents[0].get("tools") or []) if v1 else (doc.get("tools") or [])
    for j, tool in enumerate(tools):
        t = _item_time(tool, f"tools[{j}]") or t_doc
        out.append(_app(K_TOOL, t, {"index": j, **_pack(tool, "tool", 1, list(tool))}, f"tools[{j}]"))
    blocks, bname = (agents[0].get("core_memory") or [], "core_memory") if v1 else (doc.get("blocks") or [], "blocks")
    for j, block in enumerate(blocks):
        out.append(_block(block, j, _item_time(block, f"{bname}[{j}]") or t_doc, f"{bname}[{j}]"))
    for i, agent in enumerate(agents):
        at = "" if v1 else f"agents[{i}]."
        t = t_doc
        for j, msg in enumerate(agent.get("messages") or []):
            t = parse_time(msg.get("created_at"), f"{at}messages[{j}].created_at") or t
            where = f"{at}messages[{j}]"
            out.append(_app(K_MESSAGE, t, {"agent": i, "index": j, **_pack(msg, "message", 1, list(msg))}, where))
            text = message_text(msg)
            if text:
                note = {"kind": "note", "time": t, "text": _nfc(f"{msg['role']}: {text}")}
                _fits(note, where)  # text no record can hold (a lone surrogate) is named by its path
                out.append(note)
    if agents:
        ident = _identity(agents[0], t_doc if v1 else _item_time(agents[0], "agents[0]") or t_doc)
        _fits(ident, "$" if v1 else "agents[0]")
        out.append(ident)
    return out


def _first_time(af: AgentFile) -> int | None:
    times = [parse_time(m.get("created_at"), "created_at") for a in af.agents() for m in a.get("messages") or []]
    return min((t for t in times if t is not None), default=None)


def _item_time(item: Mapping[str, Any], at: str) -> int | None:
    for key in ("created_at", "updated_at"):
        t = parse_time(item.get(key), f"{at}.{key}".lstrip("."))
        if t is not None:
            return t
    return None


def _block(block: dict[str, Any], index: int, time: int, where: str) -> dict[str, Any]:
    value: str = block["value"]
    label = block.get("label")
    tags = [TAG_BLOCK]
    if isinstance(label, str) and label and len(_nfc(LABEL_TAG + label)) <= _MAX_TAG:
        tags.append(LABEL_TAG + label)
    rest = {k: v for k, v in block.items() if k != "value"}
    packed = _pack(rest, "block", 3, list(block))  # meta sits at level 2, its fields at 3
    meta: dict[str, Any] = {M_INDEX: index}
    for key, name in (("block", M_BLOCK), ("block_json", M_BLOCK + "_json"), ("keys", M_KEYS), ("order", M_ORDER)):
        if key in packed:
            meta[name] = packed[key]
    if _nfc(value) != value:  # the memory's text is NFC (5.1): the exact text rides along
        meta[M_VALUE] = value.encode("utf-8", "surrogatepass")
    rec = {"kind": "memory", "time": time, "text": _nfc(value), "tags": tags, "meta": meta}
    _fits(rec, where)
    return rec


def _identity(agent: Mapping[str, Any], time: int) -> dict[str, Any]:
    name = agent.get("name") if isinstance(agent.get("name"), str) else ""
    agent_id = agent.get("id") if isinstance(agent.get("id"), str) and agent.get("id") else name or "letta-agent"
    llm = agent.get("llm_config") or {}
    model = llm.get("model") if isinstance(llm.get("model"), str) else agent.get("model")
    config = {}
    for key in IDENTITY_KEYS:
        v = lossless(agent.get(key), 2) if agent.get(key) is not None else None
        if v is not None:
            config[key] = v
    return {"kind": "identity", "time": time, "agent_id": _nfc(str(agent_id)), "name": _nfc(str(name or "")),
            "model": _nfc(model) if isinstance(model, str) else "", "config": config}


def af_from_records(app: Iterable[tuple[str, Mapping[str, Any]]],
                    blocks: Iterable[tuple[str, str, Mapping[str, Any]]],
                    identity: Mapping[str, Any] | None,
                    gone: Iterable[tuple[str, str]] = ()) -> AgentFile:
    """Rebuild the agent file from ``app`` (id, value) application records, the live block
    memories ``blocks`` as (id, text, meta), the current ``identity`` value (or None) and
    ``gone``, the (id, kind) of application records forgotten or redacted in the capsule
    (their messages and tools are left out of the file, as a forgotten block is).

    Raises :class:`AgentFileError` (path = the record's id) when the records do not make
    one agent file (none imported, some missing, two at one position)."""
    docs: list[tuple[str, Mapping[str, Any]]] = []
    agents: dict[int, tuple[dict[str, Any], list[str]]] = {}
    tools: dict[int, dict[str, Any]] = {}
    msgs: dict[tuple[int, int], dict[str, Any]] = {}
    left_out = {K_MESSAGE: 0, K_TOOL: 0}
    for gid, gkind in gone:
        if gkind not in left_out:  # the file's own fields or an agent: no file without them
            raise AgentFileError(f"record {gid[:12]}", f"this {gkind} record was forgotten or redacted in the "
                                 "capsule: the agent file cannot be rebuilt without it")
        left_out[gkind] += 1
    for rid, rec in app:
        kind, where = rec.get("kind"), f"record {rid[:12]}"
        if kind == K_DOC:
            docs.append((rid, rec))
        elif kind == K_AGENT:
            _put(agents, _int(rec, "index", where), _unpack(rec, "agent", where), where)
        elif kind == K_TOOL:
            _put(tools, _int(rec, "index", where), _insert(*_unpack(rec, "tool", where), {}), where)
        elif kind == K_MESSAGE:
            key = (_int(rec, "agent", where), _int(rec, "index", where))
            _put(msgs, key, _insert(*_unpack(rec, "message", where), {}), where)
    if not docs:
        raise AgentFileError("", "this capsule holds no Letta agent file (no letta.document record)")
    if len(docs) > 1:
        raise AgentFileError("", f"this capsule holds {len(docs)} Letta agent files; export needs exactly one")
    rid, drec = docs[0]
    where = f"record {rid[:12]}"
    schema = drec.get("schema")
    if schema not in ("v1", "v2"):
        raise AgentFileError(where, f"unknown schema {schema!r}")
    counts = _as_dict(drec.get("counts"))
    n_agents = counts["agents"] if type(counts.get("agents")) is int else len(agents)
    per = _as_list(counts.get("messages"))
    # lengths first: a forged count (10**15) must not become a list or a loop that long
    if len(agents) != n_agents or sorted(agents) != list(range(n_agents)):
        raise AgentFileError(where, f"the capsule holds {len(agents)} of the file's {n_agents} agents")
    if schema == "v1" and n_agents != 1:
        raise AgentFileError(where, f"a v1 agent file is one agent, not {n_agents}")
    if not left_out[K_TOOL] and sorted(tools) != list(range(len(tools))):
        raise AgentFileError(where, "the capsule's letta.tool records have gaps in their order")
    live = _blocks(blocks)
    tool_list = [tools[j] for j in sorted(tools)]
    by_agent: dict[int, list[int]] = {}
    for a, j in sorted(msgs):
        by_agent.setdefault(a, []).append(j)
    missing = 0
    out_agents = []
    for i in range(n_agents):
        agent, keys = agents[i]
        held = by_agent.get(i, [])
        n = per[i] if i < len(per) and type(per[i]) is int else len(held)
        got = [msgs[(i, j)] for j in held if j < n]
        if len(got) > n or len(got) + left_out[K_MESSAGE] < n:
            raise AgentFileError(where, f"the capsule holds {len(got)} of agent {i}'s {n} messages")
        missing += n - len(got)
        agent = _overlay(agent, identity)
        fields: dict[str, Any] = {"messages": got}
        if schema == "v1":
            fields |= {"core_memory": live, "tools": tool_list}
        out_agents.append(_insert(agent, keys, fields))
    if missing > left_out[K_MESSAGE]:
        raise AgentFileError(where, f"the capsule lacks {missing} of the file's messages")
    if schema == "v1":
        return AgentFile(out_agents[0], "v1", drec.get("encoded_twice") is True, drec.get("newline") is not False)
    top, keys = _unpack(drec, "document", where)
    ids = {b.get("id") for b in live}
    tool_ids = {t.get("id") for t in tool_list}
    file_blocks = counts.get("blocks")
    # a block forgotten in the capsule leaves the agents' block_ids too; any other entry (one naming
    # no block of the file, or not a string) stays as imported. An import that did not list its
    # blocks' ids (before 2026-12-05) keeps only the ids of live blocks, as it always did.
    forgotten = {b for b in file_blocks if isinstance(b, str)} - ids if isinstance(file_blocks, list) else None
    for agent in out_agents:
        if isinstance(agent.get("block_ids"), list):
            agent["block_ids"] = [b for b in agent["block_ids"]
                                  if (not (isinstance(b, str) and b in forgotten) if forgotten is not None
                                      else isinstance(b, str) and b in ids)]
        if left_out[K_TOOL] and isinstance(agent.get("tool_ids"), list):
            agent["tool_ids"] = [t for t in agent["tool_ids"] if t in tool_ids]
    doc = _insert(top, keys, {"agents": out_agents, "blocks": live, "tools": tool_list})
    return AgentFile(doc, "v2", drec.get("encoded_twice") is True, drec.get("newline") is not False)


def _put(into: dict[Any, Any], key: Any, value: Any, where: str) -> None:
    if key in into:  # a capsule written by another tool: which one is the file's is unknowable
        raise AgentFileError(where, f"two records at position {key}")
    into[key] = value


def _int(rec: Mapping[str, Any], key: str, where: str) -> int:
    v = rec.get(key)
    if type(v) is not int or v < 0:
        raise AgentFileError(where, f"`{key}` is not a position")
    return v


def _insert(obj: Mapping[str, Any], keys: list[str], fields: dict[str, Any]) -> dict[str, Any]:
    """``obj`` and ``fields`` in the original key order ``keys``; keys it does not name go at
    the end, and a list field the original did not have stays out when it is empty."""
    out: dict[str, Any] = {}
    for k in keys:
        if k in fields:
            out[k] = fields[k]
        elif k in obj:
            out[k] = obj[k]
    for k, v in obj.items():
        out.setdefault(k, v)
    for k, v in fields.items():
        if k not in out and v != []:
            out[k] = v
    return out


def _overlay(agent: dict[str, Any], identity: Mapping[str, Any] | None) -> dict[str, Any]:
    """The current identity's config wins for its agent (an edited system prompt exports)."""
    if not identity:
        return agent
    aid = agent.get("id") if isinstance(agent.get("id"), str) and agent.get("id") else agent.get("name")
    if not isinstance(aid, str) or _nfc(aid) != identity.get("agent_id"):
        return agent
    config = identity.get("config") or {}
    out = dict(agent)
    for key in IDENTITY_KEYS:
        if key in config and _json(config[key]) != _json(lossless(agent.get(key), 2)):
            # what import-af would refuse is refused here, before a file is written (an .af is read back)
            expect(config[key], str if key == "system" else dict, f"the identity's config.{key}", null=True)
            out[key] = config[key]
    return out


def _blocks(blocks: Iterable[tuple[str, str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    found: list[tuple[int, str, dict[str, Any]]] = []
    for rid, text, meta in blocks:
        where = f"memory {rid[:12]}"
        keys = [k for k in meta.get(M_KEYS) or [] if isinstance(k, str)] if isinstance(meta.get(M_KEYS), list) else []
        if isinstance(meta.get(M_BLOCK + "_json"), bytes):
            try:
                rest = json.loads(meta[M_BLOCK + "_json"])
            except (ValueError, RecursionError):
                rest = None
        elif isinstance(meta.get(M_BLOCK), dict):
            rest = restore_order(meta[M_BLOCK], keys, _as_list(meta.get(M_ORDER)))
        elif M_BLOCK in meta:
            rest = meta[M_BLOCK]
        else:
            continue  # a memory that is not a block
        if not isinstance(rest, dict):
            raise AgentFileError(where, f"meta.{M_BLOCK} is not an object")
        value = text
        if isinstance(meta.get(M_VALUE), bytes):  # the exact text, while the memory still says it
            try:
                orig = meta[M_VALUE].decode("utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise AgentFileError(where, f"meta.{M_VALUE} is not UTF-8 text") from None
            value = orig if _nfc(orig) == text else text
        index = meta[M_INDEX] if type(meta.get(M_INDEX)) is int else 1 << 62
        found.append((index, rid, _insert(rest, keys, {"value": value})))
    found.sort(key=lambda x: (x[0], x[1]))
    return [b for _, _, b in found]


__all__ = ["APP_KINDS", "TAG_BLOCK", "af_from_records", "af_to_records", "lossless", "message_text"]
