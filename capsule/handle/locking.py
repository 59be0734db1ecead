"""One handle, several threads; one writer, one process (theory of operation).

A :class:`~.capsule.Capsule` may be shared by threads. Two re-entrant locks
make that safe, always taken in this order:

- ``_lock``, the writer's: held for a whole ``with cap.commit()`` block (from
  ``__enter__`` to ``__exit__``) and around every other write: checkpoint,
  rotate_keys, rollback, configure_vectors, save_index, close, each task event
  (checked and written under one hold), each action journal record. A commit
  from another thread waits for the open block; the same thread opening a
  second one is an error. Re-entrant because checkpoint, rollback and run_once
  commit through ``cap.commit()`` themselves.
- ``_view_lock``, what is derived from the snapshot: the searcher's lazy
  indexes and the incremental state root. Search and ``state_root`` hold it,
  and a writer holds it only while it appends, fsyncs and publishes the new
  snapshot, so a search never waits for a commit block, only for one write.

Record reads (get, records, log, checkpoints) take neither: each works on the
snapshot it read once (``format.store``). ``run_once`` holds ``_lock`` only to
write its records; while the effect runs the *key* is owned by its thread
(``run.actions``), so callers with that key wait and get the stored result,
and effects with other keys run side by side. Holding ``_lock`` across the
effect would have been simpler, but it serialises every effect on the handle
and every commit behind a slow one (a network call).

Between processes there is one writer: ``format.file`` takes an exclusive flock
without blocking. :func:`open_writer` makes a second writer wait for it the way
SQLite's busy timeout does: it polls, sleeping 1 ms, then twice as long each
time up to 100 ms, until the lock is free or ``timeout`` seconds have passed,
then raises :class:`~capsule.core.errors.Locked` naming the holder. Polling, not
a blocking flock: a blocking call cannot be bounded without a signal, and a
poll lets an interrupt through between tries.

A writer belongs to the process that opened it (``format.file``): in a fork
child every write is refused, ``close`` only drops the child's descriptor, and
reads see the snapshot inherited at the fork. A parent thread may have held a
lock at the fork, so the child gets fresh ones (:func:`_after_fork_in_child`).
"""

from __future__ import annotations

import os
import time
import weakref
from pathlib import Path
from typing import Any

from ..core.errors import Locked, UsageError
from ..format.file import WriteHandle

#: every open handle, so a fork child can replace the locks a parent thread may have held
_HANDLES: weakref.WeakSet[Any] = weakref.WeakSet()


def track(cap: Any) -> None:
    """Remember ``cap`` (weakly): a fork child calls its ``_after_fork()``."""
    _HANDLES.add(cap)


def _after_fork_in_child() -> None:
    for cap in list(_HANDLES):
        cap._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


#: the busy-wait schedule (seconds): the first sleep, and the cap it doubles up to
POLL_FIRST, POLL_MAX = 0.001, 0.1


def open_writer(path: Path, timeout: float | None = None, *, finish: bool = True) -> WriteHandle:
    """Take the writer's lock on ``path``, waiting up to ``timeout`` seconds for
    another writer to let go (None or 0: do not wait). ``finish``: finish an append a killed
    pull's journal describes (19.7), as every writer does."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not 0 <= timeout < float("inf")):
        raise UsageError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
    deadline = time.monotonic() + (timeout or 0)
    delay = POLL_FIRST
    while True:
        try:
            return WriteHandle(path, finish=finish)
        except Locked as e:
            left = deadline - time.monotonic()
            if left <= 0:
                if timeout:
                    raise Locked(f"{e} (waited {timeout:g} s)", pid=e.pid, host=e.host) from None
                raise
            time.sleep(min(delay, left))
            delay = min(delay * 2, POLL_MAX)
