#!/usr/bin/env python3
"""Sessions benchmark: what an agent that reopens its capsule often pays in file size.

    .venv/bin/python benchmarks/sessions.py [--quick] [--sessions N] [--per N] [--out PATH] [--tmpdir DIR]

An agent that restarts, is redeployed or runs one short process per step opens its
capsule, commits a few hundred records and closes it, over and over. Each close may
add derived data (an INDEX and its merged TABLE, 9.3; a lexical segment, 16.8) that
stays in the append-only file until ``capsule compact``. This writes the same
records (deterministic memories of ~20 words) in ``--sessions`` sessions of
``--per`` records each, three ways, and reports the file each leaves:

* ``capsule``: the writer's close policies as they are (16.8: a lexical segment
  waits for a share of what the newest one covers);
* ``fixed``: the lexical close policy of before 2026-12-05 (a segment from 256
  pending records), swapped in for the run;
* ``sqlite``: SQLite (WAL, ``synchronous=FULL``) with an FTS5 table, one
  transaction per session, the database settled with ``wal_checkpoint(TRUNCATE)``.

For each: total bytes and bytes per record, the capsule's bytes by frame type
(records, tables, index, snapshot blobs, commits), and the size after ``capsule
compact`` (the derived data written fresh). Then a fresh open and the first
lexical query, as a new process would pay them, against SQLite's connect and first
FTS5 query.

It prints one table and writes JSON (default ``benchmarks/results/sessions.json``).
"""

from __future__ import annotations

import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _common as cm

import capsule
from capsule.core import constants as C
from capsule.format.scan import Reader
from capsule.search import part

DEFAULT_OUT = cm.RESULTS / "sessions.json"
FRAMES = {C.FT_RECORDS: "records", C.FT_TABLE: "tables", C.FT_INDEX: "index", C.FT_BLOB: "snapshots",
          C.FT_COMMIT: "commits"}


def texts(sessions: int, per: int) -> Iterator[list[str]]:
    rnd = random.Random(7)
    words = [f"w{i}" for i in range(5000)]
    for _ in range(sessions):
        yield [" ".join(rnd.choices(words, k=20)) for _ in range(per)]


@contextmanager
def fixed_policies() -> Iterator[None]:
    """The lexical close policy of before 2026-12-05, for the ``fixed`` column."""
    saved = part.lexical_close_due
    part.lexical_close_due = lambda covered: part.LEX_SNAPSHOT_ON_CLOSE  # type: ignore[assignment]
    try:
        yield
    finally:
        part.lexical_close_due = saved  # type: ignore[assignment]


def write_capsule(path: Path, sessions: int, per: int) -> float:
    t0 = time.perf_counter()
    for i, batch in enumerate(texts(sessions, per)):
        opener: Callable[..., Any] = capsule.create if i == 0 else capsule.open
        with (opener(path) if i == 0 else opener(path, "a")) as cap, cap.commit() as tx:
            tx.put_many([{"text": t, "time": cm.T0_NS + i} for t in batch])
    return time.perf_counter() - t0


def write_sqlite(path: Path, sessions: int, per: int) -> float:
    t0 = time.perf_counter()
    for i, batch in enumerate(texts(sessions, per)):
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if i == 0:
            db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, text TEXT, time INTEGER)")
            db.execute("CREATE VIRTUAL TABLE f USING fts5(text, content='m', content_rowid='id')")
        with db:  # one transaction a session, as a capsule's one commit
            start = db.execute("SELECT coalesce(max(id), 0) FROM m").fetchone()[0]
            rows = [(start + 1 + j, t) for j, t in enumerate(batch)]
            db.executemany("INSERT INTO m (id, text, time) VALUES (?, ?, ?)", [(r, t, cm.T0_NS + i) for r, t in rows])
            db.executemany("INSERT INTO f (rowid, text) VALUES (?, ?)", rows)
        db.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return time.perf_counter() - t0


