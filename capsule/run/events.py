"""Task events: the records a durable task is made of, with their limits and errors (design 9).

Pure: no clock, no I/O. :mod:`.scheduler` folds these events into a queue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Self, TypeAlias

from ..core.errors import InvalidRecordError, NonCanonicalError, NotFound, UsageError
from ..format import canonical as canon

# Hard caps on what one event may carry (style: a cap on every length read).
MAX_TASK_ID = 256  # characters in a task or worker id
MAX_DEPS = 1024  # dependencies of one task
MAX_NAME = 1024  # characters in a task name
MAX_TEXT = 65536  # characters in an error or a cancel reason
MAX_ATTEMPTS = 1000
_NS_MAX = (1 << 63) - 1
STATUSES = ("pending", "claimed", "done", "failed", "cancelled")
TERMINAL = frozenset({"done", "failed", "cancelled"})


# -- errors: "the event is malformed" vs "this event is illegal now" ---------------------


class InvalidTaskEvent(InvalidRecordError):
    """An event (or its stored map) does not fit its schema."""


class TaskRefused(UsageError):
    """The event is well formed but illegal against the queue at that time."""

    def __init__(self, message: str, *, task: str | None = None) -> None:
        super().__init__(message)
        self.task = task


class UnknownTask(TaskRefused, NotFound):
    """The event names a task (or a dependency) the queue has never seen."""


class DuplicateTask(TaskRefused):
    """A task id is added twice."""


class DependencyCycle(TaskRefused):
    """Adding the tasks would close a dependency cycle; ``cycle`` names it."""

    def __init__(self, cycle: Sequence[str]) -> None:
        self.cycle = tuple(cycle)
        super().__init__("dependency cycle: " + " -> ".join(self.cycle), task=self.cycle[0])


class NotDue(TaskRefused):
    """A claim for a task that may not run yet (dependencies, not_before, backoff)."""


class TaskClosed(TaskRefused):
    """The task is already done, failed or cancelled."""


class LeaseError(TaskRefused):
    """A lease conflict: someone else holds it, or the caller's lease expired."""


# -- field validators ---------------------------------------------------------------------


def _time(v: object, name: str) -> int:
    if type(v) is not int or not 0 <= v <= _NS_MAX:
        raise InvalidTaskEvent(f"{name} must be an integer of nanoseconds in 0..2^63-1 (1970 to 2262), "
                               f"not {_shown(v)}")
    return v


def _opt_time(v: object, name: str) -> int | None:
    return None if v is None else _time(v, name)


def _int(v: object, name: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise InvalidTaskEvent(f"{name} must be an integer from {lo} to {hi}")
    return v


def _text(v: object, name: str, limit: int, *, empty: bool = True) -> str:
    if not isinstance(v, str):
        raise InvalidTaskEvent(f"{name} must be a string")
    try:
        s: str = canon.normalize(str(v))
    except NonCanonicalError:
        raise InvalidTaskEvent(f"{name} is not valid Unicode") from None
    if not empty and not s:
        raise InvalidTaskEvent(f"{name} must not be empty")
    if len(s) > limit:
        raise InvalidTaskEvent(f"{name} must be at most {limit} characters")
    return s


def _ident(v: object, name: str) -> str:
    return _text(v, name, MAX_TASK_ID, empty=False)


def _deps(v: object) -> tuple[str, ...]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence):
        raise InvalidTaskEvent("deps must be a list of task ids")
    if len(v) > MAX_DEPS:
        raise InvalidTaskEvent(f"deps lists more than {MAX_DEPS} tasks")
    out = sorted(_ident(d, "deps") for d in v)  # one encoding per event: sorted
    for a, b in zip(out, out[1:], strict=False):
        if a == b:
            raise InvalidTaskEvent(f"deps lists {a!r} twice")
    return tuple(out)


def _value(v: object, name: str) -> Any:
    try:
        return canon.normalize(v, 1)  # the value sits one level below the event map
    except NonCanonicalError as e:
        raise InvalidTaskEvent(f"{name}: {e}") from None


# -- events --------------------------------------------------------------------------------


class _Event:
    """Shared ``to_value``/``from_value`` for the event dataclasses below."""

    OP: ClassVar[str]
    __slots__ = ()
    time: int
    task: str

    def _check(self) -> None:
        raise NotImplementedError

    def __post_init__(self) -> None:
        object.__setattr__(self, "time", _time(self.time, "time"))
        object.__setattr__(self, "task", _ident(self.task, "task"))
        self._check()

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def to_value(self) -> dict[str, Any]:
        """The canonical map: ``op`` plus every field not at its default, keys sorted."""
        v: dict[str, Any] = {"op": self.OP}
        for name, default, factory in _shape(type(self))[0]:
            x = getattr(self, name)
            if default is not MISSING and x == default:
                continue
            if factory is not MISSING and x == factory():
                continue
            v[name] = list(x) if isinstance(x, tuple) else x
        return dict(sorted(v.items()))

    @classmethod
    def from_value(cls, v: object) -> Self:
        """Parse a stored map strictly: unknown, missing or spelled-out default fields refused."""
        if not isinstance(v, Mapping) or not all(type(k) is str for k in v):
            raise InvalidTaskEvent("a task event must be a map with string keys")
        if v.get("op") != cls.OP:
            raise InvalidTaskEvent(f"expected op {cls.OP!r}, not {v.get('op')!r}")
        shape, known, required = _shape(cls)
        extra = sorted(set(v) - known - {"op"})
        if extra:
            raise InvalidTaskEvent(f"unknown {cls.OP} field(s): {', '.join(extra)}")
        missing = [n for n, _, _ in shape if n in required and n not in v]
        if missing:
            raise InvalidTaskEvent(f"{cls.OP} needs {', '.join(missing)}")
        ev = cls(**{k: x for k, x in v.items() if k != "op"})
        if ev.to_value() != dict(v):
            raise NonCanonicalError(
                f"{cls.OP} event is not in canonical form (defaults spelled "
                "out, deps unsorted or text not NFC)"
            )
        return ev


