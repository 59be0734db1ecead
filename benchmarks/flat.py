"""Flat costs (issue 14): the action journal without a scan, ``capsule state --json``, and the
rates of one record per commit and of checkpoints, each beside its peer in the same run.

    .venv/bin/python benchmarks/flat.py [--quick] [--out PATH] [--tmpdir DIR] [--only PART,...]

* **journal**: frames read and time of one ``run_once`` (a new key, then a done one) right
  after a writer's open, on capsules with 2,000 and 50,000 past actions. The frames are
  counted by wrapping every frame-header parse. No peer: a journal in SQLite is an index.
* **state**: ``capsule state --json`` in a fresh process (median of 3) and in-process
  (open + fold + JSON) on a capsule of 100,000 memories (10,000 with ``--quick``).
* **commit**: records/s at one record per commit, capsule and SQLite (WAL,
  synchronous=FULL, as in ``store.py``) fed in alternating blocks; fsyncs per commit.
* **checkpoint**: per step, 100 records committed then a signed checkpoint, against one
  LangGraph SqliteSaver ``put`` of the same 100 records (as in ``checkpoints.py``);
  checkpoints/s, steps/s, the fused form (records and checkpoint in one commit), fsyncs per
  checkpoint. Needs ``pip install -e '.[bench]'``.

For the two write loops it also prints where the capsule side's time goes (cProfile's
top entries: ``posix.fdatasync`` is the disk, everything else is Python). Run it against
older code with ``PYTHONPATH`` pointing at that checkout: it uses the public API only.
"""

from __future__ import annotations

import cProfile
import resource
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    arg_parser,
    environment,
    finish,
    header,
    interleave,
    log,
    print_table,
    print_top,
    rotated,
    run_summary,
    scratch_dir,
    top_entries,
    write_results,
)
from store import MemoryGen, capsule_append, sqlite_append, sqlite_create

import capsule
import capsule.format.file as cfile
from capsule.format import frames as cframes

DEFAULT_OUT = RESULTS / "flat.json"
PARTS = ("journal", "state", "commit", "checkpoint")


@contextmanager
def counting(module_attr: str) -> Iterator[list[int]]:
    """Count calls of ``parse_frame_header`` (every frame read parses one) or of
    ``WriteHandle.sync`` (every fsync), wherever capsule's modules call it."""
    n = [0]
    if module_attr == "sync":
        real_sync = cfile.WriteHandle.sync

        def sync(self: Any) -> None:
            n[0] += 1
            real_sync(self)

        cfile.WriteHandle.sync = sync  # type: ignore[method-assign]
        try:
            yield n
        finally:
            cfile.WriteHandle.sync = real_sync  # type: ignore[method-assign]
        return
    real = cframes.parse_frame_header

    def counted(*a: Any, **kw: Any) -> Any:
        n[0] += 1
        return real(*a, **kw)

    mods = [m for name, m in list(sys.modules.items())
            if name.startswith("capsule.") and getattr(m, "parse_frame_header", None) is real]
    for m in mods:
        m.parse_frame_header = counted  # type: ignore[attr-defined]
    try:
        yield n
    finally:
        for m in mods:
            m.parse_frame_header = real  # type: ignore[attr-defined]


# --- journal ------------------------------------------------------------------------------------


def past_actions(path: Path, n: int, per_commit: int = 50) -> None:
    from capsule.run.actions import Action

    with capsule.create(path) as cap:
        for lo in range(0, n, per_commit):
            with cap.commit() as tx:
                for i in range(lo, min(lo + per_commit, n)):
                    key = f"email:{i}"
                    tx.put(Action.build(time=cap.clock(), key=key, phase="intent", attempt=1, what="send"))
                    tx.put(Action.build(time=cap.clock(), key=key, phase="result", attempt=1, value=f"msg-{i}"))


