"""Naming a point in history: labels, seqs, commit-root prefixes and times (spec 6.5).

A view is the state at one commit; :func:`resolve` finds the commit a user's
``--at`` names. Labels are tried first (one table probe), since a label may look
like a number; then a frame seq, then a hex prefix of a commit root, then an
ISO-8601 time or a time ago (``24h ago``, ``yesterday``: the last commit at or before it). A label is the file's own checkpoint's,
else a checkpoint the parent signed that a fork or a compacted file carries (15.2).
"""

from __future__ import annotations

from ..core.clock import ago, read_clock
from ..core.errors import InvalidRecordError, NotFound, UsageError
from ..format.commit import CommitInfo
from ..format.records import parse_iso_time
from ..format.store import Store
from .carried import carried_checkpoints, find_carried
from .checkpoints import checkpoints, commit_of, find_checkpoint


class BeforeFirstCommit(NotFound):
    """A time before the capsule's first commit; ``first`` is that commit (None: no commit)."""

    def __init__(self, message: str, first: CommitInfo | None) -> None:
        super().__init__(message)
        self.first = first

def _relative(store: Store, low: str) -> int | None:
    """A time relative to the reader's clock (the wall clock, or the one the capsule was opened
    with): ``now``, ``yesterday`` (24 hours ago) or ``N s|m|h|d|w ago``; None for anything else."""
    if not (low in ("now", "yesterday") or low.endswith(" ago")):
        return None
    return ago(low, read_clock(store.clock))


def commit_at_seq(store: Store, seq: int) -> CommitInfo:
    """The COMMIT whose seq is exactly ``seq`` (15: a LINEAGE names one by its seq). Never a
    checkpoint label: :func:`resolve` tries labels first, and a label may spell the number."""
    for c in store.commits():  # newest first
        if c.seq <= seq:
            if c.seq == seq:
                return c
            break
    raise NotFound(f"no COMMIT at seq {seq}")


def resolve(store: Store, at: str | int) -> CommitInfo:
    """Find the commit a view names (6.5): a checkpoint label, a commit seq (as
    ``log`` shows it), a hex prefix of a commit root (>= 4 digits), or an
    ISO-8601 time or a time ago by the reader's clock (``2d ago``, ``yesterday``, ``now``):
    the last commit at or before it."""
    store.check_open()
    raw = str(at)
    text = raw.strip()
    ck = None
    if store.snap.checkpoint:  # a label as given first: an older writer signed some with white space around them
        ck = (find_checkpoint(store, raw) if raw != text else None) or find_checkpoint(store, text)
    if ck is not None:
        return commit_of(store, ck)  # labels first: a label may look like a number
    carried = find_carried(store, text)  # 14.9: then a label the parent signed (a fork, a compacted file)
    if carried is not None:
        return carried.commit
    if text.isdecimal():
        # A seq names the commit that made frame N durable: N itself when N is a
        # COMMIT's seq (as `log` shows), else the first commit after it (so a
        # checkpoint's seq from `checkpoints` works too).
        seq = int(text)
        found = None
        for c in store.commits():
            if c.seq < seq:
                break
            found = c
        if found is not None:
            return found
        if len(text) < 4:
            raise NotFound(f"no commit at or after seq {seq} (see `capsule log`)")
        # an all-digit root prefix: fall through
    low = text.lower()
    if len(low) >= 4 and all(ch in "0123456789abcdef" for ch in low):
        hits = [c for c in store.commits() if c.root.hex().startswith(low)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise UsageError(f"commit prefix {text!r} is ambiguous ({len(hits)} commits)")
        said = (f"no commit with seq {text} and no commit root starting with {text!r}"
                if text.isdecimal() else f"no commit root starts with {text!r}")
        # a checkpoint's state root (what `capsule checkpoints` shows) is no commit root: name its label
        named = [k.label for k in carried_checkpoints(store) if k.state_root.startswith(low)]
        named += [k.label for k in checkpoints(store) if k.body.state_root.hex().startswith(low)]
        if named:
            said += f"; it starts the state root of checkpoint {named[-1]!r}: give --at {named[-1]!r}"
        raise NotFound(said)
    t = _relative(store, low)
    try:
        t = parse_iso_time(text) if t is None else t
    except InvalidRecordError as e:
        if "outside 1970" in str(e):  # a time, just not one a capsule can hold
            raise UsageError(f"{text!r} is outside 1970-01-01 .. 2262-04-11 (and no checkpoint label)") from None
        raise UsageError(
            f"{text!r} is not a checkpoint label, a commit seq, a commit hash prefix, an ISO-8601 time or a "
            "time ago (24h ago, 2d ago, yesterday, now)"
        ) from None
    first = None
    for c in store.commits():
        if c.time <= t:
            return c
        first = c
    raise BeforeFirstCommit(f"no commit at or before {text}", first)
