#!/usr/bin/env python3
"""Verify benchmark: deep ``verify`` throughput beside SQLite's ``PRAGMA integrity_check``.

    .venv/bin/python benchmarks/verify.py [--quick] [--records N] [--reps N] [--out PATH] [--tmpdir DIR]

Three capsules of deterministic records, in commits of 10,000, each closed as a
writer closes it (so they carry what a capsule in use carries: INDEX tables, the
lexical snapshot, and with embeddings the vector index snapshot):

* ``text``: N memories of ~230 encoded bytes (``store.py``'s ``MemoryGen``: text,
  2-3 tags, a two-entry meta, a time);
* ``vectors``: the same, every tenth with a 384-d float32 embedding (index built);
* ``docs``: N/10 records of 2-4 KB of text (``store.py``'s ``DocGen``, the records
  of its ~1 GB verify row).

The same records go into SQLite (WAL, ``synchronous=FULL``, one row ``(id TEXT
PRIMARY KEY, body TEXT, emb BLOB)`` per record, id the SHA-256 of the row, the
file settled with ``wal_checkpoint(TRUNCATE)``), whose ``integrity_check`` is the
peer of a deep verify and ``quick_check`` of ``verify --quick``. Rows, for each
capsule, sides taking turns and the median of ``--reps`` rounds reported:

* deep ``capsule.verify`` in-process, the bulk path (``verifier/fast.py``) and the
  reference walk it replaces (``fast.BULK = False``: what verify did before), in
  MB/s of the file and records/s; and how much of the bulk path's time went to
  checking the snapshots against the records (16.3, 16.8: the vector and lexical
  checks, timed by wrapping them) beside the MB/s of everything else;
* ``capsule verify`` (deep) and ``--quick`` as processes (start-up included),
  against a Python process that runs the PRAGMA.

Each row gives MB/s of wall time and MB per CPU-second (user + sys: steadier when
the machine is shared), and records/s.

It prints one table and writes JSON (default ``benchmarks/results/verify.json``).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    MB,
    RESULTS,
    arg_parser,
    dist_version,
    environment,
    file_bytes,
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
from store import DocGen, MemoryGen, json_body

import capsule
from capsule.search import lexcheck
from capsule.verifier import check, fast

DEFAULT_OUT = RESULTS / "verify.json"
CAPSULE_BIN = Path(sys.executable).with_name("capsule")
GOAL_MBPS = 200  # deep verify, MB/s of the file (issue #14)
DIM, EVERY, BATCH = 384, 10, 10_000

Rec = tuple[str, list[str], dict[str, Any], int]


# --- the data -------------------------------------------------------------------------------


def _records(kind: str, n: int) -> Iterator[list[tuple[Rec, np.ndarray | None]]]:
    """Batches of (record, embedding or None), the same stream for both stores."""
    rng = np.random.default_rng(7)
    if kind == "docs":
        done = 0
        for batch in DocGen(pool_words=1_000_000).batches(min(BATCH, n)):
            yield [(r, None) for r in batch[: n - done]]
            done += len(batch)
            if done >= n:
                return
    gen = MemoryGen()
    for start in range(0, n, BATCH):
        recs = gen.take(min(BATCH, n - start))
        yield [(r, (rng.standard_normal(DIM).astype(np.float32) if kind == "vectors" and (start + i) % EVERY == 0
                    else None)) for i, r in enumerate(recs)]


def build(kind: str, n: int, tmp: Path) -> dict[str, Any]:
    cp, sp = tmp / f"{kind}.capsule", tmp / f"{kind}.sqlite"
    con = sqlite3.connect(sp, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE mem (id TEXT PRIMARY KEY, body TEXT NOT NULL, emb BLOB)")
    records = 0
    with capsule.create(cp) as cap:
        if kind == "vectors":
            cap.configure_vectors(dim=DIM)
        for batch in _records(kind, n):
            with cap.commit() as tx:
                tx.put_many([{"text": t, "tags": g, "meta": m, "time": ts} | ({} if e is None else {"embedding": e})
                             for (t, g, m, ts), e in batch])
            rows = []
            for rec, e in batch:
                body = json_body(rec)
                blob = None if e is None else e.tobytes()
                rows.append((hashlib.sha256(body.encode() + (blob or b"")).hexdigest(), body, blob))
            con.execute("BEGIN")
            con.executemany("INSERT OR IGNORE INTO mem VALUES (?, ?, ?)", rows)
            con.execute("COMMIT")
            records += len(batch)
        if kind == "vectors":
            cap.build_index()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return {"kind": kind, "records": records, "capsule": cp, "sqlite": sp, "capsule_bytes": file_bytes(cp),
            "sqlite_bytes": file_bytes(sp)}


# --- the sides ------------------------------------------------------------------------------------


@contextmanager
def _timed(owner: Any, name: str, acc: list[float]) -> Iterator[None]:
    """Add the time spent in ``owner.name`` to ``acc[0]`` while the block runs."""
    real = getattr(owner, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            acc[0] += time.perf_counter() - t0

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, real)


def lib_verify(path: Path, bulk: bool) -> dict[str, float]:
    """Deep verify in this process; with the seconds spent checking snapshots (16.3, 16.8)."""
    snap = [0.0]
    old = fast.BULK
    fast.BULK = bulk
    try:
        with _timed(lexcheck.LexicalCheck, "check", snap), _timed(check.VectorEntries, "check", snap), \
                _timed(check.VectorIndex, "decode", snap):
            t0, c0 = time.perf_counter(), time.process_time()
            rep = capsule.verify(path)
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        fast.BULK = old
    if not rep.ok:
        raise RuntimeError(f"verify reports the file unsound: {rep.first_error}")
    return {"seconds": dt, "cpu_s": cpu, "snapshots_s": snap[0]}


def sqlite_check(path: Path, pragma: str) -> dict[str, float]:
    con = sqlite3.connect(path)
    t0, c0 = time.perf_counter(), time.process_time()
    out = con.execute(f"PRAGMA {pragma}").fetchall()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    con.close()
    if out != [("ok",)]:
        raise RuntimeError(f"{pragma}: {out}")
    return {"seconds": dt, "cpu_s": cpu}


def process(cmd: list[str]) -> dict[str, float]:
    """Wall time and CPU time (user + sys) of a command run to its end."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert p.stderr is not None
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    p.stderr.close()
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}: {err.decode().strip()}")
    return {"seconds": dt, "cpu_s": usage.ru_utime + usage.ru_stime}


