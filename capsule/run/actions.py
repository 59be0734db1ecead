"""Idempotent actions: a side effect keyed by an idempotency key runs at most
once across crashes, restarts and hosts (spec 7.8; design 9).

Theory of operation: before the effect runs, an ``action`` *intent* record is
committed and fsynced; after it, a *result* record (a value or an error). On
any later call with the same key:

- a result exists: the stored value is returned (or the stored error raised)
  and the function is not called;
- an intent has no result: the action is *in doubt*, because the process may
  have died before, during or after the effect. It is never silently re-run:
  ``reconcile(key)`` is asked (it should look the key up in the external
  system) and answers the value, or :data:`NOT_DONE` to run the effect again;
  without ``reconcile`` :class:`InDoubt` is raised. Policy ``retry-safe`` (the
  effect is idempotent downstream) re-runs instead, and policy ``ask`` leaves
  the decision to a human (``capsule actions --resolve``).

The per-key state is a pure fold over the key's records in commit order
(:mod:`.journal_blob`), kept in journal snapshot blobs so that a lookup reads
no history (:mod:`.journal`, spec 18).

Threads: a key is *owned* by one thread from the moment it looks the key up
until the result is written (``run_once``) or the handle completes
(``action()``). Another thread asking for the same key waits, then sees the
stored result, so the effect runs once and every caller gets the same value.
The handle's lock is held only to read the journal and write its records, not
while the effect runs: effects with different keys run side by side. A thread
that already owns a key and asks for it again is not made to wait for itself
(it sees the key in doubt, as before).
"""

from __future__ import annotations

import threading
import time as _time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from ..core.errors import CapsuleError, InvalidRecordError, NonCanonicalError, UsageError
from ..format import canonical as canon
from ..state.kinds import Field, KindBase, _declare, _meta, _text, parse_choice
from .journal import JournalIndex
from .journal_blob import ActionState as ActionState  # re-exported: the public type
from .journal_blob import apply
from .policy import check_action

Policy = Literal["at-most-once", "retry-safe", "ask"]
POLICIES = ("at-most-once", "retry-safe", "ask")


#: the error of a result record whose effect ran but whose value could not be stored (7.8)
_NOT_RECORDABLE = "value not recordable: "

class _NotDone:
    """What ``reconcile`` returns when the effect did not happen."""

    _instance: _NotDone | None = None

    def __new__(cls) -> _NotDone:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "capsule.NOT_DONE"


NOT_DONE = _NotDone()


class InDoubt(UsageError):
    """An action's intent was committed but its result never was."""

    def __init__(self, key: str, message: str | None = None) -> None:
        super().__init__(message or f"action {key!r} is in doubt: it may or may not have happened "
                         "(pass reconcile=..., or settle it with `capsule actions --resolve`)")
        self.key = key


class ActionFailed(CapsuleError):
    """The action ran before and its recorded outcome is an error."""

    def __init__(self, key: str, error: str) -> None:
        super().__init__(f"action {key!r} failed earlier: {error}")
        self.key = key
        self.error = error


def _value(v: object, name: str) -> Any:
    try:
        return canon.normalize(v, 1)
    except NonCanonicalError as e:
        raise InvalidRecordError(f"{name}: {e}") from None


def _attempt(v: object, name: str) -> int:
    if type(v) is not int or not 1 <= v < 1 << 31:
        raise InvalidRecordError(f"{name} must be a positive integer")
    return v



