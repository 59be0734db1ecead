#!/usr/bin/env python3
"""Ingest benchmark: one JSONL file into one commit, capsule side by side with SQLite.

    .venv/bin/python benchmarks/ingest.py [--quick] [--out PATH] [--tmpdir DIR] [--reps N]

The same JSONL file (100k memories of ~230 encoded bytes each, from ``store.py``'s
generator: text, 2-3 tags, a two-entry meta, a time) goes in as one commit / one
transaction through each of:

* ``capsule put --jsonl`` in a fresh process (wall time of the whole command: start-up,
  reading, one commit, and whatever ``close`` writes);
* the library, record by record: ``json.loads`` and ``tx.put_value`` per line (the
  loop a user would write before ``put_many``);
* the library's bulk path: ``tx.put_many`` of the file's raw lines (``JsonLines``),
  and of the same records already parsed into dicts (the library's own throughput);
* SQLite (``journal_mode=WAL``, ``synchronous=FULL``): ``json.loads`` per line, a
  table ``(id TEXT PRIMARY KEY, text, tags JSON, meta JSON)`` whose id is the SHA-256
  of the line (content addressing, as capsule does: ``INSERT OR IGNORE``),
  ``executemany`` in one transaction.

Library and SQLite sides run in fresh child processes (import time excluded) and
report the time from opening the input to the durable commit; the library's
``close`` (which may write index snapshots) is timed apart. Sides take turns, rotated
each round, and the median of ``--reps`` rounds is reported. A last row measures F22:
peak RSS of ``capsule put --jsonl`` on 1e6 lines of ``{"text":"x"}`` (200k with
``--quick``). It prints one table and writes JSON (default
``benchmarks/results/ingest.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    arg_parser,
    child_cmd,
    child_json,
    environment,
    finish,
    header,
    log,
    met,
    print_table,
    rotated,
    run_summary,
    scratch_dir,
    write_results,
)
from store import MemoryGen

DEFAULT_OUT = RESULTS / "ingest.json"
CAPSULE_BIN = Path(sys.executable).with_name("capsule")
LIB_GOAL = 200_000  # records/s through the library's bulk path (issue #14)


def make_jsonl(path: Path, n: int) -> int:
    """The input: ``n`` memories, one JSON object a line; returns the file's size."""
    gen = MemoryGen()
    with path.open("w") as f:
        for lo in range(0, n, 10_000):
            for text, tags, meta, t in gen.take(min(10_000, n - lo)):
                f.write(json.dumps({"text": text, "tags": tags, "meta": meta, "time": t}) + "\n")
    return path.stat().st_size


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _fresh(path: str) -> None:
    for p in (path, path + ".lock", path + "-wal", path + "-shm"):
        if os.path.exists(p):
            os.remove(p)


# --- the sides (each runs in a fresh child: ``child_cmd("ingest", fn, kwargs)``) ------------

def lib_put_loop(src: str, out: str) -> dict[str, Any]:
    import capsule

    _fresh(out)
    capsule.create(out).close()
    cap = capsule.open(out, "a")
    t0, c0 = time.perf_counter(), time.process_time()
    with open(src, "rb") as f, cap.commit() as tx:
        for line in f:
            if line.strip():
                tx.put_value(json.loads(line))
    t1, c1 = time.perf_counter(), time.process_time()
    cap.close()
    return {"records": len(tx.new_ids), "seconds": t1 - t0, "cpu_s": c1 - c0, "close_s": time.perf_counter() - t1,
            "peak_mib": _peak_mib()}


def lib_put_many(src: str, out: str, parsed: bool = False) -> dict[str, Any]:
    import capsule
    from capsule.ingest.jsonl import JsonLines

    _fresh(out)
    capsule.create(out).close()
    cap = capsule.open(out, "a")
    dicts = [json.loads(line) for line in open(src, "rb")] if parsed else None  # noqa: SIM115
    t0, c0 = time.perf_counter(), time.process_time()
    with cap.commit() as tx:
        if dicts is not None:
            tx.put_many(dicts)
        else:
            with open(src, "rb") as f:
                lines = JsonLines(f, "input ")
                tx.put_many(lines, names=lines.name)
    t1, c1 = time.perf_counter(), time.process_time()
    cap.close()
    return {"records": len(tx.new_ids), "seconds": t1 - t0, "cpu_s": c1 - c0, "close_s": time.perf_counter() - t1,
            "peak_mib": _peak_mib()}


