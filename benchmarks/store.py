#!/usr/bin/env python3
"""Storage benchmark: capsule side by side with SQLite, in one run.

    .venv/bin/python benchmarks/store.py [--quick] [--out PATH] [--profile] [--tmpdir DIR]

What it measures (the same records, the same commit sizes, for both systems):

* append throughput (records/s) for commits of 1, 100 and 10,000 records; for
  commits of 1 also the per-commit wall and CPU time of each side, and what the
  disk itself charges for one small write + ``fdatasync`` at the end of a growing
  file (a capsule's append) and in place (SQLite's WAL once it wraps), measured
  in the same run: the floor each side's commit sits on;
* open time to a usable store (open, count, one lookup by id) at 10k, 100k and
  1M records, in-process (median of several) and in fresh processes;
* verify throughput (MB/s of file) on a ~1 GB file: capsule deep/structural
  verify against SQLite ``integrity_check``/``quick_check``;
* a cProfile of one 10,000-record commit, of the largest open and of the
  structural verify (top entries in the JSON; ``--profile`` prints them).

SQLite runs with ``journal_mode=WAL`` and ``synchronous=FULL`` (one fsync of
the WAL per commit, like capsule's one fsync per commit) on a table
``(id TEXT PRIMARY KEY, body TEXT)`` holding one JSON row per record; its id is
the SHA-256 of the body and rows go in with ``INSERT OR IGNORE``, so both
systems pay for content addressing and dedupe.

Every figure is taken with a warm page cache (the files were just written and
this script does not drop caches). It prints one table and writes JSON
(default ``benchmarks/results/store.json``, a git-ignored folder). ``--quick``
shrinks every size so the whole run is a smoke test of well under a minute.
"""

from __future__ import annotations

import cProfile
import functools
import hashlib
import itertools
import json
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    MB,
    RESULTS,
    T0_NS,
    arg_parser,
    child_cmd,
    child_json,
    environment,
    file_bytes,
    finish,
    fmt_ms,
    header,
    interleave,
    log,
    met,
    print_table,
    print_top,
    run_summary,
    scratch_dir,
    top_entries,
    write_results,
)

import capsule

DEFAULT_OUT = RESULTS / "store.json"

# A record is (text, tags, meta, time): exactly what tx.remember() takes, and
# what the SQLite side serialises as one JSON body.
Rec = tuple[str, list[str], dict[str, Any], int]


@dataclass(frozen=True)
class Config:
    quick: bool
    append_total: int  # records for commits of 10,000
    append_single: int  # records for commits of 1 (one fsync each: kept small)
    append_hundred: int  # records for commits of 100
    open_sizes: tuple[int, ...]
    open_repeats: int  # in-process opens per size (median reported)
    fresh_repeats: int  # fresh-process opens per size (median reported)
    verify_bytes: int  # target on-disk size of the capsule that verify reads
    build_batch: int = 10_000

    @staticmethod
    def make(quick: bool) -> Config:
        if quick:
            return Config(True, 100_000, 400, 10_000, (10_000, 100_000), 5, 2, 100 * MB)
        # Commits of 1 cost one fsync each (~0.3-4 ms here): 2,000 is plenty.
        return Config(False, 100_000, 2_000, 100_000, (10_000, 100_000, 1_000_000), 10, 5, 1_000 * MB)


# --- records -----------------------------------------------------------------------

_SUBJ = ("the user", "the build server", "the staging database", "our CI pipeline", "the on-call engineer",
         "the deploy script", "the customer", "the API gateway", "the nightly job", "the payments service",
         "the search cluster", "the mobile app")
_VERB = ("prefers", "requires", "was migrated to", "fails when given", "should be restarted after",
         "reports errors about", "is owned by", "depends on", "was last seen using", "needs approval for")
_OBJ = ("metric units in every report", "Postgres 16 with pgvector enabled", "a 30 second timeout on outbound calls",
        "the blue-green rollout on Fridays", "two-factor auth for all admin actions", "UTC timestamps in log lines",
        "the eu-west-1 region read replica", "a retry budget of three attempts", "short answers with code samples",
        "read-only credentials in staging")