def _sqlite_process(path: Path, pragma: str) -> list[str]:
    code = (f"import sqlite3, sys; out = sqlite3.connect(sys.argv[1]).execute('PRAGMA {pragma}').fetchall(); "
            "sys.exit(out != [('ok',)])")
    return [sys.executable, "-c", code, str(path)]


# --- the run ------------------------------------------------------------------------------------------


def measure(b: dict[str, Any], reps: int) -> dict[str, Any]:
    cp, sp = b["capsule"], b["sqlite"]
    sides: dict[str, Callable[[], dict[str, float]]] = {
        "lib_bulk": lambda: lib_verify(cp, True),
        "lib_reference": lambda: lib_verify(cp, False),
        "sqlite_integrity": lambda: sqlite_check(sp, "integrity_check"),
        "cli_deep": lambda: process([str(CAPSULE_BIN), "verify", str(cp)]),
        "cli_quick": lambda: process([str(CAPSULE_BIN), "verify", "--quick", str(cp)]),
        "sqlite_integrity_process": lambda: process(_sqlite_process(sp, "integrity_check")),
        "sqlite_quick_process": lambda: process(_sqlite_process(sp, "quick_check")),
    }
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for r in range(reps):
        for name in rotated(list(sides), r):
            runs[name].append(sides[name]())
        log(f"{b['kind']}: round {r + 1}: bulk {runs['lib_bulk'][-1]['seconds']:.2f} s, reference "
            f"{runs['lib_reference'][-1]['seconds']:.2f} s, integrity_check {runs['sqlite_integrity'][-1]['seconds']:.2f} s")
    med = {k: statistics.median(x["seconds"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu_s"] for x in v) for k, v in runs.items()}
    snap = statistics.median(x["snapshots_s"] for x in runs["lib_bulk"])
    cb, sb, n = b["capsule_bytes"], b["sqlite_bytes"], b["records"]
    out = {"kind": b["kind"], "records": n, "capsule_bytes": cb, "sqlite_bytes": sb, "seconds": med,
           "cpu_s": cpu, "runs": runs, "snapshots_s": snap}
    out["mbps"] = {k: round((sb if k.startswith("sqlite") else cb) / v / MB, 1) for k, v in med.items()}
    out["mb_per_cpu_s"] = {k: round((sb if k.startswith("sqlite") else cb) / v / MB, 1) for k, v in cpu.items()}
    out["records_per_s"] = {k: round(n / v) for k, v in med.items()}
    rest = med["lib_bulk"] - snap
    out["mbps"]["lib_bulk_without_snapshots"] = round(cb / rest / MB, 1) if rest > 0 else None
    return out


def run(quick: bool, n: int, reps: int, tmp: Path) -> dict[str, Any]:
    rows = []
    for kind in ("text", "vectors", "docs"):
        count = max(1, n // 10) if kind == "docs" else n
        log(f"{kind}: building {count:,} records in a capsule and in SQLite")
        b = build(kind, count, tmp)
        log(f"{kind}: capsule {b['capsule_bytes'] / MB:.1f} MB, SQLite {b['sqlite_bytes'] / MB:.1f} MB")
        rows.append(measure(b, reps))
        for p in tmp.glob(f"{kind}.*"):
            p.unlink()
    return {"records": n, "rows": rows}


ROWS = (  # (key, label, peer key)
    ("lib_bulk", "deep, in-process", "sqlite_integrity"),
    ("lib_reference", "  reference walk (before)", "sqlite_integrity"),
    ("lib_bulk_without_snapshots", "  deep less snapshot checks", "sqlite_integrity"),
    ("cli_deep", "`capsule verify` process", "sqlite_integrity_process"),
    ("cli_quick", "`verify --quick` process", "sqlite_quick_process"),
)


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "5k records, one round: a smoke test")
    ap.add_argument("--records", type=int, default=None, help="records per capsule (default 100k; 5k with --quick)")
    ap.add_argument("--reps", type=int, default=None, help="rounds of every side (default 3, 1 with --quick)")
    args = ap.parse_args(argv)
    n = args.records or (5_000 if args.quick else 100_000)
    reps = args.reps or (1 if args.quick else 3)
    started = time.time()
    with scratch_dir("capsule-bench-verify-", args.tmpdir) as tmp:
        env = environment(tmp, {"msgspec": dist_version("msgspec")}, sources=True)
        res = header(args.quick, started, env, reps=reps)
        res.update(run(args.quick, n, reps, tmp))
    finish(res, started)
    table = []
    for r in res["rows"]:
        for i, (key, label, peer) in enumerate(ROWS):
            v, pv = r["mbps"].get(key), r["mbps"][peer]
            rps = r["records_per_s"].get(key)
            goal = v >= GOAL_MBPS if key == "lib_bulk" and v is not None else None
            what = ("" if i > 1 else f"{r['kind']}, {r['records']:,} records" if i == 0 else
                    f"{r['capsule_bytes'] / MB:.1f} MB (sqlite {r['sqlite_bytes'] / MB:.1f})")
            c, pc = r["mb_per_cpu_s"].get(key), r["mb_per_cpu_s"][peer]
            table.append([what, label, "—" if v is None else f"{v:,.1f}", "—" if c is None else f"{c:,.1f}",
                          "—" if rps is None else f"{rps:,}", f"{pv:,.1f} / {pc:,.1f}",
                          "—" if v is None else f"{v / pv:.2f}x", met(goal)])
        table.append(["", f"  snapshots: {r['snapshots_s']:.2f} of {r['seconds']['lib_bulk']:.2f} s", "", "", "", "",
                      "", ""])
    print_table(f"verify: MB/s of the file (goal: deep >= {GOAL_MBPS}) — {run_summary(res)}",
                ("capsule", "row", "MB/s", "MB/CPU-s", "records/s", "sqlite (per CPU-s)", "vs sqlite", "met?"),
                table, width=150,
                left=("capsule", "row"))
    print("MB/s is wall time, MB/CPU-s user + sys time (steadier on a busy machine); "
          "sqlite: PRAGMA integrity_check (quick_check beside --quick), in-process or as a Python process; "
          "each capsule carries its INDEX tables and snapshots (lexical; vector with embeddings), which a deep "
          "verify checks against the records (16.3, 16.8): `snapshots` is the time those checks took")
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