def sqlite_executemany(src: str, out: str) -> dict[str, Any]:
    _fresh(out)
    t0, c0 = time.perf_counter(), time.process_time()
    db = sqlite3.connect(out, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE mem (id TEXT PRIMARY KEY, text TEXT, tags JSON, meta JSON)")

    def rows() -> Any:
        with open(src, "rb") as f:
            for line in f:
                if line.strip():
                    o = json.loads(line)
                    yield (hashlib.sha256(line.strip()).hexdigest(), o["text"], json.dumps(o.get("tags", [])),
                           json.dumps(o.get("meta", {})))

    db.execute("BEGIN")
    db.executemany("INSERT OR IGNORE INTO mem VALUES (?, ?, ?, ?)", rows())
    db.execute("COMMIT")
    t1, c1 = time.perf_counter(), time.process_time()
    n = db.execute("SELECT count(*) FROM mem").fetchone()[0]
    db.close()
    return {"records": n, "seconds": t1 - t0, "cpu_s": c1 - c0, "close_s": 0.0, "peak_mib": _peak_mib()}


def cli_put(src: Path, out: Path) -> dict[str, Any]:
    """``capsule put --jsonl`` as a shell would run it: wall time and peak RSS of the process."""
    _fresh(str(out))
    subprocess.run([str(CAPSULE_BIN), "init", str(out)], check=True, capture_output=True)
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        p = subprocess.Popen([str(CAPSULE_BIN), "put", str(out), "--jsonl", str(src), "--json"], stdout=null,
                             stderr=subprocess.PIPE)
        assert p.stderr is not None
        err = p.stderr.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        p.stderr.close()
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"capsule put failed: {err.decode()}")
    return {"seconds": dt, "cpu_s": usage.ru_utime + usage.ru_stime, "close_s": None, "peak_mib": usage.ru_maxrss / 1024}


def startup() -> float:
    """Wall time of ``capsule --version``: the part of the CLI figure that is start-up."""
    t0 = time.perf_counter()
    subprocess.run([str(CAPSULE_BIN), "--version"], check=True, capture_output=True)
    return time.perf_counter() - t0


# --- the run ----------------------------------------------------------------------------------

SIDES = ("capsule CLI put --jsonl", "capsule library put loop", "capsule put_many (JSONL lines)",
         "capsule put_many (dicts)", "sqlite executemany")


