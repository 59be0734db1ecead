"""``why``: the lineage of a record (spec 13.5).

The document (``Why.to_dict()``, ``capsule why --json``), stable::

    {"root": node, "nodes": int, "truncated": bool,
     "constraints": [{"id", "text", "scope", "since"}...],   # active when the root was committed
     "checkpoint": {"label", "seq", "time", "signers", "keyset", "signature_ok", "anchored"} | null}

    node = {"id", "kind", "time", "summary",
            "commit": {"seq", "commit", "time", "root"},      # the commit that made it durable
            "marks": [{"mark": "rolled-back"|"expired"|"revoked"|"superseded"|"forgotten"|"redacted"
                       |"promoted"|"demoted"}...],  # a lifecycle mark (7.7.1) also carries
                                                    # "op", "event", "time", "by", "evidence", "reason", "actor"
            "approvals": [{"id", "approver", "time", "signature_ok", "key_known", "verified", "rolled_back"}...],
            "evidence": [node...],                          # a decision's evidence, recursively
            "replaces": [{"op", "event", "time", "records", "by", "evidence", "reason", "actor"}...]}
                                # the lifecycle events (7.7.1: supersede, promote, demote) that name
                                # this record in `by`: the chain old -> new, seen from the new one

An evidence id the capsule does not hold is a node ``{"id", "kind": null, "missing": true,
"marks": [], "approvals": [], "evidence": []}``; a record reached twice is expanded once
(later occurrences carry ``"seen": true`` and no evidence). At most ``MAX_NODES`` nodes are
expanded, ``MAX_DEPTH`` levels deep (``truncated`` says so, and a node whose evidence was cut
carries ``"cut"``: how many of its evidence ids are not shown). ``checkpoint`` is the first checkpoint whose Merkle root
covers the root record's frame (14.8); a redacted evidence record is a node without time or
text (``"redacted": true``), and ``why`` of a redacted record raises ``Redacted``; ``anchored`` is null unless a trust anchor was given.
Marks are judged at the snapshot asked about (the capsule, or ``--at``'s view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core.errors import NotFound, Redacted
from ._context import Context
from ._lifecycle import PAST, event_doc, kind_of, redacted_node
from ._walk import Source, anchor_of, commit_ref, ref

MAX_NODES = 10_000
MAX_DEPTH = 64


@dataclass(frozen=True)
class Why:
    doc: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.doc


class _Tree:
    def __init__(self, ctx: Context, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
        self.ctx = ctx
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self.seen: set[str] = set()
        self.count = 0
        self.truncated = False
        c = ctx.cap._store.snap.commit
        self.now = c.time if c is not None else 0
        active = ctx.constraints_at(ctx.cap._store.snap.end)
        self.active = {a["id"] for a in active}
        ids = [r for _, r in ctx.rows if r.kind == "identity" and bytes.fromhex(r.id) not in ctx.dead]
        self.identity = ids[-1].id if ids else None
        self.gone: dict[bytes, Any] = {}  # a dead id -> the revert that dropped it last (7.7.1: its op)
        self.made: dict[bytes, list[Any]] = {}  # a replacement -> the lifecycle events naming it in `by`
        for _, r in ctx.rows:
            if r.kind == "revert":
                self.gone.update((x, r) for x in r.drop)
                if r.op is not None:
                    for x in r.by:
                        self.made.setdefault(x, []).append(r)

    def marks(self, rec: Any) -> list[dict[str, Any]]:
        out = []
        if bytes.fromhex(rec.id) in self.ctx.dead:
            ev = self.gone.get(bytes.fromhex(rec.id))
            if ev is not None and ev.op is not None:  # 7.7.1: what the lifecycle event did, why, by whom
                out.append({"mark": PAST[ev.op], **{k: v for k, v in event_doc(ev).items() if k != "records"}})
            else:
                out.append({"mark": "rolled-back"})
        if rec.kind == "memory" and rec.ttl is not None and rec.time + rec.ttl <= self.now:
            out.append({"mark": "expired"})
        if rec.kind == "constraint" and rec.status == "active" and rec.id not in self.active:
            out.append({"mark": "revoked"})
        if rec.kind == "identity" and rec.id != self.identity:
            out.append({"mark": "superseded"})
        return out

    def node(self, rid: bytes, depth: int) -> dict[str, Any]:
        h = rid.hex()
        if h in self.seen:
            return {"id": h, "seen": True}
        try:
            rec = self.ctx.cap.get(rid)
        except Redacted:  # 7.7.1: a node without its payload
            self.seen.add(h)
            return {**redacted_node(rid, kind_of(self.ctx.cap._store, rid)), "marks": [{"mark": "redacted"}],
                    "approvals": [], "evidence": []}
        except NotFound:
            return {"id": h, "kind": None, "missing": True, "marks": [], "approvals": [], "evidence": []}
        self.seen.add(h)
        self.count += 1
        off, _, c = self.ctx.located(rid)
        n = {**ref(rec), "commit": commit_ref(c), "marks": self.marks(rec),
             "approvals": self.ctx.approvals_of(rid), "evidence": [],
             "replaces": [event_doc(ev) for ev in self.made.get(rid, ())]}
        evidence = getattr(rec, "evidence", ())
        for e in evidence:
            if self.count >= self.max_nodes or depth >= self.max_depth:
                self.truncated = True
                n["cut"] = len(evidence) - len(n["evidence"])
                break
            n["evidence"].append(self.node(e, depth + 1))
        return n


def why(cap: Source, record_id: str | bytes, *, trust: Any = None, context: Context | None = None,
        max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> Why:
    """The lineage tree of ``record_id`` (a full id or a unique prefix).

    ``context`` (``Context.load(cap)``, or :func:`context`) is the history every ``why`` of
    one snapshot reads: pass one to ask several without walking it again (the report draws
    five); ``trust`` is then ignored for the context's own anchor. ``max_nodes`` and
    ``max_depth`` bound the tree below the spec's limits (a page draws a few dozen nodes)."""
    rec = cap.get(record_id)  # NotFound / ambiguous prefix first, before any walk
    rid = bytes.fromhex(rec.id)
    ctx = context if context is not None else Context.load(cap, anchor_of(cap, trust))
    tree = _Tree(ctx, min(max_nodes, MAX_NODES), min(max_depth, MAX_DEPTH))
    root = tree.node(rid, 0)
    off, _, c = ctx.located(rid)
    return Why({"root": root, "nodes": tree.count, "truncated": tree.truncated,
                "constraints": ctx.constraints_at(c.end if c is not None else 0),
                "checkpoint": ctx.covered_by(off)})


def context(cap: Source, *, trust: Any = None) -> Context:
    """The shared history for several :func:`why` calls on one snapshot of ``cap``."""
    return Context.load(cap, anchor_of(cap, trust))
