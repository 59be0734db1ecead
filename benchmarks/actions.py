#!/usr/bin/env python3
"""Durable-action benchmark: capsule's ``run_once`` side by side with DBOS steps, in one run.

    .venv/bin/python benchmarks/actions.py [--quick] [--out PATH] [--peer auto|dbos|sqlite] [--tmpdir DIR]

Optional peer: ``pip install dbos`` (DBOS Transact, SQLite system database).
Without it (or with ``--peer sqlite``, or when DBOS fails to launch) the peer
is a plain SQLite journal of intent/result rows, and the table says so.

A durable action here is a trivial side effect (append to a Python list)
whose outcome survives a crash once the call returns. It measures actions/s:

* **one action at a time**, 2,000 actions (``--quick``: 200). capsule:
  ``cap.run_once(key, fn)``, which commits and fsyncs an intent record before
  ``fn`` and a result record after it (2 commits, 2 fsyncs per action). DBOS:
  one ``@DBOS.workflow()`` per action (workflow id = the action key, DBOS's
  idempotency key) calling one ``@DBOS.step()``. Plain SQLite: look the key
  up, insert an intent row + commit, do the effect, insert a result row + commit.
* **groups of 100**, 20,000 actions (``--quick``: 2,000). capsule has no public
  batch API for actions (action records are internal, written only by
  ``run_once``/``action()``), so this row is a **proxy** for what the journal
  would pay with group commit: per group, one ``cap.commit()`` of 100
  ``tx.note`` records standing for the intents, the 100 effects, then one
  commit of 100 notes standing for the results (2 commits per 100 actions).
  DBOS has no group commit either: its row is 100 steps inside one workflow
  (each step's output is still its own SQLite transaction). Plain SQLite: 100
  intent rows in one transaction, the effects, 100 result rows in one.

Every system runs with its own durability settings, which the JSON records:
capsule fsyncs (fdatasync where the platform has it) once per commit; DBOS
leaves its system database at SQLite's defaults (rollback journal,
``synchronous=FULL``); the plain SQLite peer uses ``journal_mode=WAL`` and
``synchronous=FULL``, as in ``store.py``. Semantics differ too: DBOS records a
step's output *after* it runs (no intent first), so a crash mid-step re-runs
it (at-least-once), while ``run_once`` writes the intent first and never
silently re-runs an in-doubt effect. The JSON also records how many durable
writes each system made per action (capsule: commits; DBOS: SQLite write
transactions, counted in a separate untimed pass through SQLAlchemy events).

Each variant gets a fresh file, a short untimed warm-up, and the two systems
alternate (capsule, then the peer) so drift hits both alike. The page cache is
warm. It prints one table and writes JSON (default
``benchmarks/results/actions.json``, a git-ignored folder).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    arg_parser,
    dist_version,
    environment,
    file_bytes,
    finish,
    header,
    log,
    print_table,
    run_summary,
    scratch_dir,
    write_results,
)

import capsule

DEFAULT_OUT = RESULTS / "actions.json"
WARMUP = 20  # untimed actions before each timed run (file created, caches and code paths warm)

try:
    import sqlalchemy as sa
    from dbos import DBOS, SetWorkflowID
except ImportError:  # the plain SQLite peer stands in (and the table says so)
    DBOS = None  # type: ignore[assignment,misc]

# What the peer's steps did: checked against the expected count after each run,
# so a step DBOS skipped (or replayed) would show up as a failed assertion.
peer_effects: list[int] = []

if DBOS is not None:
    # DBOS registers decorated functions in a process-wide registry that must be
    # filled before DBOS.launch(); module level is the documented place for that.

    @DBOS.step()
    def dbos_effect(i: int) -> None:
        peer_effects.append(i)

    @DBOS.workflow()
    def dbos_one(i: int) -> None:
        dbos_effect(i)

    @DBOS.workflow()
    def dbos_group(start: int, n: int) -> None:
        for i in range(start, start + n):
            dbos_effect(i)


@dataclass(frozen=True)
class Config:
    quick: bool
    single: int  # actions for the one-at-a-time variants (2 durable commits each)
    group_total: int  # actions for the group variants
    group: int = 100

    @staticmethod
    def make(quick: bool) -> Config:
        return Config(True, 200, 2_000) if quick else Config(False, 2_000, 20_000)


def _dist(lat: list[float], n: int) -> dict[str, Any]:
    """Throughput over the whole timed loop plus the spread of its units."""
    total = sum(lat)
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 99
    return {"actions": n, "seconds": round(total, 4), "per_s": round(n / total, 1),
            "unit_mean_ms": round(total / len(lat) * 1000, 3), "unit_p50_ms": round(statistics.median(lat) * 1000, 3),
            "unit_p99_ms": round(q[98] * 1000, 3), "unit_max_ms": round(max(lat) * 1000, 3)}


# --- capsule ---------------------------------------------------------------------------------------


def capsule_single(tmp: Path, n: int) -> dict[str, Any]:
    """``run_once`` per action: intent commit + fsync, effect, result commit + fsync."""
    path = tmp / "single.capsule"
    effects: list[int] = []
    with capsule.create(path) as cap:
        for i in range(WARMUP):
            cap.run_once(f"w{i}", functools.partial(effects.append, -1))
        c0 = cap.commit_count
        lat = []
        for i in range(n):
            fn = functools.partial(effects.append, i)
            t0 = time.perf_counter()
            cap.run_once(f"k{i}", fn)
            lat.append(time.perf_counter() - t0)
        commits = cap.commit_count - c0
        done = sum(st.status == "done" for st in cap.actions())
    assert effects[WARMUP:] == list(range(n)), "an effect ran twice or not at all"
    assert done == n + WARMUP, done
    res = _dist(lat, n)
    res.update({"unit": "action", "durable_commits_per_action": commits / n, "file_bytes": file_bytes(path),
                "bytes_per_action": round(file_bytes(path) / (n + WARMUP), 1)})
    path.unlink()
    return res


def capsule_group_proxy(tmp: Path, n: int, g: int) -> dict[str, Any]:
    """The journal's group-commit cost, approximated with public records: per
    group one commit of ``g`` intent notes, the effects, one commit of ``g``
    result notes. Every note text is unique so content addressing stores each."""
    path = tmp / "group.capsule"
    effects: list[int] = []

    def group(tag: str, start: int) -> None:
        keys = [f"{tag}{i}" for i in range(start, start + g)]
        with cap.commit() as tx:
            for k in keys:
                tx.note(f"action {k} intent attempt 1")
        for i in range(start, start + g):
            effects.append(i)
        with cap.commit() as tx:
            for k in keys:
                tx.note(f"action {k} result attempt 1 ok")

    with capsule.create(path) as cap:
        for j in range(2):
            group("w", j * g)
        c0, r0 = cap.commit_count, len(cap)
        effects.clear()
        lat = []
        for start in range(0, n, g):
            t0 = time.perf_counter()
            group("k", start)
            lat.append(time.perf_counter() - t0)
        commits, records = cap.commit_count - c0, len(cap) - r0
    assert effects == list(range(n))
    assert records == 2 * n, records
    res = _dist(lat, n)
    res.update({"unit": f"group of {g}", "durable_commits_per_action": commits / n, "file_bytes": file_bytes(path),
                "bytes_per_action": round(file_bytes(path) / (n + 2 * g), 1)})
    path.unlink()
    return res


# --- peer: DBOS ------------------------------------------------------------------------------------


class WriteCounter:
    """Counts the SQLite transactions on an engine that wrote something (an
    INSERT/UPDATE/DELETE/REPLACE ran before the commit); read-only commits are
    counted apart. Public SQLAlchemy events, attached only for an untimed pass."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.writes, self.reads = engine, 0, 0

    def _exec(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip()[:7].upper().startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")):
            conn.info["bench_wrote"] = True

    def _commit(self, conn: Any) -> None:
        if conn.info.pop("bench_wrote", False):
            self.writes += 1
        else:
            self.reads += 1

    def __enter__(self) -> WriteCounter:
        sa.event.listen(self.engine, "before_cursor_execute", self._exec)
        sa.event.listen(self.engine, "commit", self._commit)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._exec)
        sa.event.remove(self.engine, "commit", self._commit)


