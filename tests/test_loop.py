"""AgentLoop resumes after a crash mid-step without repeating side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule import AgentLoop, Step

S = 10**9
T0 = 1_800_000_000 * S


class SimClock:
    def __init__(self, t: int) -> None:
        self.now = t

    def __call__(self) -> int:
        self.now += S
        return self.now

    def advance_to(self, t: int) -> None:
        self.now = max(self.now, t)


class Crash(BaseException):
    """Stands in for kill -9: not an Exception, so nothing records a result."""


def test_loop_resumes_after_a_crash_between_effect_and_result(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    sent: list[str] = []
    crash_once = {"armed": True}

    def act(s: Step) -> Any:
        def send() -> str:
            sent.append(s.name)
            if crash_once["armed"] and s.name == "b":
                crash_once["armed"] = False
                raise Crash  # the effect happened; the process "dies" before the result is written
            return f"sent {s.name}"

        return s.run_once(f"send:{s.name}", send, reconcile=lambda key: f"found {key}"
                          if key.removeprefix("send:") in sent else capsule.NOT_DONE)

    key = capsule.PrivateKey.from_seed(b"\x05" * 32)
    clock = SimClock(T0)
    with capsule.create(path, clock=clock) as cap:
        cap.tasks.add_many([{"task": "a", "name": "act"}, {"task": "b", "name": "act", "deps": ["a"]},
                            {"task": "c", "name": "act", "deps": ["b"], "not_before": T0 + 3600 * S}])
        loop = AgentLoop(cap, {"act": act}, lease=60 * S, key=key, checkpoint_every=1, jump_when_idle=True)
        with pytest.raises(Crash):
            loop.run()
    # a new process: b is claimed by a dead worker; its lease expires, it runs again,
    # and reconcile finds the email instead of sending it twice
    clock2 = SimClock(clock.now)
    with capsule.open(path, "a", clock=clock2) as cap:
        res = AgentLoop(cap, {"act": act}, lease=60 * S, key=key, checkpoint_every=1, jump_when_idle=True).run()
        assert res.done == ["b", "c"] and res.failed == []
        q = cap.tasks.queue()
        assert all(t.status == "done" for t in q.tasks.values())
        assert q.tasks["b"].result == "found send:b"
        assert clock2.now >= T0 + 3600 * S  # the idle loop jumped to c's not_before
    assert sorted(sent) == ["a", "b", "c"]  # every effect exactly once
    rep = capsule.verify(path, trust=key.public_key)
    assert rep.ok and rep.checkpoints >= 3, rep.first_error


def test_loop_records_handler_failures_and_stops_when_idle(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    clock = SimClock(T0)
    with capsule.create(path, clock=clock) as cap:
        cap.tasks.add("x", name="boom", max_attempts=1)
        cap.tasks.add("y", name="missing", max_attempts=1)
        res = AgentLoop(cap, {"boom": lambda s: 1 / 0}).run()
        assert sorted(res.failed) == ["x", "y"]
        assert cap.tasks.queue().tasks["x"].status == "failed"


def test_a_handler_that_outlives_its_lease_is_retried_not_crashed(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    clock = SimClock(T0)
    runs: list[int] = []

    def slow(s: Step) -> str:
        runs.append(1)
        if len(runs) == 1:
            for _ in range(10):
                s.cap.clock()  # 10 simulated seconds: longer than the 4 s lease
        return "ok"

    with capsule.create(path, clock=clock) as cap:
        cap.tasks.add("t", name="slow")
        res = AgentLoop(cap, {"slow": slow}, lease=4 * S, jump_when_idle=True).run(max_steps=5)
        assert res.lost == ["t"] and res.done == ["t"] and len(runs) == 2
    with capsule.open(path, "a") as cap, pytest.raises(capsule.UsageError, match="advance_to"):
        AgentLoop(cap, {}, jump_when_idle=True)


_KILLED_RUN = r"""
import os, signal, sys, capsule
from capsule import AgentLoop
path, outbox, kill_at = sys.argv[1], sys.argv[2], sys.argv[3]

def act(step):
    def send():
        with open(outbox, "a") as f:
            f.write(step.name + "\n")
        if step.name == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # the effect happened; no result is written
        return "sent"
    def reconcile(key):
        with open(outbox) as f:
            return "found" if key.removeprefix("send:") + "\n" in f.readlines() else capsule.NOT_DONE
    return step.run_once("send:" + step.name, send, reconcile=reconcile)