_Shape: TypeAlias = tuple[tuple[tuple[str, Any, Any], ...], frozenset[str], frozenset[str]]
_SHAPES: dict[type, _Shape] = {}


def _shape(cls: type) -> _Shape:
    """An event class's fields once: ``(name, default, default_factory)`` in order, all names, the
    required names (a replay parses one event per task record, so not ``fields()`` each time)."""
    got = _SHAPES.get(cls)
    if got is None:
        fs = fields(cls)
        got = _SHAPES[cls] = (
            tuple((f.name, f.default, f.default_factory) for f in fs), frozenset(f.name for f in fs),
            frozenset(f.name for f in fs if f.default is MISSING and f.default_factory is MISSING))
    return got


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskAdded(_Event):
    """A new task. ``backoff`` and ``backoff_cap`` are nanoseconds."""

    OP: ClassVar[str] = "add"
    time: int
    task: str
    name: str = ""
    deps: tuple[str, ...] = ()
    not_before: int | None = None
    deadline: int | None = None
    priority: int = 0
    max_attempts: int = 3
    backoff: int = 1_000_000_000
    backoff_cap: int = 3_600_000_000_000
    payload: Mapping[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        self._set("name", _text(self.name, "name", MAX_NAME))
        self._set("deps", _deps(self.deps))
        self._set("not_before", _opt_time(self.not_before, "not_before"))
        self._set("deadline", _opt_time(self.deadline, "deadline"))
        self._set("priority", _int(self.priority, "priority", -(1 << 63), _NS_MAX))
        self._set("max_attempts", _int(self.max_attempts, "max_attempts", 1, MAX_ATTEMPTS))
        self._set("backoff", _time(self.backoff, "backoff"))
        self._set("backoff_cap", _time(self.backoff_cap, "backoff_cap"))
        if not isinstance(self.payload, Mapping):
            raise InvalidTaskEvent("payload must be a map with string keys")
        self._set("payload", _value(dict(self.payload), "payload"))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskClaimed(_Event):
    """``worker`` takes the task; its lease expires ``lease`` ns after the claim."""

    OP: ClassVar[str] = "claim"
    time: int
    task: str
    worker: str
    lease: int

    def _check(self) -> None:
        self._set("worker", _ident(self.worker, "worker"))
        self._set("lease", _int(self.lease, "lease", 1, _NS_MAX))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskHeartbeat(_Event):
    """The lease holder extends its lease to at least ``lease`` ns from now."""

    OP: ClassVar[str] = "heartbeat"
    time: int
    task: str
    worker: str
    lease: int

    def _check(self) -> None:
        self._set("worker", _ident(self.worker, "worker"))
        self._set("lease", _int(self.lease, "lease", 1, _NS_MAX))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCompleted(_Event):
    """The lease holder finished; ``result`` is any canonical value."""

    OP: ClassVar[str] = "complete"
    time: int
    task: str
    worker: str
    result: Any = None

    def _check(self) -> None:
        self._set("worker", _ident(self.worker, "worker"))
        self._set("result", _value(self.result, "result"))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskFailed(_Event):
    """The lease holder's attempt failed; the task retries with backoff or fails for good."""

    OP: ClassVar[str] = "fail"
    time: int
    task: str
    worker: str
    error: str = ""

    def _check(self) -> None:
        self._set("worker", _ident(self.worker, "worker"))
        self._set("error", _text(self.error, "error", MAX_TEXT))


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskCancelled(_Event):
    """The task will not run (again); its dependents are blocked."""

    OP: ClassVar[str] = "cancel"
    time: int
    task: str
    reason: str = ""

    def _check(self) -> None:
        self._set("reason", _text(self.reason, "reason", MAX_TEXT))


Event: TypeAlias = (
    TaskAdded | TaskClaimed | TaskHeartbeat | TaskCompleted | TaskFailed | TaskCancelled
)
EVENT_TYPES: dict[str, type[Event]] = {
    c.OP: c
    for c in (TaskAdded, TaskClaimed, TaskHeartbeat, TaskCompleted, TaskFailed, TaskCancelled)
}


def parse_event(v: object) -> Event:
    """The event a stored map encodes, dispatched on its ``op``."""
    op = v.get("op") if isinstance(v, Mapping) else None
    cls = EVENT_TYPES.get(op) if isinstance(op, str) else None
    if cls is None:
        raise InvalidTaskEvent(f"unknown task event op {op!r}")
    ev: Event = cls.from_value(v)
    return ev


def _shown(v: object) -> str:
    """A bad value for an error message: short, and never str() of an int too long to print."""
    if type(v) is int and v.bit_length() > 64:
        return f"an integer of {v.bit_length()} bits"
    return repr(v)[:40]
