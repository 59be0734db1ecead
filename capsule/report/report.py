"""The report's numbers: one JSON-able document (``capsule report --json``) that the HTML
page (``report_html``) renders and nothing else.

Theory of operation: every figure the page shows is read from this document, so the page
and ``--json`` cannot disagree (tests/test_report.py checks it in a real browser). The
document is a function of the committed bytes only: times are commit times, "now" for
the task queue is the last commit's time, lists are bounded (the newest ``LIMIT`` rows)
and every count is over the whole capsule, so a 100k-record capsule gives a page of a
few hundred kilobytes.

What it reads: the summary and state fold (``cap.summary()``, ``cap.state()``), the
RECORDS frames once for the kinds committed per day (no record is decoded into an
object), the checkpoint and keyset chains (each checkpoint's signatures are checked
against the keyset it names: a self-consistency check, not trust in an anchor, which is
``capsule verify --trust``), the action journal, the task queue, and the ``why``
(``capsule.questions.why``) of the newest decisions, whose history (approvals,
constraints, identities, reverts) is walked once for all of them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.clock import iso
from ..format.commit import decode_records_payload
from ..format.frames import raw_payload
from ..format.keys import CHECKPOINT_PAYLOAD_TYPE
from ..format.records import TIERS
from ..format.scan import Reader
from ..format.signing import count_valid

if TYPE_CHECKING:
    from ..handle.capsule import Capsule

REPORT_VERSION = 1
LIMIT = 50  # rows per table: the counts cover everything, the tables the newest
DECISIONS = 5  # decisions whose lineage the graph draws
GRAPH_DEPTH = 4  # evidence levels below a decision
GRAPH_NODES = 40  # nodes per decision graph
DAY_NS = 86_400 * 10**9


def report(cap: Capsule) -> dict[str, Any]:
    """The report document of ``cap`` at its snapshot.

    >>> with cap.commit() as tx: _ = tx.decide("ship", evidence=[tx.remember("tests pass")])
    >>> doc = report(cap)
    >>> doc["summary"]["records"], doc["tiers"], doc["decisions"]["graphs"][0]["evidence"][0]["label"]
    (2, {'scratch': 0, 'working': 1, 'validated': 0}, 'tests pass')
    """
    summary = cap.summary().to_dict()
    st = cap.state()
    state = st.to_dict()
    log = cap.log()
    now = log[-1].time if log else 0
    live = set(st.live)
    doc: dict[str, Any] = {
        "report": REPORT_VERSION,
        "summary": {**summary, "live_records": len(st.live),
                    "decisions": len(state["decisions"]), "constraints": len(state["constraints"]),
                    "identity": (state["identity"] or {}).get("agent_id")},
        "timeline": timeline(cap, log),
        "tiers": {t: len(state["memories"][t]) for t in TIERS},
        "decisions": decisions(cap, state, live),
        "constraints": [{"text": c["text"], "scope": c["scope"], "since": c["since"]}
                        for c in state["constraints"][:LIMIT]],
        "checkpoints": checkpoints(cap),
        "actions": actions(cap),
        "tasks": tasks(cap, now),
    }
    s = doc["summary"]
    s["checkpoints"] = doc["checkpoints"]["total"]
    s["actions"] = doc["actions"]["total"]
    s["tasks"] = doc["tasks"]["total"]
    return doc


def timeline(cap: Capsule, log: list[Any]) -> dict[str, Any]:
    """Commits and records per UTC day, records split by kind (one pass over the
    RECORDS frames; a frame belongs to the first commit after it)."""
    store = cap._store
    snap = store.snap
    ends = [row.offset for row in log]  # a commit covers the frames before its COMMIT frame
    day_of = [iso(row.time)[:10] for row in log]
    commits: Counter[str] = Counter(day_of)
    kinds: dict[str, Counter[str]] = {d: Counter() for d in commits}
    rd = Reader(store.h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
    for fh, payload, _ in rd.frames():
        if fh.ftype != C.FT_RECORDS:
            continue
        i = bisect_right(ends, fh.offset)
        if i >= len(ends):
            break  # after the last commit: not committed
        day = kinds[day_of[i]]
        for value, _data in decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq):
            kind = value.get("kind") if isinstance(value, dict) else None
            day[kind if isinstance(kind, str) else "?"] += 1
    all_kinds = sorted({k for c in kinds.values() for k in c})
    days = [{"day": d, "commits": commits[d], "records": sum(kinds[d].values()),
             "by_kind": dict(sorted(kinds[d].items()))} for d in sorted(commits)]
    return {"kinds": all_kinds, "days": days, "commits": len(log),
            "records": sum(d["records"] for d in days)}


def _label(text: object) -> str:
    text = text if isinstance(text, str) else ""
    return text if len(text) <= 80 else text[:79] + "\u2026"


def decisions(cap: Capsule, state: dict[str, Any], live: set[bytes]) -> dict[str, Any]:
    """The newest decisions with their evidence, recursively: the ``why`` of each
    (``capsule.questions.why``, bounded to ``GRAPH_NODES`` and ``GRAPH_DEPTH``: ``truncated``
    says a graph was cut, ``more`` on it or a node how many evidence ids were not drawn), all
    sharing one read of the history. Each node says whether it is live; a node that is not was
    superseded, forgotten or rolled back after the decision rested on it."""
    from ..questions.why import context, why

    # 7.7.1: a view from before a redaction lists a redacted decision by id and kind only (no
    # time, no summary, and ``why`` refuses it): it is counted, never drawn
    shown = [d for d in state["decisions"] if not d.get("redacted")]
    newest = sorted(shown, key=lambda d: (d["time"], d["id"]))[-DECISIONS:][::-1]
    ctx = context(cap) if newest else None
    graphs = []
    for d in newest:
        w = why(cap, d["id"], context=ctx, max_nodes=GRAPH_NODES, max_depth=GRAPH_DEPTH).to_dict()
        tree = w["root"]
        graphs.append({"id": d["id"], "summary": _label(d["summary"]), "time": d["time"],
                       "truncated": w["truncated"], "more": tree.get("cut", 0),
                       "approvals": [{"approver": a["approver"], "verified": a["verified"],
                                      "signature_ok": a["signature_ok"]} for a in d.get("approvals", [])],
                       "evidence": _graph(tree.get("evidence") or [], live, {d["id"]: tree})})
    return {"total": len(state["decisions"]), "shown": len(graphs), "graphs": graphs}


def _graph(nodes: list[dict[str, Any]], live: set[bytes], named: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """``why`` nodes as the page draws them: kind, label, live, status, marks, evidence.
    A record ``why`` reached before is drawn again by name, without its evidence."""
    out: list[dict[str, Any]] = []
    for n in nodes:
        rid = n["id"]
        if n.get("seen"):
            n = {**named.get(rid, n), "evidence": []}
        else:
            named[rid] = n
        if n.get("missing") or "kind" not in n:
            out.append({"id": rid, "kind": "?", "label": "", "live": False, "status": "not in file", "marks": []})
            continue
        alive = bytes.fromhex(rid) in live
        node: dict[str, Any] = {"id": rid, "kind": n["kind"], "label": _label(n["summary"]), "live": alive,
                                "status": "live" if alive else "not live", "marks": [m["mark"] for m in n["marks"]]}
        if n["evidence"]:
            node["evidence"] = _graph(n["evidence"], live, named)
        if n.get("cut"):  # evidence past the graph's bounds: counted, not drawn
            node["more"] = n["cut"]
        out.append(node)
    return out


def checkpoints(cap: Capsule) -> dict[str, Any]:
    """Every checkpoint's signatures checked against the keyset it names (14.5)."""
    by_hash = {k.keyset.digest: k.keyset for k in cap.keysets()}
    rows = []
    signers: Counter[str] = Counter()
    verified = 0
    for ck in cap.checkpoints():
        ks = by_hash.get(ck.body.keyset)
        valid = count_valid(CHECKPOINT_PAYLOAD_TYPE, ck.body_raw, ck.sigs, ks) if ks is not None else 0
        ok = ks is not None and valid >= ks.threshold
        verified += ok
        signers.update(ck.signers)
        rows.append({"label": ck.label, "seq": ck.seq, "time": iso(ck.time), "state_root": ck.state_root,
                     "signers": list(ck.signers), "keyset_version": ks.version if ks is not None else None,
                     "valid_signatures": valid, "threshold": ks.threshold if ks is not None else None,
                     "verified": ok})
    current = cap.keyset
    members = {k.key_id for k in current.keys} if current is not None else set()
    return {"total": len(rows), "verified": verified, "failed": len(rows) - verified,
            "keyset_version": current.version if current is not None else None,
            "signers": [{"key_id": k, "checkpoints": n, "in_keyset": k in members}
                        for k, n in sorted(signers.items())],
            "rows": rows[-LIMIT:][::-1]}


