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

A writer belongs to the process that opened it (``format.file``): in a fork
child every write is refused, ``close`` only drops the child's descriptor, and
reads see the snapshot inherited at the fork. A parent thread may have held a
lock at the fork, so the child gets fresh ones (:func:`_after_fork_in_child`).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

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