@_declare
@dataclass(frozen=True, slots=True)
class Action(KindBase):
    """One step of an action's journal (spec 7.8)."""

    kind: ClassVar[str] = "action"
    INTERNAL: ClassVar[bool] = True  # written by run_once / action() / resolve only
    SPEC: ClassVar[tuple[Field, ...]] = (
        Field("key", _text),
        Field("phase", parse_choice("intent", "result", "resolve")),
        Field("attempt", _attempt),
        Field("what", _text, ""),
        Field("inputs", _meta, {}, dict, dict),
        Field("ok", lambda v, n: _bool(v, n), True),
        Field("value", _value, None),
        Field("error", _text, ""),
        Field("by", parse_choice("", "fn", "reconcile", "human", "retry"), ""),
    )
    time: int
    key: str
    phase: str
    attempt: int
    what: str = ""
    inputs: Mapping[str, Any] = field(default_factory=dict)
    ok: bool = True
    value: Any = None
    error: str = ""
    by: str = ""
    id: str = field(default="", compare=False)


def _register_fast() -> None:
    """The state counts every action record, and verify reads each: their checked-in-C decoder."""
    from functools import partial

    from ..format.records import register_fast
    from .eventfast import decode_action

    register_fast("action", partial(decode_action, Action))


_register_fast()


def _bool(v: object, name: str) -> bool:
    if type(v) is not bool:
        raise InvalidRecordError(f"{name} must be true or false")
    return v


MAX_KEY = 1024


def fold_actions(records: Iterable[Any]) -> dict[str, ActionState]:
    out: dict[str, ActionState] = {}
    for rec in records:
        if rec.kind == "action":
            apply(out.setdefault(rec.key, ActionState(rec.key)), rec)
    return out


class ActionHandle:
    """``with cap.action(key) as a: if not a.done: a.complete(send(...))``."""

    def __init__(self, journal: Journal, key: str, state: ActionState, owned: bool = False) -> None:
        self._journal, self.key = journal, key
        self._state = ActionState(**vars(state))  # a snapshot: another handle cannot change our attempt
        self._completed = False
        self._owned = owned  # this handle owns the key until it is completed or exited

    def _release(self) -> None:
        if self._owned:
            self._owned = False
            self._journal._release(self.key)

    @property
    def done(self) -> bool:
        return self._state.status == "done"

    @property
    def value(self) -> Any:
        return self._state.value

    def complete(self, value: Any = None) -> Any:
        if self.done:
            raise UsageError(f"action {self.key!r} is already done")
        try:
            self._journal._result(self.key, self._state.attempt, ok=True, value=value)
            self._completed = True
            self._state = ActionState(**vars(self._journal.state(self.key)))
        finally:
            self._release()  # even when the result could not be written: never strand a waiter
        return self._state.value

    def __enter__(self) -> ActionHandle:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        try:
            if self.done or self._completed:
                return
            if ev is not None:
                if not isinstance(ev, Exception):
                    return  # interrupted: leave the key in doubt
                self._journal._result(self.key, self._state.attempt, ok=False, error=_describe(ev))
            else:
                self._journal._result(self.key, self._state.attempt, ok=True, value=None)
        finally:
            self._release()


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"[:2000]
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # never hide the caller's error