_TAGS = ("prefs", "infra", "deploy", "db", "oncall", "security", "billing", "ux", "ci", "incident", "customer", "perf")
_SRC = ("chat", "tool", "doc", "review")
_PROJ = ("OPS", "INC", "SEC", "BILL", "WEB", "DATA")
_SYL = ("ka", "ro", "mi", "ten", "dal", "ver", "su", "pli", "gon", "ar", "el", "bes", "tor", "nu", "qua",
        "sim", "lo", "ped", "ri", "cha", "fen", "mo", "zu", "ban", "tis", "or", "wal", "ge")


@functools.cache
def _vocab() -> tuple[list[str], list[float]]:
    """30k pseudo-words with Zipf weights: text with roughly the statistics of
    prose, so zstd sees realistic redundancy (~0.23 ratio per 1 MB frame),
    not the ~0.1 of a handful of templates."""
    r = random.Random(99)
    words = sorted({"".join(r.choices(_SYL, k=r.choice((1, 2, 2, 3, 3, 4)))) for _ in range(30_000)})
    r.shuffle(words)
    return words, list(itertools.accumulate(1 / (i + 1) for i in range(len(words))))


class MemoryGen:
    """A deterministic stream of agent memories of ~230 encoded bytes: ~150
    chars of text (a templated fact plus free words and a ticket number), 2-3
    tags and a two-entry meta map.

    Every record is unique (the text carries its ordinal), so content
    addressing never collapses two of them and both systems store every row.
    """

    def __init__(self, seed: int = 1, *, free_words: tuple[int, int] = (6, 9), session_every: int = 0) -> None:
        self.rng = random.Random(seed)
        self.i = 0
        self.free_words = free_words  # how many free words follow the templated fact
        self.session_every = session_every  # >0: meta also names a session of this many records

    def take(self, n: int) -> list[Rec]:
        r, out = self.rng, []
        words, cum = _vocab()
        lo, hi = self.free_words
        for _ in range(n):
            i = self.i
            subj = r.choice(_SUBJ)
            free = " ".join(r.choices(words, cum_weights=cum, k=r.randint(lo, hi)))
            text = (f"{subj[:1].upper()}{subj[1:]} {r.choice(_VERB)} {r.choice(_OBJ)}: {free} "
                    f"({r.choice(_PROJ)}-{r.randrange(100_000)}, #{i}).")
            tags = r.sample(_TAGS, r.choice((2, 3)))
            meta: dict[str, object] = {"src": r.choice(_SRC)}
            if self.session_every:
                meta["session"] = i // self.session_every
            meta["turn"] = r.randrange(1, 500)
            out.append((text, tags, meta, T0_NS + i * 1_000))
            self.i += 1
        return out


class DocGen:
    """Large records (2-4 KB of random words) for the ~1 GB verify file.

    Texts are slices of a pool of random words far bigger than one 1 MB
    RECORDS frame, so zstd finds word statistics (~0.4 ratio) but no long
    repeats: the file on disk really is about as big as we ask for.
    """

    def __init__(self, seed: int = 2, pool_words: int = 5_000_000) -> None:
        r = random.Random(seed)
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        weights = (12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1)
        vocab = sorted({"".join(r.choices(letters, weights, k=r.randint(2, 10))) for _ in range(30_000)})
        self.pool = " ".join(r.choices(vocab, k=pool_words))
        self.seed = seed

    def batches(self, batch: int) -> Iterator[list[Rec]]:
        """Endless batches; restartable: each call replays the same stream."""
        r = random.Random(self.seed + 1)
        pool, top, i = self.pool, len(self.pool) - 4_100, 0
        while True:
            out: list[Rec] = []
            for _ in range(batch):
                off = r.randrange(top)
                text = f"doc {i}: " + pool[off : off + r.randint(2_000, 4_000)]
                meta = {"src": "doc", "part": i % 50}
                out.append((text, r.sample(_TAGS, 2), meta, T0_NS + i * 1_000))
                i += 1
            yield out


def json_body(rec: Rec) -> str:
    """The SQLite row body: the same fields capsule stores, as compact JSON."""
    text, tags, meta, t = rec
    return json.dumps({"kind": "memory", "meta": meta, "tags": sorted(tags), "text": text, "time": t},
                      separators=(",", ":"), sort_keys=True)


