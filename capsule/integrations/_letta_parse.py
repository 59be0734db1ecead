"""Letta agent files (.af) as JSON text: decode, check the shape, encode (sans-IO).

Theory of operation. An .af file is one JSON document in one of two schemas:

- **v2** (Letta >= 0.8): ``{"agents": [...], "blocks": [...], "tools": [...], "groups",
  "files", "sources", "mcp_servers", "metadata", "created_at", ...}``; agents name their
  blocks and tools by id (``block_ids``, ``tool_ids``) and hold their own ``messages``.
- **v1** (Letta 0.6-0.7): the document *is* one agent: ``{"name", "system", "core_memory":
  [blocks], "messages", "tools", "llm_config", "embedding_config", "version", ...}``.

Some published files are a JSON string whose text is the document ("encoded twice"); they
are decoded twice and written back the same way. Only the fields the mapping reads are
checked (an error names their JSON path, ``agents[0].messages[3].created_at: expected a
string``); every other field is kept as it is, whatever it holds.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Any

from ..core.errors import DataError
from ..format.records import parse_iso_time

#: the largest .af file read (bytes): far above any published agent, and bounded before reading
MAX_AF_BYTES = 256 * 1024 * 1024

SCHEMAS = ("v1", "v2")


class AgentFileError(DataError):
    """An agent file is not JSON or not shaped like a Letta agent file.

    ``path`` is the JSON path of the offending value (``agents[0].messages[3].created_at``,
    ``$`` for the whole document; in an export, the record at fault, or empty) and
    ``reason`` what is wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class AgentFile:
    """One decoded agent file: its JSON ``document``, its ``schema`` (``"v1"`` or ``"v2"``)
    and whether the file held it as a JSON string (``encoded_twice``)."""

    document: dict[str, Any]
    schema: str
    encoded_twice: bool = False
    newline: bool = True  # the file ends with a line break (after the JSON string, when encoded twice)

    def agents(self) -> list[dict[str, Any]]:
        """The agents: v2's ``agents`` list, or the v1 document itself."""
        if self.schema == "v1":
            return [self.document]
        return list(self.document["agents"])

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "encoded_twice": self.encoded_twice, "newline": self.newline,
                "document": self.document}


