"""The compaction side of the :class:`~capsule.handle.capsule.Capsule` handle (spec 15.1).

A mixin, like ``questions.py``. Compaction writes its new file through a ``Capsule``, so
``capsule.compaction`` sits above the handle (layer 4½) and this method is the one call
up the layers: it reaches the package by name when called, never at import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..format.keys import PrivateKey


class CompactMethods:
    def compact(self, out: str | Path | None = None, *, keep: str = "history",
                key: PrivateKey | Sequence[PrivateKey] | None = None,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Compact this capsule's file (see :func:`capsule.compact`) and return the report.

        A writer handle is the source (the lock it holds is the one compaction needs): other
        threads' commits wait for it, and it waits for their run_once effects in flight (their
        results first); from inside a commit block or an effect of this thread it is refused.
        Compacted in place it is closed afterwards, since its file was replaced: open the
        new one to go on. A reader handle takes the writer lock for the compaction.

        >>> cap.compact("example-live.capsule", keep="live")["policy"]  # cap: see tests/test_doctests.py
        'live'
        """
        mod = importlib.import_module("capsule.compaction")
        return mod.compact_handle(self, out, keep, key, progress)  # type: ignore[no-any-return]
