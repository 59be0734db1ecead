#!/usr/bin/env python3
"""LangGraph benchmark (issue 13): CapsuleSaver against SqliteSaver, CapsuleStore against InMemoryStore.

    .venv/bin/python benchmarks/langgraph_bench.py [--quick] [--out PATH] [--tmpdir DIR]

Needs the ``langgraph`` extra and ``langgraph-checkpoint-sqlite`` (the ``bench`` extra).

One run, two parts, each fed to both systems in turns (blocks interleaved, each side first in
every other block, so a slow patch of the disk hits both alike):

* **Checkpointer.** One stream of LangGraph checkpoints (``create_checkpoint`` of a state with a
  step counter and the last 20 chat messages, ~2 KB) over 4 threads, built once and ``put`` into
  ``CapsuleSaver(path)`` and into a file-backed ``SqliteSaver`` (its own settings: WAL; every put
  one transaction, durable on return, as every capsule commit). Then, per side, medians of:
  ``put``; ``get_tuple`` of a thread's latest checkpoint and of a checkpoint by id; ``list`` of a
  whole thread, with ``limit=10``, and with ``before`` its middle checkpoint; and opening the file
  again (CapsuleSaver builds its index at open; SqliteSaver connects) plus one ``get_tuple``.
* **Store.** N items (~200 bytes of text, a number, a kind) in 20 namespaces under ``("users",)``,
  ``put`` one by one into ``CapsuleStore(path)`` and ``InMemoryStore``, both indexing the
  ``text`` field with the same embedder (capsule's ``hash``, 384-d; InMemoryStore gets it as its
  ``embed`` function). Then medians of ``get``; ``search`` with a query over all users and in one
  namespace (``limit=10``); filter-only ``search``; ``list_namespaces``; and, for CapsuleStore,
  reopening the file (the item index is built once at open). The top-10 overlap of the two
  stores' query results is reported beside (CapsuleStore searches the capsule's HNSW index over
  float32 vectors, InMemoryStore scans float64 ones).

InMemoryStore keeps nothing on disk: its ``put`` is a dict write and an embedding, CapsuleStore's a
durable commit. The table says what each figure includes. ``--quick`` is a smoke test of a few
seconds. Prints the table and writes JSON (default ``benchmarks/results/langgraph.json``).
If ``CapsuleSaver`` cannot be imported, the saver's capsule column is ``n/a`` with the reason.
"""

from __future__ import annotations

import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.store.memory import InMemoryStore
except ImportError:  # reported by main(): this benchmark has no fallback
    SqliteSaver = None  # type: ignore[assignment,misc]

from _common import (  # noqa: E402
    RESULTS,
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
    scratch_dir,
    write_results,
)

import capsule  # noqa: E402

DEFAULT_OUT = RESULTS / "langgraph.json"
LG_PACKAGES = ("langgraph", "langgraph-checkpoint", "langgraph-checkpoint-sqlite")
WORDS = ["deploy", "database", "alert", "budget", "latency", "owner", "billing", "service", "staging", "runbook", "rota", "pager", "metric", "units", "user", "prefers", "lisbon", "jazz", "peanut", "allergy", "release", "freeze", "friday", "backup", "cluster", "replica", "index", "vector", "search", "memory", "graph", "agent", "tool", "call", "result", "error", "retry"]
KINDS = ("fact", "preference", "event", "rule")


@dataclass(frozen=True)
class Config:
    quick: bool
    checkpoints: int  # in all threads
    threads: int
    items: int  # store items
    namespaces: int
    reads: int  # timed reads of each kind, per side
    blocks: int  # interleaving blocks

    @staticmethod
    def make(quick: bool) -> Config:
        if quick:
            return Config(True, 40, 4, 120, 20, 10, 4)
        return Config(False, 2_000, 4, 5_000, 20, 200, 20)


def med_ms(xs: Sequence[float]) -> float:
    return statistics.median(xs) * 1000 if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def sentence(rng: random.Random, n: int = 28) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# --- checkpointer --------------------------------------------------------------------------------


def make_checkpoints(cfg: Config) -> list[tuple[str, Any, dict[str, Any]]]:
    """(thread, checkpoint, metadata) in put order: the threads' steps interleaved."""
    rng = random.Random(13)
    out: list[tuple[str, Any, dict[str, Any]]] = []
    msgs: dict[str, list[dict[str, str]]] = {f"t{i}": [] for i in range(cfg.threads)}
    prev: dict[str, Any] = {}
    for n in range(cfg.checkpoints):
        thread = f"t{n % cfg.threads}"
        step = n // cfg.threads
        msgs[thread] = [*msgs[thread], {"role": rng.choice(("user", "ai")), "content": sentence(rng, 12)}][-20:]
        base = prev.get(thread) or empty_checkpoint()
        base = {**base, "channel_values": {"step": step, "messages": list(msgs[thread])},
                "channel_versions": {"step": f"{step + 1:032}.0", "messages": f"{step + 1:032}.0"}}
        ck = create_checkpoint(base, None, step)
        prev[thread] = ck
        out.append((thread, ck, {"source": "loop", "step": step, "parents": {}}))
    return out


