#!/usr/bin/env python3
"""Lifecycle benchmark (issue 10): forget, expire, supersede and redact most of a capsule, then compact it.

    .venv/bin/python benchmarks/lifecycle.py [--records 100k] [--quick] [--out PATH]
                                             [--tmpdir DIR] [--keep DIR]

The scenario, at N records (default 100k; 1M only when ``--records 1M`` asks):

* N memories over N/100 commits (100 records a commit, through ``tx.put_many``),
  the same deterministic stream as ``scale.py`` (~200 bytes of text, tags, meta);
  every tenth carries a 384-d float32 embedding (a seeded NumPy generator, clustered
  unit vectors as in ``search.py``), a signed checkpoint halfway; then
  ``build_index()`` + ``close()``, so the file holds the vector snapshot and index
  tables a long-running agent would have.
* Their fates, drawn by a seeded permutation: 30% forgotten, 20% expired (written
  with a one-hour ``ttl``; their times are in 2023, so they are expired by any
  clock now), 20% superseded, 1% redacted, 29% left alone. The events go through
  the bulk path ``tx.lifecycle(op, drop=[ids], by=...)``: forget and redact
  events of up to 10,000 ids each, up to 50,000 ids a commit; supersedes in groups
  of 10 old memories replaced by one revised memory (the group's first text,
  revised; its vector if it had one), the replacement and its event in the same
  commit, 500 groups a commit. Then a second signed checkpoint. (``--keep
  checkpoints`` keeps what the halfway checkpoint's state needs: the dead records
  of the first half.)
* For each policy (``history``, ``checkpoints``, ``live``):
  ``capsule.compact(path, out=NEW, keep=POLICY)`` in a fresh process (import timed
  apart): its time and records/s (records of the source file, dead ones included,
  per second), bytes before and after, ``capsule open NEW --json`` as a process,
  search recall@10 of NEW against the uncompacted file's own live search (the
  same queries: vector queries from held-out embeddings of the same clusters,
  lexical ones of three words from live texts), and against a fresh capsule of
  the live records (the truth for them: the uncompacted file's BM25 statistics
  count its dead memories, 16.6, so its lexical ranking is not the live records'
  own), the revert records (lifecycle events) each file keeps (every policy keeps
  them, 15.1: the ids they name are most of what ``live`` holds beyond the fresh
  capsule), ``capsule verify NEW --parent
  OLD`` as a process; the size of NEW against a fresh capsule holding the same
  live records (one ``put_many`` commit, as ``put --jsonl`` writes, then
  ``build_index()`` + ``close()``); and the index overhead of NEW: the bytes of
  its TABLE frame payloads per record (spec 9.1 entries are 52 bytes). Beside
  them: the RECORDS and BLOB payload bytes (frames walked by their headers), which
  index snapshots each file carries, the compaction report's dropped count.
  ``capsule open --json`` is the median of 3 runs (1 above 200k records: an open
  of the uncompacted 1M file takes tens of seconds).

Cost on 2 shared cores: 100k takes 1.5-3 min and ~0.2 GB of scratch; 1M about
18 min, ~2 GB of scratch and ~1.5 GB of RAM in the script (``--keep DIR`` keeps
the files; ``--json PATH`` is ``--out PATH``).

Goals (issue 10): compaction >= 100k records/s; ``live`` within 1.1x of the fresh
capsule; index overhead <= 24 B per record. A step that fails (an API missing from
this tree, a command exiting non-zero) is an error in its cell and in the JSON,
never the end of the run. Prints the tables, writes JSON (default
``benchmarks/results/lifecycle.json``).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    RESULTS,
    arg_parser,
    environment,
    finish,
    header,
    log,
    met,
    print_table,
    run_summary,
    scratch_dir,
    write_results,
)
from scale import Failed, ScaleGen, cli, label, lexical_query, one_line, run_proc
from search import DIM, EF_CONSTRUCTION, EF_DEFAULT, HNSW_SEED, K, M, make_vectors

import capsule

DEFAULT_OUT = RESULTS / "lifecycle.json"
SEED = 2718
EVERY = 10  # one record in EVERY carries an embedding
PER_COMMIT = 100  # N records over N / 100 commits (the 1M over 10k)
POLICIES = ("history", "checkpoints", "live")

# Fates, as shares of N (the rest stays live).
LIVE, FORGET, EXPIRE, SUPERSEDE, REDACT = range(5)
SHARES = {FORGET: 0.30, EXPIRE: 0.20, SUPERSEDE: 0.20, REDACT: 0.01}
FATE_NAMES = {LIVE: "live", FORGET: "forgotten", EXPIRE: "expired", SUPERSEDE: "superseded", REDACT: "redacted"}
TTL_NS = 3_600 * 10**9  # one hour: the expired records' times are in 2023
EVENT_IDS = 10_000  # ids in one forget / redact event (~340 KB of record)
COMMIT_IDS = 50_000  # forget / redact ids in one commit
GROUP = 10  # superseded memories replaced by one revised memory
GROUPS_PER_COMMIT = 500

# Goals (issue 10)
GOAL_RPS = 100_000
GOAL_FRESH_RATIO = 1.1
GOAL_TABLE_B = 24.0


@dataclass(frozen=True)
class Config:
    quick: bool
    n: int
    runs: int  # `capsule open --json` runs per file (median)
    queries: int  # vector and lexical queries each

    @staticmethod
    def make(quick: bool, n: int | None) -> Config:
        if quick:
            return Config(True, n or 2_000, 1, 10)
        n = n or 100_000
        return Config(False, n, 3 if n <= 200_000 else 1, 100)  # an open of the 1M file takes tens of seconds


def parse_records(text: str) -> int:
    """``100k`` -> 100000, ``1M`` -> 1000000; at least 1000 (recall@10 needs vectors to spare)."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    n = int(m[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[m[2].lower()] if m else 0
    if n < 1_000:
        raise argparse.ArgumentTypeError(f"bad size {text!r}: at least 1000 (e.g. 10k, 100k, 1M)")
    return n


