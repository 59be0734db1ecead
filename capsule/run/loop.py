"""A small, resumable agent loop (design 9).

    load state -> pick a due task -> act (side effects through run_once)
    -> commit memory -> checkpoint every N steps -> repeat

Theory of operation: the loop keeps no state of its own. Each turn it reads the
task queue from the capsule, claims the most urgent due task with a lease,
runs the handler named by the task, and completes (or fails) the task. If the
process is killed at any point, the next run finds the task either done, or
claimed with a lease that expires, after which it is due again; the handler
runs again, and every side effect it makes through ``step.run_once`` is
returned from the journal instead of being repeated. Time comes from the
injected clock; with ``jump_when_idle`` a simulated clock skips ahead to the
next moment a task becomes due, so a week can run in seconds.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..core.errors import CapsuleError, InvalidRecordError, NonCanonicalError, UsageError
from .actions import InDoubt
from .events import TERMINAL, TaskRefused
from .tasks import Tasks


class Host(Protocol):
    """What the loop needs of an open capsule (a :class:`capsule.Capsule` is one).

    Declared here so ``run`` never imports the handle that sits above it."""

    @property
    def clock(self) -> Any: ...
    @property
    def tasks(self) -> Tasks: ...
    def commit(self) -> Any: ...
    @property
    def _lock(self) -> Any: ...
    def run_once(self, key: str, fn: Callable[[], Any], *, reconcile: Callable[[str], Any] | None = ...) -> Any: ...
    def checkpoint(self, label: str, *, key: Any) -> Any: ...
    def checkpoints(self) -> list[Any]: ...
    def carried_checkpoints(self) -> list[Any]: ...


@dataclass
class Step:
    """What a handler gets: the open capsule, the claimed task and the time."""

    cap: Host
    task: Any  # _scheduler.TaskState
    now: int

    @property
    def name(self) -> str:
        return str(self.task.spec.task)

    @property
    def payload(self) -> Mapping[str, Any]:
        return dict(self.task.spec.payload)

    def run_once(self, key: str, fn: Callable[[], Any], *, reconcile: Callable[[str], Any] | None = None) -> Any:
        """A side effect that happens at most once, whatever crashes in between."""
        return self.cap.run_once(key, fn, reconcile=reconcile)

    def heartbeat(self, lease: int | None = None) -> None:
        """Extend this task's lease during long work."""
        cap = self.cap
        cap.tasks.heartbeat(self.name, self.task.worker, lease=lease or self.task_lease)

    task_lease: int = 600 * 10**9

    def result_of(self, task: str) -> Any:
        """The recorded result of another (finished) task."""
        return self.cap.tasks.queue().tasks[task].result


@dataclass
class LoopResult:
    steps: int = 0
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # finished after the lease expired
    checkpoints: int = 0
    resumed: list[str] = field(default_factory=list)  # held by this worker at the start: a run that died
    #: tasks still open when the loop stopped (not yet due, blocked, or claimed by another worker):
    #: empty when the queue is finished
    waiting: list[str] = field(default_factory=list)
    #: tasks whose handler raised InDoubt (an effect that may have happened): left claimed, not
    #: failed; settle the action (``reconcile``, ``capsule actions --resolve``) and run again
    in_doubt: list[str] = field(default_factory=list)


#: seconds (real time) an idle loop with ``jump_when_idle`` waits for sibling loops of its handle
#: to finish their tasks before it moves the shared clock on (a sibling that died holds its lease)
SIBLING_WAIT = 10.0


