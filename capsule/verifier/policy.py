"""``verify --policy``: every action intent in history, judged against the rules in
force when it was written (spec 7.3.1, 13.3).

Theory of operation: one pass over the committed frames collects the records a
policy reads (constraints, approvals, decisions, reverts) commit by commit and
every ``action`` intent with the number of policy records committed before its
own commit and where that commit starts. An intent is then judged as
``run_once`` judged it: against the state of the earlier commits (a rule or an
approval added later, or a rollback after it, changes nothing) and the keyset in
force before its commit. Intents whose key no rule in the whole file matches are
skipped without folding anything, so a file without rules costs one read.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError
from ..format.commit import decode_records_payload
from ..format.crypto import Keys
from ..format.frames import raw_payload
from ..format.records import decode_record, record_id
from ..format.scan import Reader
from ..run import actions as _actions  # noqa: F401  (registers the `action` kind)
from ..state.rules import POLICY_KINDS, PolicyState, describe, matches

if TYPE_CHECKING:
    from ..format.store import Store
    from .check import VerifyReport


@dataclass(frozen=True, slots=True)
class _Intent:
    rec: Any
    offset: int  # of its RECORDS frame
    seq: int
    before: int  # policy records committed before its commit
    commit_start: int  # offset of the first frame of its commit
    ordinal: int  # records of the file before it (the first LINEAGE `kept` are inherited, 15.1)


def _collect(store: Store) -> tuple[list[Any], list[_Intent]]:
    snap = store.snap
    rd = Reader(store.h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
    committed: list[Any] = []
    pending: list[Any] = []
    intents: list[_Intent] = []
    start = C.HEADER_SIZE
    n = 0
    for fh, payload, _ in rd.frames():
        if fh.ftype == C.FT_COMMIT:
            committed.extend(pending)
            pending = []
            start = fh.end
            continue
        if fh.ftype != C.FT_RECORDS:
            continue
        for value, data in decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq):
            kind = value.get("kind") if isinstance(value, dict) else None
            if not isinstance(kind, str):
                raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
            if kind in POLICY_KINDS:
                pending.append(decode_record(value, record_id(kind, data)))
            elif kind == "action" and isinstance(value, dict) and value.get("phase") == "intent":
                rec = decode_record(value, record_id(kind, data))
                intents.append(_Intent(rec, fh.offset, fh.seq, len(committed), start, n))
            n += 1
    return committed, intents


def policy_violations(store: Store, inherited: int = 0) -> list[dict[str, Any]]:
    """Every intent in ``store``'s history that broke a rule in force when it was
    written, in commit order, each with the intent's id, attempt, offset and seq.
    The first ``inherited`` records (a compacted, forked or merged file's, 15.1) are not
    judged here: their keysets and commits were the parent's (see :func:`check_policy`)."""
    from ..state.checkpoints import keysets

    records, intents = _collect(store)
    intents = [it for it in intents if it.ordinal >= inherited]
    patterns = {c.rule["action"] for c in records if c.kind == "constraint" and c.rule}
    if not patterns:
        return []
    chain = keysets(store)  # the walk checked every rotation (14.6) before we get here
    offsets = [k.offset for k in chain]
    states: dict[int, PolicyState] = {}
    out: list[dict[str, Any]] = []
    for it in intents:
        if not any(matches(p, it.rec.key) for p in patterns):
            continue
        st = states.get(it.before)
        if st is None:
            st = states[it.before] = PolicyState(records[: it.before])
        i = bisect.bisect_left(offsets, it.commit_start)  # keysets in earlier commits only
        vouched = {k.key_id: k.raw for k in chain[i - 1].keyset.keys} if i else {}
        for v in st.check(it.rec.key, it.rec.inputs, vouched):
            out.append({**v, "intent": it.rec.id, "attempt": it.rec.attempt, "offset": it.offset, "seq": it.seq})
    return out


def _inherited(store: Store, lineage: dict[str, Any] | None) -> int:
    """How many records at the start of a file are inherited (15.1 ``kept``; a fork's copy
    commit, the second, when its first holds only the LINEAGE, 15); 0 without a LINEAGE."""
    from .lineage import inherited

    kept = inherited(lineage)
    if kept or lineage is None or lineage.get("merge") is not None:
        return kept
    oldest = list(itertools.islice(reversed(list(store.commits())), 2))  # newest first: the two oldest
    return oldest[1].records if len(oldest) == 2 and oldest[0].records == 0 else 0


def check_policy(rep: VerifyReport, path: Path, keys: Keys | None = None, parents: tuple[Path, ...] = ()) -> None:
    """13.3 with ``policy``: list the violations in ``rep.policy``; any fails the report.

    7.3.1 in a file with a LINEAGE: the records it inherited (:func:`_inherited`) were judged
    where they were written, under the parent's keysets and commits, which the file does not
    keep in place (its copy of the keyset chain follows them). They are judged in the
    ``parents`` when given, as the parent's own verify judges them (its own inherited intents
    in turn only in its parent: those are named in a warning). An inherited intent that no
    parent holds is a violation: nothing vouches for it. Without parents a warning says that
    the inherited intents were not judged."""
    from ..handle.entry import open as open_capsule
    from ..state.carried import lineage_of

    keys = keys or Keys()
    with open_capsule(path, identity=keys.identity, passphrase=keys.passphrase) as cap:
        intents = _collect(cap._store)[1]
        kept = _inherited(cap._store, rep.lineage)
        if kept and parents and rep.lineage is not None and "kept" not in rep.lineage:
            # a fork: its copy commit starts with a record of the parent; a first commit of its own
            # (a fork of a parent that had nothing to copy) does not
            first = next(iter(cap._store.records()), None)
            with open_capsule(parents[0], identity=keys.identity, passphrase=keys.passphrase) as par:
                if first is None or par._store.locate(bytes.fromhex(first.id)) is None:
                    kept = 0
        found = policy_violations(cap._store, kept)
    mine = {it.rec.id: it for it in intents if it.ordinal < kept}
    unjudged: dict[str, int] = {}
    for parent in parents if mine else ():
        with open_capsule(parent, identity=keys.identity, passphrase=keys.passphrase) as par:
            theirs = _collect(par._store)[1]
            lin = lineage_of(par._store)
            pk = _inherited(par._store, None if lin is None else lin.to_dict())
            held = {it.rec.id for it in theirs}
            found += [{**v, "in": str(parent)} for v in policy_violations(par._store, pk) if v["intent"] in mine]
            deeper = sum(1 for it in theirs if it.ordinal < pk and it.rec.id in mine)
            if deeper:
                unjudged[str(parent)] = deeper
            for rid in [x for x in mine if x in held]:
                mine.pop(rid)
    for it in mine.values() if parents else ():  # in no parent given: nothing vouches for it
        found.append({"key": it.rec.key, "intent": it.rec.id, "attempt": it.rec.attempt, "offset": it.offset,
                      "seq": it.seq, "missing": True})
    for where, n in unjudged.items():
        rep.warnings.append(f"policy: {n} inherited intents came to {where} from its own parent: verify {where} "
                            "--policy --parent ITS-PARENT judges them")
    n = sum(1 for it in intents if it.ordinal < kept)
    if n and not parents:
        rep.warnings.append(f"policy: the {n} action intents among the records inherited from the parent (15.1) "
                            "are judged in the parent, where they were written: give --parent PARENT to judge them")
    rep.policy = found
    if found:
        rep.ok = False
        v = found[0]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        what = (f"inherited intent {v['intent'][:12]} of {v['key']!r} is in no parent given: nothing judged it"
                if v.get("missing") else describe(v))
        rep.first_error = {"offset": v["offset"], "seq": v["seq"], "check": "policy",
                           "message": what + more + (f" (an inherited intent: the offset is in the parent "
                                                     f"{v['in']})" if "in" in v else "")}
