"""Question commands on lineage and governance (spec 13.5): why, audit.

Each opens the capsule read-only, asks one library question and prints a table, or
with ``--json`` the question's ``to_dict()`` document.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._errors import call
from ._params import AtOpt, FileArg, JsonOpt
from ._render import Table, cell, emit_json, out, safe
from .inspect import TrustOpt, _ck, _trust

DEEP = 10  # `why`: levels of indent before the level is written as a number


def _sig(a: dict[str, Any]) -> str:
    """An approval's signature in a word: checked under the keyset, under a published key, wrong,
    or not checkable (no key of that id in the capsule)."""
    if a["verified"]:
        return "verified"
    if a["signature_ok"]:
        return "sig ok"
    return "BAD" if a.get("key_known", True) else "key unknown"


def why(path: FileArg, record_id: Annotated[str, typer.Argument(metavar="ID", show_default=False,
                                                                help="A record id or a unique prefix of it.")],
        json_out: JsonOpt = False, at: AtOpt = None, trust: TrustOpt = None) -> None:
    """Why a decision (or any record) is there: evidence recursively, approvals, constraints then
    active, the first checkpoint covering it, and what was later rolled back, revoked or expired.

    Example: capsule why agent.capsule 6559913571
    """
    import capsule

    def go() -> dict[str, Any]:
        anchor = _trust(trust)
        with capsule.open(path, at=at) as cap:
            return cap.why(record_id, trust=anchor).to_dict()

    d = call(go)
    if json_out:
        emit_json(d)
        return
    t = Table("record", "kind", "time", "summary", "approvals", "marks")

    def mark(m: dict[str, Any]) -> str:
        """A mark, with what a lifecycle event says: the replacement, who and why (7.7.1)."""
        text = m["mark"]
        if m.get("by"):
            text += " by " + ", ".join(x[:12] for x in m["by"])
        if m.get("actor"):
            text += f" ({m['actor']})"
        if m.get("reason"):
            text += f": {m['reason']}"
        return text

    def row(n: dict[str, Any], depth: int) -> None:
        # past DEEP levels the indent stops growing and the level is written out, so the id stays in view
        pad = ("  " * depth if depth <= DEEP else "  " * DEEP + f"{depth}") + ("- " if depth else "")
        if n.get("seen") or n.get("missing"):
            t.add_row(cell(pad + n["id"][:12]), cell(""), cell(""), cell("(missing)" if n.get("missing") else
                                                                          "(shown above)"), cell(""), cell(""))
            return
        ap = ", ".join(f"{a['approver'][:8]} {_sig(a)}"
                       for a in n["approvals"])
        # a redacted node has no time (7.7.1), one of a merge's purged records no kind either
        t.add_row(*(cell("" if x is None else x) for x in (pad + n["id"][:12], n["kind"], n["time"], n["summary"], ap,
                                      "; ".join(map(mark, n["marks"])))))
        for e in n["evidence"]:
            row(e, depth + 1)

    row(d["root"], 0)
    out.print(t)
    for ev in d["root"].get("replaces", []):  # 7.7.1: the chain old -> new, from the new end
        who = f" ({ev['actor']})" if ev.get("actor") else ""
        why_ = f": {ev['reason']}" if ev.get("reason") else ""
        ev_of = f"; evidence {', '.join(x[:12] for x in ev['evidence'])}" if ev.get("evidence") else ""
        out.print(safe(f"{ev['op']}: replaces {', '.join(x[:12] for x in ev['records'])} at {ev['time']}"
                       f"{who}{why_}{ev_of} (event {ev['event'][:12]})"))
    cons = "; ".join(f"[{c['scope']}] {c['text']}" for c in d["constraints"]) or "none"
    out.print(f"constraints when committed: {cons}")
    out.print(f"first checkpoint covering it: {_ck(d['checkpoint'])}")
    if d["truncated"]:
        out.print(f"(tree cut at {d['nodes']} records)")


def audit(path: FileArg, key: Annotated[str, typer.Argument(metavar="KEY", show_default=False,
                                                            help="The action's idempotency key.")],
          json_out: JsonOpt = False, at: AtOpt = None, trust: TrustOpt = None) -> None:
    """What governed an action: intent and result, the state root at the intent, the decisions and
    approvals behind it, the constraints then active, the checkpoint covering it.

    Example: capsule audit agent.capsule email:42 --trust agent.key.pub
    """
    import capsule

    def go() -> dict[str, Any]:
        anchor = _trust(trust)
        with capsule.open(path, at=at) as cap:
            return cap.audit(key, trust=anchor).to_dict()

    d = call(go)
    if json_out:
        emit_json(d)
        return
    out.print(f"action {d['key']}: {d['status']}")
    t = Table("phase", "attempt", "time", "commit seq", "outcome")
    for s in d["steps"]:
        res = "" if s["phase"] == "intent" else ("ok" if s["ok"] else f"failed: {s['error']}")
        t.add_row(*(cell(x) for x in (s["phase"], s["attempt"], s["time"], s["commit"]["seq"], res)))
    out.print(t)
    out.print(f"state root at the intent: {d['state_root_at_intent'] or 'none'}")
    for x in d["decisions"]:
        ap = ", ".join(f"{a['approver'][:8]} {_sig(a)}"
                       for a in x["approvals"]) or "no approvals"
        out.print(f"decision {x['id'][:12]} ({x['link']}): {x['summary']} [{ap}]")
    if not d["decisions"]:
        out.print("no linked decision")
    own = ", ".join(f"{a['approver'][:8]} {_sig(a)}"
                    + ("" if a["before_intent"] else " (after the intent)" if a["before_intent"] is False
                       else " (order not kept in this copy)") + (" (rolled back)" if a["rolled_back"] else "")
                    for a in d.get("approvals", []))
    out.print(f"approvals of the action itself: {own or 'none'}")

    def con(c: dict[str, Any]) -> str:
        rule = c.get("rule")
        if not rule:
            return f"[{c['scope']}] {c['text']}"
        return f"[{c['scope']}] {c['text']} (rule {rule['action']}: {'governs' if c.get('governs') else 'not'} this key)"

    cons = "; ".join(map(con, d["constraints"])) or "none"
    out.print(f"constraints at the intent: {cons}")
    out.print(f"first checkpoint covering it: {_ck(d['checkpoint'])}")
