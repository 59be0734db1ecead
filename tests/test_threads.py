"""One writer handle shared by several threads (audit F5).

A ``Capsule`` opened for writing may be used from any number of threads: a
``with cap.commit()`` block holds the handle's lock from entry to exit, so
another thread's commit waits for it; ``run_once`` lets one thread at a time
own a key, so the effect runs once and every caller gets the stored value;
reads (get, records, search, state_root) may run alongside commits. Each test
here failed before the handle had its lock.
"""

from __future__ import annotations

import functools
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import capsule
import capsule.format.file
from capsule.run.events import TaskRefused

THREADS = 4
COMMITS = 25


def _run(workers: list[Callable[[], Any]], timeout: float = 30.0) -> list[BaseException]:
    """Start every worker at once (a barrier), join them, return what they raised."""
    errors: list[BaseException] = []
    gate = threading.Barrier(len(workers))

    def wrap(fn: Callable[[], Any]) -> Callable[[], None]:
        def go() -> None:
            try:
                gate.wait()
                fn()
            except BaseException as e:  # noqa: BLE001 - reported to the test
                errors.append(e)
        return go

    threads = [threading.Thread(target=wrap(w), daemon=True) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a worker thread hung"
    return errors


@pytest.fixture
def small_switch() -> Iterator[None]:
    """Switch threads often, so the races show up within a few hundred commits."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def test_threads_committing_on_one_handle_lose_nothing(tmp_path: Path, small_switch: None) -> None:
    p = tmp_path / "a.capsule"
    ids: dict[tuple[int, int], str] = {}
    with capsule.create(p) as cap:

        def writer(t: int) -> Callable[[], None]:
            def go() -> None:
                for i in range(COMMITS):
                    with cap.commit() as tx:
                        ids[(t, i)] = tx.remember(f"thread {t} commit {i}", meta={"t": t, "i": i})
            return go

        assert _run([writer(t) for t in range(THREADS)]) == []
        assert cap.commit_count == 1 + THREADS * COMMITS
    report = capsule.verify(p)
    assert report.ok, report.first_error
    with capsule.open(p) as cap:
        assert len(cap) == THREADS * COMMITS
        for (t, i), rid in ids.items():
            assert cap.get(rid).text == f"thread {t} commit {i}"


def test_run_once_with_one_key_from_many_threads_runs_the_effect_once(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    calls: list[int] = []

    def send() -> str:
        calls.append(1)
        time.sleep(0.05)  # a slow effect: every other thread arrives while it runs
        return "sent-42"

    results: list[Any] = []
    with capsule.create(p) as cap:
        errors = _run([lambda: results.append(cap.run_once("email:42", send)) for _ in range(8)])
        assert errors == []
        assert len(calls) == 1
        assert results == ["sent-42"] * 8
        assert [a.status for a in cap.actions()] == ["done"]
    assert capsule.verify(p).ok


def test_run_once_with_different_keys_runs_effects_side_by_side(tmp_path: Path, small_switch: None) -> None:
    """Keys are owned one thread at a time, the handle is not: two effects that
    need each other to make progress both finish (a handle-wide lock held during
    the effect would deadlock here), then each thread runs more keys of its own."""
    started = {"a": threading.Event(), "b": threading.Event()}

    def worker(me: str, other: str) -> Callable[[], None]:
        def fn() -> str:
            started[me].set()
            assert started[other].wait(5), "the other key's effect never started: effects are serialised"
            return me.upper()

        def go() -> None:
            assert cap.run_once(me, fn) == me.upper()
            for i in range(15):
                assert cap.run_once(f"{me}:{i}", functools.partial(int, i)) == i
        return go

    with capsule.create(tmp_path / "a.capsule") as cap:
        assert _run([worker("a", "b"), worker("b", "a")]) == []
        states = {a.key: (a.status, a.value) for a in cap.actions()}
        assert states == {"a": ("done", "A"), "b": ("done", "B"),
                          **{f"{k}:{i}": ("done", i) for k in "ab" for i in range(15)}}
    assert capsule.verify(tmp_path / "a.capsule").ok


def test_an_action_handle_owns_its_key_until_it_completes(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "a.capsule") as cap:
        calls: list[str] = []
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(cap.run_once("k", lambda: calls.append("thread"))),
                             daemon=True)
        with cap.action("k") as a:
            assert not a.done
            t.start()
            t.join(0.2)
            assert t.is_alive()  # waiting for this handle, not told the key is in doubt
            calls.append("handle")
            a.complete("from the handle")
        t.join(5)
        assert not t.is_alive() and calls == ["handle"] and got == ["from the handle"]


def test_mixed_commits_checkpoints_searches_and_reads(tmp_path: Path, small_switch: None) -> None:
    p = tmp_path / "a.capsule"
    key = capsule.generate_key()
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            seed = [tx.remember(f"seed fact {i} about billing", embedding=[1.0, float(i)]) for i in range(20)]
        written: list[str] = []
        stop = threading.Event()

        def committer(t: int) -> Callable[[], None]:
            def go() -> None:
                for i in range(20):
                    with cap.commit() as tx:
                        written.append(tx.remember(f"thread {t} fact {i} about billing", tags=[f"t{t}"],
                                                   embedding=[float(t), float(i)]))
            return go

        def checkpointer() -> None:
            for i in range(5):
                cap.checkpoint(f"step-{i}", key=key)

        def reader() -> None:
            while not stop.is_set():
                for rid in seed[:5]:
                    assert cap.get(rid).text.startswith("seed fact")
                assert len(cap.search("billing", mode="lexical", k=5)) == 5
                assert len(cap.search(vector=[1.0, 0.0], mode="vector", k=3)) == 3
                assert len(cap.all_ids()) >= 20
                assert len(cap.state_root) == 64

        def run_writers() -> None:
            try:
                errs = _run([committer(0), committer(1), checkpointer])
                if errs:
                    raise errs[0]
            finally:
                stop.set()

        errors = _run([run_writers, reader, reader])
        assert errors == []
        assert len(written) == 40
        assert [c.body.label for c in cap.checkpoints()] == [f"step-{i}" for i in range(5)]
        state_root, hits = cap.state_root, [h.id for h in cap.search("billing", mode="lexical", k=50)]
    assert capsule.verify(p, trust=key.public_key).ok
    with capsule.open(p) as cap:
        assert len(cap) == 60 and all(rid in cap for rid in written)
        assert cap.state_root == state_root  # the writer's incremental root matches a fresh fold
        assert [h.id for h in cap.search("billing", mode="lexical", k=50)] == hits


def test_a_commit_in_another_thread_waits_but_a_nested_one_is_an_error(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "a.capsule") as cap:
        inside, other_done = threading.Event(), threading.Event()
        got: list[Any] = []

        def other() -> None:
            assert inside.wait(5)
            with cap.commit() as tx:  # waits for the main thread's block, then commits
                got.append(tx.note("second"))
            other_done.set()

        t = threading.Thread(target=other, daemon=True)
        t.start()
        with cap.commit() as tx:
            first = tx.note("first")
            inside.set()
            assert not other_done.wait(0.2)  # blocked behind this commit, not refused
            # the same thread nesting a commit (or a write that commits) is told so
            with pytest.raises(capsule.UsageError, match="already open"):
                cap.commit()
            with pytest.raises(capsule.UsageError, match="commit is open"):
                cap.run_once("k", lambda: 1)
        t.join(5)
        assert other_done.is_set() and len(got) == 1
        assert [c.commits for c in cap.log()] == [1, 2, 3]
        assert cap.get(first).text == "first" and cap.get(got[0]).text == "second"
        assert cap.actions() == []


def test_threads_claiming_one_task_one_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check (is the task free?) and the write (claimed) happen under one hold
    of the handle's lock: on a slow disk, losers are refused and write nothing."""
    real_fsync, real_pwrite = capsule.format.file._fsync, capsule.format.file._pwrite
    writes: list[int] = []

    def slow_fsync(fd: int) -> None:
        time.sleep(0.005)
        real_fsync(fd)

    def counting_pwrite(fd: int, data: Any, offset: int) -> int:
        writes.append(offset)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(capsule.format.file, "_fsync", slow_fsync)
    monkeypatch.setattr(capsule.format.file, "_pwrite", counting_pwrite)
    with capsule.create(tmp_path / "a.capsule") as cap:
        cap.tasks.add("fetch", now=1)
        writes.clear()
        won: list[str] = []
        refused: list[BaseException] = []

        def claim(worker: str) -> Callable[[], None]:
            def go() -> None:
                try:
                    cap.tasks.claim("fetch", worker, now=2)
                    won.append(worker)
                except TaskRefused as e:
                    refused.append(e)
            return go

        assert _run([claim(f"w{i}") for i in range(6)]) == []
        assert len(won) == 1 and len(refused) == 5
        assert len(writes) == 1  # one claim commit; the refused ones wrote nothing
        assert cap.tasks.queue().tasks["fetch"].worker == won[0]
    assert capsule.verify(tmp_path / "a.capsule").ok