class DbosPeer:
    name = "dbos"

    def __init__(self) -> None:
        assert DBOS is not None
        self.versions = {"dbos": dist_version("dbos"), "sqlalchemy": dist_version("sqlalchemy")}
        self.pragmas: dict[str, Any] = {}
        # DBOS logs every launch and shutdown at INFO; the table is the output here.
        logging.getLogger("dbos").setLevel(logging.WARNING)

    def _launch(self, path: Path) -> Any:
        inst = DBOS(config={"name": "capsule-bench", "system_database_url": f"sqlite:///{path}",
                            "log_level": "WARNING"})
        DBOS.launch()
        eng = inst._sys_db.engine  # the system database engine DBOS itself writes through
        with eng.connect() as c:
            self.pragmas = {p: c.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "synchronous")}
        return eng

    def _rows(self, path: Path) -> tuple[int, int]:
        con = sqlite3.connect(path)
        try:
            steps = con.execute("SELECT count(*) FROM operation_outputs").fetchone()[0]
            ok = con.execute("SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS'").fetchone()[0]
        finally:
            con.close()
        return steps, ok

    def single(self, tmp: Path, n: int) -> dict[str, Any]:
        path = tmp / "dbos-single.sqlite"
        eng = self._launch(path)
        try:
            for i in range(WARMUP):
                with SetWorkflowID(f"w{i}"):
                    dbos_one(-1)
            peer_effects.clear()
            lat = []
            for i in range(n):
                t0 = time.perf_counter()
                with SetWorkflowID(f"k{i}"):
                    dbos_one(i)
                lat.append(time.perf_counter() - t0)
            assert peer_effects == list(range(n)), "a step ran twice or not at all"
            extra = 20
            with WriteCounter(eng) as wc:
                for i in range(extra):
                    with SetWorkflowID(f"x{i}"):
                        dbos_one(-1)
        finally:
            DBOS.destroy()
        steps, ok = self._rows(path)
        total = n + WARMUP + extra
        assert steps == total and ok == total, (steps, ok, total)
        res = _dist(lat, n)
        res.update({"unit": "action (1 workflow, 1 step)", "durable_commits_per_action": wc.writes / extra,
                    "read_commits_per_action": wc.reads / extra, "file_bytes": file_bytes(path),
                    "bytes_per_action": round(file_bytes(path) / total, 1)})
        return res

    def group(self, tmp: Path, n: int, g: int) -> dict[str, Any]:
        path = tmp / "dbos-group.sqlite"
        eng = self._launch(path)
        try:
            for j in range(2):
                with SetWorkflowID(f"w{j}"):
                    dbos_group(-g, g)
            peer_effects.clear()
            lat = []
            for start in range(0, n, g):
                t0 = time.perf_counter()
                with SetWorkflowID(f"k{start}"):
                    dbos_group(start, g)
                lat.append(time.perf_counter() - t0)
            assert peer_effects == list(range(n))
            with WriteCounter(eng) as wc, SetWorkflowID("x0"):
                dbos_group(-g, g)
        finally:
            DBOS.destroy()
        steps, ok = self._rows(path)
        assert steps == n + 3 * g and ok == n // g + 3, (steps, ok)
        res = _dist(lat, n)
        res.update({"unit": f"workflow of {g} steps", "durable_commits_per_action": wc.writes / g,
                    "read_commits_per_action": wc.reads / g, "file_bytes": file_bytes(path),
                    "bytes_per_action": round(file_bytes(path) / (n + 3 * g), 1)})
        return res


