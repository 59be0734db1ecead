"""The questions a person asks of a long-running agent (spec 13.5): ``beliefs``,
``why``, ``diff``, ``timeline`` and ``audit``, each a read-only walk that returns a
document with a stable ``to_dict()`` (the ``--json`` output and what the HTML report
reads).

Layer 3.5: may import ``core``, ``format``, ``state``, ``search`` and ``run``; it
reaches the open capsule through the small protocol in ``_walk`` (the handle's read
API), never by importing ``handle``, which delegates to it (``handle/questions.py``).
Nothing here writes: a damaged file is refused with the reader's ``CorruptError``.

Each question is its own module (``capsule.questions.why.why`` and so on) and the package
imports none of them: the handle needs only ``_lifecycle`` to open a file, and every command
that opens one would otherwise pay for all five walks at start-up (issue 14).
"""

from __future__ import annotations
