"""Findings of a hostile review of durable execution (clock, tasks, checkpoints, AgentLoop,
fork), each a regression test: a clock reading a COMMIT cannot hold, task events a fixed clock
made identical, a checkpoint label used again, AgentLoop on one handle from two threads, an
in-doubt effect inside the loop, a fork child that outlives a killed parent, times near 2^63."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import capsule
from capsule import AgentLoop

MAX = (1 << 63) - 1


@pytest.mark.parametrize("reading", [time.time, lambda: -1, lambda: 1 << 64, lambda: 1.5e18, lambda: True])
def test_a_clock_reading_no_commit_can_hold_is_refused_before_a_byte_is_written(tmp_path: Path, reading: object) -> None:
    # the writer fsynced a COMMIT with a float or negative time, which its own reader refused: the
    # whole capsule, earlier commits included, no longer opened
    p = tmp_path / "c.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("an important fact")
        before = p.read_bytes()
        cap.clock = reading  # type: ignore[assignment]
        with pytest.raises(capsule.UsageError, match="the clock returned"), cap.commit() as tx:
            tx.remember("observed earlier", time=5)  # the record's own time is fine; the COMMIT's is not
        assert p.read_bytes() == before
    assert capsule.verify(p).ok
    with capsule.open(p, "a") as cap:
        assert [r.text for r in cap.records()] == ["an important fact"]
    with pytest.raises(capsule.UsageError, match="the clock returned"):
        capsule.create(tmp_path / "new.capsule", clock=reading)  # type: ignore[arg-type]
    assert not (tmp_path / "new.capsule").exists()


def test_task_events_a_fixed_clock_made_identical_are_all_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a second claim (and fail) had the first one's bytes, was one record (7.0), and after a
    # reopen the completion followed no live claim: the task came back pending
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    p = tmp_path / "t.capsule"
    with capsule.create(p) as cap:
        cap.tasks.add("fetch", max_attempts=5, backoff=0)
        for _ in range(2):
            cap.tasks.claim("fetch", "w1")
            cap.tasks.fail("fetch", "w1", "flaky")
        cap.tasks.claim("fetch", "w1")
        cap.tasks.complete("fetch", "w1", result=1)
        assert cap.tasks.queue().tasks["fetch"].status == "done"
        written = cap.tasks.to_dict(now=1_700_000_000 * 10**9 + 10)
    with capsule.open(p) as cap:
        q = cap.tasks.queue()
        assert q.tasks["fetch"].status == "done" and q.tasks["fetch"].failures == 2
        assert cap.tasks.to_dict(now=1_700_000_000 * 10**9 + 10) == written
        assert len(list(cap._store.records(kind="task"))) == 7  # add + 3 claims + 2 fails + complete
    assert capsule.verify(p).ok


@pytest.mark.parametrize("labels", [["L1", "L2", "L3", "L3", "L5"], ["a", "b", "a", "b", "a", "c", "a", "c", "b"]])
def test_a_checkpoint_label_used_again_keeps_one_label_entry(tmp_path: Path, labels: list[str]) -> None:
    # 14.9 allows a label again (the newest wins) and wants one entry a label over all label
    # tables; the writer left the old entry in an unmerged table, and verify said index-label
    key = capsule.generate_key()
    p = tmp_path / "l.capsule"
    n = 0
    newest: dict[str, int] = {}
    with capsule.create(p) as cap:
        for label in labels:
            for _ in range(10):  # enough frames that each checkpoint writes an INDEX
                with cap.commit() as tx:
                    tx.remember(f"fact {n}")
                    n += 1
            cap.checkpoint(label, key=key)
            newest[label] = n
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error
    for label, count in newest.items():
        with capsule.open(p, at=label) as v:
            assert len(v) == count


def _threaded_loops(path: Path, tasks: int, handler: object, signed: bool) -> list[BaseException]:
    errors: list[BaseException] = []
    key = capsule.generate_key() if signed else None
    with capsule.create(path) as cap:
        cap.tasks.add_many([{"task": f"t{i}", "name": "work"} for i in range(tasks)])

        def go(worker: str) -> None:
            try:
                AgentLoop(cap, {"work": handler}, worker=worker, key=key, checkpoint_every=3).run()  # type: ignore[dict-item]
            except BaseException as e:  # noqa: BLE001  (reported by the test)
                errors.append(e)

        threads = [threading.Thread(target=go, args=(f"w{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(st.status == "done" for st in cap.tasks.queue().tasks.values())
    return errors


def test_two_loops_on_one_handle_share_the_queue_without_a_crash(tmp_path: Path) -> None:
    # picking a due task and claiming it are two steps: the loop that loses the race picks again
    # (it died with LeaseError), and checkpoint labels are taken under the lock
    def work(step: capsule.run.loop.Step) -> int:
        time.sleep(0.001)
        return step.run_once(f"effect:{step.name}", lambda: 1)

    for i in range(6):  # the race is a matter of timing: a few runs, with and without checkpoints
        p = tmp_path / f"two-{i}.capsule"
        assert _threaded_loops(p, 80, work, signed=bool(i % 2)) == []
        assert capsule.verify(p).ok


_DIES_IN_EFFECT = r"""
import os, sys, capsule
from capsule import AgentLoop
with capsule.open(sys.argv[1], "a") as cap:
    def send(step):
        return step.run_once("mail:1", lambda: os._exit(9))  # killed inside the effect
    AgentLoop(cap, {"send": send}, worker="w").run()