# --- peer: plain SQLite ----------------------------------------------------------------------------


class SqlitePeer:
    """An intent/result journal in SQLite: the same protocol as ``run_once``."""

    name = "sqlite"

    def __init__(self) -> None:
        self.versions = {"sqlite": sqlite3.sqlite_version}
        self.pragmas: dict[str, Any] = {}

    def _open(self, path: Path) -> sqlite3.Connection:
        con = sqlite3.connect(path, isolation_level=None)  # explicit BEGIN/COMMIT below
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        self.pragmas = {p: con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("journal_mode", "synchronous")}
        con.execute("CREATE TABLE actions (key TEXT NOT NULL, phase TEXT NOT NULL, attempt INTEGER NOT NULL, "
                    "time INTEGER NOT NULL, ok INTEGER, value TEXT, PRIMARY KEY (key, phase, attempt))")
        return con

    def single(self, tmp: Path, n: int) -> dict[str, Any]:
        path = tmp / "peer-single.sqlite"
        con = self._open(path)
        peer_effects.clear()

        def action(key: str, i: int) -> None:
            # An at-most-once journal must ask first whether the key ran (capsule
            # answers from its in-memory fold; SQLite from its primary key).
            prev = con.execute("SELECT phase FROM actions WHERE key = ? ORDER BY rowid DESC LIMIT 1",
                               (key,)).fetchone()
            assert prev is None
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO actions VALUES (?, 'intent', 1, ?, NULL, NULL)", (key, time.time_ns()))
            con.execute("COMMIT")
            peer_effects.append(i)
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO actions VALUES (?, 'result', 1, ?, 1, 'null')", (key, time.time_ns()))
            con.execute("COMMIT")

        for i in range(WARMUP):
            action(f"w{i}", -1)
        peer_effects.clear()
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            action(f"k{i}", i)
            lat.append(time.perf_counter() - t0)
        rows = con.execute("SELECT count(*) FROM actions").fetchone()[0]
        con.close()
        assert peer_effects == list(range(n)) and rows == 2 * (n + WARMUP)
        res = _dist(lat, n)
        res.update({"unit": "action", "durable_commits_per_action": 2.0, "file_bytes": file_bytes(path),
                    "bytes_per_action": round(file_bytes(path) / (n + WARMUP), 1)})
        return res

    def group(self, tmp: Path, n: int, g: int) -> dict[str, Any]:
        path = tmp / "peer-group.sqlite"
        con = self._open(path)

        def group(tag: str, start: int) -> None:
            keys = [f"{tag}{i}" for i in range(start, start + g)]
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO actions VALUES (?, 'intent', 1, ?, NULL, NULL)",
                            [(k, time.time_ns()) for k in keys])
            con.execute("COMMIT")
            for i in range(start, start + g):
                peer_effects.append(i)
            con.execute("BEGIN IMMEDIATE")
            con.executemany("INSERT INTO actions VALUES (?, 'result', 1, ?, 1, 'null')",
                            [(k, time.time_ns()) for k in keys])
            con.execute("COMMIT")

        for j in range(2):
            group("w", j * g)
        peer_effects.clear()
        lat = []
        for start in range(0, n, g):
            t0 = time.perf_counter()
            group("k", start)
            lat.append(time.perf_counter() - t0)
        rows = con.execute("SELECT count(*) FROM actions").fetchone()[0]
        con.close()
        assert peer_effects == list(range(n)) and rows == 2 * (n + 2 * g)
        res = _dist(lat, n)
        res.update({"unit": f"group of {g}", "durable_commits_per_action": 2 / g, "file_bytes": file_bytes(path),
                    "bytes_per_action": round(file_bytes(path) / (n + 2 * g), 1)})
        return res


