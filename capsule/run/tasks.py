"""Durable tasks in the capsule (spec 7.9): the scheduler's events as records.

The pure scheduler (``_scheduler``) folds task events into a queue and checks
each event before it is written; this module stores those events as ``task``
records, one commit (one fsync) per event, and keeps a folded queue per handle.
Time comes only from the capsule's injected clock, so a capsule copied to
another host resumes the same schedule.

Threads: each event is checked against the queue and written under one hold
of the handle's lock, so two threads cannot both claim a task; reads of the
queue take the lock too (the fold is updated after each write).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..format.kindwalk import walk
from ..format.records import encode_record, register_kind
from .events import (
    Event,
    InvalidTaskEvent,
    TaskAdded,
    TaskCancelled,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHeartbeat,
    parse_event,
)
from .journal import action_records
from .scheduler import Queue, TaskState, fold


@register_kind
@dataclass(frozen=True, slots=True)
class TaskRecord:
    """One scheduler event stored as a record (7.9)."""

    kind: ClassVar[str] = "task"
    INTERNAL: ClassVar[bool] = True  # written through cap.tasks only
    event: Event
    id: str = field(default="", compare=False)

    @property
    def time(self) -> int:
        return self.event.time

    def to_value(self) -> dict[str, Any]:
        return dict(sorted({"kind": "task", **self.event.to_value()}.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.event.to_value()}

    @classmethod
    def from_value(cls, v: Mapping[str, Any], rid: str = "") -> TaskRecord:
        # canonical form: the event's own check (its map equals the stored one but ``kind``) is the
        # record's, since ``kind`` is the only key the record adds
        return cls(parse_event({k: x for k, x in v.items() if k != "kind"}), rid)


def _register_fast() -> None:
    """The queue folds every task record of a file (7.9): their checked-in-C decoder."""
    from functools import partial

    from ..format.records import register_fast
    from .eventfast import decode_task

    register_fast("task", partial(decode_task, TaskRecord))


_register_fast()


def _task_id(task: str | TaskState) -> str:
    """A task named by its id or by the :class:`TaskState` that ``due()`` and ``claim()`` return."""
    return task.id if isinstance(task, TaskState) else task


class Tasks:
    """``cap.tasks``: add, due, claim, heartbeat, complete, fail, cancel."""

    def __init__(self, cap: Any) -> None:
        # ``cap`` provides ``_lock`` (re-entrant), ``_check_writer()`` and ``_store``.
        self._cap = cap
        self._queue: Queue | None = None
        self._at = -1  # the snapshot end the queue is folded to
        self._known = 0  # task records folded
        #: tasks claimed through this handle (by any thread): AgentLoop resumes only a task its
        #: worker name holds that is not among them, one a dead process claimed
        self.claimed_here: set[str] = set()

    def queue(self) -> Queue:
        with self._cap._lock:
            snap = self._cap._store.snap
            n = snap.kinds.get("task", 0)
            if self._queue is not None and snap.end != self._at:
                if n == self._known:
                    self._at = snap.end  # no task record since
                elif n > self._known:  # a reader that refreshed: fold only what is new
                    new = action_records(self._cap._store, self._at, snap, "task")
                    if self._known + len(new) == n:
                        for r in new:
                            self._queue.apply(r.event)
                        self._known, self._at = n, snap.end
            if self._queue is None or snap.end != self._at:
                # a capsule without task records is not read at all
                # the stored records: a task record a (forged, 7.7.1) redact names is no placeholder here
                # (a walk by the INDEX kind counts, 9.2: frames between two INDEX frames that count
                # the same task records are not read, so one task in a million records reads little)
                recs = [r for _, _, r in walk(self._cap._store, ("task",))] if n else []
                self._queue, self._known, self._at = fold(r.event for r in recs), len(recs), snap.end
            return self._queue

    def _now(self, now: int | None) -> int:
        if now is not None:
            return now
        store = self._cap._store
        if store.pinned and store.snap.commit is not None:  # 13.5: a view is judged at its commit's time, as
            return int(store.snap.commit.time)  # its search's ttl is (and `capsule tasks --at`), not the clock's
        return int(self._cap.clock())

    def _write(self, events: Sequence[Event], check: Callable[[Queue], Any] | None = None) -> None:
        """Check (``check(queue)``) and write ``events`` under one hold of the lock."""
        cap = self._cap
        cap._check_writer()
        with cap._lock:
            q = self.queue()
            if check is not None:
                check(q)
            store, seen, written = cap._store, set(), []
            with cap.commit() as tx:
                for ev in events:
                    rid = encode_record(TaskRecord(ev))[0]
                    # an event with the bytes of one stored (a fixed clock: claim, fail, claim again) is one
                    # record (7.0) and would fold once: a nanosecond later it is its own
                    # (present: a writer's membership test, 9.2, which hashes no table for a "no")
                    while rid in seen or store.present([rid])[0]:
                        if ev.time + 1 >= 1 << 63:
                            raise InvalidTaskEvent("the same task event is stored already, at the clock's last "
                                                   "nanosecond")
                        ev = dataclasses.replace(ev, time=ev.time + 1)
                        rid = encode_record(TaskRecord(ev))[0]
                        if not isinstance(ev, TaskAdded):
                            q.check(ev)  # at its own time (a lease may end in that nanosecond): before a write
                    seen.add(rid)
                    written.append(ev)
                    tx._put(TaskRecord(ev))
            for ev in written:
                q.apply(ev)
            # folded as written; a record the commit did not store (already there) refolds next time
            self._known += len(events)
            self._at = cap._store.snap.end

    def add(self, task: str, *, name: str = "", deps: Iterable[str] = (), not_before: int | None = None,
            deadline: int | None = None, priority: int = 0, max_attempts: int = 3,
            backoff: int = 1_000_000_000, backoff_cap: int = 3_600_000_000_000,
            payload: Mapping[str, Any] | None = None, now: int | None = None) -> str:
        """Add a durable task; a dependency cycle or an unknown dependency is refused."""
        if isinstance(deps, str | bytes):  # tuple("ab") would be the tasks "a" and "b"
            raise InvalidTaskEvent(f"deps must be a list of task ids, not the text {deps!r}")
        if not isinstance(deps, Iterable):
            raise InvalidTaskEvent(f"deps must be a list of task ids, not {type(deps).__name__}")
        ev = TaskAdded(time=self._now(now), task=task, name=name, deps=tuple(deps), not_before=not_before,
                       deadline=deadline, priority=priority, max_attempts=max_attempts, backoff=backoff,
                       backoff_cap=backoff_cap, payload=dict(payload or {}))
        self._write([ev], lambda q: q.check_add(ev))
        return ev.task

    def add_many(self, specs: Sequence[Mapping[str, Any]], *, now: int | None = None) -> list[str]:
        """Add tasks that may depend on each other, in one commit (cycles refused)."""
        t = self._now(now)
        allowed = {"task", "name", "deps", "not_before", "deadline", "priority", "max_attempts", "backoff",
                   "backoff_cap", "payload"}
        evs = []
        for spec in specs:
            extra = set(spec) - allowed
            if extra:
                raise InvalidTaskEvent(f"unknown task field(s): {', '.join(sorted(map(str, extra)))}")
            evs.append(TaskAdded(time=t, **dict(spec)))
        cap = self._cap
        cap._check_writer()
        with cap._lock:
            ordered = self.queue().check_add_many(evs)
            self._write(ordered)
        return [e.task for e in ordered]

    def due(self, now: int | None = None) -> list[TaskState]:
        """The tasks a worker may claim now (a view: at its commit's time), in the order to take them
        (priority, deadline, ...)."""
        with self._cap._lock:
            return self.queue().due(self._now(now))

    def claim(self, task: str | TaskState, worker: str, *, lease: int = 60_000_000_000, now: int | None = None,
              ) -> TaskState:
        """Take a due task for ``worker`` until ``lease`` ns from now; returns its new state.

        ``task`` is a task id or a :class:`TaskState` as :meth:`due` returns it (so are the
        ``task`` arguments of ``heartbeat``, ``complete``, ``fail`` and ``cancel``).

        >>> import capsule
        >>> with capsule.create("tasks.capsule") as cap:
        ...     _ = cap.tasks.add("fetch", now=0)
        ...     [t] = cap.tasks.due(now=1)
        ...     cap.tasks.claim(t, "worker-1", now=1).status
        ...     cap.tasks.complete(t, "worker-1", result={"rows": 3}, now=2)
        ...     cap.tasks.queue().tasks["fetch"].status
        'claimed'
        'done'
        """
        ev = TaskClaimed(time=self._now(now), task=_task_id(task), worker=worker, lease=lease)
        with self._cap._lock:
            self._write([ev], lambda q: q.check_claim(ev))
            self.claimed_here.add(ev.task)
            return self.queue().tasks[ev.task]

    def heartbeat(self, task: str | TaskState, worker: str, *, lease: int = 60_000_000_000,
                  now: int | None = None) -> None:
        ev = TaskHeartbeat(time=self._now(now), task=_task_id(task), worker=worker, lease=lease)
        self._write([ev], lambda q: q.check_heartbeat(ev))

    def complete(self, task: str | TaskState, worker: str, result: Any = None, *, now: int | None = None) -> None:
        ev = TaskCompleted(time=self._now(now), task=_task_id(task), worker=worker, result=result)
        self._write([ev], lambda q: q.check_complete(ev))

    def fail(self, task: str | TaskState, worker: str, error: str = "", *, now: int | None = None) -> None:
        ev = TaskFailed(time=self._now(now), task=_task_id(task), worker=worker, error=error)
        self._write([ev], lambda q: q.check_fail(ev))

    def cancel(self, task: str | TaskState, reason: str = "", *, now: int | None = None) -> None:
        ev = TaskCancelled(time=self._now(now), task=_task_id(task), reason=reason)
        self._write([ev], lambda q: q.check_cancel(ev))

    def to_dict(self, now: int | None = None, *, statuses: Iterable[str] | None = None,
                limit: int | None = None) -> dict[str, Any]:
        """The ``capsule tasks --json`` document (see :meth:`Queue.to_dict`: ``statuses`` and
        ``limit`` choose the tasks it lists; its counts stay the whole queue's)."""
        with self._cap._lock:
            return self.queue().to_dict(now=self._now(now), statuses=statuses, limit=limit)
