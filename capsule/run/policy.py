"""The policy gate of ``run_once``: an action a constraint's rule covers runs only
with the approvals the rule asks for (spec 7.3.1).

Theory of operation: before the journal writes an intent, :func:`check_action`
judges the key against the committed state the intent would follow: the active
rules and the approvals of the records committed so far, and the keyset in
force. A refusal raises :class:`PolicyViolation` before anything is written.

A file without any ``constraint`` record has no rules: the gate costs a dict
lookup. Otherwise the records a policy reads (:data:`POLICY_KINDS`: constraints,
approvals, decisions, reverts; few beside the memories) are collected once per
store and then only from the frames appended since, so a journal that writes two
commits per action does not rescan the file for each.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError, PolicyViolation
from ..format.commit import decode_records_payload
from ..format.frames import raw_payload
from ..format.records import decode_record, record_id
from ..format.scan import Reader
from ..state.rules import POLICY_KINDS, PolicyState, describe

if TYPE_CHECKING:
    from ..format.store import Store


class _Seen:
    """The policy records of a store up to ``end`` (with the seq and chain to read on from)."""

    __slots__ = ("end", "seq", "chain", "records")

    def __init__(self, end: int, seq: int, chain: bytes) -> None:
        self.end, self.seq, self.chain = end, seq, chain
        self.records: list[Any] = []


_SEEN: weakref.WeakKeyDictionary[Any, _Seen] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    """A fork taken while another thread read records under _LOCK would leave the child a lock
    nobody releases (its first run_once with a constraint would wait forever) and perhaps a
    half-extended cache: the child starts both afresh."""
    global _LOCK, _SEEN
    _LOCK = threading.Lock()
    _SEEN = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _policy_records(store: Store) -> list[Any]:
    """The records of :data:`POLICY_KINDS` at the store's snapshot, in commit order."""
    snap = store.snap
    hdr = snap.header
    with _LOCK:
        seen = _SEEN.get(store)
        if seen is None or seen.end > snap.end:  # first look, or a snapshot older than the one seen
            seen = _Seen(C.HEADER_SIZE, 0, hdr.chain_seed)
        if seen.end < snap.end:
            rd = Reader(store.h, seen.end, snap.end, seen.seq, seen.chain, hdr.max_frame_len)
            for fh, payload, _ in rd.frames():
                if fh.ftype != C.FT_RECORDS:
                    continue
                for value, data in decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq):
                    kind = value.get("kind") if isinstance(value, dict) else None
                    if not isinstance(kind, str):
                        raise CorruptError("record without a kind", offset=fh.offset, seq=fh.seq, check="record")
                    if kind in POLICY_KINDS:
                        seen.records.append(decode_record(value, record_id(kind, data)))
            seen.end, seen.seq, seen.chain = snap.end, rd.seq, rd.chain
        _SEEN[store] = seen
        return list(seen.records)


def vouched_keys(store: Store) -> dict[str, bytes]:
    """7.4: key id -> public key of the keyset in force; none when the chain does not check."""
    from ..state.checkpoints import keyset_in_force

    try:
        ks = keyset_in_force(store)
    except CorruptError:
        return {}
    return {} if ks is None else {k.key_id: k.raw for k in ks.keys}


def violations(store: Store, key: str, inputs: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The rules in force at the store's snapshot that ``key`` would break (7.3.1)."""
    if not store.snap.kinds.get("constraint"):
        return []  # no constraint, no rule
    st = PolicyState(_policy_records(store))
    if not st.rules:
        return []
    return st.check(key, inputs, vouched_keys(store))


def check_action(store: Store, key: str, inputs: Mapping[str, Any] | None) -> None:
    """Raise :class:`PolicyViolation` (the first unmet rule's one-line message) when a
    rule in force forbids running ``key`` now; return when every matching rule is met."""
    found = violations(store, key, inputs)
    if found:
        more = f" (and {len(found) - 1} more rule(s))" if len(found) > 1 else ""
        raise PolicyViolation(describe(found[0]) + more, found)
