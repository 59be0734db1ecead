#!/usr/bin/env python3
"""Checkpoint benchmark: capsule's signed checkpoints side by side with LangGraph's SqliteSaver.

    .venv/bin/python benchmarks/checkpoints.py [--quick] [--out PATH] [--profile] [--tmpdir DIR]

Needs ``langgraph-checkpoint-sqlite`` (``pip install langgraph-checkpoint-sqlite``).

One run builds, step by step, a capsule of 100,000 memory records with 1,000
checkpoints (each step: one commit of 100 records, then one checkpoint signed
with a single Ed25519 key) and, interleaved with it, a LangGraph SqliteSaver
thread holding the same 1,000 states (each ``put`` stores a checkpoint whose
channel values are the step number and the 100 records added since the
previous one: id, text, tags, meta, time). Then it measures:

* the cost of a checkpoint: ``cap.checkpoint()`` (state root + sign + commit
  + fsync) and the whole step (100-record commit + checkpoint, two fsyncs)
  against ``saver.put`` (serialise + one SQLite transaction);
* opening at the oldest, middle and newest checkpoint: ``capsule.open(path,
  at=label)`` then the view's ``.state_root``; SqliteSaver: connect +
  ``get_tuple(config with checkpoint_id)``, then rebuilding the full state at
  that checkpoint from its delta and every older one (``list(before=...)``)
  and hashing its sorted ids. Medians in-process and in fresh processes;
* the full state as JSON at the newest checkpoint: ``cap.state().to_json()``
  and the CLI ``capsule state FILE --json`` in a subprocess, against the same
  rebuild + ``json.dumps`` in-process and in a fresh ``python -c``.

The two layouts differ on purpose: a capsule checkpoint signs the *whole*
state (every record so far), while each SqliteSaver row holds only a 100-record
delta, so SqliteSaver's ``get_tuple`` alone returns 100 records, never the
state; the "+ state" rows add what it takes to get the state back. SQLite runs
with SqliteSaver's own settings (WAL; synchronous left at the connection
default, recorded in the JSON), so every ``put`` is durable when it returns,
like every capsule commit. Page cache is warm. It prints one table and writes
JSON (default ``benchmarks/results/checkpoints.json``, a git-ignored folder);
``--quick`` (10,000 records, 100 checkpoints) is a smoke test well under 30 s.
"""

from __future__ import annotations

import cProfile
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    arg_parser,
    child_json,
    dist_version,
    environment,
    file_bytes,
    finish,
    fmt_ms,
    header,
    log,
    met,
    print_table,
    print_top,
    rotated,
    scratch_dir,
    top_entries,
    write_results,
)
from store import MemoryGen, Rec, capsule_append, json_body

import capsule

try:
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver
except ImportError:  # reported by main(): this benchmark has no fallback
    SqliteSaver = None  # type: ignore[assignment,misc]

DEFAULT_OUT = RESULTS / "checkpoints.json"
THREAD = "bench"
THREAD_CFG: dict[str, Any] = {"configurable": {"thread_id": THREAD, "checkpoint_ns": ""}}
LG_PACKAGES = ("langgraph-checkpoint-sqlite", "langgraph-checkpoint")


@dataclass(frozen=True)
class Config:
    quick: bool
    records: int
    checkpoints: int
    open_repeats: int  # in-process opens per (system, checkpoint); median reported
    fresh_repeats: int  # fresh-process opens per (system, checkpoint)
    state_repeats: int  # in-process state-as-JSON runs
    cli_repeats: int  # subprocess state-as-JSON runs

    @property
    def per(self) -> int:
        return self.records // self.checkpoints

    @staticmethod
    def make(quick: bool) -> Config:
        if quick:
            return Config(True, 10_000, 100, 5, 2, 2, 1)
        return Config(False, 100_000, 1_000, 9, 5, 3, 3)


def label_of(k: int) -> str:
    return f"ck-{k:05d}"


def ids_root(ids: list[bytes]) -> str:
    """The SqliteSaver side's state root: SHA-256 over the count and sorted ids,
    the same construction (and so the same work) as capsule's 13.1 root."""
    srt = sorted(ids)
    h = hashlib.sha256(b"bench-state-root\0")
    h.update(len(srt).to_bytes(8, "little"))
    h.update(b"".join(srt))
    return h.hexdigest()


# --- LangGraph SqliteSaver side ------------------------------------------------------------


def lg_memories(recs: list[Rec]) -> list[dict[str, Any]]:
    """The 100 records of a step as SqliteSaver channel values. Each id is the
    SHA-256 of the record's JSON body, so both systems pay for content ids."""
    out = []
    for rec in recs:
        text, tags, meta, t = rec
        out.append({"id": hashlib.sha256(json_body(rec).encode()).hexdigest(), "text": text,
                    "tags": sorted(tags), "meta": meta, "time": t})
    return out


