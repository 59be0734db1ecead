#!/usr/bin/env python3
"""Scale benchmark: capsule beside its peers at 10k / 100k / 1M records, one table.

    .venv/bin/python benchmarks/scale.py [--sizes 10k,100k] [--quick] [--json PATH]
                                         [--keep DIR] [--tmpdir DIR]

For each size N the same data goes into a capsule (through the library's
``tx.put_many`` when the tree has it, else ``tx.remember``; 10,000 records per
commit) and a SQLite database (``executemany`` in WAL mode with
``synchronous=FULL``, the same commits). The data is a deterministic stream
(fixed seeds) of agent memories: ~200 bytes of text (a templated fact and
Zipf-distributed words from ``store.py``'s vocabulary), 2-3 tags and a
three-entry meta map; every tenth record also carries a 384-d float32
embedding (clustered unit vectors, as in ``search.py``). SQLite holds one row
``(id, body JSON, emb BLOB)`` per record, id the SHA-256 of body and vector.

Rows, each with its peer measured in the same run (who goes first alternates):

* build: ingest rate and time; vector index (``build_index()`` + ``close()``
  against hnswlib ``add_items`` + ``save_index``, same M / ef_construction /
  seed, one thread); SQLite's FTS5 index; the total;
* ``capsule.open`` + ``len`` in a fresh process (import timed apart) against
  ``sqlite3.connect`` + ``count(*)``; ``capsule open --json`` as a process
  against a Python process doing that SQLite open;
* ``get`` by id p50 against a primary-key lookup (+ ``json.loads``);
* vector search p50 (k=10, ef=64) and recall@10 against brute force, beside
  raw hnswlib over the same vectors;
* lexical search: open + first query in a fresh process, ``capsule search
  --mode lexical`` as a process, and p50 after the first, against SQLite FTS5
  (``bm25``, the query's words OR-ed as capsule's BM25 does);
* ``capsule state --json`` as a process against a Python process dumping the
  SQLite rows as one JSON document;
* checkpoint (Ed25519-signed) in an open handle, the first and the next ones,
  against hashing every SQLite id, signing and inserting the result;
* ``capsule verify`` quick and deep, as a process and in-process (MB/s of the
  file), against ``PRAGMA quick_check`` / ``integrity_check``;
* file size against the raw data (the records as ``put --jsonl`` lines) and
  the SQLite database (with its FTS5 index);
* ``capsule --version`` and ``import capsule`` against ``python -c pass``.

Every timing is the median of several runs where a run is cheap (a row stops
repeating once its runs have taken a time budget). A command that fails is an
error in its cell and in the JSON, never the end of the run. Checkpoints are
taken after every read-only row, so the files verified carry them. It prints
the tables and writes JSON (default ``benchmarks/results/scale.json``).
``--quick`` is a smoke run at a tiny size; 1M runs only when ``--sizes`` asks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
from _common import (
    MB,
    RESULTS,
    T0_NS,
    arg_parser,
    dist_version,
    environment,
    file_bytes,
    finish,
    fmt_ms,
    header,
    interleave,
    log,
    print_table,
    rotated,
    run_summary,
    scratch_dir,
    write_results,
)
from search import DIM, EF_CONSTRUCTION, EF_DEFAULT, HNSW_SEED, K, M, exact_top, make_vectors
from store import MemoryGen, Rec, json_body

import capsule

DEFAULT_OUT = RESULTS / "scale.json"
EVERY = 10  # one record in EVERY carries an embedding
SEED = 314
CLI_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class Config:
    quick: bool
    sizes: tuple[int, ...]
    batch: int  # records per commit
    runs: int  # most repeats of a fresh-process or whole-file row
    budget_s: float  # a row stops repeating once its runs took this long
    gets: int  # ids looked up for get p50
    queries: int  # vector and lexical queries
    checkpoints: int  # checkpoints per handle (the first, then the next ones)

    @staticmethod
    def make(quick: bool, sizes: tuple[int, ...] | None) -> Config:
        if quick:
            return Config(True, sizes or (1_000,), 500, 1, 5.0, 50, 10, 2)
        return Config(False, sizes or (10_000, 100_000), 10_000, 5, 60.0, 1_000, 200, 4)


def parse_sizes(text: str) -> tuple[int, ...]:
    """``10k,100k,1M`` -> (10000, 100000, 1000000)."""
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", part)
        n = int(m[1]) * {"": 1, "k": 1_000, "m": 1_000_000}[m[2].lower()] if m else 0
        if n < 1_000:  # a tenth carry vectors, and recall@10 needs well over 10 of them
            raise argparse.ArgumentTypeError(f"bad size {part!r}: at least 1000 (e.g. 10k, 100k, 1M, 2500)")
        out.append(n)
    return tuple(out)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k" if n % 1_000 == 0 else f"{n:,}"


# --- data ----------------------------------------------------------------------------------------


def ScaleGen(seed: int = SEED) -> MemoryGen:  # noqa: N802 - reads as the class it returns
    """A deterministic stream of memories with ~200 bytes of text, 2-3 tags and meta
    (store.py's generator with more free words and a session number); unique texts
    (each carries its ordinal), so nothing deduplicates."""
    return MemoryGen(seed, free_words=(10, 15), session_every=500)


def jsonl_bytes(rec: Rec, emb: np.ndarray | None) -> int:
    """Bytes of the record as one ``capsule put --jsonl`` line: the raw data.
    A vector is written with each float32's shortest round-trip form."""
    text, tags, meta, t = rec
    line = json.dumps({"text": text, "tags": tags, "meta": meta, "time": t}, ensure_ascii=False,
                      separators=(",", ":"))
    size = len(line.encode()) + 1
    if emb is not None:
        size += len(',"embedding":[]') + len(",".join(map(str, emb)))
    return size


def lexical_query(text: str, rng: random.Random) -> list[str]:
    """Three words of a stored text: every query has hits, of mixed frequency."""
    words = sorted({w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4})
    return rng.sample(words, min(3, len(words)))


# --- the peers -----------------------------------------------------------------------------------


def sqlite_create(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE mem (id TEXT PRIMARY KEY, body TEXT NOT NULL, emb BLOB)")
    return con


def sqlite_commit(con: sqlite3.Connection, recs: list[Rec], embs: list[np.ndarray | None]) -> list[str]:
    rows = []
    for rec, e in zip(recs, embs, strict=True):
        body = json_body(rec)
        blob = None if e is None else e.astype("<f4").tobytes()
        rows.append((hashlib.sha256(body.encode() + (blob or b"")).hexdigest(), body, blob))
    con.execute("BEGIN")
    con.executemany("INSERT OR IGNORE INTO mem (id, body, emb) VALUES (?, ?, ?)", rows)
    con.execute("COMMIT")
    return [r[0] for r in rows]


#: The library's batch call when this tree has one (the fast ingest path), else remember() per record.
BULK = hasattr(capsule.Transaction, "put_many")


def capsule_commit(cap: capsule.Capsule, recs: list[Rec], embs: list[np.ndarray | None]) -> list[str]:
    with cap.commit() as tx:
        if BULK:
            return list(tx.put_many([{"text": text, "tags": tags, "meta": meta, "time": t}
                                     | ({} if e is None else {"embedding": e})
                                     for (text, tags, meta, t), e in zip(recs, embs, strict=True)]))
        return [tx.remember(text, tags=tags, meta=meta, time=t, embedding=e)
                for (text, tags, meta, t), e in zip(recs, embs, strict=True)]


def fts_query(words: list[str]) -> str:
    return " OR ".join(f'"{w}"' for w in words)


# Self-contained children: each imports only what it needs (timed apart from
# the work), never this file, so a process's wall time is its own.
_CHILD_HEAD = "import json, sys, time\nsys.dont_write_bytecode = True\nt0 = time.perf_counter()\n"
CHILD = {
    "capsule_open": _CHILD_HEAD + """import capsule
t1 = time.perf_counter()
cap = capsule.open(sys.argv[1]); n = len(cap)
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "t": t2 - t1, "n": n}))
""",
    "sqlite_open": _CHILD_HEAD + """import sqlite3
t1 = time.perf_counter()
con = sqlite3.connect(sys.argv[1]); n = con.execute("SELECT count(*) FROM mem").fetchone()[0]
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "t": t2 - t1, "n": n}))
""",
    "capsule_lex": _CHILD_HEAD + """import capsule
t1 = time.perf_counter()
cap = capsule.open(sys.argv[1]); hits = cap.search(sys.argv[2], k=10, mode="lexical")
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "t": t2 - t1, "hits": len(hits)}))
""",
    "sqlite_fts": _CHILD_HEAD + """import sqlite3
t1 = time.perf_counter()
con = sqlite3.connect(sys.argv[1])
hits = con.execute("SELECT text, bm25(fts) FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT 10",
                   (sys.argv[2],)).fetchall()
t2 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "t": t2 - t1, "hits": len(hits)}))
""",
    # `capsule state --json` for SQLite: every row as one JSON document on stdout.
    "sqlite_state": _CHILD_HEAD + """import sqlite3
con = sqlite3.connect(sys.argv[1])
mems = [{"id": i, **json.loads(b), **({"embedding_dim": len(e) // 4} if e else {})}
        for i, b, e in con.execute("SELECT id, body, emb FROM mem ORDER BY rowid")]
sys.stdout.write(json.dumps({"records": len(mems), "memories": mems}, sort_keys=True, separators=(",", ":")))
""",
    "sqlite_check": _CHILD_HEAD + """import sqlite3
out = sqlite3.connect(sys.argv[1]).execute(f"PRAGMA {sys.argv[2]}").fetchall()
assert out == [("ok",)], out
""",
}


# --- running things ------------------------------------------------------------------------------


class Failed(RuntimeError):
    """A child process or CLI command failed; the message is one line."""


def one_line(e: BaseException) -> str:
    if isinstance(e, subprocess.TimeoutExpired):
        return f"timed out after {e.timeout:.0f} s"
    msg = str(e).strip().splitlines()
    return (msg[-1] if isinstance(e, Failed) and msg else f"{type(e).__name__}: {msg[0] if msg else ''}")[:300]


def run_proc(cmd: list[str], out: Path | None = None) -> tuple[float, str]:
    """Wall time and stdout of a process (stdout to ``out`` when given, as ``> file`` would)."""
    with out.open("wb") if out else nullcontext(subprocess.PIPE) as dest:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, stdout=dest, stderr=subprocess.PIPE, timeout=CLI_TIMEOUT_S)
        wall = time.perf_counter() - t0
    if p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip().splitlines()
        raise Failed(f"exit {p.returncode}: {err[-1] if err else '(no message)'}")
    return wall, "" if out else p.stdout.decode(errors="replace")


def child(name: str, *args: str, out: Path | None = None) -> dict[str, float]:
    wall, stdout = run_proc([sys.executable, "-c", CHILD[name], *args], out)
    res: dict[str, float] = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    res["wall"] = wall
    return res


def cli(*args: str, out: Path | None = None) -> dict[str, float]:
    exe = Path(sys.executable).with_name("capsule")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "capsule_cli.main"]
    return {"wall": run_proc([*cmd, *args], out)[0]}