def cfg_of(thread: str, ck_id: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if ck_id is not None:
        c["checkpoint_id"] = ck_id
    return {"configurable": c}


def open_saver(side: str, path: Path) -> Any:
    if side == "capsule":
        from capsule.integrations.langgraph import CapsuleSaver

        return CapsuleSaver(path)
    return SqliteSaver(sqlite3.connect(path, check_same_thread=False))


def close_saver(side: str, saver: Any) -> None:
    if side == "capsule":
        saver.close()
    else:
        saver.conn.close()


def run_saver(cfg: Config, tmp: Path, sides: list[str]) -> dict[str, Any]:
    stream = make_checkpoints(cfg)
    paths = {s: tmp / ("saver.capsule" if s == "capsule" else "saver.sqlite") for s in sides}
    savers = {s: open_saver(s, paths[s]) for s in sides}
    last: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in sides}
    puts: dict[str, list[float]] = {s: [] for s in sides}
    for block, order in interleave(len(stream), cfg.blocks, sides):
        for s in order:
            for i in block:
                thread, ck, meta = stream[i]
                parent = last[s].get(thread, cfg_of(thread))
                versions = ck["channel_versions"]
                dt, new = timed(lambda s=s, parent=parent, ck=ck, meta=meta, versions=versions:
                                savers[s].put(parent, ck, meta, versions))
                puts[s].append(dt)
                last[s][thread] = new
    rng = random.Random(7)
    by_thread: dict[str, list[str]] = {}
    for thread, ck, _ in stream:
        by_thread.setdefault(thread, []).append(ck["id"])
    threads = sorted(by_thread)
    res: dict[str, Any] = {s: {} for s in sides}
    probes = [(rng.choice(threads), rng.random()) for _ in range(cfg.reads)]
    for s in sides:
        sv, r = savers[s], res[s]
        latest, by_id, full, lim, before = [], [], [], [], []
        for thread, x in probes:
            ids = by_thread[thread]
            ck_id = ids[int(x * len(ids))]
            dt, tup = timed(lambda sv=sv, thread=thread: sv.get_tuple(cfg_of(thread)))
            assert tup.checkpoint["id"] == ids[-1], (s, "latest")
            latest.append(dt)
            dt, tup = timed(lambda sv=sv, thread=thread, ck_id=ck_id: sv.get_tuple(cfg_of(thread, ck_id)))
            assert tup.checkpoint["id"] == ck_id, (s, "by id")
            by_id.append(dt)
            dt, got = timed(lambda sv=sv, thread=thread: list(sv.list(cfg_of(thread))))
            assert len(got) == len(ids), (s, "list", len(got), len(ids))
            full.append(dt)
            dt, got = timed(lambda sv=sv, thread=thread: list(sv.list(cfg_of(thread), limit=10)))
            assert len(got) == min(10, len(ids))
            lim.append(dt)
            mid = ids[len(ids) // 2]
            dt, got = timed(lambda sv=sv, thread=thread, mid=mid: list(sv.list(cfg_of(thread), before=cfg_of(thread, mid))))
            assert len(got) == len(ids) // 2, (s, "before", len(got))
            before.append(dt)
        r.update(put_ms=med_ms(puts[s]), put_total_s=sum(puts[s]), get_latest_ms=med_ms(latest),
                 get_by_id_ms=med_ms(by_id), list_thread_ms=med_ms(full), list_limit10_ms=med_ms(lim),
                 list_before_ms=med_ms(before), per_thread=len(stream) // cfg.threads)
    for s in sides:
        close_saver(s, savers[s])
        reopen = []
        for _ in range(3 if cfg.quick else 5):
            t0 = time.perf_counter()
            sv = open_saver(s, paths[s])
            sv.get_tuple(cfg_of(threads[0]))
            reopen.append(time.perf_counter() - t0)
            close_saver(s, sv)
        res[s].update(reopen_get_ms=med_ms(reopen), bytes=file_bytes(paths[s]))
    return res


# --- store ---------------------------------------------------------------------------------------


def make_items(cfg: Config) -> list[tuple[tuple[str, ...], str, dict[str, Any]]]:
    rng = random.Random(11)
    return [(("users", f"u{i % cfg.namespaces:02d}"), f"m{i:06d}",
             {"text": sentence(rng), "n": i, "kind": KINDS[i % len(KINDS)]}) for i in range(cfg.items)]


def hash_embed_fn() -> Callable[[Sequence[str]], list[list[float]]]:
    emb = capsule.get_embedder("hash")

    def embed(texts: Sequence[str]) -> list[list[float]]:
        return [list(map(float, v)) for v in emb.embed(list(texts))]

    return embed


def open_store(side: str, path: Path) -> Any:
    if side == "capsule":
        from capsule.integrations.langgraph import CapsuleStore

        return CapsuleStore(path, index={"dims": 384, "embed": "hash", "fields": ["text"]})  # type: ignore[typeddict-item]
    return InMemoryStore(index={"dims": 384, "embed": hash_embed_fn(), "fields": ["text"]})


def run_store(cfg: Config, tmp: Path) -> dict[str, Any]:
    sides = ["capsule", "memory"]
    items = make_items(cfg)
    path = tmp / "store.capsule"
    stores = {s: open_store(s, path) for s in sides}
    puts: dict[str, list[float]] = {s: [] for s in sides}
    for block, order in interleave(len(items), cfg.blocks, sides):
        for s in order:
            st = stores[s]
            for i in block:
                ns, key, value = items[i]
                dt, _ = timed(lambda st=st, ns=ns, key=key, value=value: st.put(ns, key, value))
                puts[s].append(dt)
    rng = random.Random(5)
    qrng = random.Random(17)
    probes = [items[rng.randrange(len(items))] for _ in range(cfg.reads)]
    queries = [" ".join(qrng.choice(WORDS) for _ in range(4)) for _ in range(cfg.reads)]
    res: dict[str, Any] = {s: {} for s in sides}
    tops: dict[str, list[list[str]]] = {s: [] for s in sides}
    for s in sides:
        st, r = stores[s], res[s]
        gets, q_all, q_ns, flt, lns = [], [], [], [], []
        for (ns, key, value), q in zip(probes, queries, strict=True):
            dt, it = timed(lambda st=st, ns=ns, key=key: st.get(ns, key))
            assert it is not None and it.value == value, (s, "get")
            gets.append(dt)
            dt, hits = timed(lambda st=st, q=q: st.search(("users",), query=q, limit=10))
            assert len(hits) == 10, (s, "search")
            tops[s].append([h.key for h in hits])
            q_all.append(dt)
            dt, hits = timed(lambda st=st, ns=ns, q=q: st.search(ns, query=q, limit=10))
            assert hits and all(h.namespace == ns for h in hits)
            q_ns.append(dt)
            dt, hits = timed(lambda st=st, v=value: st.search(("users",), filter={"kind": v["kind"]}, limit=10))
            assert len(hits) == 10 and all(h.value["kind"] == value["kind"] for h in hits)
            flt.append(dt)
            dt, nss = timed(lambda st=st: st.list_namespaces(prefix=("users",)))
            assert len(nss) == cfg.namespaces
            lns.append(dt)
        r.update(put_ms=med_ms(puts[s]), put_total_s=sum(puts[s]), get_ms=med_ms(gets), search_query_ms=med_ms(q_all),
                 search_query_ns_ms=med_ms(q_ns), search_filter_ms=med_ms(flt), list_namespaces_ms=med_ms(lns))
    stores["capsule"].close()
    reopen = []
    for _ in range(3 if cfg.quick else 5):
        dt, st = timed(lambda: open_store("capsule", path))
        reopen.append(dt)
        assert len(st) == cfg.items
        st.close()
    res["capsule"].update(reopen_ms=med_ms(reopen), bytes=file_bytes(path))
    res["memory"].update(reopen_ms=None, bytes=None)
    overlap = [len(set(a) & set(b)) / 10 for a, b in zip(tops["capsule"], tops["memory"], strict=True)]
    res["top10_overlap"] = statistics.mean(overlap)
    return res


# --- the run -------------------------------------------------------------------------------------


def saver_side() -> str | None:
    """None when CapsuleSaver imports, else why not."""
    try:
        from capsule.integrations.langgraph import CapsuleSaver  # noqa: F401
    except Exception as e:  # any reason at all: the saver columns say it
        return f"{type(e).__name__}: {e}"
    return None


def cell(v: Any, unit: str = "ms") -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if unit == "ms":
        return fmt_ms(v)
    if unit == "bytes":
        return f"{v / 1e6:,.2f} MB" if v >= 100_000 else f"{v / 1e3:,.1f} kB"
    return f"{v:,.2f}"


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or not b:
        return "—"
    return f"{a / b:,.2f}x"


def table(cfg: Config, saver: dict[str, Any], store: dict[str, Any], saver_error: str | None) -> list[dict[str, str]]:
    rows = []
    cap = saver.get("capsule", {})
    sq = saver["sqlite"]
    na = "n/a"
    for label, key, unit in [("saver put", "put_ms", "ms"), ("saver get_tuple (latest)", "get_latest_ms", "ms"),
                             ("saver get_tuple (by id)", "get_by_id_ms", "ms"),
                             (f"saver list (whole thread, {sq['per_thread']})", "list_thread_ms", "ms"),
                             ("saver list (limit=10)", "list_limit10_ms", "ms"),
                             ("saver list (before = middle)", "list_before_ms", "ms"),
                             ("saver reopen + get_tuple", "reopen_get_ms", "ms"), ("saver file size", "bytes", "bytes")]:
        c = cap.get(key) if not saver_error else na
        rows.append({"metric": label, "capsule": cell(c, unit), "peer": cell(sq[key], unit),
                     "ratio": ratio(c, sq[key]), "peer_name": "SqliteSaver (file)"})
    cs, ms = store["capsule"], store["memory"]
    for label, key, unit in [("store put (durable vs dict)", "put_ms", "ms"), ("store get", "get_ms", "ms"),
                             ("store search query, all users", "search_query_ms", "ms"),
                             ("store search query, one namespace", "search_query_ns_ms", "ms"),
                             ("store search filter only", "search_filter_ms", "ms"),
                             ("store list_namespaces", "list_namespaces_ms", "ms"),
                             (f"store reopen ({cfg.items:,} items)", "reopen_ms", "ms"),
                             ("store file size", "bytes", "bytes")]:
        rows.append({"metric": label, "capsule": cell(cs[key], unit), "peer": cell(ms[key], unit),
                     "ratio": ratio(cs[key], ms[key]), "peer_name": "InMemoryStore"})
    rows.append({"metric": "store top-10 overlap of query results", "capsule": f"{store['top10_overlap']:.2f}",
                 "peer": "1.00", "ratio": "—", "peer_name": "InMemoryStore"})
    return rows


def run(cfg: Config, tmp: Path) -> dict[str, Any]:
    started = time.time()
    env = environment(tmp, {"langgraph": {p: dist_version(p) for p in LG_PACKAGES}}, sources=True)
    saver_error = saver_side()
    sides = ["sqlite"] if saver_error else ["capsule", "sqlite"]
    if saver_error:
        log(f"CapsuleSaver is not importable ({saver_error}): its columns are n/a")
    log(f"checkpointer: {cfg.checkpoints} checkpoints over {cfg.threads} threads, sides {sides}")
    saver = run_saver(cfg, tmp, sides)
    log(f"store: {cfg.items} items in {cfg.namespaces} namespaces")
    store = run_store(cfg, tmp)
    res = header(cfg.quick, started, env, config=cfg.__dict__, saver_error=saver_error,
                 saver=saver, store=store)
    res["table"] = table(cfg, saver, store, saver_error)
    finish(res, started)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "40 checkpoints and 120 store items: a smoke test of a few seconds")
    args = ap.parse_args(argv)
    if SqliteSaver is None:
        print("langgraph_bench.py: error: needs langgraph and its SqliteSaver: pip install '.[langgraph,bench]'",
              file=sys.stderr)
        return 2
    cfg = Config.make(args.quick)
    with scratch_dir("capsule-bench-langgraph-", args.tmpdir) as tmp:
        res = run(cfg, tmp)
    env = res["environment"]
    lg = env["langgraph"]
    title = (f"LangGraph on a capsule vs SqliteSaver {lg['langgraph-checkpoint-sqlite']} / InMemoryStore "
             f"(langgraph {lg['langgraph']}) — {res['mode']} run, {res['duration_s']} s, Python {env['python']}, "
             f"{env['cpu_count']} CPUs")
    print_table(title, ("metric", "capsule", "peer", "capsule / peer", "peer is"), res["table"],
                cols=("metric", "capsule", "peer", "ratio", "peer_name"), left=("metric", "peer is"), width=140)
    if res["saver_error"]:
        print(f"CapsuleSaver columns are n/a: {res['saver_error']}")
    print("Medians per call; warm page cache. Every CapsuleSaver / CapsuleStore put is a durable commit; "
          "SqliteSaver: WAL, one transaction per put; InMemoryStore keeps nothing on disk.")
    if env.get("capsule_sources_changed_during_run"):
        print("warning: files under capsule/ changed during the run", file=sys.stderr)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
