"""Durable tasks as an event-sourced queue (design 9). Pure: no clock, no I/O.

Theory of operation
-------------------
A task lives as a sequence of committed events: one ``TaskAdded``, then any of
``TaskClaimed`` / ``TaskHeartbeat`` / ``TaskCompleted`` / ``TaskFailed`` /
``TaskCancelled``. :func:`fold` turns the events (in commit order) into a
:class:`Queue`; "what may run now" is ``Queue.due(now)`` with ``now`` read from
the caller's injected clock. Equal events give an equal queue on every host, so
a restarted process, or another host reading the same capsule, resumes the
same schedule.

One transition table serves both sides. The writer calls ``Queue.check*`` with
the clock reading it will stamp on the event, commits, then ``Queue.apply``.
:func:`fold` re-runs the same checks at replay: an event that should never have
been written (an old writer, a stale view, a hostile file) is skipped and listed
in ``Queue.rejected`` instead of bending the schedule.

=========  ==========================================  ===============================
event      legal when (at time t)                      effect
=========  ==========================================  ===============================
add        the task id is new                          pending
claim      the task is due at t (see ``due``)          claimed; attempts += 1;
                                                       lease until t + lease
heartbeat  worker holds the lease and t < expiry       expiry = max(expiry, t + lease)
complete   worker holds the lease and t < expiry       done, result kept
fail       worker holds the lease and t < expiry       failures += 1; failed when
                                                       failures == max_attempts, else
                                                       pending and not due before
                                                       t + min(backoff * 2**(failures-1),
                                                       backoff_cap)
cancel     the task is not done, failed or cancelled   cancelled
=========  ==========================================  ===============================

Choices worth knowing:

* A lease is live while ``t < expiry``. A claimed task whose lease expired is due
  again at once, with no backoff, and the lost attempt does not count against
  ``max_attempts`` (a dead worker is not the task's fault); ``lost`` counts them.
* The queue's clock never runs backward: every check and ``due(now)`` use
  ``max(now, Queue.time)``, the latest accepted event time. A host whose clock
  lags cannot revive an expired lease, and replay agrees with the writer's check.
* Dependency ids and cycles are checked when writing (``check_add_many``, which
  also returns the batch in a write order that puts dependencies first). The fold
  itself tolerates a dependency it has not seen yet: that task simply waits, so a
  batch written in any order folds the same. A cycle can therefore never run.
* ``deadline`` orders due work; it never expires a task.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .events import (
    STATUSES,
    TERMINAL,
    DependencyCycle,
    DuplicateTask,
    Event,
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
)

# -- state -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskState:
    """One task as the fold sees it. ``worker`` is the last claimant; it holds the
    lease only while ``status == "claimed"`` and ``now < lease_expires_at``."""

    spec: TaskAdded
    status: str = "pending"
    attempts: int = 0  # claims
    failures: int = 0  # TaskFailed events accepted
    lost: int = 0  # claims that replaced an expired lease
    worker: str | None = None
    lease_expires_at: int | None = None
    next_attempt_at: int = 0
    result: Any = None
    error: str | None = None  # the last failure's error
    reason: str | None = None  # why it was cancelled
    history: int = 1  # events applied to this task
    updated_at: int = 0

    @property
    def id(self) -> str:
        return self.spec.task

    @property
    def deps(self) -> tuple[str, ...]:
        return self.spec.deps

    def lease_live(self, now: int) -> bool:
        return (
            self.status == "claimed"
            and self.lease_expires_at is not None
            and (now < self.lease_expires_at or self.lease_expires_at >= NEVER)
        )

    def order_key(self) -> tuple[int, bool, int, int, str]:
        """(-priority, deadline or +inf, not_before or 0, id): the due order."""
        s = self.spec
        return (-s.priority, s.deadline is None, s.deadline or 0, s.not_before or 0, s.task)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the add's fields (``time`` as ``added_at``), then the live ones."""
        d: dict[str, Any] = {"id": self.spec.task, "status": self.status}
        d.update((n, getattr(self.spec, n)) for n in _ADD_FIELDS)
        d["added_at"] = d.pop("time")
        del d["task"]
        d.update((n, getattr(self, n)) for n in _STATE_FIELDS)
        return {k: v if type(v) in _SCALARS else _jsonable(v) for k, v in d.items()}


_SCALARS = frozenset({str, int, bool, float, type(None)})
#: the field names to_dict lists, once (not fields() per task: a queue of 100k tasks lists them all)
_ADD_FIELDS = tuple(f.name for f in fields(TaskAdded))
_STATE_FIELDS = tuple(f.name for f in fields(TaskState) if f.name != "spec")