Side = Callable[[], dict[str, float]]


def stat(runs: list[dict[str, float]], key: str, error: str | None) -> dict[str, Any]:
    """One side of a row: the median of ``key`` over its runs (seconds), or its error."""
    if error is not None or not runs:
        return {"value": None, "error": error or "no run"}
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    return {"value": med[key], "runs": [round(r[key], 6) for r in runs],
            "median": {k: round(v, 6) for k, v in med.items()}}


def rounds(sides: dict[str, Side], key: str, runs: int, budget_s: float) -> dict[str, dict[str, Any]]:
    """Run each side up to ``runs`` times, who goes first rotating each round; a
    side stops at its first error or once its runs took ``budget_s``."""
    got: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    err: dict[str, str] = {}
    spent = dict.fromkeys(sides, 0.0)
    for r in range(runs):
        live = [k for k in sides if k not in err and spent[k] < budget_s]
        if not live:
            break
        for k in rotated(live, r):
            t0 = time.perf_counter()
            try:
                got[k].append(sides[k]())
            except Exception as e:  # a failing command is a cell, not the end of the run
                err[k] = one_line(e)
            spent[k] += time.perf_counter() - t0
    return {k: stat(got[k], key, err.get(k)) for k in sides}


def latencies(sides: dict[str, Callable[[int], Any]], n: int, blocks: int = 10,
              warm: int = 5) -> dict[str, dict[str, Any]]:
    """Per-call latency of item ``i`` on every side, the sides taking turns in
    blocks; each side's answers are kept (``out``) for recall and overlap."""
    lat: dict[str, list[float]] = {k: [] for k in sides}
    out: dict[str, list[Any]] = {k: [] for k in sides}
    err: dict[str, str] = {}
    first: dict[str, float] = {}
    for k, fn in sides.items():
        try:
            t0 = time.perf_counter()
            fn(0)
            first[k] = time.perf_counter() - t0
            for i in range(1, min(warm, n)):
                fn(i)
        except Exception as e:
            err[k] = one_line(e)
    live = [k for k in sides if k not in err]
    for span, order in interleave(n, blocks, live) if live else ():
        for k in order:
            if k in err:
                continue
            try:
                for i in span:
                    t0 = time.perf_counter()
                    ans = sides[k](i)
                    lat[k].append(time.perf_counter() - t0)
                    out[k].append(ans)
            except Exception as e:
                err[k] = one_line(e)
    res: dict[str, dict[str, Any]] = {}
    for k in sides:
        if k in err:
            res[k] = {"value": None, "error": err[k]}
        else:
            a = np.asarray(lat[k])
            res[k] = {"value": float(np.median(a)), "p99": float(np.percentile(a, 99)), "calls": len(a),
                      "first_call": first[k], "out": out[k]}
    return res


