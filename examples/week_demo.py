"""A week-long agent workflow in about a minute, killed with SIGKILL again and again.

    python examples/week_demo.py            # the whole demo (what `make demo` runs)
    python examples/week_demo.py --worker CAPSULE OUTBOX KEY   # one agent process

The agent works through 7 simulated days. Each day it gathers facts (memories),
decides with evidence (a decision), gets the decision approved (an Ed25519
approval), acts (an email and a ticket written into a real SQLite database that
stands for the outside world, each through run_once with a reconcile that looks
the key up there) and writes a report note. The driver kills the agent with
SIGKILL at random moments, restarts it each time, then copies the capsule to
another directory ("another host"), verifies it there and prints what happened.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import capsule
from capsule import AgentLoop, Step

DAY = 86_400 * 10**9
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
STEP = 60 * 10**9  # every clock reading moves simulated time on by a minute
DAYS = 7
KINDS = ("gather", "decide", "approve", "act", "report")
THINK = 0.12  # seconds of "thinking" per step: time for the kills to land mid-work


class SimClock:
    """Simulated time that resumes from the capsule: time is part of the state."""

    def __init__(self, start: int) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += STEP
        return self.now

    def advance_to(self, t: int) -> None:
        self.now = max(self.now, t)


# --- the outside world: a SQLite "mail server" and "ticket system" -------------------------


def outbox(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, kind TEXT, body TEXT)")  # no unique key on purpose
    return db


def effect(db: sqlite3.Connection, key: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    time.sleep(0.01)  # a real call takes time: a window for the kill to land in
    db.execute("INSERT INTO effects VALUES (?, ?, ?)", (key, kind, json.dumps(body)))
    db.commit()
    time.sleep(0.01)
    return body


def lookup(db: sqlite3.Connection) -> Any:
    def reconcile(key: str) -> Any:
        row = db.execute("SELECT body FROM effects WHERE key = ?", (key,)).fetchone()
        return capsule.NOT_DONE if row is None else json.loads(row[0])

    return reconcile


# --- the agent ----------------------------------------------------------------------------


def handlers(db: sqlite3.Connection, key: capsule.PrivateKey) -> dict[str, Any]:
    def thinking(fn: Any) -> Any:
        def step(s: Step) -> Any:
            time.sleep(THINK)  # a model call would take this long, and longer
            return fn(s)

        return step

    def gather(s: Step) -> list[str]:
        d = s.payload["day"]
        base = T0 + d * DAY
        facts = [f"day {d + 1}: customer ticket volume is {120 + 7 * d} per day",
                 f"day {d + 1}: deploy window is {'closed' if d % 3 == 2 else 'open'}",
                 f"day {d + 1}: on-call engineer is {['ana', 'bo', 'cy'][d % 3]}"]
        with s.cap.commit() as tx:  # explicit times: a re-run writes the same records
            return [tx.remember(f, tags=["ops", f"day-{d + 1}"], time=base + i) for i, f in enumerate(facts)]

    def decide(s: Step) -> str:
        d = s.payload["day"]
        evidence = s.result_of(f"gather-{d}")
        with s.cap.commit() as tx:
            return tx.decide(f"day {d + 1}: {'hold' if d % 3 == 2 else 'ship'} the release",
                             rationale="based on the deploy window and ticket volume",
                             evidence=evidence, time=T0 + d * DAY + 10)

    def approve(s: Step) -> str:
        d = s.payload["day"]
        with s.cap.commit() as tx:
            return tx.approve(s.result_of(f"decide-{d}"), key, time=T0 + d * DAY + 20)

    def act(s: Step) -> dict[str, Any]:
        d = s.payload["day"]
        mail = s.run_once(f"email:day-{d + 1}", lambda: effect(db, f"email:day-{d + 1}", "email",
                          {"to": "team@example.com", "subject": f"day {d + 1} release plan"}),
                          reconcile=lookup(db))
        ticket = s.run_once(f"ticket:day-{d + 1}", lambda: effect(db, f"ticket:day-{d + 1}", "ticket",
                            {"title": f"release day {d + 1}"}), reconcile=lookup(db))
        return {"email": mail, "ticket": ticket}

    def report(s: Step) -> str:
        d = s.payload["day"]
        with s.cap.commit() as tx:
            return tx.note(f"day {d + 1} done: email and ticket sent", time=T0 + d * DAY + 30)

    return {k: thinking(f) for k, f in
            {"gather": gather, "decide": decide, "approve": approve, "act": act, "report": report}.items()}


def worker(cap_path: Path, db_path: Path, key_path: Path) -> int:
    key = capsule.load_private_key(key_path)
    probe = capsule.open(cap_path)
    last = probe.log()[-1].time if probe.commit_count else T0
    probe.close()
    clock = SimClock(max(last, T0))
    db = outbox(db_path)
    with capsule.open(cap_path, "a", clock=clock) as cap:
        if not cap.tasks.queue().tasks:
            specs = []
            for d in range(DAYS):
                prev = None
                for k in KINDS:
                    specs.append({"task": f"{k}-{d}", "name": k, "deps": [prev] if prev else [],
                                  "not_before": T0 + d * DAY, "payload": {"day": d}})
                    prev = f"{k}-{d}"
            cap.tasks.add_many(specs, now=T0)
            with cap.commit() as tx:
                tx.set_identity("week-agent", name="Release helper", model="scripted (no model)",
                                keys=[key.public_key], time=T0)
                tx.constrain("never send the same email twice", scope="outbox", time=T0)
            cap.checkpoint("plan", key=key)
        loop = AgentLoop(cap, handlers(db, key), lease=30 * 60 * 10**9, key=key, checkpoint_every=5,
                         jump_when_idle=True)
        loop.run()
    return 0


# --- the driver ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=3, metavar=("CAPSULE", "OUTBOX", "KEY"))
    ap.add_argument("--kills", type=int, default=12)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if args.worker:
        return worker(*map(Path, args.worker))
    rnd = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="capsule-week-"))
    host_a, host_b = work / "host-a", work / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    cap_path, db_path, key_path = host_a / "agent.capsule", host_a / "world.sqlite", host_a / "agent.key"
    capsule.save_private_key(key_path, capsule.generate_key(), passphrase=None)
    capsule.create(cap_path, clock=lambda: T0).close()
    print(f"a week of agent work in {work} ...")
    crashes = 0
    started = time.monotonic()
    while True:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(cap_path), str(db_path), str(key_path)])
        if crashes < args.kills:
            try:
                proc.wait(timeout=rnd.uniform(0.1, 0.6))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                crashes += 1
                print(f"  SIGKILL #{crashes} (the agent restarts)", flush=True)
                continue
        if proc.wait() == 0:
            with capsule.open(cap_path) as cap:
                if all(t.status == "done" for t in cap.tasks.queue().tasks.values()):
                    break
        elif proc.returncode not in (0, -signal.SIGKILL):
            print(f"agent exited with {proc.returncode}")
            return 1
    elapsed = time.monotonic() - started
    with capsule.open(cap_path) as cap:
        root_a = cap.state_root
    moved = host_b / "moved.capsule"
    shutil.copyfile(cap_path, moved)  # another "host": another directory and name
    db = sqlite3.connect(db_path)
    rows = db.execute("SELECT key, count(*) FROM effects GROUP BY key").fetchall()
    executed = sum(n for _, n in rows)
    duplicated = sum(n - 1 for _, n in rows if n > 1)
    rep = capsule.verify(moved, trust=capsule.load_public_key(Path(str(key_path) + ".pub")))
    with capsule.open(moved) as cap, cap.view(_last_day_commit(cap)) as before:
        st = cap.state().to_dict()
        q = cap.tasks.queue()
        done = sum(t.status == "done" for t in q.tasks.values())
        root_b = cap.state_root
        new_ids = {bytes.fromhex(r.id) for r in cap.records()} - {bytes.fromhex(r.id) for r in before.records()}
        changed = [r for r in cap.records() if bytes.fromhex(r.id) in new_ids and r.kind in
                   ("memory", "decision", "approval", "note")]
    print()
    print(f"crashes survived          {crashes} (SIGKILL at random moments), {elapsed:.1f} s")
    print(f"side effects expected     {2 * DAYS}")
    print(f"side effects executed     {executed}")
    print(f"side effects duplicated   {duplicated}")
    print(f"tasks done                {done} / {len(q.tasks)}")
    print(f"state root on host A      {root_a}")
    print(f"state root on host B      {root_b}  ({'equal' if root_a == root_b else 'DIFFERENT'})")
    print(f"verify on host B          {'ok' if rep.ok else rep.first_error}, {rep.checkpoints} signed checkpoints, "
          f"{'anchored' if rep.anchored else 'not anchored'}")
    print()
    print("what the agent believes now:")
    for m in st["memories"]["working"][-3:]:
        print(f"  - {m['text']}")
    for d in st["decisions"][-2:]:
        ok = sum(a["verified"] for a in d["approvals"])
        print(f"  - decided: {d['summary']} ({ok} verified approval)")
    print("what changed on the last day:")
    for r in changed:
        text = getattr(r, "text", None) or getattr(r, "summary", None) or f"approval by {r.approver}"
        print(f"  + {r.kind}: {text}")
    ok = rep.ok and root_a == root_b and duplicated == 0 and executed == 2 * DAYS and done == len(q.tasks)
    print("\nresult:", "ok" if ok else "FAILED")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def _last_day_commit(cap: capsule.Capsule) -> int:
    """The seq of the last commit before the last simulated day began."""
    start = T0 + (DAYS - 1) * DAY
    seqs = [row.seq for row in cap.log() if row.time < start]
    return seqs[-1] if seqs else 0


if __name__ == "__main__":
    sys.exit(main())