def lg_put(saver: Any, parent: dict[str, Any], step: int, recs: list[Rec],
           versions: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """One LangGraph checkpoint of this step's delta, stored the way a graph run
    stores one: create_checkpoint + put (one SQLite transaction, durable on return)."""
    base = empty_checkpoint()
    base["channel_values"] = {"step": step, "memories": lg_memories(recs)}
    new_versions = {ch: saver.get_next_version(versions.get(ch), None) for ch in ("step", "memories")}
    versions.update(new_versions)
    base["channel_versions"] = dict(versions)
    ck = create_checkpoint(base, None, step)
    cfg = saver.put(parent, ck, {"source": "loop", "step": step, "parents": {}}, new_versions)
    return cfg, [m["id"] for m in base["channel_values"]["memories"]]


def lg_config(ck_id: str | None) -> dict[str, Any]:
    c = dict(THREAD_CFG["configurable"])
    if ck_id is not None:
        c["checkpoint_id"] = ck_id
    return {"configurable": c}


def lg_state_at(saver: Any, tup: Any) -> list[dict[str, Any]]:
    """Every record of the state at checkpoint ``tup``: its delta plus every older
    delta (SqliteSaver lists newest first), oldest record first."""
    deltas = [tup.checkpoint, *(t.checkpoint for t in saver.list(THREAD_CFG, before=tup.config))]
    return [m for c in reversed(deltas) for m in c["channel_values"]["memories"]]


def sqlite_open_once(path: Path, ck_id: str, expect_root: str) -> dict[str, float]:
    t0 = time.perf_counter()
    saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    tup = saver.get_tuple(lg_config(ck_id))
    t1 = time.perf_counter()
    root = ids_root([bytes.fromhex(m["id"]) for m in lg_state_at(saver, tup)])
    t2 = time.perf_counter()
    saver.conn.close()
    assert tup.config["configurable"]["checkpoint_id"] == ck_id and root == expect_root
    return {"open": t1 - t0, "state_root": t2 - t1, "total": t2 - t0}


def sqlite_get_once(path: Path, ck_id: str) -> float:
    """connect + get_tuple only: what reading one stored checkpoint back costs."""
    t0 = time.perf_counter()
    saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    tup = saver.get_tuple(lg_config(ck_id))
    dt = time.perf_counter() - t0
    saver.conn.close()
    assert tup.config["configurable"]["checkpoint_id"] == ck_id
    return dt


def sqlite_state_json(path: Path, expect_root: str) -> tuple[dict[str, float], int]:
    """Newest state as one JSON document (the analogue of ``capsule state --json``)."""
    t0 = time.perf_counter()
    saver = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    tup = saver.get_tuple(THREAD_CFG)  # no checkpoint_id: the latest
    t1 = time.perf_counter()
    mems = lg_state_at(saver, tup)
    doc = {"state_root": ids_root([bytes.fromhex(m["id"]) for m in mems]), "records": len(mems),
           "memories": mems}
    t2 = time.perf_counter()
    js = json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=1)
    t3 = time.perf_counter()
    saver.conn.close()
    assert doc["state_root"] == expect_root
    return {"open": t1 - t0, "state": t2 - t1, "json": t3 - t2, "total": t3 - t0}, len(js)


# --- capsule side ------------------------------------------------------------------------------


def capsule_open_once(path: Path, label: str | None, expect_root: str) -> dict[str, float]:
    """open(at=label) (or the live file for None), then the view's state root."""
    t0 = time.perf_counter()
    cap = capsule.open(path, at=label) if label is not None else capsule.open(path)
    t1 = time.perf_counter()
    root = cap.state_root
    t2 = time.perf_counter()
    cap.close()
    assert root == expect_root, (label, root, expect_root)
    return {"open": t1 - t0, "state_root": t2 - t1, "total": t2 - t0}


def capsule_state_json(path: Path, expect_root: str) -> tuple[dict[str, float], int]:
    t0 = time.perf_counter()
    cap = capsule.open(path)
    t1 = time.perf_counter()
    st = cap.state()
    t2 = time.perf_counter()
    js = st.to_json()
    t3 = time.perf_counter()
    cap.close()
    assert st.root == expect_root
    return {"open": t1 - t0, "state": t2 - t1, "json": t3 - t2, "total": t3 - t0}, len(js)


class ReadCounter:
    """Counts os.pread calls and bytes while active (mmap'd table reads are not
    preads and cost no syscall). Patched globally, only around one measured
    call, in a pass that is not timed."""

    def __init__(self) -> None:
        self.calls = 0
        self.bytes = 0
        self._orig = os.pread

    def __enter__(self) -> ReadCounter:
        orig = self._orig

        def pread(fd: int, n: int, off: int) -> bytes:
            out = orig(fd, n, off)
            self.calls += 1
            self.bytes += len(out)
            return out

        os.pread = pread
        return self

    def __exit__(self, *exc: object) -> None:
        os.pread = self._orig

    def take(self) -> dict[str, int]:
        out = {"preads": self.calls, "bytes": self.bytes}
        self.calls = self.bytes = 0
        return out


