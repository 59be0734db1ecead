"""The parent's checkpoints a fork or a compacted file carries, as a reader names them (spec 15.2, 14.9).

A fork and a compacted file keep the parent's signatures on the states they still hold: the
LINEAGE frame (always seq 0) lists them as ``carried`` entries, each naming the COMMIT of this
file (by ordinal) whose state root it signs. They are not CHECKPOINT frames, so they are not in
the file's own checkpoint chain nor in its label tables; but their labels still name those
states (14.9): ``--at day-1`` and ``rollback --to day-1`` keep working after ``capsule compact``.
A label of the file's own checkpoints wins over a carried one.

Reading them costs one frame (the LINEAGE) plus, for the COMMIT an entry names, a walk of the
commits back from the newest (the same walk an ISO-time view makes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..core import constants as C
from ..core.errors import CorruptError
from ..format.checkpoint import Carried, Lineage, parse_lineage
from ..format.commit import CommitInfo
from ..format.frames import parse_frame_header, raw_payload
from ..format.kindwalk import read_frame
from ..format.store import Store


def lineage_of(store: Store) -> Lineage | None:
    """The LINEAGE frame of a fork, a compacted or a merged file (always seq 0, 15), or None."""
    snap = store.snap
    if snap.end <= C.HEADER_SIZE:
        return None
    fh = parse_frame_header(store.h.pread(C.HEADER_SIZE, C.FRAME_HEADER_SIZE), C.HEADER_SIZE, expect_seq=None,
                            max_frame_len=snap.header.max_frame_len)
    if fh.ftype != C.FT_LINEAGE:
        return None
    fh, payload, _, _ = read_frame(store, C.HEADER_SIZE)
    return parse_lineage(raw_payload(fh, payload), fh.offset, fh.seq)


@dataclass(frozen=True, slots=True)
class CarriedCheckpoint:
    """A checkpoint the parent signed whose state this file holds at ``commit`` (15.2).

    ``label``, ``time``, ``state_root`` and ``signers`` read as a
    :class:`~capsule.CheckpointFrame`'s do; ``seq`` is the seq of this file's COMMIT that
    holds the state (the parent's frames the body's Merkle fields name are not in this file).
    """

    entry: Carried
    commit: CommitInfo
    origin: bytes  # the parent's file id

    @property
    def label(self) -> str:
        return self.entry.body.label

    @property
    def time(self) -> int:
        return self.entry.body.time

    @property
    def seq(self) -> int:
        return self.commit.seq

    @property
    def hash(self) -> bytes:
        """14.8's hash of the body: what a rollback to it names in ``to`` (7.7)."""
        return self.entry.hash

    @property
    def state_root(self) -> str:
        return self.entry.body.state_root.hex()

    @property
    def signers(self) -> tuple[str, ...]:
        return tuple(sorted(s.key_id for s in self.entry.sigs))

    def to_dict(self) -> dict[str, Any]:
        from ..core.clock import iso

        return {"label": self.label, "seq": self.seq, "hash": self.hash.hex(), "state_root": self.state_root,
                "time": iso(self.time), "signers": list(self.signers), "keyset": self.entry.body.keyset.hex(),
                "carried": True, "origin": self.origin.hex(), "commit": self.entry.commit}


def carried_checkpoints(store: Store) -> list[CarriedCheckpoint]:
    """The carried checkpoints whose COMMIT this snapshot holds, oldest first; [] for a file
    without a LINEAGE frame or whose LINEAGE carries none."""
    store.check_open()
    lin = lineage_of(store)
    if lin is None or not lin.carried or store.snap.commit is None:
        return []
    upto = store.snap.commit.commits
    want = {c.commit for c in lin.carried if c.commit <= upto}
    at = _commits(store, want)
    return [CarriedCheckpoint(c, at[c.commit], lin.parent) for c in lin.carried if c.commit in want]


def find_carried(store: Store, label: str) -> CarriedCheckpoint | None:
    """The newest carried checkpoint with this label whose COMMIT this snapshot holds, or None."""
    store.check_open()
    lin = lineage_of(store)
    if lin is None or store.snap.commit is None:
        return None
    upto = store.snap.commit.commits
    for c in reversed(lin.carried):
        if c.body.label == label and c.commit <= upto:
            return CarriedCheckpoint(c, _commits(store, {c.commit})[c.commit], lin.parent)
    return None


def _commits(store: Store, ordinals: set[int]) -> dict[int, CommitInfo]:
    """This file's COMMITs with these ordinals (1 = the first), walking back from the newest."""
    out: dict[int, CommitInfo] = {}
    if not ordinals:
        return out
    low = min(ordinals)
    for c in store.commits():
        if c.commits in ordinals:
            out[c.commits] = c
        if c.commits <= low:
            break
    if len(out) != len(ordinals):
        raise CorruptError("a carried checkpoint names a COMMIT the file does not have", offset=C.HEADER_SIZE,
                           seq=0, check="lineage")
    return out