# --- the scenario --------------------------------------------------------------------------------


def fates(n: int, seed: int = SEED) -> np.ndarray:
    """Each record's fate (uint8, one of LIVE..REDACT), from a seeded permutation:
    exactly round(share * n) records of each."""
    out = np.full(n, LIVE, dtype=np.uint8)
    perm = np.random.default_rng(seed).permutation(n)
    at = 0
    for fate, share in SHARES.items():
        k = round(share * n)
        out[perm[at : at + k]] = fate
        at += k
    return out


def groups(fate: np.ndarray) -> list[np.ndarray]:
    """The superseded records in groups of GROUP (record order); each group's first is its leader."""
    sup = np.flatnonzero(fate == SUPERSEDE)
    return [sup[i : i + GROUP] for i in range(0, len(sup), GROUP)]


def memory(rec: tuple[str, list[str], dict[str, Any], int], emb: np.ndarray | None,
           ttl: int | None = None) -> dict[str, Any]:
    """One record as ``put_many`` (and a ``put --jsonl`` line) takes it."""
    text, tags, meta, t = rec
    d: dict[str, Any] = {"text": text, "tags": tags, "meta": meta, "time": t}
    if emb is not None:
        d["embedding"] = emb
    if ttl is not None:
        d["ttl"] = ttl
    return d


def revised(leader: dict[str, Any], g: int) -> dict[str, Any]:
    """The memory that supersedes group ``g``: its leader's fact, revised."""
    return {**leader, "text": f"Revised ({g}, replaces {GROUP}): {leader['text']}", "time": leader["time"] + 1,
            "meta": {**leader["meta"], "revision": g}}


@dataclass
class Built:
    n: int
    path: Path
    fate: np.ndarray
    ids: bytearray  # 32 bytes a record, in record order
    vecs: np.ndarray  # the embeddings (row i // EVERY of record i)
    queries: np.ndarray  # held-out vector queries from the same clusters
    lex: list[list[str]] = field(default_factory=list)  # lexical queries (words of live texts)
    replacements: list[dict[str, Any]] = field(default_factory=list)  # the revised memories, in order
    replacement_ids: list[str] = field(default_factory=list)
    key: Any = None  # signs the two checkpoints
    info: dict[str, Any] = field(default_factory=dict)

    def rid(self, i: int) -> str:
        return bytes(self.ids[32 * i : 32 * i + 32]).hex()


