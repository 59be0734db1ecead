"""Liveness (spec 13.1, 7.7.1): the one place a ``revert`` event changes the dead set.

Kept apart from the fold so that every reader of liveness (the fold, policies, the lexical
catalog, the verifier) shares it without importing the fold.
"""

from __future__ import annotations

from typing import Any


def apply_revert(dead: set[bytes], redacted: set[bytes], rec: Any) -> None:
    """13.1: one ``revert`` event, in commit order: its ``drop`` ids die, then its
    ``restore`` ids live again, except a redacted id (7.7.1), which never does.
    ``redacted`` holds the ids redacted so far and gains this event's."""
    dead.update(rec.drop)
    if rec.op == "redact":
        redacted.update(rec.drop)
    if rec.restore:
        dead.difference_update([x for x in rec.restore if x not in redacted])
