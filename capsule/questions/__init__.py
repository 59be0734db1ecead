"""The questions a person asks of a long-running agent (spec 13.5): ``beliefs``,
``why``, ``diff``, ``timeline`` and ``audit``, each a read-only walk that returns a
document with a stable ``to_dict()`` (the ``--json`` output and what the HTML report
reads).

Layer 3.5: may import ``core``, ``format``, ``state``, ``search`` and ``run``; it
reaches the open capsule through the small protocol in ``_walk`` (the handle's read
API), never by importing ``handle``, which delegates to it (``handle/questions.py``).
Nothing here writes: a damaged file is refused with the reader's ``CorruptError``.
"""

from __future__ import annotations

from .audit import audit
from .beliefs import beliefs
from .diff import diff
from .timeline import timeline
from .why import why

__all__ = ["audit", "beliefs", "diff", "timeline", "why"]