def run(quick: bool, reps: int, tmp: Path) -> dict[str, Any]:
    n = 20_000 if quick else 100_000
    src = tmp / "in.jsonl"
    size = make_jsonl(src, n)
    log(f"input: {n:,} records, {size / 1e6:.1f} MB of JSONL")
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    starts = []
    for r in range(reps):
        for side in rotated(SIDES, r):
            cap_out, db_out = str(tmp / "lib.capsule"), str(tmp / "peer.sqlite")
            if side == "capsule CLI put --jsonl":
                res = cli_put(src, tmp / "cli.capsule")
            elif side == "capsule library put loop":
                res = child_json(child_cmd("ingest", "lib_put_loop", {"src": str(src), "out": cap_out}))
            elif side == "capsule put_many (JSONL lines)":
                res = child_json(child_cmd("ingest", "lib_put_many", {"src": str(src), "out": cap_out}))
            elif side == "capsule put_many (dicts)":
                res = child_json(child_cmd("ingest", "lib_put_many", {"src": str(src), "out": cap_out,
                                                                      "parsed": True}))
            else:
                res = child_json(child_cmd("ingest", "sqlite_executemany", {"src": str(src), "out": db_out}))
            res["rate"], res["cpu_rate"] = n / res["seconds"], n / res["cpu_s"]
            runs[side].append(res)
            log(f"round {r + 1}: {side}: {res['rate']:,.0f} records/s")
        starts.append(startup())
    med = {s: statistics.median(x["rate"] for x in runs[s]) for s in SIDES}
    cpu = {s: statistics.median(x["cpu_rate"] for x in runs[s]) for s in SIDES}
    peer, cpu_peer = med["sqlite executemany"], cpu["sqlite executemany"]
    rows = []
    for s in SIDES:
        close = [x["close_s"] for x in runs[s] if x.get("close_s") is not None]
        goal = None
        if s == "capsule CLI put --jsonl":
            goal = med[s] >= peer
        elif s == "capsule put_many (dicts)":
            goal = med[s] >= LIB_GOAL
        rows.append({
            "side": s, "records_per_s": round(med[s]), "ratio_to_sqlite": round(med[s] / peer, 2),
            "records_per_cpu_s": round(cpu[s]), "cpu_ratio_to_sqlite": round(cpu[s] / cpu_peer, 2),
            "seconds": round(statistics.median(x["seconds"] for x in runs[s]), 3),
            "close_s": round(statistics.median(close), 3) if close else None,
            "peak_mib": round(max(x["peak_mib"] for x in runs[s])),
            "target": {"capsule CLI put --jsonl": ">= 1x sqlite", "capsule put_many (dicts)": f">= {LIB_GOAL:,}/s"}
            .get(s, ""), "met": goal,
        })
    log("F22: peak RSS of put --jsonl on tiny lines")
    tiny_n = 200_000 if quick else 1_000_000
    tiny = tmp / "tiny.jsonl"
    tiny.write_bytes(b'{"text":"x"}\n' * tiny_n)
    mem = cli_put(tiny, tmp / "tiny.capsule")
    tiny.unlink()
    return {"records": n, "jsonl_bytes": size, "rows": rows, "runs": runs,
            "cli_startup_s": round(statistics.median(starts), 3),
            "tiny_lines": {"lines": tiny_n, "seconds": round(mem["seconds"], 2), "peak_mib": round(mem["peak_mib"]),
                           "target_mib": 300, "met": mem["peak_mib"] < 300}}


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "20k records, 200k tiny lines: a smoke test of well under a minute")
    ap.add_argument("--reps", type=int, default=None, help="rounds of every side (default 3, 1 with --quick)")
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    started = time.time()
    with scratch_dir("capsule-bench-ingest-", args.tmpdir) as tmp:
        env = environment(tmp, {"msgspec": _version("msgspec")}, sources=True)
        res = header(args.quick, started, env, reps=reps)
        res.update(run(args.quick, reps, tmp))
    finish(res, started)
    table = [[r["side"], f"{r['records_per_s']:,}", f"{r['ratio_to_sqlite']:.2f}x",
              f"{r['records_per_cpu_s']:,} ({r['cpu_ratio_to_sqlite']:.2f}x)", f"{r['seconds']:.2f} s",
              "—" if r["close_s"] is None else f"{r['close_s']:.2f} s", f"{r['peak_mib']} MiB", r["target"],
              met(r["met"])] for r in res["rows"]]
    t = res["tiny_lines"]
    table.append([f"put --jsonl, {t['lines']:,} lines of {{\"text\":\"x\"}}", "—", "—", "—", f"{t['seconds']:.2f} s", "—",
                  f"{t['peak_mib']} MiB", "< 300 MiB", met(t["met"])])
    print_table(f"ingest: {res['records']:,} records of JSONL, one commit — {run_summary(res)}",
                ("side", "records/s", "vs sqlite", "per CPU-s (vs sqlite)", "time", "close", "peak RSS", "target",
                 "met?"), table,
                left=("side", "target"))
    print(f"the CLI row is the whole command (start-up {res['cli_startup_s']:.2f} s of it: `capsule --version`); "
          f"the others run from opening the input to the durable commit, `close` timed apart; records per "
          f"CPU-second (user + sys) is the steadier figure on a busy machine, but leaves out fsync waits")
    write_results(res, args.out)
    return 0


def _version(dist: str) -> str | None:
    from _common import dist_version

    return dist_version(dist)


if __name__ == "__main__":
    sys.exit(main())