"""


def test_an_in_doubt_effect_leaves_its_task_for_a_later_run(tmp_path: Path) -> None:
    # the loop took InDoubt for a failure, spent every attempt in one run and failed the task for
    # good; settling the action afterwards could not bring the work back
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        cap.tasks.add("send", name="send", max_attempts=3)
    r = subprocess.run([sys.executable, "-c", _DIES_IN_EFFECT, str(p)], capture_output=True, text=True)
    assert r.returncode == 9
    sent = []
    with capsule.open(p, "a") as cap:
        res = AgentLoop(cap, {"send": lambda s: s.run_once("mail:1", lambda: sent.append(1))}, worker="w").run()
        assert res.in_doubt == ["send"] and res.failed == [] and sent == []
        st = cap.tasks.queue().tasks["send"]
        assert st.status == "claimed" and st.failures == 0
        cap.resolve_action("mail:1", done=False)  # the operator: it did not happen
        res = AgentLoop(cap, {"send": lambda s: s.run_once("mail:1", lambda: sent.append(1))}, worker="w").run()
        assert res.done == ["send"] and sent == [1]
    assert capsule.verify(p).ok


_FORKS_AND_DIES = r"""
import os, signal, sys, time, capsule
cap = capsule.open(sys.argv[1], "a")
if os.fork() == 0:
    time.sleep(30)  # the child outlives its parent
    os._exit(0)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_fork_child_does_not_keep_a_killed_parents_writer_lock(tmp_path: Path) -> None:
    p = tmp_path / "f.capsule"
    capsule.create(p).close()
    proc = subprocess.Popen([sys.executable, "-c", _FORKS_AND_DIES, str(p)], start_new_session=True)
    try:
        assert proc.wait(timeout=60) == -signal.SIGKILL
        with capsule.open(p, "a", timeout=5) as cap, cap.commit() as tx:  # was Locked "by pid <dead parent>"
            tx.remember("restarted")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_a_fork_child_still_reads_and_its_parent_still_writes(tmp_path: Path) -> None:
    p = tmp_path / "g.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("before the fork")
        pid = os.fork()
        if pid == 0:  # the child reads through the parent's handle, then leaves
            ok = [r.text for r in cap.records()] == ["before the fork"]
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with cap.commit() as tx:
            tx.remember("after the fork")
        with pytest.raises(capsule.Locked):
            capsule.open(p, "a")  # the parent still holds the lock
    assert capsule.verify(p).ok


class _Sim:
    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self) -> int:
        return self.t

    def advance_to(self, t: int) -> None:
        self.t = max(self.t, t)


def test_retry_and_lease_times_saturate_at_the_last_nanosecond(tmp_path: Path) -> None:
    # t + backoff past 2^63 - 1 made next_wakeup a time no record holds, and a jumping loop died
    clk = _Sim(1_000)
    with capsule.create(tmp_path / "m.capsule", clock=clk) as cap:
        cap.tasks.add("late", name="h", not_before=MAX - 10)

        def h(step: object) -> None:
            raise RuntimeError("flaky")

        res = AgentLoop(cap, {"h": h}, jump_when_idle=True).run()
        assert res.failed == ["late"] and res.waiting == ["late"]
        q = cap.tasks.queue()
        assert q.tasks["late"].next_attempt_at == MAX and q.next_wakeup(0) is None
        assert q.due(MAX) == []  # a saturated retry never falls due
        doc = cap.tasks.to_dict(now=MAX)
        assert all(t.get("next_attempt_at", 0) <= MAX for t in doc["tasks"])
        cap.tasks.add("leased", not_before=MAX - 5)
        clk.advance_to(MAX - 5)
        cap.tasks.claim("leased", "w", lease=10**9)
        assert cap.tasks.queue().tasks["leased"].lease_expires_at == MAX
        assert [t.spec.task for t in cap.tasks.due(MAX)] == []  # the lease stays live
