"""cap.tasks: the scheduler's events stored as records; the schedule survives
reopening, copying to another host and a fresh process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import capsule

S = 1_000_000_000
T0 = 1_800_000_000 * S


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def build(path: Path, clock: Clock) -> None:
    with capsule.create(path, clock=clock) as cap:
        cap.tasks.add("fetch", priority=1)
        cap.tasks.add("summarize", deps=["fetch"])
        cap.tasks.add("email", deps=["summarize"], not_before=T0 + 3600 * S)
        cap.tasks.add("flaky", max_attempts=2, backoff=10 * S)
        cap.tasks.claim("fetch", "w1", lease=30 * S)
        cap.tasks.claim("flaky", "w2", lease=30 * S)
        cap.tasks.fail("flaky", "w2", "timeout")


def due(cap: capsule.Capsule, now: int) -> list[str]:
    return [t.spec.task for t in cap.tasks.due(now)]


def test_schedule_rules_and_persistence(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "a.capsule"
    build(path, clock)
    with capsule.open(path, "a", clock=clock) as cap:
        # fetch is leased, summarize waits on fetch, email waits for its time, flaky backs off
        assert due(cap, T0) == []
        assert due(cap, T0 + 11 * S) == ["flaky"]
        assert due(cap, T0 + 31 * S) == ["fetch", "flaky"]  # w1 died: its lease expired
        clock.now = T0 + 31 * S
        cap.tasks.claim("fetch", "w3", lease=30 * S)
        with pytest.raises(capsule.UsageError):
            cap.tasks.complete("fetch", "w1")  # the old holder's lease is gone
        cap.tasks.complete("fetch", "w3", {"pages": 3})
        assert due(cap, clock.now) == ["flaky", "summarize"]
        with pytest.raises(capsule.UsageError, match="cycle|unknown"):
            cap.tasks.add_many([{"task": "x", "deps": ["y"]}, {"task": "y", "deps": ["x"]}])
        snapshot = json.dumps(cap.tasks.to_dict(now=clock.now), sort_keys=True)
    # another "host": a copy under another name, a fresh process, another hash seed
    other = tmp_path / "elsewhere" / "copy.capsule"
    other.parent.mkdir()
    shutil.copyfile(path, other)
    code = ("import capsule, json, sys; c = capsule.open(sys.argv[1]); "
            "print(json.dumps(c.tasks.to_dict(now=int(sys.argv[2])), sort_keys=True))")
    out = subprocess.run([sys.executable, "-c", code, str(other), str(clock.now)], capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": "77", "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == snapshot
    assert capsule.verify(other).ok


def test_tasks_cli_and_records_are_internal(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "a.capsule"
    build(path, clock)
    exe = Path(sys.executable).with_name("capsule")
    proc = subprocess.run([str(exe), "tasks", str(path), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    q = json.loads(proc.stdout)
    assert {t["id"] for t in q["tasks"]} == {"fetch", "summarize", "email", "flaky"}
    with capsule.open(path, "a") as cap, pytest.raises(capsule.InvalidRecordError), cap.commit() as tx:
        tx.put_value({"kind": "task", "op": "add", "task": "forged", "time": 0})


def test_a_rollback_keeps_the_task_queue(tmp_path: Path) -> None:
    # 7.9 (clarified): the queue folds every task record, live or not; a rollback drops them
    # from the state and its root, as any record after the checkpoint, but undoes no event
    key = capsule.generate_key()
    with capsule.create(tmp_path / "r.capsule") as cap:
        cap.checkpoint("base", key=key)
        cap.tasks.add("later", name="added after the checkpoint")
        cap.tasks.add("done")
        cap.tasks.claim("done", "w1")
        cap.tasks.complete("done", "w1", result=1)
        now = cap.clock()
        before = cap.tasks.to_dict(now=now)
        base_root = cap.find_checkpoint("base").state_root
        cap.rollback("base", key=key)
        assert cap.state_root == base_root  # the task records left the state
        assert cap.tasks.to_dict(now=now) == before  # and the queue is as it was
        assert [t.spec.task for t in cap.tasks.due()] == ["later"]
