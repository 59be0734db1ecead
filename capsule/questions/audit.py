"""``audit``: what governed one action (spec 13.5).

The document (``Audit.to_dict()``, ``capsule audit --json``), stable::

    {"key": str, "status": str,                 # the journal's fold (7.8, 18)
     "steps": [{"id", "phase", "attempt", "time", "ok", "what", "inputs", "value", "error", "by",
                "commit": {seq, commit, time, root}}...],   # intent / result / resolve, in commit order
     "intent": step | null,                      # the latest attempt's intent
     "state_root_at_intent": hex | null,         # 13.1, at the commit that made that intent durable
     "decisions": [{"id", "summary", "time", "evidence": [ids], "approvals": [...], "link": str}...],
     "approvals": [{"id", "approver", "time", "signature_ok", "key_known", "verified", "rolled_back",
                    "before_intent"}...],   # of the action itself (its 7.3.1 subject)
     "constraints": [{"id", "text", "scope", "since", "rule"?, "governs"?}...],  # active at the
                                            # intent's commit; ``governs``: its rule matches the key
     "checkpoint": {label, seq, time, signers, keyset, signature_ok, anchored} | null}

A decision is linked to the action (``link``) when the intent's ``inputs`` holds its id at any
top-level key (a 32-byte bin or 64 hex digits: ``"inputs"``), or the decision's own ``inputs``
names the action key under ``"action"`` (``"decision-inputs"``). Approvals are judged as the intent was
(7.3.1): ``verified`` under the keyset in force before its commit. ``approvals`` are those of the
action's own subject (``action_subject(key)``, 7.3.1: an approval of every run of the key), the
other way to satisfy a rule; ``before_intent`` says whether it was committed before the intent
(null in a fork, a ``live`` compaction or a merge, whose inherited records share one commit)
(in an earlier commit: only those count for it). ``checkpoint`` is the first checkpoint covering the newest step.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from ..core.clock import iso
from ..core.errors import NotFound
from ..format.commit import CommitInfo
from ..state.rules import action_subject, matches
from ._context import Context
from ._walk import Source, anchor_of, commit_holding, commit_ref

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Audit:
    doc: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def _ids_in(inputs: Any) -> list[bytes]:
    out = []
    for v in (inputs or {}).values():
        if isinstance(v, bytes) and len(v) == 32:
            out.append(v)
        elif isinstance(v, str) and len(v) == 64 and set(v) <= _HEX:
            out.append(bytes.fromhex(v))
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def audit(cap: Source, key: str, *, trust: Any = None) -> Audit:
    """The intent, result and governance of the action ``key`` (read as NFC, as ``run_once`` reads it)."""
    key = unicodedata.normalize("NFC", key) if isinstance(key, str) else key
    store = cap._store
    ctx = Context.load(cap, anchor_of(cap, trust), extra=("action", "decision"))
    rows = [(off, seq, r) for (off, r), seq in zip(ctx.rows, ctx.seqs, strict=True)
            if r.kind == "decision" or (r.kind == "action" and r.key == key)]
    steps_raw = [(off, seq, r) for off, seq, r in rows if r.kind == "action"]
    if not steps_raw:
        raise NotFound(f"no action with key {key!r} (see `capsule actions`)")
    steps = []
    for off, _, r in steps_raw:
        steps.append({"id": r.id, "phase": r.phase, "attempt": r.attempt, "time": iso(r.time), "ok": r.ok,
                      "what": r.what, "inputs": _jsonable(dict(r.inputs)), "value": _jsonable(r.value),
                      "error": r.error or None, "by": r.by or None, "commit": commit_ref(commit_holding(store, off))})
    intents = [(i, off, r) for i, (off, _, r) in enumerate(steps_raw) if r.phase == "intent"]
    intent = root = None
    at: CommitInfo | None = None
    linked: dict[bytes, str] = {}
    if intents:
        i, off, r = intents[-1]
        intent = steps[i]
        at = commit_holding(store, off)
        if at is not None:
            with cap.view(at) as then:  # type: ignore[attr-defined]
                root = then.state_root
        for rid in _ids_in(r.inputs):
            linked.setdefault(rid, "inputs")
    for _, _, d in rows:
        if d.kind == "decision" and (d.inputs or {}).get("action") == key:
            linked.setdefault(bytes.fromhex(d.id), "decision-inputs")
    decisions = []
    for rid, how in linked.items():
        try:
            d = cap.get(rid)
        except NotFound:
            continue
        if d.kind != "decision":
            continue
        decisions.append({"id": d.id, "summary": d.summary, "time": iso(d.time), "link": how,
                          "evidence": [e.hex() for e in d.evidence],
                          "approvals": ctx.approvals_of(rid, ctx.vouched_before(at.offset) if at is not None else None)})
    subject = action_subject(key)
    judged = ctx.vouched_before(at.offset) if at is not None else None  # 7.3.1: the keyset of the intent
    approvals = ctx.approvals_of(subject, judged)
    placed = {r.id: off for off, r in ctx.rows if r.kind == "approval" and r.subject == subject}
    for a in approvals:  # 7.3.1: the approvals of the commits before the intent's commit count
        held = commit_holding(store, placed[a["id"]])
        a["before_intent"] = at is not None and held is not None and held.seq < at.seq
        if a["before_intent"] is False and held is not None and at is not None and held.seq == at.seq \
                and ctx.lineage is not None and ctx.lineage.policy not in ("history", "checkpoints"):
            a["before_intent"] = None  # a fork or a live copy holds its inherited records in one commit (15)
    constraints = ctx.constraints_at(at.end) if at is not None else []
    for c in constraints:
        if "rule" in c:
            c["governs"] = matches(c["rule"]["action"], key)
    return Audit({"key": key, "status": _status(cap, key), "steps": steps, "intent": intent,
                  "state_root_at_intent": root, "decisions": decisions, "approvals": approvals,
                  "constraints": constraints, "checkpoint": ctx.covered_by(steps_raw[-1][0])})


def _status(cap: Any, key: str) -> str:
    return str(cap._actions.state(key).status)