def records(vecs: np.ndarray, fate: np.ndarray, start: int, count: int, gen: Any) -> list[dict[str, Any]]:
    recs = gen.take(count)
    return [memory(r, vecs[i // EVERY] if i % EVERY == 0 else None, TTL_NS if fate[i] == EXPIRE else None)
            for i, r in zip(range(start, start + count), recs, strict=True)]


def build(cfg: Config, where: Path) -> Built:
    """Write the N memories (N / 100 commits), then the index snapshot and tables."""
    n = cfg.n
    nv = -(-n // EVERY)
    vecs, queries = make_vectors(nv, cfg.queries, clusters=max(10, nv // 100), seed=SEED)
    fate = fates(n)
    b = Built(n, where / f"lifecycle-{label(n)}.capsule", fate, bytearray(32 * n), vecs, queries)
    if b.path.exists():
        raise SystemExit(f"lifecycle.py: error: {b.path} exists; remove it or --keep another folder")
    live = np.flatnonzero(fate == LIVE)
    rng = random.Random(SEED + 1)
    lex_at = set(rng.sample(live.tolist(), min(cfg.queries, len(live))))
    gen = ScaleGen(SEED)
    b.key = capsule.generate_key()
    half = n // PER_COMMIT // 2
    t0 = time.perf_counter()
    with capsule.create(b.path) as cap:
        cap.configure_vectors(space="cosine", dim=DIM, M=M, ef_construction=EF_CONSTRUCTION, seed=HNSW_SEED)
        for k, start in enumerate(range(0, n, PER_COMMIT)):
            batch = records(vecs, fate, start, min(PER_COMMIT, n - start), gen)
            with cap.commit() as tx:
                got = tx.put_many(batch)
            b.ids[32 * start : 32 * (start + len(batch))] = got.raw
            for i, d in zip(range(start, start + len(batch)), batch, strict=True):
                if i in lex_at:
                    b.lex.append(lexical_query(d["text"], rng))
            if k == half:  # a signed checkpoint halfway: what --keep checkpoints must keep
                tc = time.perf_counter()
                cap.checkpoint("ingest-half", key=b.key)
                b.info["checkpoint_half_s"] = time.perf_counter() - tc
            if k % max(1, n // PER_COMMIT // 10) == 0:
                log(f"{label(n)}: wrote {start + len(batch):,} / {n:,}")
        t1 = time.perf_counter()
        cap.build_index()
    t2 = time.perf_counter()
    b.info |= {"records": n, "commits": -(-n // PER_COMMIT), "vectors": nv,
              "fates": {FATE_NAMES[f]: int((fate == f).sum()) for f in FATE_NAMES}, "ingest_s": t1 - t0 - b.info.get("checkpoint_half_s", 0.0),
              "build_index_close_s": t2 - t1, "bytes_after_ingest": b.path.stat().st_size}
    return b


def leaders(b: Built, gs: list[np.ndarray]) -> list[dict[str, Any]]:
    """The leaders' records, regenerated (the stream is deterministic): keeping every text would cost GBs at 1M."""
    want = {int(g[0]) for g in gs}
    gen, out = ScaleGen(SEED), {}
    for start in range(0, b.n, 10_000):
        count = min(10_000, b.n - start)
        if not any(start <= i < start + count for i in want):
            gen.take(count)
            continue
        for i, d in zip(range(start, start + count), records(b.vecs, b.fate, start, count, gen), strict=True):
            if i in want:
                out[i] = d
    return [out[int(g[0])] for g in gs]


def lifecycle_api(tx: Any) -> str:
    if hasattr(tx, "lifecycle"):
        return "tx.lifecycle (bulk: many ids per event)"
    raise Failed("this tree has no tx.lifecycle(op, drop, by=...) yet")


def apply_fates(b: Built) -> None:
    """The lifecycle events: forget and redact in bulk events, supersede in groups (see the module doc)."""
    spent: dict[str, float] = {}
    events: dict[str, int] = {}
    commits = 0
    cap = capsule.open(b.path, "a")
    try:
        for op, fate in (("forget", FORGET), ("redact", REDACT)):
            ids = [b.rid(int(i)) for i in np.flatnonzero(b.fate == fate)]
            t0 = time.perf_counter()
            for s in range(0, len(ids), COMMIT_IDS):
                with cap.commit() as tx:
                    b.info["lifecycle_api"] = lifecycle_api(tx)
                    for e in range(s, min(s + COMMIT_IDS, len(ids)), EVENT_IDS):
                        tx.lifecycle(op, drop=ids[e : min(e + EVENT_IDS, s + COMMIT_IDS, len(ids))],
                                     reason=f"benchmark: {op}")
                        events[op] = events.get(op, 0) + 1
                commits += 1
            spent[op] = time.perf_counter() - t0
        gs = groups(b.fate)
        t0 = time.perf_counter()
        lead = leaders(b, gs)
        spent["supersede_regenerate_leaders"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in range(0, len(gs), GROUPS_PER_COMMIT):
            news = [revised(lead[g], g) for g in range(s, min(s + GROUPS_PER_COMMIT, len(gs)))]
            with cap.commit() as tx:
                b.info["lifecycle_api"] = lifecycle_api(tx)
                got = tx.put_many(news)
                for g, new in zip(range(s, s + len(news)), got, strict=True):
                    tx.lifecycle("supersede", drop=[b.rid(int(i)) for i in gs[g]], by=[new],
                                 reason="benchmark: revised")
            b.replacements += news
            b.replacement_ids += list(got)
            events["supersede"] = events.get("supersede", 0) + len(news)
            commits += 1
        spent["supersede"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        cap.checkpoint("after-lifecycle", key=b.key)
        spent["checkpoint_after"] = time.perf_counter() - t0
    finally:
        cap.close()
    b.info.update({"lifecycle_s": spent, "lifecycle_events": events, "lifecycle_commits": commits,
                   "replacements": len(b.replacements)})


def live_records(b: Built) -> list[dict[str, Any]]:
    """The records live after the lifecycle: the untouched memories and the replacements."""
    gen, out = ScaleGen(SEED), []
    for start in range(0, b.n, 10_000):
        count = min(10_000, b.n - start)
        recs = records(b.vecs, b.fate, start, count, gen)
        out += [d for i, d in zip(range(start, start + count), recs, strict=True) if b.fate[i] == LIVE]
    return out + b.replacements


# --- measuring ----------------------------------------------------------------------------------


_CHILD_HEAD = "import json, sys, time\nsys.dont_write_bytecode = True\nt0 = time.perf_counter()\n"
# capsule.compact(); until the tree exports it, the function in the capsule.compact package
COMPACT_CHILD = _CHILD_HEAD + """import capsule
compact = getattr(capsule, "compact", None)
if not callable(compact):
    from capsule.compact import compact
t1 = time.perf_counter()
rep = compact(sys.argv[1], out=sys.argv[2], keep=sys.argv[3])
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "t": t2 - t1, "report": rep}, default=str))
"""


def frames(path: Path) -> dict[str, dict[str, int]]:
    """Frames and payload bytes by type (3.1: back to back after the 64-byte header;
    a COMMIT payload ends with the tail locator, so the last frame ends the file)."""
    from capsule.core import constants as C

    out: dict[str, dict[str, int]] = {}
    size = path.stat().st_size
    with path.open("rb") as f:
        pos = C.HEADER_SIZE
        while pos + C.FRAME_HEADER_SIZE <= size:
            f.seek(pos)
            total, ftype, _fl, _r, _seq, plen, _rlen, _e, _crc = C.FRAME_HEADER_STRUCT.unpack(
                f.read(C.FRAME_HEADER_SIZE))
            if total < C.FRAME_OVERHEAD:
                raise Failed(f"{path.name}: bad frame length {total} at {pos}")
            t = out.setdefault(C.FRAME_TYPE_NAMES.get(ftype, f"0x{ftype:02x}"), {"frames": 0, "payload_bytes": 0})
            t["frames"] += 1
            t["payload_bytes"] += plen
            pos += total
    return out


def open_cli(cfg: Config, path: Path) -> dict[str, Any]:
    """`capsule open PATH --json` as a process: median wall time, and what it printed."""
    walls, doc = [], {}
    for _ in range(cfg.runs):
        wall, out = run_proc([*capsule_cmd(), "open", str(path), "--json"])
        walls.append(wall)
        doc = json.loads(out)
    return {"value": statistics.median(walls), "runs": [round(w, 6) for w in walls], "records": doc.get("records"),
            "records_by_kind": doc.get("records_by_kind"), "state_root": doc.get("state_root")}


def capsule_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("capsule")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "capsule_cli.main"]


def answers(path: Path, b: Built) -> dict[str, Any]:
    """The top-10 ids of every vector and lexical query on the file at ``path``, and
    which index snapshots the file carries (read before the first search)."""
    with capsule.open(path) as cap:
        info = cap.index_info()
        snaps = {"vector": info.get("snapshot") is not None,
                 "lexical": (info.get("lexical") or {}).get("snapshot") is not None}
        vec = [[h.id for h in cap.search(vector=q, k=K, mode="vector", ef=EF_DEFAULT)] for q in b.queries]
        lex = [[h.id for h in cap.search(" ".join(w), k=K, mode="lexical")] for w in b.lex]
    return {"vector": vec, "lexical": lex, "snapshots": snaps}


def recall(got: list[list[str]], ref: list[list[str]]) -> float | None:
    """Mean share of the reference's top 10 found in ``got``'s (queries with no reference hit skipped)."""
    vals = [len(set(g) & set(r)) / len(r) for g, r in zip(got, ref, strict=True) if r]
    return statistics.fmean(vals) if vals else None


def cell(fn: Any) -> dict[str, Any]:
    """``fn()`` as a JSON cell: its value (and extras), or its error in one line."""
    try:
        res = fn()
        return res if isinstance(res, dict) else {"value": res}
    except Exception as e:  # a failing step is a cell, not the end of the run
        return {"value": None, "error": one_line(e)}


def fresh_pack(b: Built, where: Path) -> dict[str, Any]:
    """The live records into a new capsule: one put_many commit (the `put --jsonl` path), then the index."""
    p = where / "fresh.capsule"
    recs = live_records(b)
    t0 = time.perf_counter()
    with capsule.create(p) as cap:
        cap.configure_vectors(space="cosine", dim=DIM, M=M, ef_construction=EF_CONSTRUCTION, seed=HNSW_SEED)
        with cap.commit() as tx:
            tx.put_many(recs)
        cap.build_index()
    t1 = time.perf_counter()
    with capsule.open(p) as cap:
        info = cap.index_info()
    snaps = {"vector": info.get("snapshot") is not None,
             "lexical": (info.get("lexical") or {}).get("snapshot") is not None}
    return {"value": p.stat().st_size, "path": p, "snapshots": snaps, "records": len(recs), "build_s": t1 - t0, "frames": frames(p)}


def measure_policy(cfg: Config, b: Built, policy: str, where: Path, ref: dict[str, list[list[str]]],
                   before: dict[str, Any], fresh: dict[str, Any],
                   fresh_ref: dict[str, list[list[str]]] | None) -> dict[str, Any]:
    new = where / f"compact-{policy}.capsule"
    res: dict[str, Any] = {"policy": policy}
    log(f"{label(b.n)}: compact --keep {policy}")
    src_records = before["open"].get("records")

    def compact() -> dict[str, Any]:
        wall, out = run_proc([sys.executable, "-c", COMPACT_CHILD, str(b.path), str(new), policy])
        r = json.loads(out.strip().splitlines()[-1])
        return {"value": r["t"], "wall": wall, "import_s": r["import"], "report": r["report"]}

    res["compact_s"] = cell(compact)
    if res["compact_s"]["value"] is None:
        return res
    t = res["compact_s"]["value"]
    res["compact_rps"] = {"value": src_records / t if src_records else None, "source_records": src_records}
    res["bytes"] = {"value": new.stat().st_size, "before": before["bytes"]}
    res["frames"] = cell(lambda: {"value": frames(new)})
    res["open_cli"] = cell(lambda: open_cli(cfg, new))
    kept = res["open_cli"].get("records") or res["compact_s"]["report"].get("kept")
    res["compact_rps"]["kept_records"] = kept
    tables = (res["frames"].get("value") or {}).get("TABLE", {}).get("payload_bytes", 0)
    res["table_bytes_per_record"] = {"value": tables / kept if kept else None, "table_bytes": tables}
    res["vs_fresh"] = {"value": new.stat().st_size / fresh["value"] if fresh.get("value") else None}

    def recalls() -> dict[str, Any]:
        got = answers(new, b)
        out = {"value": recall(got["vector"], ref["vector"]), "lexical": recall(got["lexical"], ref["lexical"]),
               "snapshots": got["snapshots"]}
        if fresh_ref is not None:  # the truth for the live records: BM25 statistics without the dead (16.6)
            out["fresh"] = {"vector": recall(got["vector"], fresh_ref["vector"]),
                            "lexical": recall(got["lexical"], fresh_ref["lexical"])}
        return out

    res["recall"] = cell(recalls)
    res["verify_parent_s"] = cell(lambda: cli("verify", str(new), "--parent", str(b.path))["wall"])
    return res


def measure(cfg: Config, b: Built, where: Path) -> dict[str, Any]:
    before: dict[str, Any] = {"bytes": b.path.stat().st_size, "frames": frames(b.path)}
    before["open"] = cell(lambda: open_cli(cfg, b.path))
    n_rec = before["open"].get("records")
    tables = before["frames"].get("TABLE", {}).get("payload_bytes", 0)
    before["table_bytes_per_record"] = tables / n_rec if n_rec else None
    log(f"{label(b.n)}: reference searches on the uncompacted file")
    ref = answers(b.path, b)
    before["snapshots"] = ref.pop("snapshots")
    before["reference_hits"] = {k: statistics.fmean(map(len, v)) if v else 0 for k, v in ref.items()}
    log(f"{label(b.n)}: fresh capsule of the live records")
    fresh = cell(lambda: fresh_pack(b, where))
    fresh_ref = None
    if fresh.get("path") is not None:
        fresh_ref = answers(fresh["path"], b)
        fresh_ref.pop("snapshots")
        before["recall_vs_fresh"] = {k: recall(ref[k], fresh_ref[k]) for k in ("vector", "lexical")}
    policies = {p: measure_policy(cfg, b, p, where, ref, before, fresh, fresh_ref) for p in POLICIES}
    fresh.pop("path", None)
    return {"before": before, "fresh": fresh, "policies": policies}


# --- the table -----------------------------------------------------------------------------------


def _v(c: dict[str, Any] | None, key: str = "value") -> Any:
    return None if c is None else c.get(key)


def _kind(c: dict[str, Any] | None, kind: str) -> int:
    """Records of ``kind`` in a file, from its ``open --json`` cell."""
    return int(((c or {}).get("records_by_kind") or {}).get(kind, 0))


def show(v: Any, fmt: str) -> str:
    if v is None:
        return "—"
    return {"s": lambda x: f"{x:,.2f} s", "ms": lambda x: f"{x * 1000:,.0f} ms", "rps": lambda x: f"{x:,.0f}/s",
            "B": lambda x: f"{x / 1e6:,.1f} MB", "x": lambda x: f"{x:.3f}x", "r": lambda x: f"{x:.3f}",
            "b": lambda x: f"{x:,.1f} B"}[fmt](v)


def payload(frames: dict[str, Any], ftype: str) -> str:
    return show(frames.get(ftype, {}).get("payload_bytes", 0), "B")


def carried(s: dict[str, bool] | None) -> str:
    return "—" if not s else " / ".join("yes" if s[k] else "no" for k in ("vector", "lexical"))


def error_of(res: dict[str, Any], key: str) -> str | None:
    c = res.get(key)
    return c.get("error") if isinstance(c, dict) else None


def print_tables(res: dict[str, Any]) -> None:
    i, m = res["scenario"], res.get("measure") or {}
    fates_ = i.get("fates", {})
    life = i.get("lifecycle_s", {})
    print_table(f"lifecycle scenario: {label(i['records'])} memories ({run_summary(res)})", ["step", "value"], [
        ["records / commits / vectors", f"{i['records']:,} / {i['commits']:,} / {i['vectors']:,}"],
        ["ingest (put_many, 100 a commit)", show(i.get("ingest_s"), "s")],
        ["build_index + close", show(i.get("build_index_close_s"), "s")],
        ["checkpoint halfway / after the events", " / ".join(
            show(x, "s") for x in (i.get("checkpoint_half_s"), life.get("checkpoint_after")))],
        ["fates", ", ".join(f"{k} {v:,}" for k, v in fates_.items())],
        ["lifecycle API", str(i.get("lifecycle_api", i.get("lifecycle_error", "—")))],
        ["events / commits", f"{i.get('lifecycle_events', {})} / {i.get('lifecycle_commits', '—')}"],
        ["forget / redact / supersede time", " / ".join(show(life.get(k), "s") for k in ("forget", "redact",
                                                                                          "supersede"))],
    ], left=("step", "value"))
    if not m:
        return
    before, fresh, pol = m["before"], m["fresh"], m["policies"]

    def per(fn: Any) -> list[str]:
        out = []
        for p in POLICIES:
            r = pol[p]
            if r["compact_s"]["value"] is None:
                out.append("error")
                continue
            try:
                out.append(fn(r))
            except (KeyError, TypeError):
                out.append("—")
        return out

    def goal(values: list[Any], ok: Any, which: tuple[str, ...] = POLICIES) -> str:
        vals = [v for p, v in zip(POLICIES, values, strict=True) if p in which]
        return met(None if any(v is None for v in vals) else all(ok(v) for v in vals))

    rps = [_v(pol[p].get("compact_rps")) for p in POLICIES]
    ratio = [_v(pol[p].get("vs_fresh")) for p in POLICIES]
    tb = [_v(pol[p].get("table_bytes_per_record")) for p in POLICIES]
    rows = [
        ["compaction time", "", *per(lambda r: show(r["compact_s"]["value"], "s")), "", "—"],
        ["compaction records/s (source records)", "", *per(lambda r: show(_v(r["compact_rps"]), "rps")),
         f">= {GOAL_RPS:,}", goal(rps, lambda v: v >= GOAL_RPS)],
        ["bytes (file)", show(before["bytes"], "B"), *per(lambda r: show(r["bytes"]["value"], "B")), "", "—"],
        ["after / before", "", *per(lambda r: show(r["bytes"]["value"] / r["bytes"]["before"], "x")), "", "—"],
        ["after / fresh capsule of the live records", show(before["bytes"] / fresh["value"], "x")
         if fresh.get("value") else "—", *per(lambda r: show(_v(r["vs_fresh"]), "x")),
         f"<= {GOAL_FRESH_RATIO} (live)", goal(ratio, lambda v: v <= GOAL_FRESH_RATIO, ("live",))],
        ["  RECORDS payload", payload(before["frames"], "RECORDS"),
         *per(lambda r: payload(r["frames"]["value"], "RECORDS")), "", "—"],
        ["  RECORDS payload / fresh capsule's", "",
         *per(lambda r: show(r["frames"]["value"]["RECORDS"]["payload_bytes"]
                             / fresh["frames"]["RECORDS"]["payload_bytes"], "x")), "", "—"],
        ["  BLOB payload (index snapshots)", payload(before["frames"], "BLOB"),
         *per(lambda r: payload(r["frames"]["value"], "BLOB")), "", "—"],
        ["index snapshots carried (vector / lexical)", carried(before.get("snapshots")),
         *per(lambda r: carried(r["recall"].get("snapshots"))), "", "—"],
        ["records in the file", f"{_v(before['open'], 'records'):,}",
         *per(lambda r: f"{r['open_cli'].get('records') or r['compact_s']['report']['kept']:,}"), "", "—"],
        ["records dropped (compaction report)", "", *per(lambda r: f"{r['compact_s']['report']['dropped']:,}"),
         "", "—"],
        ["capsule open --json (process)", show(_v(before["open"]), "ms"), *per(lambda r: show(_v(r["open_cli"]), "ms")),
         "", "—"],
        ["recall@10 vector (vs uncompacted)", "1", *per(lambda r: show(_v(r["recall"]), "r")), "", "—"],
        ["recall@10 lexical (vs uncompacted)", "1", *per(lambda r: show(_v(r["recall"], "lexical"), "r")), "", "—"],
        ["recall@10 vector / lexical (vs fresh capsule)",
         "/".join(show(v, "r") for v in (before.get("recall_vs_fresh") or {}).values()) or "—",
         *per(lambda r: "/".join(show(v, "r") for v in (r["recall"].get("fresh") or {}).values()) or "—"), "", "—"],
        ["revert records kept (lifecycle events)", f"{_kind(before['open'], 'revert'):,}",
         *per(lambda r: f"{_kind(r['open_cli'], 'revert'):,}"), "", "—"],
        ["verify --parent (process)", "", *per(lambda r: show(_v(r["verify_parent_s"]), "s")), "", "—"],
        ["TABLE bytes per record", show(before.get("table_bytes_per_record"), "b"),
         *per(lambda r: show(_v(r["table_bytes_per_record"]), "b")), f"<= {GOAL_TABLE_B:.0f} B",
         goal(tb, lambda v: v <= GOAL_TABLE_B)],
    ]
    fresh_txt = f"fresh capsule: {show(fresh.get('value'), 'B')}, index snapshots (vector / lexical) " \
        f"{carried(fresh.get('snapshots'))}" if fresh.get("value") else \
        f"fresh capsule: {fresh.get('error')}"
    print_table(f"compaction of {label(i['records'])} ({fresh_txt})",
                ["measure", "before", *POLICIES, "goal", "met?"], rows, left=("measure",))
    for p in POLICIES:
        errs = {k: error_of(pol[p], k) for k in pol[p]}
        for k, e in errs.items():
            if e:
                print(f"  {p} {k}: {e}")
    if fresh.get("error"):
        print(f"  fresh capsule: {fresh['error']}")


# --- main ----------------------------------------------------------------------------------------


def run(cfg: Config, where: Path) -> dict[str, Any]:
    b = build(cfg, where)
    res: dict[str, Any] = {"scenario": b.info}
    log(f"{label(b.n)}: lifecycle events")
    try:
        apply_fates(b)
    except Exception as e:
        b.info["lifecycle_error"] = one_line(e)
        log(f"lifecycle events failed: {one_line(e)}")
        return res
    b.info["bytes_before"] = b.path.stat().st_size
    res["measure"] = measure(cfg, b, where)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "a smoke run: 2,000 records, one run per row")
    ap.add_argument("--json", dest="out", type=Path, help="the same as --out")
    ap.add_argument("--records", type=parse_records, default=None,
                    help="memories to write (default 100k, --quick 2000; e.g. 10k, 1M)")
    ap.add_argument("--keep", type=Path, default=None, help="build in this folder and keep the files")
    a = ap.parse_args(argv)
    cfg = Config.make(a.quick, a.records)
    started = time.time()
    with scratch_dir("capsule-bench-lifecycle-", a.tmpdir) as tmp:
        where = a.keep or tmp
        where.mkdir(parents=True, exist_ok=True)
        res = header(cfg.quick, started, environment(where, sources=True), records=cfg.n,
                     goals={"compact_rps": GOAL_RPS, "live_vs_fresh": GOAL_FRESH_RATIO,
                            "table_bytes_per_record": GOAL_TABLE_B})
        res.update(run(cfg, where))
    finish(res, started)
    print_tables(res)
    write_results(res, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