def capsule_phases(path: Path, label: str, rc: ReadCounter | None = None) -> dict[str, Any]:
    """Where ``open(path, at=label)`` + ``.state_root`` spends its time, phase by
    phase, through the same calls ``open(at=)`` makes (read-only internals).
    With ``rc`` (an active :class:`ReadCounter`) it also says what each phase read."""
    from capsule.format.file import ReadHandle
    from capsule.format.scan import replay

    reads: dict[str, dict[str, int]] = {}

    def mark(name: str) -> float:
        if rc is not None:
            reads[name] = rc.take()
        return time.perf_counter()

    t0 = mark("before")
    live = capsule.open(path)  # tail -> last COMMIT -> its INDEX -> replay the frames after it
    t1 = mark("load_live")
    ck = live.find_checkpoint(label)  # label -> CHECKPOINT frame
    t2 = mark("find_checkpoint")
    assert ck is not None
    c = live.commit_of(ck)  # CHECKPOINT frame -> the COMMIT that made it durable
    t3 = mark("commit_of")
    h = ReadHandle(path)
    snap = replay(h, live._snap.header, c)  # that commit's INDEX + every frame after it up to the commit
    t4 = mark("replay")
    view = capsule.Capsule(path, h, snap, "r", live.clock)
    root = view.state_root  # table ids + replayed ids, merged, sorted, hashed
    t5 = mark("state_root")
    assert root == ck.body.state_root.hex()
    reads.pop("before", None)
    out: dict[str, Any] = {
        "load_live_ms": _ms1(t1 - t0), "find_checkpoint_ms": _ms1(t2 - t1), "commit_of_ms": _ms1(t3 - t2),
        "replay_ms": _ms1(t4 - t3), "state_root_ms": _ms1(t5 - t4), "total_ms": _ms1(t5 - t0),
        "view_commit": c.commits, "live_commits": live.commit_count, "view_commit_has_index": c.index is not None,
        "record_tables": len(snap.segments), "ids_in_tables": sum(s.ref.count for s in snap.segments),
        "records_replayed": len(snap.mem), "frames_replayed": snap.frames_since_index,
        "label_tables": len(getattr(live._snap, "labels", ())), "records": len(view)}
    if rc is not None:
        out["reads"] = reads
    view.close()
    live.close()
    return out


def phases_best(path: Path, label: str) -> dict[str, Any]:
    """:func:`capsule_phases`, best of 5 after a warm-up, plus what each phase read
    (counted in a separate pass: counting costs time)."""
    capsule_phases(path, label)
    ph = min((capsule_phases(path, label) for _ in range(5)), key=lambda r: r["total_ms"])
    with ReadCounter() as rc:
        ph["reads"] = capsule_phases(path, label, rc)["reads"]
    return ph


# --- fresh processes ----------------------------------------------------------------------------

# Self-contained children: each imports only what its system needs (timed apart
# from the work) and never this file, so a process's wall time is its own.
_CHILD_CAPSULE_OPEN = r"""
import json, sys, time
sys.dont_write_bytecode = True
t0 = time.perf_counter()
import capsule
t1 = time.perf_counter()
cap = capsule.open(sys.argv[1], at=sys.argv[2])
t2 = time.perf_counter()
root = cap.state_root
t3 = time.perf_counter()
cap.close()
assert root == sys.argv[3], (root, sys.argv[3])
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "state_root": t3 - t2, "total": t3 - t1}))
"""

_CHILD_SQLITE_OPEN = r"""
import json, sys, time
sys.dont_write_bytecode = True
t0 = time.perf_counter()
import hashlib, sqlite3
from langgraph.checkpoint.sqlite import SqliteSaver
t1 = time.perf_counter()
thread = {"configurable": {"thread_id": sys.argv[2], "checkpoint_ns": ""}}
saver = SqliteSaver(sqlite3.connect(sys.argv[1], check_same_thread=False))
tup = saver.get_tuple({"configurable": {**thread["configurable"], "checkpoint_id": sys.argv[3]}})
t2 = time.perf_counter()
deltas = [tup.checkpoint, *(t.checkpoint for t in saver.list(thread, before=tup.config))]
ids = sorted(bytes.fromhex(m["id"]) for c in deltas for m in c["channel_values"]["memories"])
h = hashlib.sha256(b"bench-state-root\0")
h.update(len(ids).to_bytes(8, "little"))
h.update(b"".join(ids))
t3 = time.perf_counter()
saver.conn.close()
assert h.hexdigest() == sys.argv[4]
print(json.dumps({"import": t1 - t0, "open": t2 - t1, "state_root": t3 - t2, "total": t3 - t1}))
"""

# `capsule state FILE --json` for SqliteSaver: the newest state as one JSON document.
_CHILD_SQLITE_STATE = r"""
import hashlib, json, sqlite3, sys
sys.dont_write_bytecode = True
from langgraph.checkpoint.sqlite import SqliteSaver
thread = {"configurable": {"thread_id": sys.argv[2], "checkpoint_ns": ""}}
saver = SqliteSaver(sqlite3.connect(sys.argv[1], check_same_thread=False))
tup = saver.get_tuple(thread)
deltas = [tup.checkpoint, *(t.checkpoint for t in saver.list(thread, before=tup.config))]
mems = [m for c in reversed(deltas) for m in c["channel_values"]["memories"]]
ids = sorted(bytes.fromhex(m["id"]) for m in mems)
h = hashlib.sha256(b"bench-state-root\0")
h.update(len(ids).to_bytes(8, "little"))
h.update(b"".join(ids))
doc = {"state_root": h.hexdigest(), "records": len(mems), "memories": mems}
sys.stdout.write(json.dumps(doc, sort_keys=True, ensure_ascii=False, indent=1) + "\n")
"""


