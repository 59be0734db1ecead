"""Durable execution after a fresh-context review (s15): compaction of a handle other threads
commit through, a fork killed midway, a loop restarted with a clock behind the queue's,
loop labels after a compaction, `tasks --now`, and `deps` given as text.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import capsule
from capsule.run.events import InvalidTaskEvent

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
S = 10**9


class Clock:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t


def test_compacting_a_handle_in_place_loses_no_commit_of_another_thread(tmp_path: Path) -> None:
    """A thread ran effects through run_once while another compacted the shared handle in place:
    commits made after the plan landed in the old file, and the rename lost them (38 of 59
    effects gone from the journal: run_once ran them again)."""
    p = tmp_path / "t.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:
        for i in range(20_000):
            tx.remember(f"filler memory {i}")
    ran: list[str] = []
    added: list[str] = []
    stop, errors = threading.Event(), []

    def worker() -> None:
        i = 0
        while not stop.is_set():
            try:
                cap.run_once(f"email:{i}", lambda i=i: ran.append(f"email:{i}") or i)
                added.append(cap.tasks.add(f"task{i}"))
            except capsule.CapsuleError as e:
                errors.append(e)
                return
            i += 1

    th = threading.Thread(target=worker)
    th.start()
    while len(ran) < 20:
        time.sleep(0.005)
    cap.compact(keep="live")  # in place: the handle is closed after
    stop.set()
    th.join(60)
    assert errors and "closed" in str(errors[0])  # the worker's next commit found the handle closed
    with capsule.open(p, "a") as again:
        states = {a.key: a.status for a in again.actions()}
        assert [k for k in ran if states.get(k) != "done"] == []
        assert set(added) <= set(again.tasks.queue().tasks)
        rerun: list[str] = []
        for k in ran[-3:]:
            again.run_once(k, lambda k=k: rerun.append(k))
        assert rerun == []
    assert capsule.verify(p).ok


KILLED_FORK = """
import importlib, os, signal, sys
carry = importlib.import_module("capsule.handle.carry")
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
carry.carry_snapshots = die
import capsule
capsule.fork(sys.argv[1], sys.argv[2])
"""


def test_a_fork_killed_midway_leaves_no_fork(tmp_path: Path) -> None:
    """The fork's LINEAGE commit was made durable at -o before its records: a kill left a file
    that opened, verified against its parent and ran the parent's done effects again."""
    parent, out = tmp_path / "parent.capsule", tmp_path / "f.capsule"
    with capsule.create(parent) as cap:
        with cap.commit() as tx:
            tx.remember("kept")
        for i in range(5):
            cap.run_once(f"email:{i}", lambda i=i: i)
    p = subprocess.run([sys.executable, "-c", KILLED_FORK, str(parent), str(out)], capture_output=True, timeout=120,
                       check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert not out.exists()
    left = [n for n in os.listdir(tmp_path) if n.startswith(".f.capsule.fork-")]
    assert left  # the temporary file a dead forker leaves; the next fork to that name sweeps it
    with capsule.fork(parent, out) as child:
        ran: list[int] = []
        child.run_once("email:3", lambda: ran.append(3))
        assert ran == [] and [m.text for m in child.records(kind="memory")] == ["kept"]
    assert capsule.verify(out, parent=parent).ok
    r = subprocess.run([str(CAPSULE_BIN), "fork", str(parent), "-o", str(out)], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 2 and "already exists" in r.stderr


def test_the_loop_resumes_when_the_clock_is_behind_the_queues(tmp_path: Path) -> None:
    """Restarted with a clock behind the queue's time, the loop judged its own lease live by the
    raw clock, while the queue (max(clock, its time), 7.9) refused the heartbeat: LeaseError on
    every restart."""
    p = tmp_path / "t.capsule"
    clk = Clock(1000 * S)
    with capsule.create(p, clock=clk) as cap:
        cap.tasks.add("a", name="h")
        cap.tasks.add("b", name="h")
        cap.tasks.claim("a", "agent", lease=600 * S)
        clk.t = 2000 * S
        cap.tasks.claim("b", "other", lease=600 * S)
    with capsule.open(p, "a", clock=Clock(1005 * S)) as cap:
        assert [t.id for t in cap.tasks.due()] == ["a"]
        res = capsule.AgentLoop(cap, {"h": lambda step: "ok"}, worker="agent").run()
        assert res.done == ["a"] and res.waiting == ["b"]


def test_loop_labels_stay_unique_after_a_compaction(tmp_path: Path) -> None:
    p = tmp_path / "t.capsule"
    key = capsule.generate_key()
    handlers = {"h": lambda step: step.name}
    with capsule.create(p) as cap:
        cap.tasks.add_many([{"task": f"t{i}", "name": "h"} for i in range(3)])
        capsule.AgentLoop(cap, handlers, key=key, checkpoint_every=1).run()
    capsule.compact(p, keep="history")
    with capsule.open(p, "a") as cap:
        assert [c.label for c in cap.carried_checkpoints()] == ["loop-1", "loop-2", "loop-3"]
        cap.tasks.add_many([{"task": f"u{i}", "name": "h"} for i in range(2)])
        capsule.AgentLoop(cap, handlers, key=key, checkpoint_every=1).run()
        assert [c.label for c in cap.checkpoints()] == ["loop-4", "loop-5"]


def test_tasks_now_judges_the_queue_at_the_capsules_own_time(tmp_path: Path) -> None:
    """An agent on a simulated clock: the live view judged by the wall clock said a leased task
    and a task not yet due were both due."""
    p = tmp_path / "t.capsule"
    t0 = 1_767_603_600 * S
    with capsule.create(p, clock=Clock(t0)) as cap:
        cap.tasks.add("a")
        cap.tasks.add("b", not_before=t0 + 3600 * S)
        cap.tasks.claim("a", "agent", lease=600 * S)

    def due(*args: str) -> list[str]:
        r = subprocess.run([str(CAPSULE_BIN), "tasks", str(p), "--json", *args], capture_output=True, text=True,
                           timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        return sorted(json.loads(r.stdout)["due"])

    assert due() == ["a", "b"]  # the wall clock, a year on
    assert due("--now", "last") == []
    assert due("--now", "2026-01-05T09:05:00Z") == []  # a leased to 09:10, b not before 10:00
    assert due("--now", "2026-01-05T09:30:00Z") == ["a"]  # a's lease ran out
    assert due("--now", "2026-01-05T10:00:00Z") == ["a", "b"]
    bad = subprocess.run([str(CAPSULE_BIN), "tasks", str(p), "--now", "someday"], capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--now" in bad.stderr


def test_deps_given_as_text_are_refused_not_split(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "t.capsule") as cap:
        for t in ("a", "b", "ab"):
            cap.tasks.add(t)
        with pytest.raises(InvalidTaskEvent, match="deps must be a list"):
            cap.tasks.add("x", deps="ab")
        assert "x" not in cap.tasks.queue().tasks
        cap.tasks.add("y", deps=["ab"])
        assert cap.tasks.queue().tasks["y"].deps == ("ab",)