def bench_journal(tmp: Path, sizes: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        p = tmp / f"journal-{n}.capsule"
        log(f"journal: {n:,} past actions")
        past_actions(p, n)
        with capsule.open(p, "a") as cap, counting("frames") as frames:
            t0 = time.perf_counter()
            cap.run_once("email:new", lambda: "sent")
            t1 = time.perf_counter()
            assert cap.run_once("email:7", lambda: "again") == "msg-7"
            t2 = time.perf_counter()
        rows.append({"past_actions": n, "frames_read": frames[0], "run_once_new_ms": round((t1 - t0) * 1e3, 2),
                     "run_once_done_ms": round((t2 - t1) * 1e3, 2), "file_bytes": p.stat().st_size})
        p.unlink()
    return rows


# --- state --json -----------------------------------------------------------------------------------


def state_doc(cap: capsule.Capsule) -> bytes:
    st = cap.state()
    if hasattr(st, "to_json_bytes"):
        return st.to_json_bytes()  # type: ignore[no-any-return]
    from capsule_cli._render import json_text  # the first wave's CLI path

    return json_text(st.to_dict(), compact=True).encode()


def bench_state(tmp: Path, n: int) -> dict[str, Any]:
    p = tmp / f"state-{n}.capsule"
    log(f"state: building {n:,} memories")
    gen = MemoryGen()
    with capsule.create(p) as cap:
        for lo in range(0, n, 10_000):
            capsule_append(cap, gen.take(min(10_000, n - lo)))
    inproc, inproc_cpu = [], []
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        with capsule.open(p) as cap:
            size = len(state_doc(cap))
        inproc.append(time.perf_counter() - t0)
        inproc_cpu.append(time.process_time() - c0)
    cli, cli_cpu = [], []
    for _ in range(3):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "capsule_cli.main", "state", str(p), "--json"],
                             check=True, capture_output=True)
        cli.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli_cpu.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
        assert len(out.stdout) >= size + 1  # the CLI may escape some characters (\u2028...)
    p.unlink()
    # CPU seconds beside wall seconds: on a shared machine the wall clock also counts waiting
    return {"records": n, "json_bytes": size, "in_process_s": round(min(inproc), 3),
            "in_process_cpu_s": round(min(inproc_cpu), 3), "cli_fresh_process_s": round(statistics.median(cli), 3),
            "cli_fresh_process_cpu_s": round(statistics.median(cli_cpu), 3)}


# --- one record per commit -------------------------------------------------------------------------


