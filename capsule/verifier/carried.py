"""Carried checkpoints: a parent's signatures that a fork or a compacted file keeps (spec 15.2).

Theory of operation. A carried entry of the LINEAGE frame is a checkpoint body of the
parent, byte for byte as the parent's keys signed it, with its signatures and the ordinal
of the COMMIT of *this* file whose state it vouches for. Its Merkle fields (`root`,
`chain`, `tree_size`) name the parent's bytes, which this file does not hold: what a
carried checkpoint proves here is the state root alone, so the verifier checks, without
the parent:

- the body's `origin` is the LINEAGE `parent` (`checkpoint-origin`, when the frame is read);
- the state root at the named COMMIT is the body's `state_root` (`checkpoint-state`, at
  that COMMIT, from the walk's live set);
- the named COMMIT exists (`lineage`), the body's `keyset` hash names a keyset of this
  file's own chain (`checkpoint-keyset`) and a threshold of that keyset signed the body
  bytes (`checkpoint-signature`), once the walk is over and the chain is known.

Each failure is reported at the LINEAGE frame (offset 64, seq 0). An entry that passes
counts toward trust like a checkpoint signed in this file under the same keyset (13.4,
14.7), its signed prefix ending at the COMMIT it names. With the parent
(:func:`check_parent`), each body must also be a checkpoint of the parent's chain at or
before the fork point.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CapsuleError, CorruptError
from ..format.checkpoint import Carried, KeysetFrame, Lineage
from ..format.crypto import Keys
from ..format.keys import CHECKPOINT_PAYLOAD_TYPE
from ..format.signing import count_valid
from ..questions.diff_files import lineage_of

if TYPE_CHECKING:
    from .check import VerifyReport


def _bad(i: int, c: Carried, check: str, msg: str) -> CorruptError:
    return CorruptError(f"carried checkpoint {i} ({c.body.label!r}): {msg}", offset=C.HEADER_SIZE, seq=0, check=check)


class CarriedCheck:
    """The walk's side of 15.2: built from the LINEAGE frame (or empty), told of every
    COMMIT, asked at the end which carried checkpoints count."""

    def __init__(self, lin: Lineage | None = None) -> None:
        self.entries: tuple[Carried, ...] = lin.carried if lin is not None else ()
        self.want = {c.commit for c in self.entries}
        self.at: dict[int, tuple[int, int, int, bytes]] = {}  # ordinal -> (seq, end, records, root)
        # 15.1: a compacted file's first `kept` records are inherited (exempt from `revert-after`),
        # and they fill its first commits: some COMMIT must end right after them
        self.inherited = lin.kept if lin is not None and (lin.policy is not None or lin.merge is not None) else None
        self.boundary = self.inherited is None
        for i, c in enumerate(self.entries):
            if lin is not None and c.body.origin != lin.parent:
                raise _bad(i, c, "checkpoint-origin", "its origin is not the parent this LINEAGE names")

    def commit(self, ordinal: int, seq: int, end: int, records: int, root: bytes,
               state_root: Callable[[], bytes] | None) -> None:
        """At the COMMIT with this ordinal (1 = the first): the state check of every entry
        naming it. ``state_root`` is None on a structural walk, which reads no records."""
        if records == self.inherited:
            self.boundary = True
        if ordinal not in self.want:
            return
        self.at[ordinal] = (seq, end, records, root)
        if state_root is None:
            return
        got = state_root()
        for i, c in enumerate(self.entries):
            if c.commit == ordinal and c.body.state_root != got:
                raise _bad(i, c, "checkpoint-state", f"its state root is not the state at commit {ordinal}")

    def merge(self, rep: VerifyReport, keysets: list[KeysetFrame], signed: list[Any], make: Any) -> list[Any] | None:
        """``signed`` with every carried entry that counts (``make`` builds the walk's record of
        a signed checkpoint), ordered by where its prefix ends; None (``rep.first_error`` set)
        when an entry fails."""
        digests = [k.keyset.digest for k in keysets]
        out = list(signed)
        try:
            if not self.boundary:
                raise CorruptError(f"the LINEAGE says {self.inherited} records are inherited; no COMMIT of the "
                                   f"file ends after that many records", offset=C.HEADER_SIZE, seq=0, check="lineage")
            for i, c in enumerate(self.entries):
                if c.commit not in self.at:
                    raise _bad(i, c, "lineage", f"it names commit {c.commit}; the file has {rep.commits}")
                if c.body.keyset not in digests:
                    raise _bad(i, c, "checkpoint-keyset", "its keyset is not in this file's keyset chain")
                j = digests.index(c.body.keyset)
                ks = keysets[j].keyset
                n_ok = count_valid(CHECKPOINT_PAYLOAD_TYPE, c.body_raw, c.sigs, ks)
                if n_ok < ks.threshold:
                    raise _bad(i, c, "checkpoint-signature",
                               f"{n_ok} valid signatures of the {ks.threshold} keyset v{ks.version} needs")
                seq, end, records, root = self.at[c.commit]
                out.append(make(C.HEADER_SIZE, seq, end, j, records, c.commit - 1, c.body.label, root))
        except CorruptError as e:
            rep.first_error = {"offset": e.offset, "seq": e.seq, "check": e.check, "message": e.message}
            return None
        return sorted(out, key=lambda s: s.end)


def check_parent(rep: VerifyReport, path: Path, parent: Path, keys: Keys | None = None) -> None:
    """15.2 with the parent: every carried body is one of the parent's checkpoints (its
    hash is in the parent's chain) at or before the fork point."""
    from ..handle.entry import open as open_capsule

    if not rep.ok:
        return
    keys = keys or Keys()
    with open_capsule(path, identity=keys.identity, passphrase=keys.passphrase) as fork:
        lin = lineage_of(fork)
    if lin is None or not lin.carried:
        return
    try:
        with open_capsule(parent, identity=keys.identity, passphrase=keys.passphrase) as par:
            known = {ck.hash: ck.seq for ck in par.checkpoints()}
    except CapsuleError as e:
        rep.ok, rep.first_error = False, {"offset": None, "seq": None, "check": "lineage",
                                          "message": f"{parent}: its checkpoints cannot be read: {e}"}
        return
    for i, c in enumerate(lin.carried):
        if known.get(c.hash) is None or c.body.tree_size >= lin.tree_size:
            err = _bad(i, c, "lineage", f"it is not a checkpoint of {parent} at or before the fork point")
            rep.ok, rep.first_error = False, {"offset": err.offset, "seq": err.seq, "check": err.check,
                                              "message": err.message}
            return


__all__ = ["CarriedCheck", "check_parent"]