def make_peer(choice: str) -> tuple[DbosPeer | SqlitePeer, str | None]:
    """The requested peer, or the plain SQLite one with the reason DBOS is not used."""
    if choice == "sqlite":
        return SqlitePeer(), "--peer sqlite was given"
    if DBOS is None:
        if choice == "dbos":
            raise SystemExit("actions.py: error: --peer dbos needs DBOS: pip install dbos")
        log("dbos is not installed: the peer is the plain SQLite journal")
        return SqlitePeer(), "dbos not installed"
    return DbosPeer(), None


# --- report ---------------------------------------------------------------------------------------


def peer_label(res: dict[str, Any]) -> str:
    p = res["peer"]
    if p["name"] == "dbos":
        return f"DBOS {p['versions']['dbos']}"
    return "plain SQLite"


def build_table(res: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    g = res["config"]["group"]
    dbos = res["peer"]["name"] == "dbos"
    labels = {
        "single": "1 action per call, intent + result each durable "
                  + ("(capsule: run_once, 2 commits; DBOS: 1 workflow + 1 step)" if dbos
                     else "(capsule: run_once; sqlite: 2 transactions)"),
        "group": f"groups of {g} — capsule PROXY: {g} intent notes in 1 commit + {g} result notes in 1 commit "
                 + (f"(DBOS: {g} steps in 1 workflow)" if dbos else f"(sqlite: {g} intents in 1 txn + {g} results in 1)"),
    }
    for key, label in labels.items():
        c, p = res[key]["capsule"], res[key]["peer"]
        n = c["actions"]
        rows.append({"variant": f"{label}, {n:,} actions", "capsule": f"{c['per_s']:,.0f}/s",
                     "peer": f"{p['per_s']:,.0f}/s", "ratio": f"{c['per_s'] / p['per_s']:.2f}×"})
    return rows


def run(cfg: Config, tmp: Path, peer: DbosPeer | SqlitePeer, why_fallback: str | None) -> dict[str, Any]:
    started = time.time()
    res = header(cfg.quick, started, environment(tmp, sources=True),
                 config={"single": cfg.single, "group_total": cfg.group_total, "group": cfg.group,
                         "warmup": WARMUP})
    log(f"one at a time: {cfg.single:,} actions (capsule run_once)")
    single: dict[str, Any] = {"capsule": capsule_single(tmp, cfg.single)}
    log(f"one at a time: {cfg.single:,} actions ({peer.name})")
    try:
        single["peer"] = peer.single(tmp, cfg.single)
    except AssertionError:
        raise  # DBOS ran but did the wrong thing: that is a finding, not a reason to swap peers
    except Exception as e:  # DBOS could not run here: say why, and measure the plain SQLite journal
        if not isinstance(peer, DbosPeer):
            raise
        why_fallback = f"dbos failed: {type(e).__name__}: {e}"
        log(f"{why_fallback}; the peer is the plain SQLite journal")
        peer = SqlitePeer()
        single["peer"] = peer.single(tmp, cfg.single)
    res["single"] = single
    log(f"groups of {cfg.group}: {cfg.group_total:,} actions (capsule proxy: notes)")
    group: dict[str, Any] = {"capsule": capsule_group_proxy(tmp, cfg.group_total, cfg.group)}
    log(f"groups of {cfg.group}: {cfg.group_total:,} actions ({peer.name})")
    group["peer"] = peer.group(tmp, cfg.group_total, cfg.group)
    res["group"] = group
    res["peer"] = {"name": peer.name, "versions": peer.versions, "pragmas": peer.pragmas,
                   "fallback_reason": why_fallback}
    finish(res, started)
    res["table"] = build_table(res)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = arg_parser(__doc__, DEFAULT_OUT, "200 / 2,000 actions: a smoke test")
    ap.add_argument("--peer", choices=("auto", "dbos", "sqlite"), default="auto",
                    help="auto: DBOS when installed, else the plain SQLite journal")
    args = ap.parse_args(argv)
    cfg = Config.make(args.quick)
    peer, why = make_peer(args.peer)
    with scratch_dir("capsule-actions-bench-", args.tmpdir) as tmp:
        res = run(cfg, tmp, peer, why)
    env, p = res["environment"], res["peer"]
    label = peer_label(res)
    print_table(f"durable actions: capsule vs {label} — {run_summary(res)}",
                ("variant", "capsule actions/s", f"{label} actions/s", "ratio (capsule ÷ peer)"), res["table"],
                cols=("variant", "capsule", "peer", "ratio"), left=("variant",), width=140)
    s, g = res["single"], res["group"]
    print(f"peer: {label} (journal_mode={p['pragmas'].get('journal_mode')}, synchronous="
          f"{p['pragmas'].get('synchronous')})" + (f"; DBOS not measured: {p['fallback_reason']}"
                                                   if p["fallback_reason"] else ""))
    print(f"durable writes per action: one at a time capsule {s['capsule']['durable_commits_per_action']:g} / "
          f"peer {s['peer']['durable_commits_per_action']:g}; groups capsule "
          f"{g['capsule']['durable_commits_per_action']:g} / peer {g['peer']['durable_commits_per_action']:g}. "
          f"Latency p50/p99 per action: capsule {s['capsule']['unit_p50_ms']:.2f}/{s['capsule']['unit_p99_ms']:.2f} "
          f"ms, peer {s['peer']['unit_p50_ms']:.2f}/{s['peer']['unit_p99_ms']:.2f} ms.")
    print("The group row's capsule figure is a PROXY (public note records, not action records: capsule has no "
          "batch API for actions)." + (" DBOS records a step's output after it runs (no intent first)."
                                       if p["name"] == "dbos" else ""))
    if env["capsule_sources_changed_during_run"]:
        print("warning: files under capsule/ changed during the run", file=sys.stderr)
    write_results(res, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
