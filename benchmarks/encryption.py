#!/usr/bin/env python3
"""Encryption at rest (issue 12, spec 10): what sealing costs, plain and encrypted side by side.

    .venv/bin/python benchmarks/encryption.py [--records 100000] [--quick] [--out PATH] [--tmpdir DIR]

Two capsules get the same records in the same run, in turns (``_common.interleave``),
one plain and one encrypted for a recipient key (an X25519 slot, spec 10.3):

* **bulk append**: N memories (~200 bytes of text, tags, meta; every tenth with a
  384-d embedding) through ``tx.put_many``, in commits of 10,000 records, each
  durable (one fsync);
* **small commits**: 300 commits of one memory each (the agent loop's shape);
* **reopen + get**: a reader opens the file (the key slot is unwrapped on each
  open) and reads one record by id, median of 30;
* **lexical and vector search**: ``search()`` p50 over 200 queries on a warm
  handle, and the first search in a fresh process (which loads the persisted
  snapshots: decrypted whole on the encrypted side);
* **deep verify**: ``capsule.verify`` with the key (every sealed frame opened).

The goal (issue 12): encrypted append and search within 1.2x of plain. Prints the
table and writes JSON (default ``benchmarks/results/encryption.json``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    RESULTS,
    T0_NS,
    arg_parser,
    environment,
    finish,
    fmt_ms,
    header,
    interleave,
    log,
    met,
    print_table,
    run_summary,
    scratch_dir,
    write_results,
)

import capsule

GOAL = 1.2
WORDS = ["deploy", "staging", "database", "cache", "latency", "budget", "rollout", "incident", "postmortem", "schema", "migration", "queue", "worker", "retry", "timeout", "backup", "restore", "region", "replica", "certificate", "token", "quota", "alert"]


def records(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 24))
        rec: dict[str, Any] = {"kind": "memory", "text": f"note {i}: {words}", "tags": [WORDS[i % len(WORDS)]],
                               "meta": {"n": i, "src": "bench"}, "time": T0_NS + i}
        if i % 10 == 0:
            v = rng.standard_normal(384).astype(np.float32)
            rec["embedding"] = (v / np.linalg.norm(v)).tolist()
        out.append(rec)
    return out


def _median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def _fresh_search(path: Path, key_path: Path | None, query: str) -> float:
    code = ("import sys,time,capsule;k=capsule.load_private_key(sys.argv[2]) if sys.argv[2] else None;"
            "t=time.perf_counter();c=capsule.open(sys.argv[1],identity=k);c.search(sys.argv[3],k=10,mode='lexical');"
            "print(time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code, str(path), str(key_path or ""), query], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip()) * 1000


def run(n: int, tmp: Path) -> dict[str, Any]:
    os.environ.setdefault("CAPSULE_SCRYPT_LOG_N", "10")
    key = capsule.generate_key()
    key_path = tmp / "bench.key"
    capsule.save_private_key(key_path, key, passphrase=None)
    plain, sealed = tmp / "plain.capsule", tmp / "sealed.capsule"
    sides = {"plain": (plain, None, {}), "encrypted": (sealed, key, {"recipients": [key.public_key]})}
    for p, _, kw in sides.values():
        capsule.create(p, **kw).close()
    recs = records(n)
    t: dict[str, dict[str, float]] = {s: {"append": 0.0, "small": 0.0} for s in sides}
    ids: dict[str, list[str]] = {s: [] for s in sides}
    log(f"bulk append of {n:,} records, commits of 10,000, in turns")
    for block, order in interleave(n, max(1, n // 10_000), list(sides)):
        chunk = recs[block.start:block.stop]
        for s in order:
            p, k, _ = sides[s]
            with capsule.open(p, "a", identity=k) as cap:
                t0 = time.perf_counter()
                with cap.commit() as tx:
                    got = tx.put_many(chunk)
                t[s]["append"] += time.perf_counter() - t0
            ids[s] += list(got)
    log("300 commits of one record each, in turns")
    for block, order in interleave(300, 10, list(sides)):
        for s in order:
            p, k, _ = sides[s]
            with capsule.open(p, "a", identity=k) as cap:
                t0 = time.perf_counter()
                for i in block:
                    with cap.commit() as tx:
                        tx.remember(f"loop step {i}: the agent noted a {WORDS[i % len(WORDS)]}")
                t[s]["small"] += time.perf_counter() - t0
    for p, k, _ in sides.values():
        with capsule.open(p, "a", identity=k) as cap:
            cap.build_index()
    rows: dict[str, dict[str, float]] = {s: {} for s in sides}
    rng = np.random.default_rng(3)
    lex_q = [" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 3)) for _ in range(200)]
    vec_q = [r["embedding"] for r in recs[:2000:10]][:200]
    for s, (p, k, _) in sides.items():
        rows[s]["append_rec_s"] = n / t[s]["append"]
        rows[s]["small_commit_ms"] = t[s]["small"] / 300 * 1000
        opens = []
        for i in range(30):
            t0 = time.perf_counter()
            with capsule.open(p, identity=k) as cap:
                cap.get(ids[s][(i * 7919) % n])
            opens.append(time.perf_counter() - t0)
        rows[s]["open_get_ms"] = _median_ms(opens)
        with capsule.open(p, identity=k) as cap:
            cap.search(lex_q[0], k=10, mode="lexical")
            cap.search(vector=vec_q[0], k=10)
            lt, vt = [], []
            for q in lex_q:
                t0 = time.perf_counter()
                cap.search(q, k=10, mode="lexical")
                lt.append(time.perf_counter() - t0)
            for v in vec_q:
                t0 = time.perf_counter()
                cap.search(vector=v, k=10)
                vt.append(time.perf_counter() - t0)
        rows[s]["lexical_p50_ms"] = _median_ms(lt)
        rows[s]["vector_p50_ms"] = _median_ms(vt)
        rows[s]["first_search_ms"] = statistics.median(_fresh_search(p, key_path if k else None, lex_q[i])
                                                       for i in range(3))
        t0 = time.perf_counter()
        rep = capsule.verify(p, identity=k)
        rows[s]["verify_s"] = time.perf_counter() - t0
        rows[s]["verify_mb_s"] = p.stat().st_size / rows[s]["verify_s"] / 1e6
        rows[s]["verify_ok"] = float(rep.ok)
        rows[s]["bytes"] = float(p.stat().st_size)
    return {"records": n, "sides": rows}


def main() -> int:
    ap = arg_parser(__doc__, RESULTS / "encryption.json", "10,000 records instead of 100,000")
    ap.add_argument("--records", type=int, default=None)
    a = ap.parse_args()
    n = a.records or (10_000 if a.quick else 100_000)
    started = time.time()
    with scratch_dir("capsule-bench-enc-", a.tmpdir) as tmp:
        res = header(a.quick, started, environment(tmp, sources=True), goal_ratio=GOAL)
        res.update(run(n, tmp))
    finish(res, started)
    p, e = res["sides"]["plain"], res["sides"]["encrypted"]
    higher_better = {"append_rec_s"}
    ratios = {}
    body = []
    names = {"append_rec_s": "bulk append (records/s)", "small_commit_ms": "1-record commit",
             "open_get_ms": "open + get", "lexical_p50_ms": "lexical search p50", "vector_p50_ms": "vector search p50",
             "first_search_ms": "first search, fresh process", "verify_s": "deep verify (s)",
             "verify_mb_s": "deep verify (MB/s)", "bytes": "file bytes"}
    goals = {"append_rec_s", "small_commit_ms", "lexical_p50_ms", "vector_p50_ms"}
    for k, label in names.items():
        cost = (p[k] / e[k]) if k in higher_better or k == "verify_mb_s" else (e[k] / p[k])
        ratios[k] = round(cost, 3)
        fmt = (lambda v: f"{v:,.0f}") if k in ("append_rec_s", "bytes", "verify_mb_s") else (
            (lambda v: f"{v:,.2f}") if k == "verify_s" else fmt_ms)
        body.append([label, fmt(p[k]), fmt(e[k]), f"{cost:.3f}x", met(cost <= GOAL) if k in goals else met(None)])
    res["cost_ratios"] = ratios
    print_table(f"Encryption at rest, {res['records']:,} records ({run_summary(res)})",
                ["measure", "plain", "encrypted", "cost", "met?"], body, left=("measure",))
    write_results(res, a.out)
    print(json.dumps(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