def record_sizes(recs: list[Rec]) -> dict[str, float]:
    """Average stored sizes: capsule's canonical msgpack map (what a memory
    with these fields encodes to, spec 7.1) and the SQLite JSON body."""
    from capsule.format.canonical import encode

    enc = [len(encode({"kind": "memory", "meta": m, "tags": sorted(g), "text": t, "time": ts}))
           for t, g, m, ts in recs]
    return {"capsule_encoded_bytes_avg": round(statistics.fmean(enc), 1),
            "capsule_encoded_bytes_min": min(enc), "capsule_encoded_bytes_max": max(enc),
            "text_chars_avg": round(statistics.fmean(len(r[0]) for r in recs), 1),
            "sqlite_json_body_bytes_avg": round(statistics.fmean(len(json_body(r)) for r in recs), 1)}


# --- the two stores ------------------------------------------------------------------


def capsule_append(cap: capsule.Capsule, recs: list[Rec]) -> str:
    """One commit of ``recs``; returns the id of the first record."""
    first = ""
    with cap.commit() as tx:
        for text, tags, meta, t in recs:
            rid = tx.remember(text, tags=tags, meta=meta, time=t)
            first = first or rid
    return first


def sqlite_create(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE mem (id TEXT PRIMARY KEY, body TEXT)")
    return con


def sqlite_append(con: sqlite3.Connection, recs: list[Rec]) -> str:
    """One transaction of ``recs`` (JSON + SHA-256 id each); returns the first id."""
    rows = []
    for rec in recs:
        body = json_body(rec)
        rows.append((hashlib.sha256(body.encode()).hexdigest(), body))
    con.execute("BEGIN")
    con.executemany("INSERT OR IGNORE INTO mem (id, body) VALUES (?, ?)", rows)
    con.execute("COMMIT")
    return rows[0][0]


# --- append ------------------------------------------------------------------------------


def bench_append(tmp: Path, recs: list[Rec], batch: int, blocks: int = 8) -> dict[str, Any]:
    """Records/s for commits of ``batch``; every commit is durable when its call
    returns. The clock covers the commits only (not create/close).

    The two stores are fed in alternating blocks of commits (who goes first
    alternates too), so a slow patch of the disk or a noisy neighbour hits
    both systems alike instead of whichever happened to run then.
    """
    n = len(recs)
    chunks = [recs[s : s + batch] for s in range(0, n, batch)]
    cp, sp = tmp / f"append-{batch}.capsule", tmp / f"append-{batch}.sqlite"
    cap = capsule.create(cp)
    con = sqlite_create(sp)
    spent = {"capsule": 0.0, "sqlite": 0.0}
    cpu = {"capsule": 0.0, "sqlite": 0.0}  # this process's user + sys time: the CPU side of a commit
    rates: dict[str, list[float]] = {"capsule": [], "sqlite": []}

    def feed(kind: str, part: list[list[Rec]]) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        for c in part:
            if kind == "capsule":
                capsule_append(cap, c)
            else:
                sqlite_append(con, c)
        dt = time.perf_counter() - t0
        cpu[kind] += time.process_time() - c0
        spent[kind] += dt
        rates[kind].append(sum(map(len, part)) / dt)

    try:
        for span, order in interleave(len(chunks), blocks, ("capsule", "sqlite")):
            for kind in order:
                feed(kind, chunks[span.start : span.stop])
        assert len(cap) == n, (len(cap), n)
        assert con.execute("SELECT count(*) FROM mem").fetchone()[0] == n
    finally:
        cap.close()
        con.close()
    out: dict[str, Any] = {"batch": batch, "records": n, "commits": len(chunks),
                           "interleaved_blocks": len(rates["capsule"])}
    for kind, path in (("capsule", cp), ("sqlite", sp)):
        out[f"{kind}_s"] = round(spent[kind], 4)
        out[f"{kind}_rps"] = round(n / spent[kind])
        out[f"{kind}_cpu_us_per_commit"] = round(cpu[kind] / len(chunks) * 1e6, 1)
        out[f"{kind}_block_rps"] = [round(r) for r in rates[kind]]
        out[f"{kind}_bytes"] = file_bytes(path)
    for p in tmp.glob("append-*"):
        p.unlink()
    return out


def bench_sync_floor(tmp: Path, n: int, size: int = 400) -> dict[str, Any]:
    """What the disk charges a durable commit of one small record, whoever writes it: µs per
    ``pwrite`` of ``size`` bytes + ``fdatasync``, median of interleaved blocks, (a) at the end of
    a growing file (a capsule's append: the file's size changes, so the journal commits an inode
    update too) and (b) over bytes already in the file (SQLite's WAL once it wraps after a
    checkpoint: the size stays). The gap is why commits of one record cannot reach SQLite's rate
    here; the capsule's remaining per-commit time is its own Python."""
    import os

    grow, over = tmp / "sync-grow.bin", tmp / "sync-over.bin"
    fds = {"append": os.open(grow, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644),
           "overwrite": os.open(over, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)}
    buf, block = b"r" * size, max(50, n // 10)
    os.pwrite(fds["overwrite"], b"\0" * (size * block), 0)
    os.fsync(fds["overwrite"])
    at = {"append": 0, "overwrite": 0}
    times: dict[str, list[float]] = {"append": [], "overwrite": []}
    try:
        for span, order in interleave(n, 10, ("append", "overwrite")):
            for kind in order:
                fd = fds[kind]
                t0 = time.perf_counter()
                for _ in range(span.stop - span.start):
                    os.pwrite(fd, buf, at[kind])
                    os.fdatasync(fd)
                    at[kind] = at[kind] + size if kind == "append" else (at[kind] + size) % (size * block)
                times[kind].append((time.perf_counter() - t0) / (span.stop - span.start))
    finally:
        for fd in fds.values():
            os.close(fd)
        grow.unlink()
        over.unlink()
    return {"bytes": size, "ops": n, **{f"{k}_us": round(statistics.median(v) * 1e6, 1) for k, v in times.items()}}


# --- open ----------------------------------------------------------------------------------


def build_pair(tmp: Path, n: int, batch: int) -> dict[str, Any]:
    """Build an n-record capsule and SQLite db (commits of ``batch``, each batch
    generated once and fed to both); keep them for this run. The probe id is
    the first record of the middle commit."""
    cp, sp = tmp / f"open-{n}.capsule", tmp / f"open-{n}.sqlite"
    mid = (n // 2) // batch
    gen = MemoryGen(seed=11)
    ids = {"capsule": "", "sqlite": ""}
    spent = {"capsule": 0.0, "sqlite": 0.0}
    cap = capsule.create(cp)
    con = sqlite_create(sp)
    try:
        for k in range(0, n, batch):
            recs = gen.take(min(batch, n - k))
            for kind in ("capsule", "sqlite"):
                t0 = time.perf_counter()
                rid = capsule_append(cap, recs) if kind == "capsule" else sqlite_append(con, recs)
                spent[kind] += time.perf_counter() - t0
                if k // batch == mid:
                    ids[kind] = rid
        assert len(cap) == n
    finally:
        t0 = time.perf_counter()
        cap.close()  # writes a final INDEX when one is due: part of the build
        spent["capsule"] += time.perf_counter() - t0
        con.close()
    return {"n": n, "capsule_path": cp, "sqlite_path": sp, "capsule_id": ids["capsule"],
            "sqlite_id": ids["sqlite"], "capsule_bytes": file_bytes(cp), "sqlite_bytes": file_bytes(sp),
            "capsule_build_s": round(spent["capsule"], 2), "sqlite_build_s": round(spent["sqlite"], 2)}


def capsule_open_once(path: Path, rid: str, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    cap = capsule.open(path)
    t1 = time.perf_counter()
    got = len(cap)
    t2 = time.perf_counter()
    m = cap.get(rid)
    t3 = time.perf_counter()
    cap.close()
    assert got == n and m.id == rid
    return {"total": t3 - t0, "open": t1 - t0, "count": t2 - t1, "get": t3 - t2}


def sqlite_open_once(path: Path, rid: str, n: int) -> dict[str, float]:
    t0 = time.perf_counter()
    con = sqlite3.connect(path)
    t1 = time.perf_counter()
    got = con.execute("SELECT count(*) FROM mem").fetchone()[0]
    t2 = time.perf_counter()
    row = con.execute("SELECT body FROM mem WHERE id = ?", (rid,)).fetchone()
    rec = json.loads(row[0])  # a usable record object, as cap.get() returns
    t3 = time.perf_counter()
    con.close()
    assert got == n and rec["kind"] == "memory"
    return {"total": t3 - t0, "open": t1 - t0, "count": t2 - t1, "get": t3 - t2}


def fresh_open(kind: str, path: Path, rid: str, n: int) -> dict[str, float]:
    """One open in a fresh interpreter; ``import_s`` is the import of this module (and capsule)."""
    return child_json(child_cmd("store", f"{kind}_open_once", {"path": str(path), "rid": rid, "n": n}))


def _ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 3)


def bench_open(pair: dict[str, Any], repeats: int, fresh: int) -> dict[str, Any]:
    n = pair["n"]
    res: dict[str, Any] = {"records": n}
    for kind, fn in (("capsule", capsule_open_once), ("sqlite", sqlite_open_once)):
        path, rid = pair[f"{kind}_path"], pair[f"{kind}_id"]
        fn(path, rid, n)  # warm-up: lazy imports, first mmap
        runs = [fn(path, rid, n) for _ in range(repeats)]
        fr = [fresh_open(kind, path, rid, n) for _ in range(fresh)]
        res[kind] = {
            "file_bytes": pair[f"{kind}_bytes"], "build_s": pair[f"{kind}_build_s"],
            "in_process_median_ms": _ms([r["total"] for r in runs]),
            "in_process_ms": [round(r["total"] * 1000, 3) for r in runs],
            "in_process_breakdown_median_ms": {k: _ms([r[k] for r in runs]) for k in ("open", "count", "get")},
            "fresh_process_median_ms": _ms([r["total"] for r in fr]),
            "fresh_process_ms": [round(r["total"] * 1000, 3) for r in fr],
            "fresh_process_breakdown_median_ms": {k: _ms([r[k] for r in fr]) for k in ("open", "count", "get")},
            "fresh_process_import_median_ms": _ms([r["import_s"] for r in fr]),
        }
    return res


# --- verify ----------------------------------------------------------------------------------


def bench_verify(tmp: Path, target: int, batch: int) -> dict[str, Any]:
    """Build a ~``target``-byte capsule of large records, verify it deep and
    structural; then the same records in SQLite, integrity_check/quick_check.
    Each file is deleted as soon as it has been measured."""
    docs = DocGen()
    cp = tmp / "verify.capsule"
    t0 = time.perf_counter()
    n = 0
    with capsule.create(cp) as cap:
        for recs in docs.batches(batch):
            capsule_append(cap, recs)
            n += len(recs)
            if cap.size >= target:
                break
    build_s = time.perf_counter() - t0
    size = cp.stat().st_size
    res: dict[str, Any] = {"records": n, "capsule_bytes": size,
                           "capsule_build_s": round(build_s, 2)}
    for label, deep in (("deep", True), ("structural", False)):
        t0 = time.perf_counter()
        rep = capsule.verify(cp, deep=deep)
        dt = time.perf_counter() - t0
        assert rep.ok and rep.records == n, rep.to_dict()
        res[f"capsule_{label}_s"] = round(dt, 3)
        res[f"capsule_{label}_mbps"] = round(size / dt / MB, 1)
        res[f"capsule_{label}_rps"] = round(n / dt)
    prof = cProfile.Profile()
    prof.enable()
    capsule.verify(cp, deep=False)
    prof.disable()
    res["profile_structural"] = {"records": n, "top_by_tottime": top_entries(prof, 20)}
    cp.unlink()
    sp = tmp / "verify.sqlite"
    con = sqlite_create(sp)
    t0 = time.perf_counter()
    done = 0
    for recs in docs.batches(batch):
        sqlite_append(con, recs[: n - done])
        done += min(len(recs), n - done)
        if done >= n:
            break
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # measure a settled db file
    con.close()
    res["sqlite_build_s"] = round(time.perf_counter() - t0, 2)
    ssize = file_bytes(sp)
    res["sqlite_bytes"] = ssize
    for label, pragma in (("deep", "integrity_check"), ("structural", "quick_check")):
        con = sqlite3.connect(sp)
        t0 = time.perf_counter()
        out = con.execute(f"PRAGMA {pragma}").fetchall()
        dt = time.perf_counter() - t0
        con.close()
        assert out == [("ok",)], out
        res[f"sqlite_{label}_s"] = round(dt, 3)
        res[f"sqlite_{label}_mbps"] = round(ssize / dt / MB, 1)
        res[f"sqlite_{label}_rps"] = round(n / dt)
    for p in tmp.glob("verify.*"):
        p.unlink()
    return res


# --- profiles ----------------------------------------------------------------------------------


def profile_append(tmp: Path, batch: int) -> dict[str, Any]:
    """cProfile one commit of ``batch`` records into a capsule already holding
    nine such commits (so dedupe checks and index merges are in steady state)."""
    gen = MemoryGen(seed=21)
    cp = tmp / "profile.capsule"
    cap = capsule.create(cp)
    try:
        for _ in range(9):
            capsule_append(cap, gen.take(batch))
        recs = gen.take(batch)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        capsule_append(cap, recs)
        prof.disable()
        wall = time.perf_counter() - t0
    finally:
        cap.close()
        cp.unlink()
    return {"records": batch, "wall_ms_under_profiler": round(wall * 1000, 1), "top_by_tottime": top_entries(prof, 20)}


def profile_open(pair: dict[str, Any]) -> dict[str, Any]:
    path, rid, n = pair["capsule_path"], pair["capsule_id"], pair["n"]
    capsule_open_once(path, rid, n)  # same warm state as the timed opens
    prof = cProfile.Profile()
    prof.enable()
    r = capsule_open_once(path, rid, n)
    prof.disable()
    return {"records": n, "wall_ms_under_profiler": {k: round(v * 1000, 2) for k, v in r.items()},
            "top_by_tottime": top_entries(prof, 20)}


# --- report --------------------------------------------------------------------------------------


def _fmt(v: float | None, unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "ms":
        return fmt_ms(v)
    if unit == "MB/s":
        return f"{v:,.0f} MB/s"
    return f"{v:,.0f}/s"


def build_table(res: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def row(metric: str, c: str, s: str, target: str, ok: bool | None) -> None:
        rows.append({"metric": metric, "capsule": c, "sqlite": s, "target": target, "met": met(ok)})

    for a in res["append"]:
        b, n, c, s = a["batch"], a["records"], a["capsule_rps"], a["sqlite_rps"]
        label = f"append rec/s, {b:,}/commit ({n:,} recs)"
        if b >= 10_000:
            row(label, _fmt(c), _fmt(s), "≥ ½ sqlite", c >= s / 2)
            row(f"append rec/s, {b:,}/commit — aim", _fmt(c), "", "≥ 200,000/s", c >= 200_000)
        else:
            row(label, _fmt(c), _fmt(s), "≥ sqlite", c >= s)
        if b == 1 and "sync_floor" in res:
            f = res["sync_floor"]
            row("  per commit of 1 (µs)", f"{1e6 / c:,.0f}", f"{1e6 / s:,.0f}", "", None)
            row("  of which the disk: write + fdatasync (µs)", f"{f['append_us']:,.0f} (append)",
                f"{f['overwrite_us']:,.0f} (in place)", "", None)
            row("  CPU per commit, user + sys (µs)", f"{a['capsule_cpu_us_per_commit']:,.0f}",
                f"{a['sqlite_cpu_us_per_commit']:,.0f}", "", None)
    opens = res["open"]
    small, big = opens[0], opens[-1]
    for how, key in (("in-process median", "in_process_median_ms"), ("fresh process median", "fresh_process_median_ms")):
        for o in opens:
            n = o["records"]
            c, s = o["capsule"][key], o["sqlite"][key]
            if o is big:
                lim = 3 * small["capsule"][key]
                row(f"open+count+get {n:,} ({how})", _fmt(c, "ms"), _fmt(s, "ms"),
                    f"≤ 3× {small['records'] // 1000}k = {lim:,.1f} ms", c <= lim)
            else:
                row(f"open+count+get {n:,} ({how})", _fmt(c, "ms"), _fmt(s, "ms"), "", None)
    v = res["verify"]
    gb = v["capsule_bytes"] / 1e9
    row(f"verify deep, {gb:.2f} GB capsule (sqlite: integrity_check)",
        _fmt(v["capsule_deep_mbps"], "MB/s"), _fmt(v["sqlite_deep_mbps"], "MB/s"), "", None)
    row("verify structural (sqlite: quick_check)", _fmt(v["capsule_structural_mbps"], "MB/s"),
        _fmt(v["sqlite_structural_mbps"], "MB/s"), "≥ 200 MB/s", v["capsule_structural_mbps"] >= 200)
    return rows


def _need_bytes(cfg: Config) -> int:
    # verify: capsule then SQLite (~2.6x, the text is stored uncompressed), one
    # at a time; plus the open-test pairs (~0.6 KB/record for both together).
    return int(2.8 * cfg.verify_bytes + 700 * sum(cfg.open_sizes) + 200 * MB)


def run(cfg: Config, tmp: Path, do_profile: bool) -> dict[str, Any]:
    started = time.time()
    res = header(cfg.quick, started, environment(tmp))
    recs = MemoryGen(seed=1).take(cfg.append_total)
    res["record"] = record_sizes(recs[:2_000])
    res["append"] = []
    for batch, n in ((1, cfg.append_single), (100, cfg.append_hundred), (10_000, cfg.append_total)):
        log(f"append: {n:,} records in commits of {batch:,} (capsule, then sqlite)")
        res["append"].append(bench_append(tmp, recs[:n], batch))
        if batch == 1:
            log("append: what one write + fdatasync costs on this disk (growing file, and in place)")
            res["sync_floor"] = bench_sync_floor(tmp, n)
    del recs
    res["open"] = []
    pairs = []
    for n in cfg.open_sizes:
        log(f"open: building {n:,}-record capsule and sqlite db")
        pair = build_pair(tmp, n, cfg.build_batch)
        pairs.append(pair)
        log(f"open: timing {n:,} ({cfg.open_repeats} in-process + {cfg.fresh_repeats} fresh-process opens each)")
        res["open"].append(bench_open(pair, cfg.open_repeats, cfg.fresh_repeats))
    res["profile"] = {}
    log("profile: one 10,000-record commit; the largest open")
    res["profile"]["append_commit"] = profile_append(tmp, cfg.build_batch)
    res["profile"]["open"] = profile_open(pairs[-1])
    for pair in pairs:  # free the disk before the big verify files
        for p in tmp.glob(f"open-{pair['n']}.*"):
            p.unlink()
    log(f"verify: building a ~{cfg.verify_bytes / 1e9:.1f} GB capsule, then the same records in sqlite")
    res["verify"] = bench_verify(tmp, cfg.verify_bytes, cfg.build_batch)
    res["profile"]["verify_structural"] = res["verify"].pop("profile_structural")
    finish(res, started)
    res["table"] = build_table(res)
    if do_profile:
        for name, p in res["profile"].items():
            print(f"\n== profile: {name} ({p['records']:,} records) ==")
            print_top(p["top_by_tottime"], 12)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "small sizes: a smoke test of under a minute")
    ap.add_argument("--profile", action="store_true", help="also print the top cProfile entries")
    args = ap.parse_args(argv)
    cfg = Config.make(args.quick)
    base = args.tmpdir or Path(tempfile.gettempdir())
    need, free = _need_bytes(cfg), shutil.disk_usage(base).free
    if free < need:
        print(f"store.py: error: need ~{need / 1e9:.1f} GB free in {base}, have {free / 1e9:.1f} GB",
              file=sys.stderr)
        return 2
    with scratch_dir("capsule-bench-", base) as tmp:
        res = run(cfg, tmp, args.profile)
    print_table(f"capsule vs SQLite (WAL, synchronous=FULL) — {run_summary(res)}",
                ("metric", "capsule", "sqlite", "target", "met?"), res["table"],
                cols=("metric", "capsule", "sqlite", "target", "met"), left=("metric", "target"))
    v = res["verify"]
    print(f"commits of 1 use fewer records (one fsync each) for both systems; open = open + count + "
          f"one get of a mid-history id; warm page cache; MB = 10^6 bytes of each system's own file "
          f"(SQLite stores the same {v['records']:,} records in {v['sqlite_bytes'] / v['capsule_bytes']:.1f}x "
          f"the bytes: verify records/s capsule {v['capsule_deep_rps']:,} deep / "
          f"{v['capsule_structural_rps']:,} structural, sqlite {v['sqlite_deep_rps']:,} / "
          f"{v['sqlite_structural_rps']:,})")
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