class AgentLoop:
    """Run tasks from a capsule until none is left (or ``max_steps``).

    ``handlers`` maps a task's ``name`` to ``fn(step) -> result``. ``clock`` must
    be the same callable the capsule was opened with; when ``jump_when_idle``
    is set it must also have ``advance_to(ns)``.
    """

    def __init__(self, cap: Host, handlers: Mapping[str, Callable[[Step], Any]], *, worker: str = "agent",
                 lease: int = 600 * 10**9, key: Any = None, checkpoint_every: int = 10,
                 jump_when_idle: bool = False) -> None:
        self.cap, self.handlers, self.worker, self.lease = cap, handlers, worker, lease
        self.key, self.checkpoint_every, self.jump = key, checkpoint_every, jump_when_idle
        if jump_when_idle and not callable(getattr(cap.clock, "advance_to", None)):
            raise UsageError("jump_when_idle needs a clock with advance_to(ns) (a simulated clock)")

    def _next_label(self) -> str:
        """``loop-N``, N past every loop label the file holds, its own checkpoints' and the
        carried ones' (15.2: a compacted or forked file lists those apart): a label used again
        would make ``--at loop-1`` and ``rollback --to loop-1`` name the newer state."""
        labels = [c.label for c in self.cap.checkpoints()] + [c.label for c in self.cap.carried_checkpoints()]
        used = [int(m.group(1)) for x in labels if (m := re.fullmatch(r"loop-([0-9]{1,4000})", x))]
        return f"loop-{max(used, default=0) + 1}"

    def run(self, max_steps: int | None = None) -> LoopResult:
        res = LoopResult()
        tasks = self.cap.tasks
        # A task this worker name holds that no thread of this handle claimed was claimed by a
        # process that died (a writer holds the file alone): it is taken up again now, its lease
        # renewed, instead of waiting for that lease to run out; its handler's effects replay
        # from the journal (run_once). One this handle claimed may be running in another thread
        # (a handle is shared by threads): it is left to its lease.
        now = max(self.cap.clock(), tasks.queue().time)  # 7.9: the queue's time, as its checks judge leases
        mine = sorted(t.id for t in tasks.queue().tasks.values()
                      if t.status == "claimed" and t.worker == self.worker and (t.lease_expires_at or 0) > now
                      and t.id not in tasks.claimed_here)
        waited = 0.0  # since when this loop has been idle while a sibling worked (monotonic s)
        while max_steps is None or res.steps < max_steps:
            # 7.9: never behind the queue's time (a clock stepped back across a restart): a lease
            # judged live by the raw clock is expired to the queue, which refuses its heartbeat
            now = max(self.cap.clock(), tasks.queue().time)
            if mine:
                name = mine.pop(0)
                with self.cap._lock:  # one thread takes it up: the check and the mark together
                    ts = tasks.queue().tasks[name]
                    if name in tasks.claimed_here or ts.status != "claimed" or ts.worker != self.worker \
                            or (ts.lease_expires_at or 0) <= now:
                        continue  # another loop of this handle took it, or it ended: the queue decides again
                    tasks.claimed_here.add(name)
                try:
                    tasks.heartbeat(name, self.worker, lease=self.lease, now=now)
                except TaskRefused:  # the queue judged otherwise: it decides again, as after a lost claim
                    tasks.claimed_here.discard(name)
                    continue
                res.resumed.append(name)
            else:
                due = [t for t in tasks.due(now) if t.spec.task not in res.in_doubt]
                if not due:
                    q = tasks.queue()
                    # tasks a sibling loop of this handle (a thread) is working on: their leases are
                    # not idle time, and a jump of the shared clock past one would take the task away
                    busy = {n for n in tasks.claimed_here if (b := q.tasks.get(n)) is not None
                            and b.status == "claimed" and b.lease_live(now)} if self.jump else set()
                    if busy:  # each idle spell while a sibling works waits afresh
                        waited = waited or _time.monotonic()
                        if _time.monotonic() - waited < SIBLING_WAIT:
                            _time.sleep(0.001)  # wait for what the sibling finishes (it may free a task)
                            continue
                    else:
                        waited = 0.0
                    wake = q.next_wakeup(now)
                    if wake is None or not self.jump or wake <= now:
                        break
                    self.cap.clock.advance_to(wake)
                    continue
                waited = 0.0
                name = due[0].spec.task
                try:
                    tasks.claim(name, self.worker, lease=self.lease, now=now)
                except TaskRefused:
                    continue  # another loop on this handle (a thread) claimed it first: pick again
            ts = tasks.queue().tasks[name]
            handler = self.handlers.get(ts.spec.name)
            step = Step(self.cap, ts, now)
            step.task_lease = self.lease
            try:
                if handler is None:
                    raise LookupError(f"no handler for task kind {ts.spec.name!r}")
                result = handler(step)
                error = None
            except InDoubt:
                # An effect of the handler may or may not have happened (7.8): not a failure, which
                # would spend the task's attempts on a question only reconcile or `capsule actions
                # --resolve` answers. The task keeps its lease (a lost lease counts no attempt) and
                # is taken up again by a later run, once settled; this run leaves it.
                res.in_doubt.append(name)
                tasks.claimed_here.discard(name)
                res.steps += 1
                continue
            except Exception as e:
                result, error = None, _describe(e)
            try:
                if error is None:
                    try:
                        tasks.complete(name, self.worker, result)
                    except (InvalidRecordError, NonCanonicalError) as e:
                        # a result the format cannot hold (NaN, a set, an object, past the record limit):
                        # nothing was written; the attempt fails (and retries), else the task stayed
                        # claimed and every restart ran the handler again and stopped the loop there
                        error = _text(f"result not recordable: {e}")
                    except (CapsuleError, OSError):
                        raise  # the lease (TaskRefused, below), the file, the disk: not the value's fault
                    except Exception as e:  # noqa: BLE001  (the value's own code raised: a __repr__, an __eq__)
                        error = _text(f"result not recordable: {_describe(e)}")
                    else:
                        res.done.append(name)
                if error is not None:
                    try:
                        tasks.fail(name, self.worker, error)
                    except (InvalidRecordError, NonCanonicalError):  # a fixed text rather than none
                        tasks.fail(name, self.worker, "the handler failed; its error could not be stored")
                    res.failed.append(name)
            except TaskRefused:
                # The lease ran out while the handler worked: the task is due again
                # (its effects replay from the journal) and this result is dropped.
                res.lost.append(name)
            res.steps += 1
            if self.key is not None and self.checkpoint_every and res.steps % self.checkpoint_every == 0:
                with self.cap._lock:  # the label and its checkpoint together (loops on one handle in threads)
                    self.cap.checkpoint(self._next_label(), key=self.key)
                res.checkpoints += 1
        res.waiting = sorted(t.id for t in tasks.queue().tasks.values() if t.status not in TERMINAL)
        return res


def _text(s: str) -> str:
    """Text a task record can hold: at most 2,000 characters, a lone surrogate (an undecodable file
    name in a message, as os.fsdecode gives it) escaped as ``\\udcff``: raw, `fail` refused it and
    the refusal escaped the loop."""
    return s[:2000].encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(e: BaseException) -> str:
    """``Type: message`` of a handler's exception, whatever its ``__str__`` does."""
    try:
        msg = str(e)
    except Exception:  # noqa: BLE001  (a broken __str__ is the handler's bug, not the loop's)
        msg = f"(its message could not be read: {object.__repr__(e)})"
    return _text(f"{type(e).__name__}: {msg}")