with capsule.open(path, "a") as cap:
    res = AgentLoop(cap, {"act": act}).run()  # the default lease: ten minutes
    print(res.done, res.resumed, res.waiting)
"""


def test_a_restarted_loop_takes_up_the_task_its_dead_run_held(tmp_path: Path) -> None:
    """From a fresh-context review: after kill -9 the rerun returned LoopResult(steps=0) at once
    and left the task its own worker had claimed until the ten-minute lease ran out."""
    import subprocess
    import sys

    path, outbox = tmp_path / "k.capsule", tmp_path / "outbox.txt"
    outbox.write_text("")
    with capsule.create(path) as cap:
        cap.tasks.add_many([{"task": f"t{i}", "name": "act", "deps": [f"t{i - 1}"] if i else []} for i in range(6)])
    script = tmp_path / "run.py"
    script.write_text(_KILLED_RUN)
    first = subprocess.run([sys.executable, str(script), str(path), str(outbox), "t2"], capture_output=True, text=True)
    assert first.returncode == -9, first.stderr
    second = subprocess.run([sys.executable, str(script), str(path), str(outbox), "none"], capture_output=True,
                            text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "['t2', 't3', 't4', 't5'] ['t2'] []"
    assert outbox.read_text().splitlines() == [f"t{i}" for i in range(6)]  # each effect once
    with capsule.open(path) as cap:
        assert cap.tasks.queue().tasks["t2"].result == "found"


def test_the_result_names_what_is_still_waiting(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "w.capsule", clock=SimClock(T0)) as cap:
        cap.tasks.add_many([{"task": "now", "name": "act"}, {"task": "later", "name": "act",
                                                             "not_before": T0 + 3600 * S}])
        res = AgentLoop(cap, {"act": lambda s: 1}).run()
        assert res.done == ["now"] and res.waiting == ["later"] and res.resumed == []
        res = AgentLoop(cap, {"act": lambda s: 1}, jump_when_idle=True).run()
        assert res.done == ["later"] and res.waiting == []


def test_a_second_loop_on_a_shared_handle_leaves_a_running_task_alone(tmp_path: Path) -> None:
    """From an attack on the resume: two loops of one handle (threads), one worker name; the
    second must not take up the task the first is running (its handler ran twice)."""
    import threading

    ran: list[str] = []
    started, release = threading.Event(), threading.Event()

    def slow(s: Step) -> Any:
        ran.append(threading.current_thread().name)
        started.set()
        release.wait(10)
        return 1

    with capsule.create(tmp_path / "t.capsule") as cap:
        cap.tasks.add("long", name="slow")
        a = threading.Thread(target=lambda: AgentLoop(cap, {"slow": slow}).run(), name="A")
        a.start()
        assert started.wait(10)
        res = AgentLoop(cap, {"slow": slow}).run()  # thread "MainThread", while A holds the task
        release.set()
        a.join(10)
        assert res.resumed == [] and res.done == [] and res.waiting == ["long"]
        assert ran == ["A"] and cap.tasks.queue().tasks["long"].status == "done"


def test_two_loops_of_one_handle_resume_each_dead_task_once(tmp_path: Path) -> None:
    """From a second attack: loop A listed the dead run's t1 and t2, took t1; loop B (started
    later) took t2; then A took t2 again from its list. Taking one up is now checked and marked
    under the handle's lock."""
    import threading
    import time

    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        cap.tasks.add_many([{"task": "t1", "name": "slow"}, {"task": "t2", "name": "slow"}])
        cap.tasks.claim("t1", "agent")  # a process that died holding both
        cap.tasks.claim("t2", "agent")
    ran: list[tuple[str, str]] = []

    def slow(s: Step) -> Any:
        ran.append((threading.current_thread().name, s.name))
        time.sleep(0.6 if s.name == "t1" else 0.05)
        return 1

    with capsule.open(p, "a") as cap:
        a = threading.Thread(target=lambda: AgentLoop(cap, {"slow": slow}).run(), name="A")
        a.start()
        time.sleep(0.3)  # A holds t1 and still has t2 on its list
        AgentLoop(cap, {"slow": slow}).run()
        a.join(10)
        assert sorted(t for _, t in ran) == ["t1", "t2"], ran
        assert all(t.status == "done" for t in cap.tasks.queue().tasks.values())
