"""How a LangGraph store item is a capsule memory, and the in-memory index over them.

Theory of operation. Every item is one live ``memory`` (spec 7.1):

- ``tags``: ``langgraph`` and one ``langgraph:<a>.<b>...`` per namespace prefix (labels never
  hold a ``.``, so the join is unambiguous), so ``capsule search FILE --tag langgraph:users``
  and a namespace-prefix vector search are one tag filter inside the capsule's own index;
- ``meta``: ``namespace`` (list), ``key``, ``value`` (the item's dict), ``created_at`` and
  ``updated_at`` (int ns, copied from record times: the first put of the key and the latest put),
  ``ttl_minutes`` when the item has a TTL, ``index`` when the put named its own fields;
- ``text``: the indexed fields' text joined by newlines (the whole value as JSON otherwise), and
  ``embedding`` that text's vector when the item is indexed;
- ``ttl``: the TTL in ns, so the capsule itself treats the item as expired at ``time + ttl``.

A re-put supersedes the old memory (7.7.1), a delete forgets it. The index (``Index``) is built
once when the store opens, from the live memories tagged ``langgraph``, and is then kept in step
with every commit the store makes, so no read walks the history.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

TAG = "langgraph"
_NS_TAG = "langgraph:"
_MAX_TAG = 256  # spec 7.1: a tag holds at most 256 code points
NS_PER_MINUTE = 60 * 1_000_000_000


def nfc(x: Any) -> Any:
    """Text as the capsule stores it (NFC, spec 5.1), inside tuples, lists and dict keys too:
    what the caller passes is looked up as what a reopen reads back."""
    if isinstance(x, str):
        return x if x.isascii() else unicodedata.normalize("NFC", x)
    if isinstance(x, tuple):
        return tuple(nfc(v) for v in x)
    if isinstance(x, list):
        return [nfc(v) for v in x]
    if isinstance(x, dict):
        return {nfc(k): nfc(v) for k, v in x.items()}
    return x


def nfc_clash(x: Any) -> str | None:
    """A map key that names the same text as another key of its map once both are in NFC
    (``"e\u0301"`` and ``"\u00e9"``), or None. Stored in NFC, one would silently replace the
    other; the store refuses the value instead."""
    if isinstance(x, dict):
        seen: set[Any] = set()
        for k, v in x.items():
            n = nfc(k)
            if n in seen:
                return str(n)
            seen.add(n)
            hit = nfc_clash(v)
            if hit is not None:
                return hit
    elif isinstance(x, (list, tuple)):
        for v in x:
            hit = nfc_clash(v)
            if hit is not None:
                return hit
    return None


def ns_tag(prefix: tuple[str, ...]) -> str | None:
    """The tag that names a namespace prefix, or None when it would be too long for a tag."""
    if not prefix:
        return TAG
    tag = _NS_TAG + ".".join(prefix)
    return tag if len(tag) <= _MAX_TAG else None


def item_tags(namespace: tuple[str, ...]) -> list[str]:
    tags = [TAG]
    for i in range(1, len(namespace) + 1):
        t = ns_tag(namespace[:i])
        if t is not None:
            tags.append(t)
    return tags


def ttl_ns(ttl_minutes: float) -> int:
    # 7.1: ttl is 1 <= ttl <= 2^63 - 1 ns; a TTL of zero or less expires at once. Clamped in
    # minutes first, so a huge finite ttl (1e300) does not overflow to infinity.
    most = ((1 << 63) - 1) / NS_PER_MINUTE
    return min((1 << 63) - 1, max(1, round(min(ttl_minutes, most) * NS_PER_MINUTE)))


def value_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def item_meta(namespace: tuple[str, ...], key: str, value: Mapping[str, Any], *, created: int, updated: int,
              ttl_minutes: float | None, index: list[str] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": list(namespace), "key": key, "value": dict(value),
                            "created_at": created, "updated_at": updated}
    if ttl_minutes is not None:
        meta["ttl_minutes"] = float(ttl_minutes)
    if index is not None:
        meta["index"] = list(index)
    return meta


@dataclass(slots=True)
class Entry:
    """One live item: where its memory is and what it holds."""

    rid: str
    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any]
    created: int  # ns
    updated: int  # ns
    time: int  # the memory's own time, from which its ttl runs
    ttl: int | None  # ns
    ttl_minutes: float | None
    vector: bool

    def expired(self, now: int) -> bool:
        return self.ttl is not None and self.time + self.ttl <= now  # the capsule's own rule (7.1)

    @property
    def order(self) -> tuple[int, tuple[str, ...], str]:
        return (-self.updated, self.namespace, self.key)


def entry_of(rec: Any) -> Entry | None:
    """The item a memory record holds, or None when it is not a store item."""
    tags = getattr(rec, "tags", ())
    if TAG not in tags:
        return None
    meta = rec.meta
    ns, key, value = meta.get("namespace"), meta.get("key"), meta.get("value")
    if not (isinstance(ns, list) and ns and all(isinstance(x, str) for x in ns)
            and isinstance(key, str) and isinstance(value, dict)):
        return None  # tagged by hand, not by the store: leave it to the capsule
    created, updated = meta.get("created_at", rec.time), meta.get("updated_at", rec.time)
    tm = meta.get("ttl_minutes")
    if type(created) is not int or type(updated) is not int or (tm is not None and type(tm) not in (int, float)):
        return None  # not the store's shape: left alone
    return Entry(rec.id, tuple(ns), key, value, created, updated, rec.time, rec.ttl,
                 None if tm is None else float(tm), rec.embedding is not None)


class Index:
    """Live items by namespace and key, and by memory id."""

    def __init__(self) -> None:
        self.by_ns: dict[tuple[str, ...], dict[str, Entry]] = {}
        self.by_rid: dict[str, Entry] = {}
        #: older live memories of an item that a later one hides (written by hand, or by a
        #: build that stored one item twice): a put or delete of the item forgets them too,
        #: so none comes back when the file is reopened
        self.shadowed: dict[tuple[tuple[str, ...], str], list[str]] = {}

    def load(self, records: Iterable[Any], dead: set[bytes]) -> None:
        for rec in records:  # commit order: a later live memory for a key wins
            if bytes.fromhex(rec.id) in dead:
                continue
            e = entry_of(rec)
            if e is not None:
                old = self.get(e.namespace, e.key)
                if old is not None:
                    self.shadowed.setdefault((e.namespace, e.key), []).append(old.rid)
                self.set(e)

    def get(self, namespace: tuple[str, ...], key: str) -> Entry | None:
        d = self.by_ns.get(namespace)
        return None if d is None else d.get(key)

    def set(self, e: Entry) -> None:
        old = self.get(e.namespace, e.key)
        if old is not None:
            self.by_rid.pop(old.rid, None)
        self.by_ns.setdefault(e.namespace, {})[e.key] = e
        self.by_rid[e.rid] = e

    def drop(self, namespace: tuple[str, ...], key: str) -> None:
        d = self.by_ns.get(namespace)
        if d is None or key not in d:
            return
        self.by_rid.pop(d.pop(key).rid, None)
        if not d:
            del self.by_ns[namespace]

    def under(self, prefix: tuple[str, ...]) -> Iterable[Entry]:
        n = len(prefix)
        for ns, d in self.by_ns.items():
            if ns[:n] == prefix:
                yield from d.values()

    def namespaces(self, now: int) -> list[tuple[str, ...]]:
        return [ns for ns, d in self.by_ns.items() if any(not e.expired(now) for e in d.values())]

    def __len__(self) -> int:
        return len(self.by_rid)


def matches(value: Mapping[str, Any], flt: Mapping[str, Any] | None) -> bool:
    """LangGraph's filter: each key equals (nested dicts and lists compared deeply) or
    passes its operators (``$eq``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``), as
    InMemoryStore reads it."""
    return not flt or all(_compare(value.get(k), v) for k, v in flt.items())


def _compare(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        if any(k.startswith("$") for k in want):
            return all(_operator(have, op, v) for op, v in want.items())
        return isinstance(have, dict) and all(_compare(have.get(k), v) for k, v in want.items())
    if isinstance(want, (list, tuple)):
        return (isinstance(have, (list, tuple)) and len(have) == len(want)
                and all(_compare(a, b) for a, b in zip(have, want, strict=True)))
    return bool(have == want)


def _operator(have: Any, op: str, want: Any) -> bool:
    if op == "$eq":
        return bool(have == want)
    if op == "$ne":
        return bool(have != want)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        if have is None:
            return False  # a missing field is in no range
        a, b = float(have), float(want)
        return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]
    raise ValueError(f"Unsupported operator: {op}")


def does_match(condition: Any, ns: tuple[str, ...]) -> bool:
    """A ListNamespacesOp match condition (prefix or suffix, ``*`` a wildcard label)."""
    path = tuple(condition.path)
    if len(ns) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(ns, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(ns), reversed(path), strict=False)
    else:
        raise ValueError(f"Unsupported match type: {condition.match_type}")
    return all(p == "*" or a == p for a, p in pairs)