# How a row is shown -> the unit of its values in the JSON (times stay in seconds).
UNITS = {"ms": "s", "s": "s", "rps": "records/s", "bytes": "bytes", "ratio": "ratio", "recall": "recall",
         "MB/s": "MB/s"}


def row(show: str, cap: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    return {"unit": UNITS[show], "show": show, "capsule": cap, "peer": peer}


def failed(keys: Iterable[str], e: BaseException) -> dict[str, dict[str, Any]]:
    """Rows that could not be measured at all: the error on both sides."""
    err = {"value": None, "error": one_line(e)}
    return {k: {"unit": None, "show": None, "capsule": err, "peer": err} for k in keys}


# --- build ---------------------------------------------------------------------------------------


@dataclass
class Built:
    n: int
    cp: Path
    sp: Path
    hp: Path
    vecs: np.ndarray
    queries: np.ndarray
    probes: list[tuple[str, str]] = field(default_factory=list)  # (capsule id, sqlite id)
    row_of: dict[str, int] = field(default_factory=dict)  # capsule id -> vector row
    texts: list[str] = field(default_factory=list)  # stored texts the lexical queries come from
    info: dict[str, Any] = field(default_factory=dict)


def build(cfg: Config, n: int, where: Path) -> Built:
    nv = -(-n // EVERY)
    vecs, queries = make_vectors(nv, cfg.queries, clusters=max(10, nv // 100), seed=SEED)
    b = Built(n, where / f"scale-{label(n)}.capsule", where / f"scale-{label(n)}.sqlite",
              where / f"scale-{label(n)}.hnsw", vecs, queries)
    for p in (b.cp, b.sp, b.hp):
        if p.exists():
            raise SystemExit(f"scale.py: error: {p} exists; remove it or --keep another folder")
    rng = random.Random(SEED + 1)
    probe_at = set(rng.sample(range(n), min(cfg.gets, n)))
    text_at = set(rng.sample(range(n), min(cfg.queries, n)))
    spent = {"capsule": 0.0, "sqlite": 0.0}
    raw = 0
    gen = ScaleGen()
    cap = capsule.create(b.cp)
    cap.configure_vectors(space="cosine", dim=DIM, M=M, ef_construction=EF_CONSTRUCTION, seed=HNSW_SEED)
    before = len(cap)  # the vector configuration is a record too
    con = sqlite_create(b.sp)
    try:
        for k, start in enumerate(range(0, n, cfg.batch)):
            recs = gen.take(min(cfg.batch, n - start))
            pos = range(start, start + len(recs))
            embs = [vecs[i // EVERY] if i % EVERY == 0 else None for i in pos]
            ids: dict[str, list[str]] = {}
            for kind in rotated(("capsule", "sqlite"), k):
                t0 = time.perf_counter()
                ids[kind] = capsule_commit(cap, recs, embs) if kind == "capsule" else sqlite_commit(con, recs, embs)
                spent[kind] += time.perf_counter() - t0
            for i, cid, sid, rec, e in zip(pos, ids["capsule"], ids["sqlite"], recs, embs, strict=True):
                raw += jsonl_bytes(rec, e)
                if e is not None:
                    b.row_of[cid] = i // EVERY
                if i in probe_at:
                    b.probes.append((cid, sid))
                if i in text_at:
                    b.texts.append(rec[0])
            if k % max(1, n // cfg.batch // 10) == 0:
                log(f"{label(n)}: built {start + len(recs):,} / {n:,}")
        assert len(cap) == before + n, (len(cap), before, n)
        log(f"{label(n)}: capsule build_index() + close(); hnswlib; SQLite FTS5")
        t0 = time.perf_counter()
        cap.build_index()
        t1 = time.perf_counter()
    finally:
        cap.close()
    t2 = time.perf_counter()
    ix = hnswlib.Index(space="cosine", dim=DIM)
    ix.init_index(max_elements=nv, M=M, ef_construction=EF_CONSTRUCTION, random_seed=HNSW_SEED)
    ix.add_items(vecs, np.arange(nv), num_threads=1)
    ix.save_index(str(b.hp))
    t3 = time.perf_counter()
    con.execute("BEGIN")
    con.execute("CREATE VIRTUAL TABLE fts USING fts5(text)")
    con.execute("INSERT INTO fts (rowid, text) SELECT rowid, json_extract(body, '$.text') FROM mem")
    con.execute("COMMIT")
    t4 = time.perf_counter()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # measure a settled db file
    con.close()
    rng.shuffle(b.probes)
    b.info = {"records": n, "vectors": nv, "commits": -(-n // cfg.batch), "raw_jsonl_bytes": raw,
              "capsule_ingest_api": "tx.put_many" if BULK else "tx.remember",
              "capsule_ingest_s": spent["capsule"], "sqlite_ingest_s": spent["sqlite"],
              "capsule_build_index_s": t1 - t0, "capsule_close_s": t2 - t1, "hnswlib_build_save_s": t3 - t2,
              "sqlite_fts5_s": t4 - t3, "capsule_bytes": file_bytes(b.cp), "sqlite_bytes": file_bytes(b.sp),
              "hnswlib_bytes": file_bytes(b.hp)}
    return b


def build_rows(b: Built) -> dict[str, dict[str, Any]]:
    i, n = b.info, b.n

    def v(x: float | None, **kw: Any) -> dict[str, Any]:
        return {"value": x, **kw}

    cap_total = i["capsule_ingest_s"] + i["capsule_build_index_s"] + i["capsule_close_s"]
    peer_total = i["sqlite_ingest_s"] + i["sqlite_fts5_s"] + i["hnswlib_build_save_s"]
    return {
        "ingest_rps": row("rps", v(n / i["capsule_ingest_s"]), v(n / i["sqlite_ingest_s"])),
        "ingest_s": row("s", v(i["capsule_ingest_s"]), v(i["sqlite_ingest_s"])),
        "vindex_s": row("s", v(i["capsule_build_index_s"] + i["capsule_close_s"],
                               build_index_s=i["capsule_build_index_s"], close_s=i["capsule_close_s"]),
                        v(i["hnswlib_build_save_s"])),
        "lexindex_s": row("s", v(None, note="no step of its own: in close() (a persisted index) or the first query"),
                          v(i["sqlite_fts5_s"])),
        "build_total_s": row("s", v(cap_total), v(peer_total)),
        "file_bytes": row("bytes", v(i["capsule_bytes"]), v(i["sqlite_bytes"], hnswlib_bytes=i["hnswlib_bytes"])),
        "raw_ratio": row("ratio", v(i["capsule_bytes"] / i["raw_jsonl_bytes"], raw=i["raw_jsonl_bytes"]),
                         v(i["sqlite_bytes"] / i["raw_jsonl_bytes"], raw=i["raw_jsonl_bytes"])),
    }


# --- measure -------------------------------------------------------------------------------------


def measure_open(cfg: Config, b: Built) -> dict[str, dict[str, Any]]:
    cp, sp = str(b.cp), str(b.sp)
    lib = rounds({"capsule": lambda: child("capsule_open", cp), "peer": lambda: child("sqlite_open", sp)},
                 "t", cfg.runs, cfg.budget_s)
    proc = rounds({"capsule": lambda: cli("open", cp, "--json"), "peer": lambda: child("sqlite_open", sp)},
                  "wall", cfg.runs, cfg.budget_s)
    return {"open_lib": row("ms", lib["capsule"], lib["peer"]), "open_cli": row("ms", proc["capsule"], proc["peer"])}


def measure_reads(cfg: Config, b: Built) -> dict[str, dict[str, Any]]:
    """get, vector and lexical latency in this process, on handles opened once."""
    rows: dict[str, dict[str, Any]] = {}
    cap = capsule.open(b.cp)
    con = sqlite3.connect(b.sp)
    try:
        def sqlite_get(i: int) -> Any:
            return json.loads(con.execute("SELECT body FROM mem WHERE id = ?", (b.probes[i][1],)).fetchone()[0])

        got = latencies({"capsule": lambda i: cap.get(b.probes[i][0]), "peer": sqlite_get}, len(b.probes))
        rows["get_p50"] = row("ms", *(_strip(got[k]) for k in ("capsule", "peer")))

        ix = hnswlib.Index(space="cosine", dim=DIM)
        ix.load_index(str(b.hp))
        ix.set_ef(EF_DEFAULT)
        ix.set_num_threads(1)
        q = b.queries
        vec = latencies({
            "capsule": lambda i: [b.row_of[h.id] for h in cap.search(vector=q[i], k=K, mode="vector", ef=EF_DEFAULT)],
            "peer": lambda i: ix.knn_query(q[i : i + 1], k=K, num_threads=1)[0][0].tolist()}, len(q))
        gt = exact_top(b.vecs, q)
        recall = {k: {"value": None, "error": v["error"]} if v["value"] is None else
                  {"value": statistics.fmean(len(set(r) & set(gt[i].tolist())) / K for i, r in enumerate(v["out"]))}
                  for k, v in vec.items()}
        rows["vector_p50"] = row("ms", _strip(vec["capsule"]), _strip(vec["peer"]))
        rows["vector_recall"] = row("recall", recall["capsule"], recall["peer"])

        rng = random.Random(SEED + 2)
        words = [lexical_query(t, rng) for t in b.texts]
        lex = latencies({
            "capsule": lambda i: [h.text for h in cap.search(" ".join(words[i]), k=K, mode="lexical")],
            "peer": lambda i: [t for (t,) in con.execute(
                "SELECT text FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT 10", (fts_query(words[i]),))]},
            len(words))
        both = [k for k in lex if lex[k]["value"] is not None]
        if len(both) == 2:  # same model (BM25, k1=1.2, b=0.75), slightly different idf: a sanity check
            lex["capsule"]["top10_overlap_with_fts5"] = statistics.fmean(
                len(set(a) & set(p)) / max(1, len(p)) for a, p in zip(lex["capsule"]["out"], lex["peer"]["out"],
                                                                     strict=True))
        rows["lex_p50"] = row("ms", _strip(lex["capsule"]), _strip(lex["peer"]))
    finally:
        cap.close()
        con.close()
    q0 = words[0]
    first = rounds({"capsule": lambda: child("capsule_lex", str(b.cp), " ".join(q0)),
                    "peer": lambda: child("sqlite_fts", str(b.sp), fts_query(q0))}, "t", cfg.runs, cfg.budget_s)
    rows["lex_first"] = row("ms", first["capsule"], first["peer"])
    proc = rounds({"capsule": lambda: cli("search", str(b.cp), " ".join(q0), "--mode", "lexical", "-k", "10",
                                          "--json"),
                   "peer": lambda: child("sqlite_fts", str(b.sp), fts_query(q0))}, "wall", cfg.runs, cfg.budget_s)
    rows["lex_cli"] = row("ms", proc["capsule"], proc["peer"])
    return rows


def _strip(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "out"}


def measure_state(cfg: Config, b: Built, tmp: Path) -> dict[str, dict[str, Any]]:
    out = tmp / "state.json"
    sizes: dict[str, int] = {}

    def run(kind: str) -> dict[str, float]:
        r = cli("state", str(b.cp), "--json", out=out) if kind == "capsule" else child("sqlite_state", str(b.sp),
                                                                                         out=out)
        sizes[kind] = out.stat().st_size
        return r

    st = rounds({"capsule": lambda: run("capsule"), "peer": lambda: run("peer")}, "wall", cfg.runs, cfg.budget_s)
    out.unlink(missing_ok=True)
    for k, s in sizes.items():
        st[k]["stdout_bytes"] = s
    return {"state_cli": row("ms", st["capsule"], st["peer"])}


def measure_checkpoint(cfg: Config, b: Built) -> dict[str, dict[str, Any]]:
    """``cfg.checkpoints`` signed checkpoints on one writable handle, one new
    record between them; the SQLite analogue hashes every id in order, signs the
    digest with Ed25519 and inserts it, in one durable transaction."""
    key = capsule.generate_key()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pkey = Ed25519PrivateKey.generate()
    times: dict[str, list[float]] = {"capsule": [], "peer": []}
    err: dict[str, str] = {}
    cap: capsule.Capsule | None = None
    con = sqlite3.connect(b.sp, isolation_level=None)
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE IF NOT EXISTS ckpt (label TEXT, root BLOB, sig BLOB)")
    t0 = time.perf_counter()
    try:
        cap = capsule.open(b.cp, "a")
    except Exception as e:
        err["capsule"] = one_line(e)
    open_a = time.perf_counter() - t0

    def cap_one(j: int) -> None:
        assert cap is not None
        if j:
            with cap.commit() as tx:
                tx.note(f"agent step {j}", time=T0_NS + (b.n + j) * 1_000)
        t0 = time.perf_counter()
        cap.checkpoint(f"bench-{j}", key=key)
        times["capsule"].append(time.perf_counter() - t0)

    def peer_one(j: int) -> None:
        if j:
            con.execute("INSERT INTO mem (id, body) VALUES (?, ?)", (f"step-{j}", json.dumps({"text": f"step {j}"})))
        t0 = time.perf_counter()
        h = hashlib.sha256()
        for (rid,) in con.execute("SELECT id FROM mem ORDER BY id"):
            h.update(rid.encode())
        root = h.digest()
        con.execute("BEGIN")
        con.execute("INSERT INTO ckpt VALUES (?, ?, ?)", (f"bench-{j}", root, pkey.sign(root)))
        con.execute("COMMIT")
        times["peer"].append(time.perf_counter() - t0)

    try:
        for j in range(cfg.checkpoints):
            for kind in rotated(("capsule", "peer"), j):
                if kind in err:
                    continue
                try:
                    (cap_one if kind == "capsule" else peer_one)(j)
                except Exception as e:
                    err[kind] = one_line(e)
    finally:
        if cap is not None:
            cap.close()
        con.close()

    def side(kind: str, first: bool) -> dict[str, Any]:
        xs = times[kind][:1] if first else times[kind][1:]
        if not xs:
            return {"value": None, "error": err.get(kind, "no run")}
        out: dict[str, Any] = {"value": statistics.median(xs), "runs": xs}
        if kind == "capsule" and first:
            out["open_append_s"] = open_a
        return out

    return {"checkpoint_first": row("ms", side("capsule", True), side("peer", True)),
            "checkpoint_next": row("ms", side("capsule", False), side("peer", False))}


def measure_verify(cfg: Config, b: Built, deep_flag: list[str]) -> dict[str, dict[str, Any]]:
    cbytes, sbytes = file_bytes(b.cp), file_bytes(b.sp)
    rows = {}

    def mbps(r: dict[str, Any], size: int) -> dict[str, Any]:
        if r["value"] is None:
            return r
        return {**r, "seconds": r["value"], "value": size / r["value"] / MB, "file_bytes": size}

    def lib(deep: bool) -> dict[str, float]:
        t0 = time.perf_counter()
        rep = capsule.verify(b.cp, deep=deep)
        dt = time.perf_counter() - t0
        if not rep.ok:
            raise Failed(f"verify reports the file unsound: {rep.first_error}")
        return {"t": dt}

    def pragma(name: str) -> dict[str, float]:
        con = sqlite3.connect(b.sp)
        t0 = time.perf_counter()
        out = con.execute(f"PRAGMA {name}").fetchall()
        dt = time.perf_counter() - t0
        con.close()
        if out != [("ok",)]:
            raise Failed(f"{name}: {out[:3]}")
        return {"t": dt}

    for what, cap_args, peer_pragma in (("quick", ["--quick"], "quick_check"), ("deep", deep_flag, "integrity_check")):
        p = rounds({"capsule": lambda a=cap_args: cli("verify", str(b.cp), *a),
                    "peer": lambda g=peer_pragma: child("sqlite_check", str(b.sp), g)},
                   "wall", cfg.runs, cfg.budget_s)
        rows[f"verify_{what}_cli"] = row("MB/s", mbps(p["capsule"], cbytes), mbps(p["peer"], sbytes))
        i = rounds({"capsule": lambda d=what == "deep": lib(d),
                    "peer": lambda g=peer_pragma: pragma(g)}, "t", cfg.runs, cfg.budget_s)
        rows[f"verify_{what}_lib"] = row("MB/s", mbps(i["capsule"], cbytes), mbps(i["peer"], sbytes))
    return rows


def measure_startup(cfg: Config) -> dict[str, dict[str, Any]]:
    runs = 3 if cfg.quick else 10  # cheap: a few hundred ms each
    pass_ = rounds({"capsule": lambda: cli("--version"),
                    "peer": lambda: {"wall": run_proc([sys.executable, "-c", "pass"])[0]}}, "wall", runs, 30.0)
    imp = rounds({"capsule": lambda: {"wall": run_proc([sys.executable, "-c", "import capsule"])[0]},
                  "peer": lambda: {"wall": run_proc([sys.executable, "-c", "pass"])[0]}}, "wall", runs, 30.0)
    return {"version_cli": row("ms", pass_["capsule"], pass_["peer"]),
            "import_capsule": row("ms", imp["capsule"], imp["peer"])}


def deep_verify_args() -> list[str]:
    """``--deep`` if this tree's ``capsule verify`` has it, else nothing (deep is the default)."""
    try:
        exe = Path(sys.executable).with_name("capsule")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "capsule_cli.main"]
        helptext = subprocess.run([*cmd, "verify", "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return ["--deep"] if "--deep" in helptext else []


# --- report --------------------------------------------------------------------------------------

# key, what capsule does, what the peer does (the unit is in each row's JSON)
ROWS: tuple[tuple[str, str, str], ...] = (
    ("ingest_rps", "build: ingest rate", "SQLite executemany"),
    ("ingest_s", "build: ingest time", "SQLite executemany"),
    ("vindex_s", "build: build_index() + close() (indexes)", "hnswlib add_items + save"),
    ("lexindex_s", "build: lexical index", "SQLite FTS5 insert"),
    ("build_total_s", "build: total (records + indexes)", "SQLite + FTS5 + hnswlib"),
    ("open_lib", "capsule.open + len (fresh process)", "connect + count(*)"),
    ("open_cli", "`capsule open --json` (process)", "python: connect + count(*)"),
    ("get_p50", "get by id, p50", "PK lookup + json.loads"),
    ("vector_p50", f"vector search p50 (k={K}, ef={EF_DEFAULT})", "hnswlib knn_query"),
    ("vector_recall", f"vector recall@{K} vs brute force", "hnswlib"),
    ("lex_first", "lexical: open + 1st query (fresh)", "FTS5 bm25: connect + query"),
    ("lex_cli", "`capsule search --mode lexical` (process)", "python: FTS5 query"),
    ("lex_p50", "lexical search p50 (after the 1st)", "FTS5 bm25"),
    ("state_cli", "`capsule state --json` (process)", "python: rows as JSON"),
    ("checkpoint_first", "checkpoint: first in a handle", "hash ids + Ed25519 + insert"),
    ("checkpoint_next", "checkpoint: next (1 new record)", "hash ids + Ed25519 + insert"),
    ("verify_quick_cli", "`capsule verify --quick` (process)", "quick_check (process)"),
    ("verify_deep_cli", "`capsule verify` deep (process)", "integrity_check (process)"),
    ("verify_quick_lib", "verify(deep=False) in-process", "quick_check"),
    ("verify_deep_lib", "verify(deep=True) in-process", "integrity_check"),
    ("file_bytes", "file size", "SQLite db (with FTS5)"),
    ("raw_ratio", "file size / raw JSONL", "SQLite db / raw JSONL"),
)
ROW_KEYS = tuple(k for k, _, _ in ROWS)
GLOBAL_ROWS: tuple[tuple[str, str, str], ...] = (
    ("version_cli", "`capsule --version` (process)", "python -c pass"),
    ("import_capsule", "python -c 'import capsule'", "python -c pass"),
)


def cell(show: str | None, side: dict[str, Any]) -> str:
    v = side.get("value")
    if v is None:
        return f"ERR {side['error'][:40]}" if side.get("error") else "—"
    if show == "ms":
        return fmt_ms(v * 1000)
    if show == "s":
        return f"{v:,.2f} s"
    if show == "rps":
        return f"{v:,.0f}/s"
    if show == "recall":
        return f"{v:.4f}"
    if show == "bytes":
        return f"{v / MB:,.1f} MB"
    if show == "ratio":
        return f"{v:.2f}×"
    return f"{v:,.0f} MB/s ({side['seconds']:.2f} s)"


def table_rows(spec: Iterable[tuple[str, str, str]], per_size: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for key, what, peer in spec:
        cells = [what, peer]
        for rows in per_size:
            r = rows.get(key)
            cells += ["missing"] * 2 if r is None else [cell(r["show"], r["capsule"]), cell(r["show"], r["peer"])]
        out.append(cells)
    return out


def report(res: dict[str, Any]) -> None:
    env = res["environment"]
    sizes = res["sizes"]
    heads = ["metric", "peer"] + [h for s in sizes for h in (f"capsule {label(s['n'])}", f"peer {label(s['n'])}")]
    print_table(f"capsule at scale, beside its peers — {run_summary(res)}, load {env['loadavg_start'][0]:.1f} → "
                f"{env['loadavg_end'][0]:.1f}", heads, table_rows(ROWS, [s["rows"] for s in sizes]),
                left=("metric", "peer"), width=190)
    print_table("start-up", ["metric", "baseline", "capsule", "peer"],
                table_rows(GLOBAL_ROWS, [res["global"]]), left=("metric", "baseline"))
    for s in sizes:
        i = s["build"]
        if "error" in i:
            print(f"{label(s['n'])}: build failed: {i['error']}")
            continue
        print(f"{label(s['n'])}: {i['records']:,} records ({i['vectors']:,} with {DIM}-d vectors) in "
              f"{i['commits']:,} commit(s) through {i['capsule_ingest_api']}; raw JSONL "
              f"{i['raw_jsonl_bytes'] / MB:,.1f} MB; hnswlib file {i['hnswlib_bytes'] / MB:,.1f} MB")
        for key, r in s["rows"].items():
            for side in ("capsule", "peer"):
                if r[side].get("error"):
                    print(f"  {key} ({side}): {r[side]['error']}")
    if env.get("capsule_sources_changed_during_run"):
        print("WARNING: capsule/ changed during the run: the rows may mix two versions of the library")
    print("(process) = wall time of a fresh process, start-up included; (fresh) = the work in a fresh process, "
          "imports timed apart; warm page cache; MB = 10^6 bytes of each system's own file")


# --- main ----------------------------------------------------------------------------------------


def measure_size(cfg: Config, b: Built, where: Path, deep: list[str]) -> dict[str, dict[str, Any]]:
    """Every row at one size; a group that fails as a whole (say, the capsule
    would not open) becomes errors in its rows, and the next group runs."""
    rows = build_rows(b)
    for what, keys, fn in (
        ("open, get, vector and lexical search", ("open_lib", "open_cli"), lambda: measure_open(cfg, b)),
        ("", ("get_p50", "vector_p50", "vector_recall", "lex_p50", "lex_first", "lex_cli"),
         lambda: measure_reads(cfg, b)),
        ("state --json", ("state_cli",), lambda: measure_state(cfg, b, where)),
        ("checkpoints, then verify", ("checkpoint_first", "checkpoint_next"), lambda: measure_checkpoint(cfg, b)),
        ("", tuple(k for k in ROW_KEYS if k.startswith("verify_")), lambda: measure_verify(cfg, b, deep)),
    ):
        if what:
            log(f"{label(b.n)}: {what}")
        try:
            rows |= fn()
        except Exception as e:
            rows |= failed(keys, e)
    return rows


def run(cfg: Config, where: Path, keep: bool) -> dict[str, Any]:
    started = time.time()
    res = header(cfg.quick, started, environment(where, {"hnswlib": dist_version("hnswlib")}, sources=True),
                 config=asdict(cfg), sizes=[])
    log("start-up: capsule --version, import capsule, python -c pass")
    res["global"] = measure_startup(cfg)
    deep = deep_verify_args()
    for n in cfg.sizes:
        log(f"{label(n)}: building capsule and SQLite ({cfg.batch:,} records per commit)")
        try:
            b = build(cfg, n, where)
        except Exception as e:  # nothing to measure at this size: say why, go on to the next
            log(f"{label(n)}: build failed: {one_line(e)}")
            res["sizes"].append({"n": n, "build": {"error": one_line(e)}, "rows": failed(ROW_KEYS, e)})
        else:
            res["sizes"].append({"n": n, "build": b.info, "rows": measure_size(cfg, b, where, deep)})
        if not keep:
            for p in where.glob(f"scale-{label(n)}.*"):
                p.unlink()
    finish(res, started)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "a tiny size (1,000 unless --sizes), one run per row: a smoke test")
    ap.add_argument("--json", dest="out", type=Path, default=argparse.SUPPRESS, help="same as --out")
    ap.add_argument("--sizes", type=parse_sizes, default=None,
                    help="record counts (default 10k,100k; e.g. 10k,100k,1M)")
    ap.add_argument("--keep", type=Path, default=None, help="build the files in DIR and keep them")
    args = ap.parse_args(argv)
    cfg = Config.make(args.quick, args.sizes)
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        res = run(cfg, args.keep, keep=True)
    else:
        with scratch_dir("capsule-bench-scale-", args.tmpdir) as tmp:
            res = run(cfg, tmp, keep=False)
    report(res)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