def _jsonable(v: Any) -> Any:
    """Canonical value -> JSON value: bytes as hex, as the record views show ids."""
    if type(v) in _SCALARS:
        return v
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


NEVER = (1 << 63) - 1  # 7.9: a computed time that saturates here is never reached


def _sat(t: int) -> int:
    """7.9: a time the fold computes (a lease's expiry, a retry's time) saturates at 2^63 - 1,
    the last time a record can carry, and that time never comes: the lease stays live, the retry
    never falls due (a clock at 2^63 - 1 could record nothing after it)."""
    return min(t, NEVER)


@dataclass
class Queue:
    """Every task, folded. Check an event, commit it, then ``apply`` it.

    >>> q = Queue()
    >>> for ev in (TaskAdded(time=0, task="fetch"),
    ...            TaskClaimed(time=1, task="fetch", worker="w1", lease=30_000_000_000)):
    ...     q.check(ev)  # refuses an illegal event before it is written
    ...     q.apply(ev)  # after the commit
    >>> q.tasks["fetch"].status, q.due(now=2)
    ('claimed', [])
    """

    tasks: dict[str, TaskState] = field(default_factory=dict)
    time: int = 0  # latest accepted event time; the queue's clock never runs backward
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (event index, why)

    def _now(self, now: int) -> int:
        return max(now, self.time)

    def _get(self, task: str) -> TaskState:
        st = self.tasks.get(task)
        if st is None:
            raise UnknownTask(f"no task {task!r}", task=task)
        return st

    def _not_due(self, st: TaskState, now: int) -> TaskRefused | None:
        """Why ``st`` may not be claimed at ``now`` (already clamped), or None if it is due."""
        t = st.id
        if st.status in TERMINAL:
            return TaskClosed(f"task {t!r} is already {st.status}", task=t)
        if st.lease_live(now):
            return LeaseError(
                f"task {t!r} is leased to {st.worker!r} until {st.lease_expires_at}", task=t
            )
        for d in st.deps:
            dep = self.tasks.get(d)
            if dep is None or dep.status != "done":
                what = "unknown" if dep is None else dep.status
                return NotDue(f"task {t!r} waits for {d!r} ({what})", task=t)
        if st.spec.not_before is not None and now < st.spec.not_before:
            return NotDue(f"task {t!r} may not run before {st.spec.not_before}", task=t)
        if now < st.next_attempt_at or st.next_attempt_at >= NEVER:
            return NotDue(f"task {t!r} is backing off until {st.next_attempt_at}", task=t)
        return None

    # -- checks: raise TaskRefused, change nothing -----------------------------------------

    def check_add(self, ev: TaskAdded) -> None:
        """Refuse a duplicate id, an unknown dependency or a dependency cycle."""
        self.check_add_many([ev])

    def check_add_many(self, evs: Sequence[TaskAdded]) -> list[TaskAdded]:
        """Check a batch whose tasks may depend on each other; return it in a write
        order that puts every dependency first (otherwise the batch's own order)."""
        batch: dict[str, TaskAdded] = {}
        for ev in evs:
            if ev.task in self.tasks or ev.task in batch:
                raise DuplicateTask(f"task {ev.task!r} already exists", task=ev.task)
            batch[ev.task] = ev
        for ev in evs:
            for d in ev.deps:
                if d not in self.tasks and d not in batch:
                    raise UnknownTask(
                        f"task {ev.task!r} depends on unknown task {d!r}", task=ev.task
                    )
        graph = {t: st.deps for t, st in self.tasks.items()}
        graph.update((t, ev.deps) for t, ev in batch.items())
        cycle = _find_cycle(graph, batch)
        if cycle is not None:
            raise DependencyCycle(cycle)
        # Kahn's algorithm, ties broken by batch position: deterministic and stable.
        pos = {t: i for i, t in enumerate(batch)}
        waiting = {t: sum(d in batch for d in ev.deps) for t, ev in batch.items()}
        users: dict[str, list[str]] = {}
        for t, ev in batch.items():
            for d in ev.deps:
                if d in batch:
                    users.setdefault(d, []).append(t)
        ready = [pos[t] for t, n in waiting.items() if n == 0]
        heapq.heapify(ready)
        order: list[TaskAdded] = []
        names = list(batch)
        while ready:
            t = names[heapq.heappop(ready)]
            order.append(batch[t])
            for u in users.get(t, ()):
                waiting[u] -= 1
                if waiting[u] == 0:
                    heapq.heappush(ready, pos[u])
        return order

    def check_claim(self, ev: TaskClaimed, now: int | None = None) -> None:
        """Only a due task; never while a lease (anyone's) is live."""
        st = self._get(ev.task)
        t = self._now(ev.time if now is None else now)
        if st.lease_live(t) and st.worker == ev.worker:
            raise LeaseError(
                f"worker {ev.worker!r} already holds task {ev.task!r}; "
                "send a heartbeat to extend the lease",
                task=ev.task,
            )
        err = self._not_due(st, t)
        if err is not None:
            raise err

    def _check_holder(
        self, ev: TaskHeartbeat | TaskCompleted | TaskFailed, now: int | None
    ) -> None:
        st = self._get(ev.task)
        t = self._now(ev.time if now is None else now)
        if st.status in TERMINAL:
            raise TaskClosed(f"task {ev.task!r} is already {st.status}", task=ev.task)
        if st.status != "claimed":
            raise LeaseError(f"task {ev.task!r} is not claimed", task=ev.task)
        if st.worker != ev.worker:
            raise LeaseError(
                f"task {ev.task!r} is held by {st.worker!r}, not {ev.worker!r}", task=ev.task
            )
        if not st.lease_live(t):
            raise LeaseError(
                f"the lease of {ev.worker!r} on task {ev.task!r} expired at "
                f"{st.lease_expires_at} (now {t})",
                task=ev.task,
            )

    def check_heartbeat(self, ev: TaskHeartbeat, now: int | None = None) -> None:
        """Only the lease holder, while its lease is live."""
        self._check_holder(ev, now)

    def check_complete(self, ev: TaskCompleted, now: int | None = None) -> None:
        """Only the lease holder, while its lease is live: a late completion is refused."""
        self._check_holder(ev, now)

    def check_fail(self, ev: TaskFailed, now: int | None = None) -> None:
        """Only the lease holder, while its lease is live."""
        self._check_holder(ev, now)

    def check_cancel(self, ev: TaskCancelled, now: int | None = None) -> None:
        """Any task that is not done, failed or cancelled already."""
        st = self._get(ev.task)
        if st.status in TERMINAL:
            raise TaskClosed(f"task {ev.task!r} is already {st.status}", task=ev.task)

    def check(self, ev: Event, now: int | None = None) -> None:
        """Dispatch to the ``check_*`` for the event's type."""
        if isinstance(ev, TaskAdded):
            self.check_add(ev)
        elif isinstance(ev, TaskClaimed):
            self.check_claim(ev, now)
        elif isinstance(ev, TaskHeartbeat):
            self.check_heartbeat(ev, now)
        elif isinstance(ev, TaskCompleted):
            self.check_complete(ev, now)
        elif isinstance(ev, TaskFailed):
            self.check_fail(ev, now)
        else:
            self.check_cancel(ev, now)

    # -- transitions ----------------------------------------------------------------------

    def apply(self, ev: Event) -> None:
        """Check ``ev`` against the state at its own time, then apply it. An add is
        checked only for a duplicate id: dependencies may arrive later (see header)."""
        t = self._now(ev.time)
        if isinstance(ev, TaskAdded):
            if ev.task in self.tasks:
                raise DuplicateTask(f"task {ev.task!r} already exists", task=ev.task)
            self.tasks[ev.task] = TaskState(spec=ev, updated_at=t)
            self.time = t
            return
        self.check(ev, t)
        st = self.tasks[ev.task]
        common: dict[str, Any] = {"history": st.history + 1, "updated_at": t}
        if isinstance(ev, TaskClaimed):
            lost = st.lost + (st.status == "claimed")  # due while claimed: the lease expired
            new = replace(
                st,
                status="claimed",
                attempts=st.attempts + 1,
                lost=lost,
                worker=ev.worker,
                lease_expires_at=_sat(t + ev.lease),
                **common,
            )
        elif isinstance(ev, TaskHeartbeat):
            until = max(st.lease_expires_at or 0, _sat(t + ev.lease))
            new = replace(st, lease_expires_at=until, **common)
        elif isinstance(ev, TaskCompleted):
            new = replace(st, status="done", lease_expires_at=None, result=ev.result, **common)
        elif isinstance(ev, TaskFailed):
            n = st.failures + 1
            if n >= st.spec.max_attempts:
                new = replace(
                    st, status="failed", failures=n, lease_expires_at=None, error=ev.error, **common
                )
            else:
                wait = min(st.spec.backoff << (n - 1), st.spec.backoff_cap)
                new = replace(
                    st,
                    status="pending",
                    failures=n,
                    lease_expires_at=None,
                    error=ev.error,
                    next_attempt_at=_sat(t + wait),
                    **common,
                )
        else:
            new = replace(st, status="cancelled", lease_expires_at=None, reason=ev.reason, **common)
        self.tasks[ev.task] = new
        self.time = t

    # -- queries ----------------------------------------------------------------------------

    def due(self, now: int) -> list[TaskState]:
        """Tasks a worker may claim at ``now``, best first (see ``TaskState.order_key``)."""
        t = self._now(now)
        out = [st for st in self.tasks.values() if self._not_due(st, t) is None]
        out.sort(key=TaskState.order_key)
        return out

    def blocked(self) -> dict[str, tuple[str, ...]]:
        """Open tasks that can never run, each with the failed or cancelled tasks
        (direct or transitive dependencies) that block it; sorted by task id."""
        users: dict[str, list[str]] = {}
        for t, st in self.tasks.items():
            if st.status not in TERMINAL:
                for d in st.deps:
                    users.setdefault(d, []).append(t)
        found: dict[str, set[str]] = {}
        for root in sorted(
            t for t, st in self.tasks.items() if st.status in ("failed", "cancelled")
        ):
            seen: set[str] = set()
            todo = list(users.get(root, ()))
            while todo:
                u = todo.pop()
                if u not in seen:
                    seen.add(u)
                    found.setdefault(u, set()).add(root)
                    todo.extend(users.get(u, ()))
        return {t: tuple(sorted(found[t])) for t in sorted(found)}

    def next_wakeup(self, now: int) -> int | None:
        """The earliest time after ``now`` at which an open task may become due by
        the clock alone (not_before, backoff or a lease expiring), or None."""
        t = self._now(now)
        times = []
        for st in self.tasks.values():
            if st.status in TERMINAL:
                continue
            if any(d not in self.tasks or self.tasks[d].status != "done" for d in st.deps):
                continue  # waits for an event, not for the clock
            at = max(st.spec.not_before or 0, st.next_attempt_at)
            if st.status == "claimed" and st.lease_expires_at is not None:
                at = max(at, st.lease_expires_at)
            if t < at < NEVER:
                times.append(at)
        return min(times, default=None)

    def to_dict(self, now: int | None = None, *, statuses: Iterable[str] | None = None,
                limit: int | None = None) -> dict[str, Any]:
        """The ``capsule tasks --json`` document: tasks sorted by id; with ``now``,
        also the due list in claim order. ``statuses`` lists only the tasks in those, and
        ``limit`` only the first ``limit`` of them (``more`` says how many it left out); the
        counts stay the whole queue's. Only the tasks listed are turned into maps."""
        blocked = self.blocked()
        counts = dict.fromkeys(STATUSES, 0)
        want = None if statuses is None else frozenset(statuses)
        chosen = []
        for tid in sorted(self.tasks):
            st = self.tasks[tid]
            counts[st.status] += 1
            if want is None or st.status in want:
                chosen.append(st)
        tasks = []
        for st in chosen[:limit]:
            d = st.to_dict()
            d["blocked_by"] = list(blocked.get(st.id, ()))
            tasks.append(d)
        doc: dict[str, Any] = {
            "time": self.time,
            "counts": counts,
            "tasks": tasks,
            "rejected": [{"index": i, "reason": why} for i, why in self.rejected],
        }
        if now is not None:
            doc["now"] = self._now(now)
            doc["due"] = [st.id for st in self.due(now)]
        if len(tasks) < len(chosen):
            doc["more"] = len(chosen) - len(tasks)
        return doc


def _find_cycle(graph: Mapping[str, Sequence[str]], starts: Iterable[str]) -> list[str] | None:
    """The first cycle (as ``[a, b, ..., a]``) reachable from ``starts``, by iterative DFS."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    for s in starts:
        if s in state:
            continue
        state[s] = 1
        path = [s]
        stack = [iter(graph.get(s, ()))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                state[path.pop()] = 2
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state and nxt in graph:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return None


def fold(events: Iterable[Event]) -> Queue:
    """Fold events, in commit order, into a :class:`Queue`.

    >>> q = fold([TaskAdded(time=0, task="a"), TaskAdded(time=0, task="b", deps=("a",))])
    >>> [st.id for st in q.due(now=5)]
    ['a']
    """
    q = Queue()
    for i, ev in enumerate(events):
        try:
            q.apply(ev)
        except TaskRefused as e:
            q.rejected.append((i, str(e)))
    return q