def fresh(code: str, *args: str) -> dict[str, float]:
    t0 = time.perf_counter()
    r = child_json([sys.executable, "-c", code, *args])
    r["process_wall"] = time.perf_counter() - t0
    return r


def capsule_cli() -> list[str]:
    exe = Path(sys.executable).parent / "capsule"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("capsule")
    if found is None:
        raise SystemExit("checkpoints.py: error: the `capsule` CLI is not installed (pip install -e .)")
    return [found]


def timed_to_file(cmd: list[str], out: Path) -> float:
    """Wall time of a command whose stdout goes to a file (as `> state.json` would)."""
    with out.open("wb") as f:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.PIPE)
        return time.perf_counter() - t0


# --- build: the write benchmark ------------------------------------------------------------------


def build(cfg: Config, tmp: Path) -> dict[str, Any]:
    """Write both histories step by step; time every capsule commit, checkpoint and
    SqliteSaver put. Who goes first alternates each step, so a slow patch of the
    disk hits both systems alike."""
    cp, sp = tmp / "bench.capsule", tmp / "bench.sqlite"
    key = capsule.generate_key()
    cap = capsule.create(cp)
    # A second capsule runs the fused agent step: records + checkpoint in ONE commit
    # (tx.checkpoint), one fdatasync per step, as an agent loop would.
    fused = capsule.create(tmp / "fused.capsule")
    t_fused: list[float] = []
    saver = SqliteSaver(sqlite3.connect(sp, check_same_thread=False))
    saver.setup()  # the one-time schema is not a put's cost
    synchronous = saver.conn.execute("PRAGMA synchronous").fetchone()[0]
    journal = saver.conn.execute("PRAGMA journal_mode").fetchone()[0]
    gen = MemoryGen(seed=7)
    t_commit: list[float] = []
    t_ckpt: list[float] = []
    t_put: list[float] = []
    lg_ids: dict[int, str] = {}
    cap_roots: dict[int, str] = {}
    sqlite_record_ids: list[bytes] = []
    versions: dict[str, str] = {}
    parent: dict[str, Any] = THREAD_CFG
    n = cfg.checkpoints
    every = max(1, n // 10)
    try:
        for k in range(1, n + 1):
            recs = gen.take(cfg.per)
            for who in rotated(("capsule", "sqlite"), k - 1):
                if who == "capsule":
                    t0 = time.perf_counter()
                    capsule_append(cap, recs)
                    t1 = time.perf_counter()
                    ck = cap.checkpoint(label_of(k), key=key)
                    t2 = time.perf_counter()
                    t_commit.append(t1 - t0)
                    t_ckpt.append(t2 - t1)
                    cap_roots[k] = ck.body.state_root.hex()
                    t0 = time.perf_counter()
                    with fused.commit() as tx:
                        for text, tags, meta, t in recs:
                            tx.remember(text, tags=tags, meta=meta, time=t)
                        tx.checkpoint(label_of(k), key=key)
                    t_fused.append(time.perf_counter() - t0)
                else:
                    t0 = time.perf_counter()
                    parent, ids = lg_put(saver, parent, k, recs, versions)
                    t_put.append(time.perf_counter() - t0)
                    lg_ids[k] = parent["configurable"]["checkpoint_id"]
                    sqlite_record_ids.extend(bytes.fromhex(i) for i in ids)
            if k % every == 0:
                log(f"build: {k:,}/{n:,} checkpoints ({k * cfg.per:,} records)")
        assert len(cap) == cfg.records and len(sqlite_record_ids) == cfg.records
        commits_before_close = cap.commit_count
    finally:
        fused.close()
        cap.close()  # may write a final INDEX commit (no records): the newest checkpoint is unchanged
        saver.conn.close()
    with capsule.open(cp) as live:
        commits_after_close = live.commit_count
        live_root = live.state_root
    picks = {"oldest": 1, "middle": max(1, n // 2), "newest": n}
    return {"cap_roots": cap_roots, "lg_ids": lg_ids,
        "capsule_path": cp, "sqlite_path": sp, "key": key, "key_id": key.public_key.key_id,
        "sqlite_pragmas": {"journal_mode": journal, "synchronous": synchronous},
        "t_commit": t_commit, "t_ckpt": t_ckpt, "t_put": t_put, "t_fused": t_fused,
        "picks": {name: {"step": k, "label": label_of(k), "sqlite_checkpoint_id": lg_ids[k],
                         "capsule_state_root": cap_roots[k],
                         "sqlite_state_root": ids_root(sqlite_record_ids[: k * cfg.per])}
                  for name, k in picks.items()},
        "capsule_live_root": live_root,
        "capsule_commits": commits_after_close, "close_wrote_index_commit": commits_after_close > commits_before_close,
        "capsule_bytes": file_bytes(cp), "sqlite_bytes": file_bytes(sp),
    }


# --- stats ------------------------------------------------------------------------------------------


def _ms1(s: float) -> float:
    return round(s * 1000, 3)


def _pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    srt = sorted(xs)
    return srt[min(len(srt) - 1, max(0, round(q / 100 * len(srt)) - 1))]


def dist(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "mean_ms": _ms1(statistics.fmean(xs)), "p50_ms": _ms1(_pct(xs, 50)),
            "p99_ms": _ms1(_pct(xs, 99)), "max_ms": _ms1(max(xs)), "total_s": round(sum(xs), 4),
            "per_s": round(len(xs) / sum(xs), 1)}


def med(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: _ms1(statistics.median(r[k] for r in runs)) for k in runs[0]}


def growth(xs: list[float], parts: int = 10) -> list[float]:
    """Mean per tenth of the run (ms): shows a cost that grows with the capsule."""
    step = max(1, len(xs) // parts)
    return [_ms1(statistics.fmean(xs[i : i + step])) for i in range(0, len(xs), step)][:parts]


# --- the measurements ----------------------------------------------------------------------------------


def bench_write(b: dict[str, Any]) -> dict[str, Any]:
    steps = [c + k for c, k in zip(b["t_commit"], b["t_ckpt"], strict=True)]
    return {"capsule_checkpoint": dist(b["t_ckpt"]), "capsule_commit_100": dist(b["t_commit"]),
            "capsule_step": dist(steps), "capsule_fused_step": dist(b["t_fused"]), "sqlite_put": dist(b["t_put"]),
            "capsule_checkpoint_mean_ms_by_tenth": growth(b["t_ckpt"]),
            "sqlite_put_mean_ms_by_tenth": growth(b["t_put"])}


def bench_open(b: dict[str, Any], cfg: Config) -> dict[str, Any]:
    cp, sp = b["capsule_path"], b["sqlite_path"]
    picks = b["picks"]
    runs: dict[str, dict[str, list[dict[str, float]]]] = {"capsule": {}, "sqlite": {}}

    def one(who: str, name: str) -> dict[str, float]:
        p = picks[name]
        if who == "capsule":
            return capsule_open_once(cp, p["label"], p["capsule_state_root"])
        return sqlite_open_once(sp, p["sqlite_checkpoint_id"], p["sqlite_state_root"])

    log(f"open: {cfg.open_repeats} in-process opens per system x {list(picks)}")
    for who in runs:
        for name in picks:
            one(who, name)  # warm-up: lazy imports, first reads
            runs[who][name] = []
    # Round-robin: every round opens every (system, checkpoint) once.
    for _ in range(cfg.open_repeats):
        for who in runs:
            for name in picks:
                runs[who][name].append(one(who, name))
    live = [capsule_open_once(cp, None, b["capsule_live_root"]) for _ in range(cfg.open_repeats)]
    log(f"open: {cfg.fresh_repeats} fresh-process opens per system x {list(picks)}")
    fr: dict[str, dict[str, list[dict[str, float]]]] = {"capsule": {n: [] for n in picks},
                                                         "sqlite": {n: [] for n in picks}}
    for _ in range(cfg.fresh_repeats):
        for name, p in picks.items():
            fr["capsule"][name].append(fresh(_CHILD_CAPSULE_OPEN, str(cp), p["label"], p["capsule_state_root"]))
            fr["sqlite"][name].append(fresh(_CHILD_SQLITE_OPEN, str(sp), THREAD, p["sqlite_checkpoint_id"],
                                            p["sqlite_state_root"]))
    return {"in_process_median_ms": {w: {n: med(r) for n, r in d.items()} for w, d in runs.items()},
            "fresh_process_median_ms": {w: {n: med(r) for n, r in d.items()} for w, d in fr.items()},
            "capsule_live_open_median_ms": med(live),
            "in_process_total_ms": {w: {n: [_ms1(x["total"]) for x in r] for n, r in d.items()}
                                    for w, d in runs.items()}}


def bench_sweep(b: dict[str, Any], cfg: Config, newest: dict[str, dict[str, float]]) -> dict[str, Any]:
    """"Any checkpoint", literally: open at every checkpoint once (capsule: open(at=)
    and + state root; SqliteSaver: connect + get_tuple), then re-measure the five
    slowest of each (median of ``open_repeats``) so one noisy run cannot decide
    the verdict. ``newest`` holds the medians measured by :func:`bench_open`."""
    cp, sp, n = b["capsule_path"], b["sqlite_path"], cfg.checkpoints
    log(f"sweep: open at each of the {n:,} checkpoints (both systems), then the slowest again")
    c_open: dict[int, float] = {}
    c_total: dict[int, float] = {}
    s_open: dict[int, float] = {}
    for k in range(1, n + 1):
        r = capsule_open_once(cp, label_of(k), b["cap_roots"][k])
        c_open[k], c_total[k] = r["open"], r["total"]
        s_open[k] = sqlite_get_once(sp, b["lg_ids"][k])

    def summary(xs: dict[int, float]) -> dict[str, Any]:
        v = list(xs.values())
        return {"p50_ms": _ms1(_pct(v, 50)), "p99_ms": _ms1(_pct(v, 99)), "max_ms": _ms1(max(v)),
                "min_ms": _ms1(min(v)), "slowest": label_of(max(xs, key=xs.__getitem__))}

    def recheck(xs: dict[int, float], fn: Callable[[int], float]) -> dict[str, float]:
        worst = sorted(xs, key=xs.__getitem__)[-5:]
        return {label_of(k): _ms1(statistics.median(fn(k) for _ in range(cfg.open_repeats))) for k in worst}

    c_re_open = recheck(c_open, lambda k: capsule_open_once(cp, label_of(k), b["cap_roots"][k])["open"])
    c_re_total = recheck(c_total, lambda k: capsule_open_once(cp, label_of(k), b["cap_roots"][k])["total"])
    s_re_open = recheck(s_open, lambda k: sqlite_get_once(sp, b["lg_ids"][k]))
    worst_label = max(c_re_open, key=c_re_open.__getitem__)
    worst_phases = phases_best(cp, worst_label)
    return {
        "capsule_open": summary(c_open), "capsule_open_state_root": summary(c_total), "sqlite_get": summary(s_open),
        "capsule_open_slowest_rechecked_ms": c_re_open, "capsule_total_slowest_rechecked_ms": c_re_total,
        "sqlite_get_slowest_rechecked_ms": s_re_open,
        "capsule_open_worst_over_newest": round(max(c_re_open.values()) / newest["capsule"]["open"], 3),
        "capsule_total_worst_over_newest": round(max(c_re_total.values()) / newest["capsule"]["total"], 3),
        "sqlite_get_worst_over_newest": round(max(s_re_open.values()) / newest["sqlite"]["open"], 3),
        "capsule_worst_open_phases": {"label": worst_label, **worst_phases},
        "capsule_open_ms_by_checkpoint": [_ms1(c_open[k]) for k in range(1, n + 1)],
    }


def bench_state(b: dict[str, Any], cfg: Config, tmp: Path) -> dict[str, Any]:
    cp, sp = b["capsule_path"], b["sqlite_path"]
    newest = b["picks"]["newest"]
    log(f"state: {cfg.state_repeats} in-process runs per system (newest, {cfg.records:,} records)")
    cr, sr = [], []
    clen = slen = 0
    for _ in range(cfg.state_repeats):
        r, clen = capsule_state_json(cp, b["capsule_live_root"])
        cr.append(r)
        r, slen = sqlite_state_json(sp, newest["sqlite_state_root"])
        sr.append(r)
    log(f"state: {cfg.cli_repeats} CLI runs per system (`capsule state --json`, python -c for SqliteSaver)")
    cli, child = [], []
    out_c, out_s = tmp / "state-capsule.json", tmp / "state-sqlite.json"
    for _ in range(cfg.cli_repeats):
        cli.append(timed_to_file([*capsule_cli(), "state", str(cp), "--json"], out_c))
        child.append(timed_to_file([sys.executable, "-c", _CHILD_SQLITE_STATE, str(sp), THREAD], out_s))
    doc_c, doc_s = json.loads(out_c.read_text()), json.loads(out_s.read_text())
    assert doc_c["state_root"] == b["capsule_live_root"] and doc_c["records"] == cfg.records
    assert doc_s["state_root"] == newest["sqlite_state_root"] and doc_s["records"] == cfg.records
    res = {"capsule_library_median_ms": med(cr), "sqlite_library_median_ms": med(sr),
           "capsule_json_chars": clen, "sqlite_json_chars": slen,
           "capsule_cli_wall_ms": [_ms1(x) for x in cli], "capsule_cli_wall_median_ms": _ms1(statistics.median(cli)),
           "sqlite_child_wall_ms": [_ms1(x) for x in child],
           "sqlite_child_wall_median_ms": _ms1(statistics.median(child)),
           "cli_stdout_bytes": {"capsule": out_c.stat().st_size, "sqlite": out_s.stat().st_size}}
    out_c.unlink()
    out_s.unlink()
    return res


# --- profiles ------------------------------------------------------------------------------------------


def profile_all(b: dict[str, Any], cfg: Config, tmp: Path) -> dict[str, Any]:
    cp = b["capsule_path"]
    out: dict[str, Any] = {}
    log("profile: open at oldest/middle/newest phase by phase, cProfile of each, one checkpoint, state()")
    for name, p in b["picks"].items():
        out[f"phases_{name}"] = phases_best(cp, p["label"])
        prof = cProfile.Profile()
        prof.enable()
        capsule_open_once(cp, p["label"], p["capsule_state_root"])
        prof.disable()
        out[f"open_{name}"] = {"label": p["label"], "top_by_tottime": top_entries(prof, 15)}
    # One more step on a copy of the full capsule: what a checkpoint costs at this size.
    cp2 = tmp / "profile.capsule"
    shutil.copyfile(cp, cp2)
    with capsule.open(cp2, "a") as cap:
        capsule_append(cap, MemoryGen(seed=8).take(cfg.per))
        t0 = time.perf_counter()
        sr = cap.state_root
        t_root = time.perf_counter() - t0
        cap._state_root = None  # checkpoint() must pay for it again, as in the build loop
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        ck = cap.checkpoint("profile", key=b["key"])  # the keyset in force is the build key's
        prof.disable()
        wall = time.perf_counter() - t0
        assert ck.body.state_root.hex() == sr
        out["checkpoint"] = {"records": len(cap), "state_root_alone_ms": _ms1(t_root),
                             "wall_ms_under_profiler": _ms1(wall), "top_by_tottime": top_entries(prof, 15)}
    cp2.unlink()
    prof = cProfile.Profile()
    prof.enable()
    with capsule.open(cp) as cap:
        cap.state().to_json()
    prof.disable()
    out["state_json"] = {"top_by_tottime": top_entries(prof, 15)}
    return out


# --- report ------------------------------------------------------------------------------------------------


def _dist3(d: dict[str, float]) -> str:
    return f"{d['mean_ms']:.2f} / {d['p50_ms']:.2f} / {d['p99_ms']:.2f} ms"


def build_table(res: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def row(metric: str, c: str, s: str, target: str = "", ok: bool | None = None) -> None:
        rows.append({"metric": metric, "capsule": c, "sqlite": s, "target": target, "met": met(ok)})

    w = res["write"]
    per, nck = res["config"]["per"], res["config"]["checkpoints"]
    ck, step, put = w["capsule_checkpoint"], w["capsule_step"], w["sqlite_put"]
    row("checkpoint cost mean / p50 / p99 (capsule: checkpoint() = state root + sign + commit; sqlite: put)",
        _dist3(ck), _dist3(put))
    row("checkpoints/s: checkpoint() alone vs put", f"{ck['per_s']:,.0f}/s", f"{put['per_s']:,.0f}/s",
        "≥ sqlite put", ck["per_s"] >= put["per_s"])
    row(f"step mean / p50 / p99 (capsule: commit {per} recs + checkpoint; sqlite: put of the same {per})",
        _dist3(step), _dist3(put))
    row(f"steps/s: {per} records + checkpoint, both durable", f"{step['per_s']:,.0f}/s",
        f"{put['per_s']:,.0f}/s", "≥ sqlite put", step["per_s"] >= put["per_s"])
    fz = w["capsule_fused_step"]
    row(f"fused step mean / p50 / p99 (capsule: {per} recs + tx.checkpoint in one commit)", _dist3(fz), _dist3(put))
    row(f"fused steps/s: {per} records + checkpoint, one commit", f"{fz['per_s']:,.0f}/s",
        f"{put['per_s']:,.0f}/s", "≥ sqlite put", fz["per_s"] >= put["per_s"])
    g = w["capsule_checkpoint_mean_ms_by_tenth"]
    gs = w["sqlite_put_mean_ms_by_tenth"]
    row("checkpoint mean, first → last tenth of the run", f"{g[0]:.2f} → {g[-1]:.2f} ms",
        f"{gs[0]:.2f} → {gs[-1]:.2f} ms")
    row(f"file size ({res['config']['records']:,} records, {nck:,} checkpoints)",
        f"{res['files']['capsule_bytes'] / 1e6:,.1f} MB", f"{res['files']['sqlite_bytes'] / 1e6:,.1f} MB")
    o = res["open"]
    for how, key in (("in-process", "in_process_median_ms"), ("fresh process", "fresh_process_median_ms")):
        c, s = o[key]["capsule"], o[key]["sqlite"]
        for name in ("oldest", "middle", "newest"):
            row(f"open at {name} ({how} median; sqlite: connect + get_tuple)",
                fmt_ms(c[name]["open"]), fmt_ms(s[name]["open"]))
        worst_c = max(c["oldest"]["open"], c["middle"]["open"]) / c["newest"]["open"]
        worst_s = max(s["oldest"]["open"], s["middle"]["open"]) / s["newest"]["open"]
        row(f"open: slowest of oldest/middle ÷ newest ({how})", f"{worst_c:.2f}×", f"{worst_s:.2f}×",
            "≤ 2×", worst_c <= 2)
        for name in ("oldest", "newest"):
            row(f"open at {name} + state root ({how}; sqlite: + rebuild state from deltas, hash)",
                fmt_ms(c[name]["total"]), fmt_ms(s[name]["total"]))
        worst_c = max(c["oldest"]["total"], c["middle"]["total"]) / c["newest"]["total"]
        worst_s = max(s["oldest"]["total"], s["middle"]["total"]) / s["newest"]["total"]
        row(f"open + state root: slowest of oldest/middle ÷ newest ({how})", f"{worst_c:.2f}×",
            f"{worst_s:.2f}×", "≤ 2×", worst_c <= 2)
    sw = res["sweep"]
    co, cs, sg = sw["capsule_open"], sw["capsule_open_state_root"], sw["sqlite_get"]
    row(f"open at each of the {nck:,} checkpoints, p50 / p99 / max (one pass each)",
        f"{co['p50_ms']:.2f} / {co['p99_ms']:.2f} / {co['max_ms']:.2f} ms",
        f"{sg['p50_ms']:.2f} / {sg['p99_ms']:.2f} / {sg['max_ms']:.2f} ms")
    row("open: slowest checkpoint (5 slowest re-measured, median) ÷ newest",
        f"{sw['capsule_open_worst_over_newest']:.2f}× ({sw['capsule_worst_open_phases']['label']})",
        f"{sw['sqlite_get_worst_over_newest']:.2f}×", "≤ 2×", sw["capsule_open_worst_over_newest"] <= 2)
    row("open + state root at each checkpoint, p50 / max; slowest ÷ newest",
        f"{cs['p50_ms']:.1f} / {cs['max_ms']:.1f} ms; {sw['capsule_total_worst_over_newest']:.2f}×", "",
        "≤ 2×", sw["capsule_total_worst_over_newest"] <= 2)
    lv = o["capsule_live_open_median_ms"]
    row("capsule.open(path) without at= (+ state root), in-process median",
        f"{fmt_ms(lv['open'])} (+{fmt_ms(lv['state_root'])})", "")
    st = res["state"]
    row("state as JSON, newest, library (capsule: open + state().to_json())",
        fmt_ms(st["capsule_library_median_ms"]["total"]), fmt_ms(st["sqlite_library_median_ms"]["total"]))
    row("`capsule state FILE --json` subprocess wall (sqlite: python -c, same JSON)",
        fmt_ms(st["capsule_cli_wall_median_ms"]), fmt_ms(st["sqlite_child_wall_median_ms"]))
    return rows


def print_profile(p: dict[str, Any]) -> None:
    for name in ("oldest", "middle", "newest", "worst"):
        ph = p[f"phases_{name}"]
        print(f"\n== open at {name} + state_root, by phase (best of 5) ==")
        print("  " + ", ".join(f"{k}={v}" for k, v in ph.items() if k != "reads"))
        print("  reads: " + ", ".join(f"{k} {v['preads']}x/{v['bytes']:,} B" for k, v in ph["reads"].items()))
    for name, prof in p.items():
        if "top_by_tottime" not in prof:
            continue
        print(f"\n== cProfile: {name} ==")
        print_top(prof["top_by_tottime"], 10)


def run(cfg: Config, tmp: Path, do_profile: bool) -> dict[str, Any]:
    started = time.time()
    env = environment(tmp, {"langgraph": {p: dist_version(p) for p in LG_PACKAGES}}, sources=True)
    res = header(cfg.quick, started, env,
                 config={"records": cfg.records, "checkpoints": cfg.checkpoints, "per": cfg.per,
                         "open_repeats": cfg.open_repeats, "fresh_repeats": cfg.fresh_repeats,
                         "state_repeats": cfg.state_repeats, "cli_repeats": cfg.cli_repeats})
    log(f"build: {cfg.records:,} records, {cfg.checkpoints:,} checkpoints of {cfg.per} "
        f"(capsule and SqliteSaver, alternating)")
    b = build(cfg, tmp)
    res["files"] = {k: b[k] for k in ("capsule_bytes", "sqlite_bytes", "capsule_commits", "close_wrote_index_commit",
                                      "sqlite_pragmas", "key_id")}
    res["picks"] = b["picks"]
    res["write"] = bench_write(b)
    res["open"] = bench_open(b, cfg)
    res["sweep"] = bench_sweep(b, cfg, {w: d["newest"] for w, d in res["open"]["in_process_median_ms"].items()})
    res["state"] = bench_state(b, cfg, tmp)
    res["profile"] = profile_all(b, cfg, tmp)
    res["profile"]["phases_worst"] = res["sweep"]["capsule_worst_open_phases"]
    finish(res, started)  # also: did capsule/ change while fresh processes and the CLI imported it anew?
    res["table"] = build_table(res)
    if do_profile:
        print_profile(res["profile"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "10k records, 100 checkpoints: a smoke test under 30 s")
    ap.add_argument("--profile", action="store_true", help="also print the phase breakdowns and cProfile tops")
    args = ap.parse_args(argv)
    if SqliteSaver is None:
        print("checkpoints.py: error: needs LangGraph's SqliteSaver: pip install langgraph-checkpoint-sqlite",
              file=sys.stderr)
        return 2
    cfg = Config.make(args.quick)
    with scratch_dir("capsule-ckpt-bench-", args.tmpdir) as tmp:
        res = run(cfg, tmp, args.profile)
    env = res["environment"]
    title = (f"capsule checkpoints vs LangGraph SqliteSaver {env['langgraph']['langgraph-checkpoint-sqlite']} — "
             f"{res['mode']} run ({cfg.records:,} records, {cfg.checkpoints:,} checkpoints), {res['duration_s']} s, "
             f"Python {env['python']}, {env['cpu_count']} CPUs")
    print_table(title, ("metric", "capsule", "langgraph sqlite", "target", "met?"), res["table"],
                cols=("metric", "capsule", "sqlite", "target", "met"), left=("metric", "target"), width=140)
    pr = res["files"]["sqlite_pragmas"]
    print(f"capsule: 1 Ed25519 key, one durable sync per commit (a step is 2 commits); SqliteSaver: journal_mode="
          f"{pr['journal_mode']}, synchronous={pr['synchronous']}, one transaction per put. SqliteSaver rows hold "
          f"{cfg.per}-record deltas, so its state at a checkpoint is rebuilt from every older row; capsule "
          f"checkpoints sign the whole state. Medians; warm page cache.")
    if env["capsule_sources_changed_during_run"]:
        print("warning: files under capsule/ changed during the run; fresh-process and CLI figures may "
              "come from newer code than the in-process ones", file=sys.stderr)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