def actions(cap: Capsule) -> dict[str, Any]:
    """The action journal: counts by status, the newest rows."""
    rows = [a.to_dict() for a in cap.actions()]
    counts = Counter(r["status"] for r in rows)
    rows.sort(key=lambda r: (r["started"] or "", r["key"]))
    return {"total": len(rows), "counts": {s: counts.get(s, 0) for s in ("done", "in-doubt", "failed", "not-done")},
            "rows": [{k: r[k] for k in ("key", "status", "attempt", "started", "finished")}
                     for r in rows[-LIMIT:][::-1]]}


def tasks(cap: Capsule, now: int) -> dict[str, Any]:
    """The task queue as of the last commit: counts by status, the first rows."""
    q = cap.tasks.to_dict(now=now)
    rows = q.get("tasks", [])
    counts = q.get("counts") or Counter(str(t.get("status")) for t in rows)
    due = {d if isinstance(d, str) else d.get("id") for d in q.get("due") or []}
    return {"total": len(rows), "due": len(due), "counts": dict(sorted(counts.items())),
            "rows": [{"id": t.get("id"), "name": t.get("name") or "", "status": t.get("status"),
                      "attempts": t.get("attempts", 0), "due": t.get("id") in due} for t in rows[:LIMIT]]}


__all__ = ["report"]
