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
``capsule verify --trust``), the action journal and the task queue.
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


def _index(state: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Live records the graph can name, by id: (kind, document)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for t in TIERS:
        for m in state["memories"][t]:
            out[m["id"]] = ("memory", m)
    for d in state["decisions"]:
        out[d["id"]] = ("decision", d)
    for n in state["notes"]:
        out[n["id"]] = ("note", n)
    return out


def _label(kind: str, doc: dict[str, Any]) -> str:
    text = doc.get("summary") if kind == "decision" else doc.get("text")
    text = text if isinstance(text, str) else ""
    return text if len(text) <= 80 else text[:79] + "\u2026"


def decisions(cap: Capsule, state: dict[str, Any], live: set[bytes]) -> dict[str, Any]:
    """The newest decisions with their evidence, recursively (a bounded ``why``): each
    node says whether it is live; a node that is not was superseded, forgotten or
    rolled back after the decision rested on it."""
    index = _index(state)
    newest = sorted(state["decisions"], key=lambda d: (d["time"], d["id"]))[-DECISIONS:][::-1]
    graphs = []
    for d in newest:
        budget = [GRAPH_NODES]
        graphs.append({"id": d["id"], "summary": _label("decision", d), "time": d["time"],
                       "approvals": [{"approver": a["approver"], "verified": a["verified"],
                                      "signature_ok": a["signature_ok"]} for a in d.get("approvals", [])],
                       "evidence": _evidence(cap, d, index, live, 1, budget, {d["id"]})})
    return {"total": len(state["decisions"]), "shown": len(graphs), "graphs": graphs}


def _evidence(cap: Capsule, doc: dict[str, Any], index: dict[str, tuple[str, dict[str, Any]]], live: set[bytes],
              depth: int, budget: list[int], seen: set[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for rid in doc.get("evidence") or []:
        if not isinstance(rid, str) or budget[0] <= 0:
            break
        budget[0] -= 1
        node: dict[str, Any] = {"id": rid}
        hit = index.get(rid)
        if hit is None:
            rec = cap.get(rid) if rid not in seen else None
            rd = rec.to_dict() if rec is not None and hasattr(rec, "to_dict") else {}
            kind = getattr(rec, "kind", "?") if rec is not None else "?"
            node.update(kind=kind, label=_label(kind, rd), live=bytes.fromhex(rid) in live,
                        status="not in file" if rec is None else "not live")
            child = rd
        else:
            node.update(kind=hit[0], label=_label(*hit), live=True, status="live")
            child = hit[1]
        if depth < GRAPH_DEPTH and rid not in seen and child.get("evidence"):
            node["evidence"] = _evidence(cap, child, index, live, depth + 1, budget, seen | {rid})
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
