"""The durable-task scheduler (capsule/_scheduler.py, design 9).

What is promised:

* a task is due only when it is pending (or claimed with an expired lease), all
  its dependencies are done, ``not_before`` has passed and its retry backoff has
  elapsed; due work comes best first in one deterministic order;
* nobody can claim a task while a lease on it is live, only the lease holder may
  heartbeat, complete or fail it, and only while the lease is live;
* a failure retries after ``min(backoff * 2**(failures-1), backoff_cap)`` and the
  task fails for good after ``max_attempts`` failures;
* adding refuses duplicates, unknown dependencies and cycles (also inside a batch);
* the event log, stored through ``to_value``/canonical msgpack and parsed back on
  another host, folds to the same queue: the same schedule after reopening.

The state machine drives a queue and an independent model (a few dicts) with
three workers and a clock that only moves forward, and checks every ``check_*``
verdict and every ``due()`` answer against the model.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from capsule.core.errors import InvalidRecordError, NonCanonicalError, NotFound, UsageError
from capsule.format import canonical as canon
from capsule.run.events import (
    DependencyCycle,
    DuplicateTask,
    Event,
    InvalidTaskEvent,
    LeaseError,
    NotDue,
    TaskAdded,
    TaskCancelled,
    TaskClaimed,
    TaskClosed,
    TaskCompleted,
    TaskFailed,
    TaskHeartbeat,
    TaskRefused,
    UnknownTask,
    parse_event,
)
from capsule.run.scheduler import Queue, fold

WORKERS = ("w1", "w2", "w3")
TERMINAL = ("done", "failed", "cancelled")


def store(ev: Event) -> bytes:
    return canon.encode(ev.to_value())


def reopen(stored: list[bytes]) -> Queue:
    """What another host folds: each event parsed back from its canonical bytes."""
    return fold(parse_event(canon.decode(raw)) for raw in stored)


# -- the state machine --------------------------------------------------------------------


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.q = Queue()
        self.stored: list[bytes] = []  # the event log as the capsule keeps it
        self.unchecked = 0  # illegal events written past the checks (a stale writer)
        self.now = 0
        # the model
        self.spec: dict[str, dict[str, Any]] = {}
        self.status: dict[str, str] = {}
        self.lease: dict[str, tuple[str, int]] = {}  # task -> (holder, expiry) while claimed
        self.failures: dict[str, int] = {}
        self.retry_at: dict[str, int] = {}

    # model helpers
    def m_due(self, t: str) -> bool:
        s = self.status[t]
        if s == "claimed":
            if self.now < self.lease[t][1]:
                return False
        elif s != "pending":
            return False
        sp = self.spec[t]
        return (
            all(self.status[d] == "done" for d in sp["deps"])
            and (sp["not_before"] or 0) <= self.now
            and self.retry_at.get(t, 0) <= self.now
        )

    def m_key(self, t: str) -> tuple[Any, ...]:
        sp = self.spec[t]
        deadline = math.inf if sp["deadline"] is None else sp["deadline"]
        return (-sp["priority"], deadline, sp["not_before"] or 0, t)

    def m_holds(self, t: str, w: str) -> bool:
        return self.status[t] == "claimed" and self.lease[t][0] == w and self.now < self.lease[t][1]

    def m_blocked(self, t: str) -> set[str]:
        out: set[str] = set()
        for d in self.spec[t]["deps"]:
            if self.status[d] in ("failed", "cancelled"):
                out.add(d)
            elif self.status[d] not in TERMINAL:
                out |= self.m_blocked(d)
        return out

    def write(self, ev: Event) -> None:
        self.q.apply(ev)  # checked already: must not raise
        self.stored.append(store(ev))

    def verdict(self, ev: Event, legal: bool, stale: bool) -> bool:
        """The queue's check agrees with the model; a legal event is written. A
        refused one is written anyway when ``stale`` (a writer that skipped the
        check): the fold must then skip it."""
        if legal:
            self.q.check(ev, self.now)
            self.write(ev)
            return True
        with pytest.raises(TaskRefused) as info:
            self.q.check(ev, self.now)
        assert "\n" not in str(info.value)
        if stale:
            self.stored.append(store(ev))
            self.unchecked += 1
        return False

    def pick(self, data: st.DataObject, likely: list[str]) -> str:
        """Mostly one of ``likely`` (so legal events happen), else any task."""
        if likely and data.draw(st.integers(0, 3), label="likely") > 0:
            return data.draw(st.sampled_from(sorted(likely)), label="task")
        return data.draw(st.sampled_from(sorted(self.spec)), label="task")

    def live(self) -> list[str]:
        return [t for t, (_, expiry) in self.lease.items() if self.now < expiry]

    def pick_worker(self, data: st.DataObject, t: str) -> str:
        holder = [self.lease[t][0]] * 6 if t in self.lease else []
        return data.draw(st.sampled_from(holder + list(WORKERS)), label="worker")

    # rules
    @precondition(lambda self: len(self.spec) < 8)  # a few tasks, worked on for longer
    @rule(data=st.data())
    def add(self, data: st.DataObject) -> None:
        t = f"t{len(self.spec)}"
        deps: list[str] = []
        if self.spec:
            deps = data.draw(st.lists(st.sampled_from(sorted(self.spec)), unique=True, max_size=3))
        sp: dict[str, Any] = {
            "deps": deps,
            "not_before": data.draw(st.none() | st.integers(0, 2000).map(lambda d: self.now + d)),
            "deadline": data.draw(st.none() | st.integers(0, 10)),
            "priority": data.draw(st.integers(0, 2)),
            "max_attempts": data.draw(st.integers(1, 3)),
            "backoff": data.draw(st.sampled_from([0, 100, 1000])),
            "backoff_cap": data.draw(st.sampled_from([150, 10**6])),
        }
        ev = TaskAdded(
            time=self.now,
            task=t,
            deps=tuple(deps),
            not_before=sp["not_before"],
            deadline=sp["deadline"],
            priority=sp["priority"],
            max_attempts=sp["max_attempts"],
            backoff=sp["backoff"],
            backoff_cap=sp["backoff_cap"],
            payload={"n": len(self.spec)},
        )
        self.q.check_add(ev)
        self.write(ev)
        self.spec[t] = sp
        self.status[t] = "pending"
        self.failures[t] = 0

    @precondition(lambda self: self.spec)
    @rule(data=st.data(), unknown=st.booleans())
    def add_refused(self, data: st.DataObject, unknown: bool) -> None:
        if unknown:
            ev = TaskAdded(time=self.now, task=f"t{len(self.spec)}", deps=("nope",))
            with pytest.raises(UnknownTask, match="unknown task 'nope'"):
                self.q.check_add(ev)
        else:
            ev = TaskAdded(time=self.now, task=self.pick(data, []))
            with pytest.raises(DuplicateTask, match="already exists"):
                self.q.check_add(ev)

    @precondition(lambda self: self.spec)
    @rule(data=st.data(), lease=st.integers(1, 3000), stale=st.booleans())
    def claim(self, data: st.DataObject, lease: int, stale: bool) -> None:
        t = self.pick(data, [t for t in self.spec if self.m_due(t)])
        w = data.draw(st.sampled_from(WORKERS), label="worker")
        ev = TaskClaimed(time=self.now, task=t, worker=w, lease=lease)
        live_other = self.status[t] == "claimed" and self.now < self.lease[t][1]
        if not self.verdict(ev, self.m_due(t), stale):
            if live_other:  # never claimable while a lease is live
                with pytest.raises(LeaseError):
                    self.q.check_claim(ev, self.now)
            return
        self.status[t] = "claimed"
        self.lease[t] = (w, self.now + lease)

    @precondition(lambda self: self.spec)
    @rule(data=st.data(), lease=st.integers(1, 3000), stale=st.booleans())
    def heartbeat(self, data: st.DataObject, lease: int, stale: bool) -> None:
        t = self.pick(data, self.live())
        w = self.pick_worker(data, t)
        ev = TaskHeartbeat(time=self.now, task=t, worker=w, lease=lease)
        if self.verdict(ev, self.m_holds(t, w), stale):
            self.lease[t] = (w, max(self.lease[t][1], self.now + lease))

    @precondition(lambda self: self.spec)
    @rule(data=st.data(), stale=st.booleans())
    def complete(self, data: st.DataObject, stale: bool) -> None:
        t = self.pick(data, self.live())
        w = self.pick_worker(data, t)
        ev = TaskCompleted(time=self.now, task=t, worker=w, result={"by": w, "raw": b"\x00"})
        if self.verdict(ev, self.m_holds(t, w), stale):
            self.status[t] = "done"
            del self.lease[t]

    @precondition(lambda self: self.spec)
    @rule(data=st.data(), stale=st.booleans())
    def fail(self, data: st.DataObject, stale: bool) -> None:
        t = self.pick(data, self.live())
        w = self.pick_worker(data, t)
        ev = TaskFailed(time=self.now, task=t, worker=w, error="boom")
        if self.verdict(ev, self.m_holds(t, w), stale):
            del self.lease[t]
            sp = self.spec[t]
            self.failures[t] += 1
            n = self.failures[t]
            if n >= sp["max_attempts"]:
                self.status[t] = "failed"
            else:
                self.status[t] = "pending"
                self.retry_at[t] = self.now + min(sp["backoff"] * 2 ** (n - 1), sp["backoff_cap"])

    @precondition(lambda self: self.spec)
    @rule(data=st.data(), stale=st.booleans(), dry=st.integers(0, 2))
    def cancel(self, data: st.DataObject, stale: bool, dry: int) -> None:
        t = self.pick(data, [])
        ev = TaskCancelled(time=self.now, task=t, reason="no longer needed")
        if dry and self.status[t] not in TERMINAL:  # most cancels are only checked:
            self.q.check_cancel(ev)  # writing them all would leave little to run
            return
        if self.verdict(ev, self.status[t] not in TERMINAL, stale):
            self.status[t] = "cancelled"
            self.lease.pop(t, None)

    @rule(dt=st.integers(0, 300) | st.integers(0, 4000))
    def advance(self, dt: int) -> None:
        self.now += dt

    # invariants
    @invariant()
    def due_matches_model(self) -> None:
        due = [s.id for s in self.q.due(self.now)]
        expected = sorted((t for t in self.spec if self.m_due(t)), key=self.m_key)
        assert due == expected
        for t in due:  # dependencies respected; no live lease is handed out
            assert all(self.status[d] == "done" for d in self.spec[t]["deps"])
            assert not (self.status[t] == "claimed" and self.now < self.lease[t][1])

    @invariant()
    def leases_and_backoff(self) -> None:
        due = {s.id for s in self.q.due(self.now)}
        for t, (_, expiry) in self.lease.items():
            if expiry <= self.now:  # a dead worker's task is due again
                assert t in due
        for t, n in self.failures.items():
            st_ = self.q.tasks[t]
            assert st_.failures == n
            assert st_.status == self.status[t]
            if self.status[t] == "pending" and self.now < self.retry_at.get(t, 0):
                assert t not in due
            assert (n >= self.spec[t]["max_attempts"]) == (st_.status == "failed")

    @invariant()
    def nothing_changes_before_the_wakeup(self) -> None:
        due = {s.id for s in self.q.due(self.now)}
        wake = self.q.next_wakeup(self.now)
        assert wake is None or wake > self.now
        later = self.now + 10**6 if wake is None else wake - 1
        assert {s.id for s in self.q.due(later)} == due  # due only grows with the clock
        if wake is not None:
            assert {s.id for s in self.q.due(wake)} > due

    @invariant()
    def blocked_matches_model(self) -> None:
        expected = {}
        for t in sorted(self.spec):
            if self.status[t] not in TERMINAL:
                b = self.m_blocked(t)
                if b:
                    expected[t] = tuple(sorted(b))
        assert self.q.blocked() == expected

    @invariant()
    def same_schedule_after_reopening(self) -> None:
        other = reopen(self.stored)
        assert other.tasks == self.q.tasks
        assert other.time == self.q.time
        assert len(other.rejected) == self.unchecked
        assert [s.id for s in other.due(self.now)] == [s.id for s in self.q.due(self.now)]

    @invariant()
    def due_order_ignores_dict_order(self) -> None:
        flipped = Queue(tasks=dict(reversed(list(self.q.tasks.items()))), time=self.q.time)
        assert [s.id for s in flipped.due(self.now)] == [s.id for s in self.q.due(self.now)]

    def teardown(self) -> None:
        """The ``capsule tasks --json`` view is byte-identical too (once per run: it is slow)."""
        other = reopen(self.stored)
        flipped = Queue(tasks=dict(reversed(list(self.q.tasks.items()))), time=self.q.time)
        view = json.dumps(self.q.to_dict(self.now))
        assert json.dumps(flipped.to_dict(self.now)) == view
        doc = other.to_dict(self.now)
        assert len(doc["rejected"]) == self.unchecked
        doc["rejected"] = []  # ours never saw the stale events
        assert json.dumps(doc) == view


SchedulerMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestScheduler = SchedulerMachine.TestCase


# -- table tests: adding and cycles -------------------------------------------------------


def adds(*spec: tuple[str, tuple[str, ...]]) -> list[TaskAdded]:
    return [TaskAdded(time=0, task=t, deps=d) for t, d in spec]


CYCLES = [
    ("self", [], adds(("a", ("a",))), "a -> a"),
    ("pair", [], adds(("a", ("b",)), ("b", ("a",))), "a -> b -> a"),
    ("triangle", [], adds(("a", ("b",)), ("b", ("c",)), ("c", ("a",))), "a -> b -> c -> a"),
    ("behind a good task", [], adds(("x", ()), ("b", ("c", "x")), ("c", ("b",))), "b -> c -> b"),
    ("onto existing", adds(("e", ())), adds(("a", ("e", "b")), ("b", ("a",))), "a -> b -> a"),
    # a log folded before the writer checked (forward reference): closing it is refused
    ("through the log", adds(("x", ("y",))), adds(("y", ("x",))), "y -> x -> y"),
]


@pytest.mark.parametrize(
    ("log", "batch", "cycle"), [c[1:] for c in CYCLES], ids=[c[0] for c in CYCLES]
)
def test_cycles_refused(log: list[Event], batch: list[TaskAdded], cycle: str) -> None:
    q = fold(log)
    with pytest.raises(DependencyCycle) as info:
        q.check_add_many(batch)
    assert str(info.value) == f"dependency cycle: {cycle}"
    assert info.value.cycle == tuple(cycle.split(" -> "))
    if len(batch) == 1:
        with pytest.raises(DependencyCycle):
            q.check_add(batch[0])


BATCHES = [
    ("in order", adds(("a", ()), ("b", ("a",))), ["a", "b"]),
    ("forward refs", adds(("c", ("b",)), ("b", ("a",)), ("a", ())), ["a", "b", "c"]),
    ("stable ties", adds(("z", ()), ("y", ("x",)), ("x", ()), ("w", ())), ["z", "x", "y", "w"]),
    (
        "diamond",
        adds(("d", ("b", "c")), ("c", ("a",)), ("b", ("a",)), ("a", ())),
        ["a", "c", "b", "d"],
    ),
]


@pytest.mark.parametrize(("batch", "order"), [b[1:] for b in BATCHES], ids=[b[0] for b in BATCHES])
def test_batch_write_order(batch: list[TaskAdded], order: list[str]) -> None:
    q = Queue()
    written = q.check_add_many(batch)
    assert [ev.task for ev in written] == order
    for ev in written:  # the returned order passes the single-event check one by one
        q.check_add(ev)
        q.apply(ev)
    assert fold(batch).tasks == fold(written).tasks  # any order folds the same


@pytest.mark.parametrize(
    ("log", "batch", "error", "match"),
    [
        (adds(("a", ())), adds(("a", ())), DuplicateTask, "task 'a' already exists"),
        ([], adds(("a", ()), ("a", ())), DuplicateTask, "task 'a' already exists"),
        ([], adds(("a", ("zz",))), UnknownTask, "task 'a' depends on unknown task 'zz'"),
        ([], adds(("a", ()), ("b", ("a", "q"))), UnknownTask, "unknown task 'q'"),
    ],
)
def test_add_refused(
    log: list[Event], batch: list[TaskAdded], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=re.escape(match)):
        fold(log).check_add_many(batch)


# -- table tests: every check_* refusal ---------------------------------------------------

# a: claimed by w1 at 10 until 60; b needs a; c not before 100; d done; e backing off
# until 40 + 1000; f cancelled; g claimed by w2 at 40 until 140.
BASE: list[Event] = [
    TaskAdded(time=0, task="a"),
    TaskAdded(time=0, task="b", deps=("a",)),
    TaskAdded(time=0, task="c", not_before=100),
    TaskAdded(time=0, task="d"),
    TaskAdded(time=0, task="e", backoff=1000),
    TaskAdded(time=0, task="f"),
    TaskAdded(time=0, task="g"),
    TaskClaimed(time=10, task="a", worker="w1", lease=50),
    TaskClaimed(time=10, task="d", worker="w1", lease=50),
    TaskCompleted(time=20, task="d", worker="w1", result=1),
    TaskClaimed(time=30, task="e", worker="w3", lease=50),
    TaskFailed(time=40, task="e", worker="w3", error="boom"),
    TaskCancelled(time=40, task="f"),
    TaskClaimed(time=40, task="g", worker="w2", lease=100),
]


def claim(t: str, w: str, at: int) -> TaskClaimed:
    return TaskClaimed(time=at, task=t, worker=w, lease=10)


REFUSALS: list[tuple[str, Event, type[TaskRefused], str]] = [
    ("claim unknown", claim("zz", "w1", 50), UnknownTask, "no task 'zz'"),
    ("claim leased", claim("a", "w2", 50), LeaseError, "leased to 'w1' until 60"),
    ("claim own lease", claim("a", "w1", 50), LeaseError, "already holds task 'a'"),
    ("claim before dep", claim("b", "w2", 50), NotDue, "waits for 'a' (claimed)"),
    ("claim not_before", claim("c", "w2", 99), NotDue, "may not run before 100"),
    ("claim done", claim("d", "w2", 50), TaskClosed, "task 'd' is already done"),
    ("claim backoff", claim("e", "w2", 1039), NotDue, "backing off until 1040"),
    ("claim cancelled", claim("f", "w2", 50), TaskClosed, "already cancelled"),
    ("claim blocked", claim("b", "w2", 500), NotDue, "waits for 'a'"),
    (
        "complete other's",
        TaskCompleted(time=50, task="a", worker="w2"),
        LeaseError,
        "held by 'w1', not 'w2'",
    ),
    (
        "complete late",
        TaskCompleted(time=60, task="a", worker="w1"),
        LeaseError,
        "expired at 60 (now 60)",
    ),
    (
        "complete unclaimed",
        TaskCompleted(time=50, task="c", worker="w1"),
        LeaseError,
        "is not claimed",
    ),
    ("complete done", TaskCompleted(time=50, task="d", worker="w1"), TaskClosed, "already done"),
    ("complete unknown", TaskCompleted(time=50, task="zz", worker="w1"), UnknownTask, "no task"),
    ("fail other's", TaskFailed(time=50, task="g", worker="w1"), LeaseError, "held by 'w2'"),
    ("fail late", TaskFailed(time=140, task="g", worker="w2"), LeaseError, "expired at 140"),
    ("fail pending", TaskFailed(time=50, task="e", worker="w3"), LeaseError, "is not claimed"),
    (
        "heartbeat other's",
        TaskHeartbeat(time=50, task="a", worker="w3", lease=9),
        LeaseError,
        "held by",
    ),
    (
        "heartbeat late",
        TaskHeartbeat(time=61, task="a", worker="w1", lease=9),
        LeaseError,
        "expired",
    ),
    (
        "heartbeat cancelled",
        TaskHeartbeat(time=50, task="f", worker="w1", lease=9),
        TaskClosed,
        "cancelled",
    ),
    ("cancel done", TaskCancelled(time=50, task="d"), TaskClosed, "task 'd' is already done"),
    ("cancel twice", TaskCancelled(time=50, task="f"), TaskClosed, "already cancelled"),
    ("cancel unknown", TaskCancelled(time=50, task="zz"), UnknownTask, "no task 'zz'"),
    # the queue's clock never runs backward: an event stamped 5 is judged at 40
    ("clock behind", claim("c", "w1", 5), NotDue, "may not run before 100"),
]


@pytest.mark.parametrize(
    ("ev", "error", "match"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_check_refusals(ev: Event, error: type[TaskRefused], match: str) -> None:
    q = fold(BASE)
    assert q.rejected == []
    before = q.to_dict()
    with pytest.raises(error, match=re.escape(match)) as info:
        q.check(ev)
    assert isinstance(info.value, UsageError)
    assert "\n" not in str(info.value)
    with pytest.raises(error):  # apply runs the same check
        q.apply(ev)
    assert q.to_dict() == before
    log = fold([*BASE, ev])  # written anyway: the fold skips it and says why
    assert log.rejected == [(len(BASE), str(info.value))]
    assert log.to_dict()["tasks"] == before["tasks"]


ALLOWED: list[tuple[str, Event, str]] = [
    ("claim expired lease", claim("a", "w2", 60), "claimed"),
    ("claim after not_before", claim("c", "w2", 100), "claimed"),
    ("claim after backoff", claim("e", "w2", 1040), "claimed"),
    ("heartbeat", TaskHeartbeat(time=59, task="a", worker="w1", lease=100), "claimed"),
    ("complete in time", TaskCompleted(time=59, task="a", worker="w1", result=[1, "x"]), "done"),
    ("fail in time", TaskFailed(time=59, task="a", worker="w1", error="x"), "pending"),
    ("cancel leased", TaskCancelled(time=50, task="g"), "cancelled"),
    ("cancel pending", TaskCancelled(time=50, task="b"), "cancelled"),
]


@pytest.mark.parametrize(("ev", "status"), [r[1:] for r in ALLOWED], ids=[r[0] for r in ALLOWED])
def test_check_allows(ev: Event, status: str) -> None:
    q = fold(BASE)
    q.check(ev)
    q.apply(ev)
    assert q.tasks[ev.task].status == status
    assert q.tasks[ev.task].history == fold(BASE).tasks[ev.task].history + 1


def test_unknown_task_is_a_not_found() -> None:
    with pytest.raises(NotFound) as info:
        Queue().check_claim(claim("x", "w1", 0))
    assert str(info.value) == "no task 'x'"


# -- leases, backoff, blocking ------------------------------------------------------------


def test_expired_lease_is_due_again_and_late_work_is_refused() -> None:
    q = fold(BASE)
    assert "a" not in {s.id for s in q.due(59)}
    assert "a" in {s.id for s in q.due(60)}
    q.apply(claim("a", "w2", 60))
    assert q.tasks["a"].lost == 1 and q.tasks["a"].attempts == 2
    with pytest.raises(LeaseError, match="held by 'w2', not 'w1'"):
        q.check_complete(TaskCompleted(time=61, task="a", worker="w1"))
    q.apply(TaskCompleted(time=61, task="a", worker="w2", result="ok"))
    assert q.tasks["a"].result == "ok"
    assert [s.id for s in q.due(1040)] == ["b", "e", "g", "c"]  # c: not_before 100


def test_heartbeat_extends_and_never_shortens() -> None:
    q = fold(BASE)
    q.apply(TaskHeartbeat(time=50, task="a", worker="w1", lease=100))
    assert q.tasks["a"].lease_expires_at == 150
    q.apply(TaskHeartbeat(time=55, task="a", worker="w1", lease=1))
    assert q.tasks["a"].lease_expires_at == 150
    assert "a" not in {s.id for s in q.due(149)}
    assert "a" in {s.id for s in q.due(150)}


def test_backoff_doubles_up_to_the_cap_then_fails() -> None:
    q = fold([TaskAdded(time=0, task="t", max_attempts=5, backoff=1000, backoff_cap=5000)])
    now, waits = 0, []
    for _ in range(4):
        (due,) = q.due(now)
        q.apply(TaskClaimed(time=now, task="t", worker="w", lease=10))
        q.apply(TaskFailed(time=now + 1, task="t", worker="w", error="e"))
        waits.append(q.tasks["t"].next_attempt_at - (now + 1))
        now = q.tasks["t"].next_attempt_at
        assert q.due(now - 1) == []
    assert waits == [1000, 2000, 4000, 5000]
    q.apply(TaskClaimed(time=now, task="t", worker="w", lease=10))
    q.apply(TaskFailed(time=now, task="t", worker="w", error="last"))
    assert q.tasks["t"].status == "failed" and q.tasks["t"].error == "last"
    assert q.due(10**15) == [] and q.next_wakeup(0) is None


def test_blocked_is_transitive() -> None:
    q = fold(
        [
            *adds(("a", ()), ("x", ()), ("b", ("a",)), ("c", ("b", "x")), ("d", ("x",))),
            TaskClaimed(time=0, task="a", worker="w", lease=5),
            TaskFailed(time=1, task="a", worker="w"),
            TaskCancelled(time=1, task="x"),
        ]
    )
    assert q.tasks["a"].status == "pending"  # one failure, two retries left
    assert q.blocked() == {"c": ("x",), "d": ("x",)}


def q_events_failing(t: str, n: int) -> list[Event]:
    evs: list[Event] = [TaskAdded(time=0, task=t, backoff=0, max_attempts=n)]
    for i in range(n):
        evs += [
            TaskClaimed(time=i, task=t, worker="w", lease=5),
            TaskFailed(time=i, task=t, worker="w"),
        ]
    return evs


def test_failed_dependency_blocks_forever() -> None:
    q = fold([*q_events_failing("a", 2), *adds(("b", ("a",)), ("c", ("b",)))])
    assert q.tasks["a"].status == "failed"
    assert q.blocked() == {"b": ("a",), "c": ("a",)}
    assert q.due(10**12) == []
    assert q.to_dict()["tasks"][1]["blocked_by"] == ["a"]


def test_fold_tolerates_forward_refs_and_clock_skew() -> None:
    q = fold(
        [
            TaskAdded(time=100, task="b", deps=("a",)),
            TaskAdded(time=100, task="a"),
            TaskClaimed(time=50, task="a", worker="w", lease=100),  # a host whose clock lags
        ]
    )
    assert q.rejected == []
    assert q.tasks["a"].lease_expires_at == 200  # judged and stamped at 100, not 50
    assert q.time == 100
    assert q.due(0) == [] and q.next_wakeup(0) == 200
    assert [s.id for s in q.due(200)] == ["a"]


def test_due_order() -> None:
    q = fold(
        [
            TaskAdded(time=0, task="low", priority=-1),
            TaskAdded(time=0, task="z-no-deadline", priority=1),
            TaskAdded(time=0, task="y-late", priority=1, deadline=50),
            TaskAdded(time=0, task="x-early", priority=1, deadline=10),
            TaskAdded(time=0, task="w-early-nb", priority=1, deadline=10, not_before=5),
            TaskAdded(time=0, task="v", priority=1, deadline=10, not_before=5),
            TaskAdded(time=0, task="mid"),
        ]
    )
    expected = ["x-early", "v", "w-early-nb", "y-late", "z-no-deadline", "mid", "low"]
    assert [s.id for s in q.due(5)] == expected
    assert q.to_dict(5)["due"] == expected
    assert [t["id"] for t in q.to_dict()["tasks"]] == sorted(expected)


def test_to_dict_is_json_and_stable() -> None:
    evs: list[Event] = [
        TaskAdded(time=0, task="b", payload={"blob": b"\x01\x02", "k": [1, (2, 3)]}),
        TaskAdded(time=0, task="a", name="first"),
        TaskClaimed(time=1, task="b", worker="w", lease=9),
        TaskCompleted(time=2, task="b", worker="w", result={"out": b"\xff"}),
    ]
    doc = fold(evs).to_dict(3)
    text = json.dumps(doc, sort_keys=True)
    assert text == json.dumps(reopen([store(ev) for ev in evs]).to_dict(3), sort_keys=True)
    b = doc["tasks"][1]
    assert b["payload"] == {"blob": "0102", "k": [1, [2, 3]]}
    assert b["result"] == {"out": "ff"} and b["status"] == "done" and b["history"] == 3
    assert doc["counts"] == {"pending": 1, "claimed": 0, "done": 1, "failed": 0, "cancelled": 0}
    assert doc["due"] == ["a"]


# -- encoding -------------------------------------------------------------------------------


def test_value_omits_defaults_and_sorts() -> None:
    ev = TaskAdded(time=7, task="a", deps=("c", "b"), priority=0, max_attempts=3)
    assert ev.to_value() == {"deps": ["b", "c"], "op": "add", "task": "a", "time": 7}
    assert list(ev.to_value()) == sorted(ev.to_value())
    assert canon.encode(ev.to_value()) == canon.encode(
        TaskAdded(time=7, task="a", deps=("b", "c")).to_value()
    )
    assert TaskCompleted(time=1, task="a", worker="w").to_value() == {
        "op": "complete",
        "task": "a",
        "time": 1,
        "worker": "w",
    }


def ok_add(**kw: Any) -> dict[str, Any]:
    return {"op": "add", "task": "a", "time": 0, **kw}


PARSE_REFUSALS: list[tuple[str, object, type[Exception], str]] = [
    ("not a map", ["add"], InvalidTaskEvent, "unknown task event op"),
    (
        "unknown op",
        {"op": "launch", "task": "a", "time": 0},
        InvalidTaskEvent,
        "unknown task event op 'launch'",
    ),
    ("unknown field", ok_add(owner="x"), InvalidTaskEvent, "unknown add field"),
    ("missing task", {"op": "add", "time": 0}, InvalidTaskEvent, "add needs task"),
    (
        "missing lease",
        {"op": "claim", "task": "a", "time": 0, "worker": "w"},
        InvalidTaskEvent,
        "needs lease",
    ),
    ("default spelled out", ok_add(priority=0), NonCanonicalError, "canonical form"),
    ("empty deps spelled out", ok_add(deps=[]), NonCanonicalError, "canonical form"),
    ("unsorted deps", ok_add(deps=["b", "a"]), NonCanonicalError, "canonical form"),
    ("not NFC", ok_add(name="e\u0301"), NonCanonicalError, "canonical form"),
    ("deps twice", ok_add(deps=["b", "b"]), InvalidTaskEvent, "lists 'b' twice"),
    ("deps a string", ok_add(deps="b"), InvalidTaskEvent, "list of task ids"),
    ("bool time", ok_add(time=True), InvalidTaskEvent, "time must be"),
    ("negative time", ok_add(time=-1), InvalidTaskEvent, "time must be"),
    ("huge time", ok_add(time=1 << 63), InvalidTaskEvent, "time must be"),
    ("empty id", ok_add(task=""), InvalidTaskEvent, "task must not be empty"),
    ("long id", ok_add(task="x" * 257), InvalidTaskEvent, "task must be at most 256"),
    (
        "zero attempts",
        ok_add(max_attempts=0),
        InvalidTaskEvent,
        "max_attempts must be an integer from 1",
    ),
    ("float backoff", ok_add(backoff=1.5), InvalidTaskEvent, "backoff must be"),
    ("payload list", ok_add(payload=[1]), InvalidTaskEvent, "payload must be a map"),
    ("payload NaN", ok_add(payload={"x": math.nan}), InvalidTaskEvent, "payload: NaN"),
    ("payload int key", ok_add(payload={1: 2}), InvalidTaskEvent, "payload: map key 1"),
    (
        "zero lease",
        {"op": "claim", "task": "a", "time": 0, "worker": "w", "lease": 0},
        InvalidTaskEvent,
        "lease",
    ),
    ("non-str key", {"op": "add", 1: 2}, InvalidTaskEvent, "string keys"),
]


@pytest.mark.parametrize(
    ("value", "error", "match"), [r[1:] for r in PARSE_REFUSALS], ids=[r[0] for r in PARSE_REFUSALS]
)
def test_parse_refusals(value: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=re.escape(match)) as info:
        parse_event(value)
    assert isinstance(info.value, InvalidRecordError | NonCanonicalError)


def test_from_value_checks_the_op() -> None:
    value = TaskClaimed(time=0, task="a", worker="w", lease=1).to_value()
    with pytest.raises(InvalidTaskEvent, match="expected op 'add', not 'claim'"):
        TaskAdded.from_value(value)
    assert TaskClaimed.from_value(value) == parse_event(value)


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


ids_ = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=8)
keys = st.text("abcé", max_size=3)
ns = st.integers(0, (1 << 63) - 1)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5)
    | st.binary(max_size=4)
)
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=3), max_leaves=8
)
events = st.one_of(
    st.builds(
        TaskAdded,
        time=ns,
        task=ids_,
        name=st.text(max_size=5),
        deps=st.lists(ids_, unique_by=nfc, max_size=3),
        not_before=st.none() | ns,
        deadline=st.none() | ns,
        priority=st.integers(-3, 3),
        max_attempts=st.integers(1, 5),
        backoff=ns,
        backoff_cap=ns,
        payload=st.dictionaries(keys, values, max_size=3),
    ),
    st.builds(TaskClaimed, time=ns, task=ids_, worker=ids_, lease=st.integers(1, 1 << 40)),
    st.builds(TaskHeartbeat, time=ns, task=ids_, worker=ids_, lease=st.integers(1, 1 << 40)),
    st.builds(TaskCompleted, time=ns, task=ids_, worker=ids_, result=values),
    st.builds(TaskFailed, time=ns, task=ids_, worker=ids_, error=st.text(max_size=8)),
    st.builds(TaskCancelled, time=ns, task=ids_, reason=st.text(max_size=8)),
)


@settings(max_examples=300, deadline=None, database=None)
@given(events)
def test_event_round_trip(ev: Event) -> None:
    raw = canon.encode(ev.to_value())
    back = parse_event(canon.decode(raw))
    assert back == ev
    assert canon.encode(back.to_value()) == raw
