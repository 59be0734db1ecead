"""The agent's state: a pure, deterministic fold over committed records (spec 13).

Theory of operation: records are folded in commit order. Memories are live
and grouped by tier; decisions and notes accumulate; the latest constraint
record for a (scope, text) pair decides whether that rule is active; the
latest identity record is the current identity and the earlier ones are its
history; approvals attach to their subject and are checked against every
public key any identity record has published. Nothing here reads a clock,
the environment or a file, so equal bytes give equal state on every host.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..core.clock import iso
from ..format.records import TIERS, GenericRecord, Memory
from .stateroot import state_root_of

STATE_KINDS = ("memory", "decision", "constraint", "approval", "identity", "note")
EVENT_KINDS = frozenset({"revert"})  # history, not state: never live, never in the state root


def state_root(ids: Iterable[bytes]) -> str:
    """13.1: the two-level hash over the sorted live ids (see _stateroot)."""
    return state_root_of(list(ids))


@dataclass
class State:
    """What is true at one commit. ``to_dict()`` is the ``capsule state`` document."""

    memories: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {t: [] for t in TIERS})
    decisions: list[dict[str, Any]] = field(default_factory=list)
    constraints: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    approvals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    identity: dict[str, Any] | None = None
    identity_history: list[str] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)
    live: list[bytes] = field(default_factory=list)
    keys: dict[str, bytes] = field(default_factory=dict)

    @property
    def root(self) -> str:
        return state_root(self.live)

    def to_dict(self) -> dict[str, Any]:
        from ..format.keys import PublicKey
        from .kinds import approval_message

        def approvals(rid: str) -> list[dict[str, Any]]:
            out = []
            for a in self.approvals.get(rid, []):
                raw = self.keys.get(a["approver"])
                ok = raw is not None and PublicKey(raw).verify(approval_message(bytes.fromhex(rid)),
                                                             bytes.fromhex(a["signature"]))
                out.append({"id": a["id"], "approver": a["approver"], "time": a["time"], "verified": ok})
            return out

        active = [c for c in self.constraints.values() if c["status"] == "active"]
        active.sort(key=lambda c: (c["scope"], c["text"]))
        return {
            "state_root": self.root,
            "records": len(self.live),
            "memories": {t: self.memories[t] for t in TIERS},
            "decisions": [{**d, "approvals": approvals(d["id"])} for d in self.decisions],
            "constraints": [
                {"id": c["id"], "text": c["text"], "scope": c["scope"], "since": c["time"],
                 "approvals": approvals(c["id"])}
                for c in active
            ],
            "identity": self.identity,
            "identity_history": list(self.identity_history),
            "notes": list(self.notes),
            "other_kinds": dict(sorted(self.other.items())),
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, compact separators (and the C encoder)."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _times(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    d["time"] = iso(d["time"])
    return d


def live_records(records: Iterable[Any]) -> list[Any]:
    """The live state records in commit order: events removed, reverts applied (13.1)."""
    recs = list(records)
    dead: set[bytes] = set()
    for rec in recs:
        if rec.kind == "revert":
            dead.update(rec.drop)
            dead.difference_update(rec.restore)
    return [r for r in recs if r.kind not in EVENT_KINDS and bytes.fromhex(r.id) not in dead]


def dead_ids(reverts: Iterable[Any]) -> set[bytes]:
    """Ids that ``revert`` events (in commit order) currently hold dead (13.1)."""
    dead: set[bytes] = set()
    for rec in reverts:
        dead.update(rec.drop)
        dead.difference_update(rec.restore)
    return dead


def fold(records: Iterable[Any]) -> State:
    """Fold records (in commit order) into a :class:`State`."""
    st = State()
    for rec in live_records(records):
        rid = bytes.fromhex(rec.id)
        kind = rec.kind
        st.live.append(rid)
        if isinstance(rec, Memory):
            d = rec.to_dict()
            d.pop("embedding", None)
            if rec.embedding is not None:
                d["embedding_dim"] = int(rec.embedding.shape[0])
            st.memories[rec.tier].append(_times(d))
        elif kind == "decision":
            st.decisions.append(_times(rec.to_dict()))
        elif kind == "constraint":
            key = (rec.scope, rec.text)
            if rec.status == "active":
                st.constraints[key] = {"id": rec.id, "text": rec.text, "scope": rec.scope,
                                       "status": "active", "time": iso(rec.time)}
            else:
                st.constraints.pop(key, None)
        elif kind == "approval":
            st.approvals.setdefault(rec.subject.hex(), []).append(
                {"id": rec.id, "approver": rec.approver, "signature": rec.signature.hex(), "time": iso(rec.time)}
            )
        elif kind == "identity":
            st.identity = _times(rec.to_dict())
            st.identity_history.append(rec.id)
            from ..format.keys import PublicKey

            for raw in rec.keys:
                st.keys[PublicKey(raw).key_id] = raw
        elif kind == "note":
            st.notes.append(_times(rec.to_dict()))
        else:
            name = rec.kind_name if isinstance(rec, GenericRecord) else kind
            st.other[name] = st.other.get(name, 0) + 1
    return st
