#!/usr/bin/env python3
"""Report benchmark: ``capsule report`` on a 100,000-record capsule.

    .venv/bin/python benchmarks/report.py [--quick] [--out PATH] [--tmpdir DIR]

One run builds a capsule of 100,000 records over 30 simulated days: 100 commits,
each of 990 memories (bulk path, three tiers) and 10 decisions resting on 5 of
them, then one approval commit, one signed checkpoint and two actions through
``run_once``; 20 tasks at the end. Then it measures, median of 3:

* ``report(cap)`` in-process (summary, state fold, one pass over the RECORDS
  frames for the per-day kinds, checkpoint signatures, journal, tasks) and
  ``render(doc)``, the HTML page;
* ``capsule report FILE -o report.html`` end to end in a fresh process (start-up,
  open, report, render, write);
* the page's and the JSON's sizes.

Targets (issue #11): <= 5 s and <= 5 MB at 100k records. There is no peer: no
other agent store draws a page of its history. It prints one table and writes
JSON (default ``benchmarks/results/report.json``, a git-ignored folder);
``--quick`` (10,000 records) is a smoke test.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _common as bc

import capsule
from capsule.report.report import report
from capsule.report.report_html import render

DAY = 86_400 * 10**9
TIERS = ("scratch", "working", "validated")


def build(path: Path, n: int) -> dict[str, int]:
    commits = 100
    per = n // commits
    mem = per - 10
    now = [bc.T0_NS]

    def clock() -> int:
        now[0] += 10**6
        return now[0]

    key = capsule.PrivateKey.from_seed(bytes(range(32)))
    with capsule.create(path, clock=clock) as cap:
        for c in range(commits):
            now[0] = bc.T0_NS + (c * 30 // commits) * DAY + c * 10**9
            with cap.commit() as tx:
                ids = tx.put_many({"text": f"observation {c}-{i}: latency p95 {i % 400} ms on host-{i % 17}",
                                   "tier": TIERS[i % 3], "tags": [f"h{i % 17}"], "time": now[0] + i}
                                  for i in range(mem))
                decs = [tx.decide(f"decision {c}-{j}", evidence=[ids[j * 5 + k] for k in range(5)])
                        for j in range(10)]
            with cap.commit() as tx:
                tx.approve(decs[-1], key)
            cap.checkpoint(f"step-{c}", key=key)
            for j in range(2):
                cap.run_once(f"email:{c}-{j}", lambda c=c: {"sent": c})
        for t in range(20):
            cap.tasks.add(f"follow-up {t}", name=f"t{t}")
    return {"records": n, "commits": commits, "checkpoints": commits}


def median_s(fn: Any, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = bc.arg_parser(__doc__, bc.RESULTS / "report.json", "10,000 records: a smoke test")
    args = ap.parse_args()
    started = time.time()
    n = 10_000 if args.quick else 100_000
    with bc.scratch_dir("capsule-bench-report-", args.tmpdir) as tmp:
        res = bc.header(args.quick, started, bc.environment(tmp), records=n)
        path = tmp / "agent.capsule"
        bc.log(f"building {n:,} records")
        res["build"] = build(path, n)
        res["build"]["file_bytes"] = bc.file_bytes(path)
        with capsule.open(path) as cap:
            doc = report(cap)
            lib = median_s(lambda: report(cap))
        page = render(doc)
        rend = median_s(lambda: render(doc))
        out = tmp / "report.html"
        cmd = [sys.executable, "-m", "capsule_cli.main", "report", str(path), "-o", str(out)]

        def cli() -> None:
            subprocess.run(cmd, check=True, capture_output=True)

        cli_s = median_s(cli)
        json_bytes = len(json.dumps(doc))
        rows = {
            "report_lib_s": {"value": round(lib, 3), "target": None},
            "render_s": {"value": round(rend, 3), "target": None},
            "report_cli_s": {"value": round(cli_s, 3), "target": 5.0},
            "html_bytes": {"value": out.stat().st_size, "target": 5_000_000},
            "json_bytes": {"value": json_bytes, "target": None},
        }
        assert out.read_text() == page  # the CLI wrote the page the library rendered
        res["rows"] = rows
    bc.finish(res, started)
    table = []
    for k, r in rows.items():
        v, target = r["value"], r["target"]
        shown = f"{v * 1000:,.0f} ms" if k.endswith("_s") else f"{v:,} B"
        table.append([k, shown, "—" if target is None else str(target), bc.met(None if target is None else v <= target)])
    bc.print_table(f"capsule report, {n:,} records ({bc.run_summary(res)})", ["row", "capsule", "target", "met?"],
                   table, left=("row",))
    bc.write_results(res, args.out)


if __name__ == "__main__":
    main()