def _what(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    return "an object"


def expect(v: object, want: type, path: str, *, null: bool = False) -> Any:
    """``v`` when it is a ``want`` (dict, list or str; None too with ``null``), else the error."""
    if isinstance(v, want) or (null and v is None):
        return v
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    name = names[want]
    raise AgentFileError(path, f"expected {name}{' or null' if null else ''}, got {_what(v)}")


def parse_time(v: object, path: str) -> int | None:
    """An .af time (ISO-8601 text; no zone means UTC) as int ns; None when absent (null)."""
    if v is None:
        return None
    text = expect(v, str, path)
    try:
        return parse_iso_time(text)
    except DataError as e:
        if "precision" in str(e):
            reason = "more than nanosecond precision"
        elif "outside 1970" in str(e):  # 7.0: int64 ns since the epoch
            reason = "out of range (a capsule's times run from 1970-01-01 to 2262-04-11 UTC)"
        else:
            reason = "not an ISO-8601 time"
        raise AgentFileError(path, f"{reason}: {text[:80]!r}") from None


def parse_af(data: bytes | str) -> AgentFile:
    """Decode an .af file's bytes (or text) and check its shape.

    >>> af = parse_af(b'{"agents": [{"name": "a", "messages": []}], "blocks": [], "tools": []}')
    >>> af.schema, af.encoded_twice, af.agents()[0]["name"]
    ('v2', False, 'a')
    >>> parse_af(json.dumps(json.dumps({"agents": []}))).encoded_twice
    True
    >>> parse_af('{"agents": [{"messages": [{"role": "user", "created_at": 5}]}]}')
    Traceback (most recent call last):
    capsule.integrations._letta_parse.AgentFileError: agents[0].messages[0].created_at: expected a string, got a number
    """
    if isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
        if len(raw) > MAX_AF_BYTES:
            raise AgentFileError("$", f"larger than {MAX_AF_BYTES} bytes")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise AgentFileError("$", f"not UTF-8 text (byte {e.start})") from None
    else:
        text = data
    doc = _loads(text, "not JSON")
    twice = isinstance(doc, str)
    if twice:
        doc = _loads(doc, "a JSON string that does not hold JSON")
    if not isinstance(doc, dict):
        raise AgentFileError("$", f"expected an object (a Letta agent file), got {_what(doc)}")
    return AgentFile(doc, check_document(doc), twice, text.endswith("\n"))


class _Dup(dict[str, Any]):
    """An object that held a key twice (json keeps the last value, the others would be lost
    unseen): the hook cannot know where it is, so the decoded document is searched for it."""

    dup = ""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for dup, _ in pairs:
            if dup in seen:
                break
            seen.add(dup)
        marked = _Dup(obj)
        marked.dup = dup
        return marked
    return obj


def _first_dup(doc: Any) -> tuple[str, str] | None:
    """The JSON path and key of the first object (in document order) that held a key twice."""
    stack: list[tuple[Any, str]] = [(doc, "$")]
    while stack:
        v, at = stack.pop()
        if isinstance(v, _Dup):
            return at, v.dup
        if isinstance(v, dict):
            stack.extend(reversed([(x, k if at == "$" else f"{at}.{k}") for k, x in v.items()]))
        elif isinstance(v, list):
            stack.extend(reversed([(x, f"{at}[{i}]") for i, x in enumerate(v)]))
    return None


def _loads(text: str, what: str) -> Any:
    try:
        doc = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as e:
        raise AgentFileError("$", f"{what}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise AgentFileError("$", f"{what}: nested too deeply") from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits
        if "digits" in str(e):
            raise AgentFileError("$", f"{what}: an integer of more than {sys.get_int_max_str_digits()} digits") \
                from None
        raise AgentFileError("$", f"{what}: {str(e)[:120]}") from None
    found = _first_dup(doc)
    if found is not None:
        raise AgentFileError(found[0], f"duplicate key {found[1][:80]!r} in an object (only one of its values "
                                       "could be kept)")
    return doc


def check_document(doc: dict[str, Any]) -> str:
    """The schema of a decoded document (``"v1"`` or ``"v2"``), after checking the fields
    the mapping reads; raises :class:`AgentFileError` naming the first bad one."""
    if "agents" in doc:
        for i, agent in enumerate(expect(doc["agents"], list, "agents")):
            _check_agent(expect(agent, dict, f"agents[{i}]"), f"agents[{i}].")
        for name in ("blocks", "tools"):
            for j, item in enumerate(expect(doc.get(name, []), list, name)):
                _check_item(name, expect(item, dict, f"{name}[{j}]"), f"{name}[{j}].")
        parse_time(doc.get("created_at"), "created_at")
        return "v2"
    if "core_memory" in doc or "in_context_message_indices" in doc:
        _check_agent(doc, "")
        for name in ("core_memory", "tools"):
            for j, item in enumerate(expect(doc.get(name, []), list, name)):
                _check_item(name, expect(item, dict, f"{name}[{j}]"), f"{name}[{j}].")
        return "v1"
    raise AgentFileError("$", "not a Letta agent file: no `agents` (schema v2) and no `core_memory` (schema v1)")


def _check_agent(agent: dict[str, Any], at: str) -> None:
    for key in ("name", "id", "system"):
        expect(agent.get(key), str, at + key, null=True)
    for key in ("llm_config", "embedding_config"):
        expect(agent.get(key), dict, at + key, null=True)
    for key in ("created_at", "updated_at"):
        parse_time(agent.get(key), at + key)
    for j, msg in enumerate(expect(agent.get("messages", []), list, at + "messages")):
        _check_message(expect(msg, dict, f"{at}messages[{j}]"), f"{at}messages[{j}].")


def _check_message(msg: dict[str, Any], at: str) -> None:
    expect(msg.get("role"), str, at + "role")
    parse_time(msg.get("created_at"), at + "created_at")
    content = msg.get("content")
    if not isinstance(content, str):
        for k, part in enumerate(expect(content, list, at + "content", null=True) or []):
            part = expect(part, dict, f"{at}content[{k}]")
            expect(part.get("text"), str, f"{at}content[{k}].text", null=True)
    for k, call in enumerate(expect(msg.get("tool_calls"), list, at + "tool_calls", null=True) or []):
        fn = expect(expect(call, dict, f"{at}tool_calls[{k}]").get("function"), dict,
                    f"{at}tool_calls[{k}].function", null=True)
        if fn is not None:
            expect(fn.get("name"), str, f"{at}tool_calls[{k}].function.name", null=True)


def _check_item(name: str, item: dict[str, Any], at: str) -> None:
    if name in ("blocks", "core_memory"):
        expect(item.get("value"), str, at + "value")
        expect(item.get("label"), str, at + "label", null=True)
    else:
        expect(item.get("name"), str, at + "name", null=True)
    for key in ("created_at", "updated_at"):
        parse_time(item.get(key), at + key)


_SURROGATE = re.compile("[\ud800-\udfff]")


def dump_af(af: AgentFile) -> bytes:
    """The file bytes of ``af`` as Letta writes them: JSON indented by 2, non-ASCII text as
    is, inside a JSON string (ASCII) when it was encoded twice, a final line break if it had one.

    >>> dump_af(parse_af(b'{"agents": []}'))
    b'{\\n  "agents": []\\n}'
    """
    text = json.dumps(af.document, indent=2, ensure_ascii=False)
    # a lone surrogate (valid in a JSON escape, not in UTF-8) stays an escape: the file is UTF-8 text
    # that reads back as the same document (json.loads never leaves a valid pair split)
    text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    if af.encoded_twice:
        text = json.dumps(text)
    return (text + "\n" * af.newline).encode("utf-8")


__all__ = ["MAX_AF_BYTES", "AgentFile", "AgentFileError", "check_document", "dump_af", "parse_af"]