def by_frame(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    with capsule.open(path) as cap:
        s = cap._store
        snap = s.snap
        rd = Reader(s.h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
        for fh, _, _ in rd.frames():
            name = FRAMES.get(fh.ftype, "other")
            out[name] = out.get(name, 0) + fh.end - fh.offset
    return out


def first_query_capsule(path: Path) -> tuple[float, float]:
    cmd = cm.child_cmd("sessions", "_child_capsule", {"path": str(path)})
    r = cm.child_json(cmd)
    return r["open_ms"], r["query_ms"]


def _child_capsule(path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    cap = capsule.open(path)
    t1 = time.perf_counter()
    cap.search("w17 w23", k=5, mode="lexical")
    t2 = time.perf_counter()
    cap.close()
    return {"open_ms": (t1 - t0) * 1e3, "query_ms": (t2 - t1) * 1e3}


def first_query_sqlite(path: Path) -> tuple[float, float]:
    r = cm.child_json(cm.child_cmd("sessions", "_child_sqlite", {"path": str(path)}))
    return r["open_ms"], r["query_ms"]


def _child_sqlite(path: str) -> dict[str, float]:
    t0 = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("SELECT count(*) FROM m").fetchone()
    t1 = time.perf_counter()
    db.execute("SELECT rowid FROM f WHERE f MATCH 'w17 OR w23' ORDER BY bm25(f) LIMIT 5").fetchall()
    t2 = time.perf_counter()
    db.close()
    return {"open_ms": (t1 - t0) * 1e3, "query_ms": (t2 - t1) * 1e3}


def main(argv: list[str] | None = None) -> int:
    ap = cm.arg_parser(__doc__, DEFAULT_OUT, "20 sessions of 50 records: a smoke test")
    ap.add_argument("--sessions", type=int, default=None, help="sessions (default 400; --quick 20)")
    ap.add_argument("--per", type=int, default=None, help="records per session (default 150; --quick 50)")
    a = ap.parse_args(argv)
    sessions = a.sessions or (20 if a.quick else 400)
    per = a.per or (50 if a.quick else 150)
    if sessions < 1 or per < 1:
        ap.error("--sessions and --per must be at least 1")
    started = time.time()
    with cm.scratch_dir("capsule-bench-sessions-", a.tmpdir) as tmp:
        res = cm.header(a.quick, started, cm.environment(tmp, sources=True), sessions=sessions, per=per)
        n = sessions * per
        rows: dict[str, dict[str, Any]] = {}
        for side in ("capsule", "fixed"):
            cm.log(f"{side}: {sessions} sessions of {per} records")
            path = tmp / f"{side}.capsule"
            if side == "fixed":
                with fixed_policies():
                    secs = write_capsule(path, sessions, per)
            else:
                secs = write_capsule(path, sessions, per)
            size = path.stat().st_size
            compacted = tmp / f"{side}-compacted.capsule"
            capsule.compact(path, compacted)
            open_ms, query_ms = first_query_capsule(path)
            rows[side] = {"write_s": round(secs, 2), "bytes": size, "bytes_per_record": round(size / n, 1),
                          "by_frame": by_frame(path), "compacted_bytes": compacted.stat().st_size,
                          "open_ms": round(open_ms, 1), "first_query_ms": round(query_ms, 1)}
        cm.log(f"sqlite: {sessions} sessions of {per} records")
        db = tmp / "peer.sqlite"
        secs = write_sqlite(db, sessions, per)
        size = cm.file_bytes(db)
        open_ms, query_ms = first_query_sqlite(db)
        rows["sqlite"] = {"write_s": round(secs, 2), "bytes": size, "bytes_per_record": round(size / n, 1),
                          "open_ms": round(open_ms, 1), "first_query_ms": round(query_ms, 1)}
        res["rows"] = rows
        res["records"] = n
        cm.finish(res, started)
    c, f, s = rows["capsule"], rows["fixed"], rows["sqlite"]

    def mb(v: int) -> str:
        return f"{v / cm.MB:,.2f} MB"

    table = [["file", mb(c["bytes"]), mb(f["bytes"]), mb(s["bytes"])],
             ["bytes per record", f"{c['bytes_per_record']:,.0f}", f"{f['bytes_per_record']:,.0f}",
              f"{s['bytes_per_record']:,.0f}"]]
    for part_name in ("records", "tables", "index", "snapshots", "commits"):
        table.append([f"  {part_name}", mb(c["by_frame"].get(part_name, 0)), mb(f["by_frame"].get(part_name, 0)), ""])
    table += [["after `capsule compact`", mb(c["compacted_bytes"]), mb(f["compacted_bytes"]), ""],
              ["write time (all sessions)", f"{c['write_s']:.2f} s", f"{f['write_s']:.2f} s", f"{s['write_s']:.2f} s"],
              ["fresh open (process)", cm.fmt_ms(c["open_ms"]), cm.fmt_ms(f["open_ms"]), cm.fmt_ms(s["open_ms"])],
              ["first lexical query", cm.fmt_ms(c["first_query_ms"]), cm.fmt_ms(f["first_query_ms"]),
               cm.fmt_ms(s["first_query_ms"])]]
    cm.print_table(f"{sessions} sessions of {per} records ({n:,}) — {cm.run_summary(res)}",
                   ["", "capsule", "capsule, fixed close policy", "SQLite + FTS5"], table, left={""})
    cm.write_results(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
