"""``verify``: what a lifecycle event may name (spec 7.7.1, check ``lifecycle-target``).

Theory of operation: a writer names as a lifecycle event's targets only the kinds its op allows
(memories, notes and decisions for ``forget`` and ``redact``; memories otherwise) and as its
replacements only memories. Readers apply an event that breaks this (13.1), so a hostile writer's
``redact`` of a constraint or an action would make that record dead while the state, the
questions or the journal still show its payload; verification is where such a file is refused.
The check runs after the frame walk: it finds the lifecycle events with the kind walk (only the
frames that can hold a ``revert`` are read) and reads each stored record they name in file order,
so every RECORDS frame is decompressed once however long the drop lists are. An id no record has
(never stored, or purged by a compaction, 15.1) names nothing and passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..format.crypto import Keys
from ..format.kindwalk import walk
from ..handle.entry import open as open_capsule
from ..handle.lifecycle import APP_KIND_OPS, TARGETS, may_target

if TYPE_CHECKING:
    from .check import VerifyReport


def check_targets(rep: VerifyReport, path: Path, keys: Keys | None = None) -> None:
    """Fail ``rep`` at the first lifecycle event (in file order) that names a record of a kind its
    op may not name (7.7.1)."""
    keys = keys or Keys()
    with open_capsule(path, identity=keys.identity, passphrase=keys.passphrase) as cap:
        store = cap._store
        named: list[tuple[int, int, str, str, bytes]] = []  # (event offset, seq, op, role, id)
        for off, seq, rec in walk(store, ("revert",)):
            if rec.op is not None:
                named += [(off, seq, rec.op, "drop", x) for x in rec.drop]
                named += [(off, seq, rec.op, "by", x) for x in rec.by]
        if not named:
            return
        named.sort(key=lambda t: store.locate(t[4]) or (-1, 0))  # each frame read once
        bad: tuple[int, int, str] | None = None
        for off, seq, op, role, rid in named:
            if bad is not None and off >= bad[0]:
                continue  # only the first bad event is reported
            rec = store.get(rid)
            allowed = (*TARGETS[op], *(("an application kind",) if op in APP_KIND_OPS else ())) \
                if role == "drop" else ("memory",)
            if rec is not None and not (may_target(op, rec.kind) if role == "drop" else rec.kind == "memory"):
                what = "target" if role == "drop" else "replacement"
                bad = (off, seq, f"a {op} event names {rid.hex()}, {'an' if rec.kind[0] in 'aeiou' else 'a'} "
                                 f"{rec.kind}, as its {what}: only {' or '.join(allowed)} (7.7.1)")
    if bad is not None:
        rep.ok = False
        rep.first_error = {"offset": bad[0], "seq": bad[1], "check": "lifecycle-target", "message": bad[2]}


__all__ = ["check_targets"]
