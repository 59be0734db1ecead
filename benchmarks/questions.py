#!/usr/bin/env python3
"""Questions benchmark (spec 13.5): ``why``, ``diff``, ``beliefs --json`` and ``audit`` on a
capsule of 100,000 records with 1,000 signed checkpoints, side by side with LangGraph's
SqliteSaver ``get_state_history`` where it can answer.

    .venv/bin/python benchmarks/questions.py [--quick] [--out PATH] [--tmpdir DIR]

(Named ``questions.py``, not ``inspect.py``: a script's folder comes first on ``sys.path``,
so a ``benchmarks/inspect.py`` would shadow the standard library's ``inspect`` for every
benchmark.) Needs ``langgraph-checkpoint-sqlite`` (the ``bench`` extra).

The capsule is built in 1,000 steps, each a commit of 100 memories and a checkpoint signed
with one Ed25519 key. Halfway, one step also commits a constraint, a decision whose evidence
is 50 memories from all over history, an approval of it, and a ``run_once`` action whose
intent names the decision. A SqliteSaver thread holds the same 1,000 steps (each checkpoint's
channel values: the step's records, the decision and action among them).

Measured (median of repeats, warm page cache, fresh handle each time, in-process):

* ``why`` of the decision (its 50 evidence records, approvals, constraints then active, the
  covering checkpoint) against SqliteSaver: walking ``get_state_history`` until the decision's
  step, then back until each evidence id is found;
* ``diff`` between the first and the last checkpoint (100k records apart) against the union of
  the deltas between them from ``get_state_history``;
* ``beliefs`` as JSON against the newest full state rebuilt from every delta and dumped;
* ``audit`` of the action against walking the history until its step.

Targets (the issue's): why <= 50 ms, diff <= 1 s, beliefs --json <= 0.5 s, audit <= 50 ms;
reported, never gating. ``--quick`` (10,000 records, 100 checkpoints) is a smoke test.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    arg_parser,
    environment,
    finish,
    header,
    log,
    run_summary,
    scratch_dir,
    write_results,
)

import capsule

try:
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver
except ImportError:  # reported by main()
    SqliteSaver = None  # type: ignore[assignment,misc]

DEFAULT_OUT = RESULTS / "questions.json"
THREAD_CFG: dict[str, Any] = {"configurable": {"thread_id": "bench", "checkpoint_ns": ""}}
TARGETS = {"why": 0.05, "diff": 1.0, "beliefs_json": 0.5, "audit": 0.05}
TIERS = ("scratch", "working", "validated")


def build(path: Path, db: Path, steps: int, per: int) -> dict[str, Any]:
    key = capsule.generate_key()
    saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
    parent: dict[str, Any] = THREAD_CFG
    versions: dict[str, str] = {}
    mids: list[str] = []
    out: dict[str, Any] = {}
    with capsule.create(path) as cap:
        for k in range(steps):
            recs = [{"text": f"step {k} fact {i}: the build on host-{i % 7} took {k * per + i} s",
                     "tier": TIERS[i % 3], "tags": [f"host-{i % 7}"]} for i in range(per)]
            extra: dict[str, Any] = {}
            with cap.commit() as tx:
                ids = [tx.remember(r["text"], tier=r["tier"], tags=r["tags"]) for r in recs]
                if k == steps // 2:
                    ev = [mids[j * len(mids) // 50] for j in range(50)]
                    tx.constrain("no email after 6pm")
                    d = tx.decide("send the weekly report", evidence=ev)
                    tx.approve(d, key)
                    out.update(decision=d, evidence=ev)
                    extra = {"decision": {"id": d, "evidence": ev}}
            mids.extend(ids[:1])
            if k == steps // 2:
                cap.run_once("email:weekly", lambda: {"sent": True}, inputs={"decision": out["decision"]})
                extra["action"] = {"key": "email:weekly", "decision": out["decision"], "result": {"sent": True}}
            cap.checkpoint(f"ck-{k:05d}", key=key)
            base = empty_checkpoint()
            base["channel_values"] = {"step": k, "memories": [dict(r, id=i) for r, i in zip(recs, ids, strict=True)], **extra}
            new = {ch: saver.get_next_version(versions.get(ch), None) for ch in base["channel_values"]}
            versions.update(new)
            base["channel_versions"] = dict(versions)
            parent = saver.put(parent, create_checkpoint(base, None, k), {"source": "loop", "step": k,
                                                                          "parents": {}}, new)
    saver.conn.close()
    out["first"], out["last"] = "ck-00000", f"ck-{steps - 1:05d}"
    return out


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def cap_q(path: Path, q: Callable[[Any], Any]) -> Callable[[], Any]:
    def go() -> Any:
        with capsule.open(path) as cap:
            return q(cap)
    return go


def lg_q(db: Path, q: Callable[[Any], Any]) -> Callable[[], Any]:
    def go() -> Any:
        saver = SqliteSaver(sqlite3.connect(db, check_same_thread=False))
        try:
            return q(saver)
        finally:
            saver.conn.close()
    return go


def lg_why(dec: str) -> Callable[[Any], Any]:
    def q(saver: Any) -> Any:
        want: set[str] | None = None
        found = {}
        for t in saver.list(THREAD_CFG):  # newest first: the history API
            cv = t.checkpoint["channel_values"]
            if want is None and cv.get("decision", {}).get("id") == dec:
                want = set(cv["decision"]["evidence"])
            if want is not None:
                for m in cv["memories"]:
                    if m["id"] in want:
                        found[m["id"]] = m
                if len(found) == len(want):
                    break
        return found
    return q


def lg_diff(saver: Any) -> Any:
    hist = list(saver.list(THREAD_CFG))
    added = [m for t in hist[:-1] for m in t.checkpoint["channel_values"]["memories"]]
    return {"added": len(added)}


def lg_beliefs(saver: Any) -> Any:
    mems = [m for t in saver.list(THREAD_CFG) for m in t.checkpoint["channel_values"]["memories"]]
    by = {t: [m for m in mems if m["tier"] == t] for t in TIERS}
    return json.dumps({t: {"count": len(v), "newest": v[:10]} for t, v in by.items()})


def lg_audit(key: str) -> Callable[[Any], Any]:
    def q(saver: Any) -> Any:
        for t in saver.list(THREAD_CFG):
            a = t.checkpoint["channel_values"].get("action")
            if a and a["key"] == key:
                return a, t.config
        return None
    return q


def main() -> None:
    ap = arg_parser(__doc__, DEFAULT_OUT, "10,000 records, 100 checkpoints")
    args = ap.parse_args()
    if SqliteSaver is None:
        sys.exit("needs langgraph-checkpoint-sqlite: pip install -e '.[bench]'")
    started = time.time()
    steps, per, rep = (100, 100, 5) if args.quick else (1_000, 100, 7)
    with scratch_dir("questions", args.tmpdir) as tmp:
        path, db = tmp / "q.capsule", tmp / "q.sqlite"
        log(f"building {steps * per:,} records, {steps:,} checkpoints ...")
        t0 = time.perf_counter()
        ids = build(path, db, steps, per)
        log(f"built in {time.perf_counter() - t0:.1f} s")
        rows: dict[str, dict[str, Any]] = {}
        cases = {
            "why": (cap_q(path, lambda c: c.why(ids["decision"]).to_dict()), lg_q(db, lg_why(ids["decision"]))),
            "diff": (cap_q(path, lambda c: c.diff(ids["first"], ids["last"]).to_dict()), lg_q(db, lg_diff)),
            "beliefs_json": (cap_q(path, lambda c: json.dumps(c.beliefs().to_dict())), lg_q(db, lg_beliefs)),
            "audit": (cap_q(path, lambda c: c.audit("email:weekly").to_dict()), lg_q(db, lg_audit("email:weekly"))),
        }
        for name, (cq, lq) in cases.items():
            ct, cres = timed(cq, rep)
            lt, _ = timed(lq, rep)
            rows[name] = {"capsule_s": round(ct, 4), "sqlitesaver_s": round(lt, 4), "target_s": TARGETS[name],
                          "meets_target": ct <= TARGETS[name]}
            log(f"{name}: capsule {ct * 1000:.1f} ms, SqliteSaver {lt * 1000:.1f} ms")
        w = cases["why"][0]()
        assert len(w["root"]["evidence"]) == 50 and w["checkpoint"] is not None
        d = cases["diff"][0]()
        assert d["added"]["count"] >= (steps - 1) * per
        env = environment(tmp, {"capsule_bytes": path.stat().st_size, "sqlite_bytes": db.stat().st_size})
    res = header(args.quick, started, env, records=steps * per, checkpoints=steps, repeats=rep, results=rows)
    finish(res, started)
    print(f"\nquestions ({run_summary(res)}): median seconds, fresh handle each time")
    print(f"{'question':<14}{'capsule':>10}{'SqliteSaver':>13}{'target':>9}  ok")
    for name, r in rows.items():
        print(f"{name:<14}{r['capsule_s']:>10.4f}{r['sqlitesaver_s']:>13.4f}{r['target_s']:>9.2f}  "
              f"{'yes' if r['meets_target'] else 'NO'}")
    write_results(res, args.out)


if __name__ == "__main__":
    main()