class Journal:
    """The action journal of one writer handle (kept by :class:`Capsule`)."""

    def __init__(self, cap: Any) -> None:
        # ``cap`` provides ``_lock`` (re-entrant), ``_cv`` (a Condition on it) and ``_store``.
        self._cap = cap
        self.index = JournalIndex(cap._store)  # the folded journal, from its snapshot blobs (18)
        self._owners: dict[str, threading.Thread] = {}  # key -> the thread that owns it (module docstring)
        self.draining = 0  # compactions or closes waiting for the effects in flight: no new claim meanwhile

    def states(self) -> dict[str, ActionState]:
        """Every key's state (reads every journal entry: for listings)."""
        with self._cap._lock:
            return self.index.states()

    def in_doubt(self) -> list[ActionState]:
        """The keys in doubt, in key order, without reading the other entries."""
        with self._cap._lock:
            return self.index.in_doubt()

    def state(self, key: str) -> ActionState:
        with self._cap._lock:
            return self.index.lookup(key)

    def _claim(self, key: str) -> bool:
        """Own ``key``, waiting while another thread does (or while the handle drains for a
        compaction or a close). False: this thread already owns it. A thread that ended owning
        a key (a handle it never finished) owns nothing: its key is in doubt, not held."""
        me = threading.current_thread()
        with self._cap._cv:
            # while draining, new effects wait; an effect's own nested run_once does not (the
            # drain waits for that effect: holding its nested claim back would deadlock both)
            while ((owner := self._owners.get(key)) is not None and owner is not me and owner.is_alive()) or (
                    self.draining and owner is not me and me not in self._owners.values()):
                self._cap._cv.wait()
            if owner is me:
                return False
            self._owners[key] = me
            return True

    def in_flight(self) -> list[threading.Thread]:
        """The live threads that own a key (an effect between its intent and its result)."""
        return [t for t in self._owners.values() if t.is_alive()]

    def drain(self, what: str, timeout: float = 60.0, *, strict: bool = True, gate: bool = True) -> bool:
        """Wait (under the handle's Condition, held by the caller) until no other thread has an
        effect in flight: their results land before ``what``. ``gate``: no new key is claimed
        meanwhile (but nested ones). ``strict``: refused from inside an effect, and a UsageError
        after ``timeout`` seconds; otherwise False then (the caller goes on), and from inside an
        effect it waits for the others' (the caller's own key is its own doing)."""
        me = threading.current_thread()
        if strict and me in self._owners.values():
            raise UsageError(f"{what}: called from inside a run_once effect; {what} after it returns")
        deadline = _time.monotonic() + timeout
        self.draining += gate
        try:
            while busy := [t for t in self.in_flight() if t is not me]:
                left = deadline - _time.monotonic()
                if left <= 0:
                    if not strict:
                        return False
                    raise UsageError(f"{what}: {len(busy)} run_once effect(s) still in flight after {timeout:g} s "
                                     f"(threads {', '.join(sorted(t.name for t in busy))}); {what} once they finish")
                self._cap._cv.wait(min(left, 0.5))
            return True
        finally:
            self.draining -= gate
            self._cap._cv.notify_all()

    def _release(self, key: str) -> None:
        with self._cap._cv:
            self._owners.pop(key, None)
            self._cap._cv.notify_all()

    def after_fork(self) -> None:
        """In a fork child: the threads that owned keys did not come along."""
        self._owners.clear()
        self.draining = 0

    def _write(self, rec_kw: dict[str, Any]) -> Action:
        cap = self._cap
        with cap._lock:  # the commit and the folded state move together
            self.index.lookup(rec_kw["key"])  # loaded first, so the commit below is folded in as it lands
            with cap.commit() as tx:  # one commit, one fsync: the record is durable on return
                rec = Action.build(time=cap.clock(), **rec_kw)
                tx._put(rec)  # the handle folds what the commit wrote (JournalIndex.committed)
        return rec  # type: ignore[no-any-return]

    def _intent(self, key: str, attempt: int, what: str, inputs: Mapping[str, Any] | None) -> None:
        self._write({"key": key, "phase": "intent", "attempt": attempt, "what": what, "inputs": inputs})

    def _result(self, key: str, attempt: int, *, ok: bool, value: Any = None, error: str = "",
                by: str = "") -> None:
        self._write({"key": key, "phase": "result", "attempt": attempt, "ok": ok,
                     "value": value if ok else None, "error": "" if ok else error, "by": by})

    def resolve(self, key: str, *, done: bool, value: Any = None, by: str = "human") -> ActionState:
        key = _text(key, "key")
        owned = self._claim(key)  # a key being run in another thread is not in doubt: wait for it
        try:
            st = self.state(key)
            if st.status != "in-doubt":
                raise UsageError(f"action {key!r} is {st.status}, not in doubt: nothing to resolve")
            self._write({"key": key, "phase": "resolve", "attempt": st.attempt, "ok": done,
                         "value": value if done else None, "by": by})
            return self.state(key)
        finally:
            if owned:
                self._release(key)

    def _settle(self, key: str, st: ActionState, reconcile: Callable[[str], Any] | None, policy: str) -> bool:
        """Decide an in-doubt action. True: it is done now; False: run it again."""
        if policy == "retry-safe":
            return False
        if policy == "ask" or reconcile is None:
            raise InDoubt(key)
        answer = reconcile(key)
        if answer is NOT_DONE:
            self._write({"key": key, "phase": "resolve", "attempt": st.attempt, "ok": False, "by": "reconcile"})
            return False
        self._write({"key": key, "phase": "resolve", "attempt": st.attempt, "ok": True, "value": answer,
                     "by": "reconcile"})
        return True

    def begin(self, key: str, *, what: str = "", inputs: Mapping[str, Any] | None = None,
              reconcile: Callable[[str], Any] | None = None, policy: str = "at-most-once") -> ActionHandle:
        if policy not in POLICIES:
            raise UsageError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        if not isinstance(key, str) or not key:
            raise UsageError("an action key must be a non-empty string")
        key = _text(key, "key")  # stored NFC: look it up the same way
        if len(key) > MAX_KEY:
            raise UsageError(f"an action key is at most {MAX_KEY} characters")
        owned = self._claim(key)
        if not owned:  # its intent is written and its result is not: it is running, not in doubt
            raise UsageError(f"action {key!r} is already being run by this thread (run_once inside its own "
                             "effect, or begin() again before the first handle finished)")
        try:
            st = self.state(key)
            if st.status == "in-doubt" and self._settle(key, st, reconcile, policy):
                return ActionHandle(self, key, self.state(key))
            if st.status == "failed" and policy != "retry-safe":
                raise ActionFailed(key, st.error)
            st = self.state(key)
            if st.status == "done":
                return ActionHandle(self, key, st)
            # new, not-done, in doubt and re-runnable, or failed under retry-safe
            with self._cap._lock:  # 7.3.1: judged against the commit the intent follows; refused: nothing written
                check_action(self._cap._store, key, inputs)
                self._intent(key, st.attempt + 1, what, inputs)
            a = ActionHandle(self, key, self.state(key), owned)
            owned = False  # the handle releases the key once its result is written
            return a
        finally:
            if owned:
                self._release(key)

    def run_once(self, key: str, fn: Callable[[], Any], *, reconcile: Callable[[str], Any] | None = None,
                 policy: str = "at-most-once", what: str = "", inputs: Mapping[str, Any] | None = None) -> Any:
        a = self.begin(key, what=what, inputs=inputs, reconcile=reconcile, policy=policy)
        if a.done:
            err = a._state.error or ""
            if err.startswith(_NOT_RECORDABLE):  # done, with no value: never a silent None
                raise InvalidRecordError(f"action {key!r}: the effect ran once (done), but its result could not be "
                                         f"stored ({err.removeprefix(_NOT_RECORDABLE)}), so there is none to return")
            return a.value
        try:
            return self._run(a, fn)
        finally:
            a._release()  # whatever happened, other threads may now look at the key

    def _run(self, a: ActionHandle, fn: Callable[[], Any]) -> Any:
        attempt = a._state.attempt
        try:
            value = fn()
        except Exception as e:
            self._result(a.key, attempt, ok=False, error=_describe(e))
            raise
        # KeyboardInterrupt/SystemExit: the effect may be half done, so the key
        # stays in doubt (no result is written).
        try:
            self._result(a.key, attempt, ok=True, value=value)
        except InvalidRecordError as e:
            # The effect ran, but its value cannot be stored: record it as done
            # with no value and say why, rather than leaving it in doubt for ever.
            self._write({"key": a.key, "phase": "result", "attempt": attempt, "ok": True,
                         "error": f"{_NOT_RECORDABLE}{e}", "by": "fn"})
            raise InvalidRecordError(f"action {a.key!r}: the effect ran (recorded as done), but its result "
                                     f"cannot be stored: {e}") from None
        return self.state(a.key).value  # the stored (canonical) value, as every replay returns