def bench_commit(tmp: Path, n: int) -> dict[str, Any]:
    recs = MemoryGen(seed=3).take(n)
    cap = capsule.create(tmp / "commit.capsule")
    con = sqlite_create(tmp / "commit.sqlite")
    spent = {"capsule": 0.0, "sqlite": 0.0}
    prof = cProfile.Profile()
    try:
        with counting("sync") as syncs:
            for span, order in interleave(n, 8, ("capsule", "sqlite")):
                for who in order:
                    t0 = time.perf_counter()
                    if who == "capsule":
                        for i in span:
                            capsule_append(cap, [recs[i]])
                    else:
                        for i in span:
                            sqlite_append(con, [recs[i]])
                    spent[who] += time.perf_counter() - t0
        prof.enable()  # where the time goes: a separate pass (the profiler slows Python, not the disk)
        for rec in MemoryGen(seed=4).take(n // 4):
            capsule_append(cap, [rec])
        prof.disable()
    finally:
        cap.close()
        con.close()
    return {"commits": n, "capsule_rps": round(n / spent["capsule"]), "sqlite_rps": round(n / spent["sqlite"]),
            "ratio": round(spent["sqlite"] / spent["capsule"], 2), "capsule_fsyncs_per_commit": round(syncs[0] / n, 3),
            "profile": top_entries(prof, 12)}


# --- checkpoints -------------------------------------------------------------------------------------


def bench_checkpoint(tmp: Path, steps: int, per: int = 100) -> dict[str, Any]:
    from checkpoints import THREAD_CFG, lg_put
    from langgraph.checkpoint.sqlite import SqliteSaver

    key = capsule.generate_key()
    cap = capsule.create(tmp / "ck.capsule")
    fused = capsule.create(tmp / "fused.capsule")
    saver = SqliteSaver(sqlite3.connect(tmp / "ck.sqlite", check_same_thread=False))
    saver.setup()
    gen = MemoryGen(seed=7)
    t: dict[str, list[float]] = {"commit": [], "checkpoint": [], "fused": [], "put": []}
    parent: dict[str, Any] = THREAD_CFG
    versions: dict[str, str] = {}
    prof = cProfile.Profile()
    syncs_ck = 0
    try:
        for k in range(1, steps + 1):
            recs = gen.take(per)
            for who in rotated(("capsule", "sqlite"), k - 1):
                if who == "capsule":
                    t0 = time.perf_counter()
                    capsule_append(cap, recs)
                    t1 = time.perf_counter()
                    with counting("sync") as n:
                        cap.checkpoint(f"ck-{k:05d}", key=key)
                    syncs_ck += n[0]
                    t2 = time.perf_counter()
                    with fused.commit() as tx:
                        for text, tags, meta, tm in recs:
                            tx.remember(text, tags=tags, meta=meta, time=tm)
                        tx.checkpoint(f"ck-{k:05d}", key=key)
                    t3 = time.perf_counter()
                    t["commit"].append(t1 - t0)
                    t["checkpoint"].append(t2 - t1)
                    t["fused"].append(t3 - t2)
                else:
                    t0 = time.perf_counter()
                    parent, _ = lg_put(saver, parent, k, recs, versions)
                    t["put"].append(time.perf_counter() - t0)
        for k in range(steps + 1, steps + 1 + steps // 4):  # the profiled pass
            capsule_append(cap, gen.take(per))
            prof.enable()
            cap.checkpoint(f"ck-{k:05d}", key=key)
            prof.disable()
    finally:
        cap.close()
        fused.close()
        saver.conn.close()

    def rate(xs: list[float]) -> int:
        return round(len(xs) / sum(xs))

    return {"steps": steps, "records_per_step": per, "capsule_checkpoints_per_s": rate(t["checkpoint"]),
            "capsule_steps_per_s": round(steps / (sum(t["commit"]) + sum(t["checkpoint"]))),
            "capsule_fused_steps_per_s": rate(t["fused"]), "sqlitesaver_puts_per_s": rate(t["put"]),
            "capsule_fsyncs_per_checkpoint": round(syncs_ck / steps, 3),
            "median_ms": {k: round(statistics.median(v) * 1e3, 3) for k, v in t.items()},
            "profile": top_entries(prof, 12)}


# --- main ---------------------------------------------------------------------------------------------


def run(quick: bool, tmp: Path, parts: tuple[str, ...]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    if "journal" in parts:
        res["journal"] = bench_journal(tmp, (2_000, 10_000) if quick else (2_000, 50_000))
    if "state" in parts:
        res["state"] = bench_state(tmp, 10_000 if quick else 100_000)
    if "commit" in parts:
        log("commit: one record per commit, capsule and SQLite interleaved")
        res["commit"] = bench_commit(tmp, 500 if quick else 3_000)
    if "checkpoint" in parts:
        log("checkpoint: 100 records + a checkpoint per step, capsule and SqliteSaver interleaved")
        res["checkpoint"] = bench_checkpoint(tmp, 50 if quick else 300)
    return res


def table(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for j in res.get("journal", []):
        rows.append([f"run_once after open, {j['past_actions']:,} past actions",
                     f"{j['frames_read']} frames, {j['run_once_new_ms']} ms", "—"])
    if "state" in res:
        s = res["state"]
        rows.append([f"state --json, {s['records']:,} records (fresh process)",
                     f"{s['cli_fresh_process_s']} s ({s['cli_fresh_process_cpu_s']} s CPU)", "—"])
        rows.append(["state --json in process (open + fold + JSON)",
                     f"{s['in_process_s']} s ({s['in_process_cpu_s']} s CPU)", "—"])
    if "commit" in res:
        c = res["commit"]
        rows.append(["1 record per commit", f"{c['capsule_rps']:,}/s ({c['capsule_fsyncs_per_commit']} fsync)",
                     f"{c['sqlite_rps']:,}/s"])
    if "checkpoint" in res:
        c = res["checkpoint"]
        rows.append(["checkpoint (after a 100-record commit)",
                     f"{c['capsule_checkpoints_per_s']:,}/s ({c['capsule_fsyncs_per_checkpoint']} fsync)",
                     f"{c['sqlitesaver_puts_per_s']:,}/s put"])
        rows.append(["step: commit + checkpoint / fused in one commit",
                     f"{c['capsule_steps_per_s']:,}/s / {c['capsule_fused_steps_per_s']:,}/s",
                     f"{c['sqlitesaver_puts_per_s']:,}/s put"])
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "small sizes (a smoke test)")
    ap.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    args = ap.parse_args(argv)
    parts = tuple(p for p in args.only.split(",") if p)
    started = time.time()
    with scratch_dir("capsule-flat-", args.tmpdir) as tmp:
        env = environment(tmp)
        res = header(args.quick, started, env, **run(args.quick, tmp, parts))
    finish(res, started)
    print_table(f"flat costs ({run_summary(res)})", ("measure", "capsule", "peer"), table(res),
                left=("measure",))
    for part in ("commit", "checkpoint"):
        if part in res:
            print(f"{part}: where the capsule side's time goes (cProfile, self time)")
            print_top(res[part]["profile"], 12)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
