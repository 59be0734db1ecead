"""Machine-readable constraint rules: which actions need whose approval (spec 7.3.1).

Theory of operation: a ``constraint`` record may carry a ``rule`` map
``{action, approvals, approvers}``. While the constraint is active (7.3, with
reverts applied, 13.1) every action whose key matches ``action`` needs
``approvals`` distinct *counting* approvals before its intent may be written:
verified approvals (7.4: the signature checks under a key of the keyset in
force) by a key of ``approvers`` (any key of the keyset in force when it is
empty), whose subject is the action key's approval subject
(:func:`action_subject`) or the live decision the intent names in its inputs.

Everything here is pure: the records of one committed prefix (in commit order)
and the keyset in force go in, the violations come out. ``run.policy`` applies
it before an intent is written, ``verifier.policy`` to every intent in history.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..core.errors import InvalidRecordError
from .liveness import apply_revert

ACTION_SUBJECT_TAG = b"capsule/v1/action-approval\x00"  # 7.3.1: subject of an approval of an action key
#: 7.4: what an approver signs (kinds.APPROVAL_PAYLOAD_TYPE; kinds imports this module, not the reverse)
APPROVAL_PAYLOAD_TYPE = "application/vnd.capsule.approval"
RULE_FIELDS = frozenset({"action", "approvals", "approvers"})  # 7.3.1
MAX_PATTERN = 1024  # 7.3.1: code points of `action`
MAX_APPROVERS = 256  # 7.3.1: entries of `approvers`, and the largest `approvals`
#: the record kinds a policy check reads (7.3.1): rules, approvals, what they approve, liveness
POLICY_KINDS = frozenset({"constraint", "approval", "decision", "revert"})


def action_subject(key: str) -> bytes:
    """7.3.1: the record id-sized subject an approver signs to approve every run of the
    action ``key``: SHA-256(``"capsule/v1/action-approval\\0"`` || UTF-8 of the NFC key).

    >>> action_subject("email.send").hex()[:16]
    '...'
    """
    return hashlib.sha256(ACTION_SUBJECT_TAG + unicodedata.normalize("NFC", key).encode()).digest()


def _key_id(v: object) -> str:
    if not (isinstance(v, str) and len(v) == 32 and all(c in "0123456789abcdef" for c in v)):
        raise InvalidRecordError("rule.approvers must hold key ids (32 lowercase hex digits)")
    return v


def parse_rule(v: object, name: str = "rule") -> dict[str, Any]:
    """7.3.1: a rule map, returned in its canonical form (defaults omitted, approvers
    sorted). A stored rule whose canonical form differs is refused by the constraint's
    reader (7: one encoding per record); a writer's input is normalised."""
    if not isinstance(v, Mapping) or not all(isinstance(k, str) for k in v):
        raise InvalidRecordError(f"{name} must be a map with action, approvals, approvers")
    extra = set(v) - RULE_FIELDS
    if extra:
        raise InvalidRecordError(f"unknown {name} field(s): {', '.join(sorted(extra))}")
    pat = v.get("action")
    if not isinstance(pat, str) or not pat:
        raise InvalidRecordError(f"{name}.action must be a non-empty string (a key pattern)")
    pat = unicodedata.normalize("NFC", pat)
    if len(pat) > MAX_PATTERN:
        raise InvalidRecordError(f"{name}.action is at most {MAX_PATTERN} characters")
    n = v.get("approvals", 1)
    if type(n) is not int or not 1 <= n <= MAX_APPROVERS:
        raise InvalidRecordError(f"{name}.approvals must be an integer in 1..{MAX_APPROVERS}")
    who = v.get("approvers", [])
    if isinstance(who, str | bytes) or not isinstance(who, Iterable):
        raise InvalidRecordError(f"{name}.approvers must be a list of key ids")
    ids = sorted({_key_id(x) for x in who})
    if len(ids) > MAX_APPROVERS:
        raise InvalidRecordError(f"{name}.approvers holds at most {MAX_APPROVERS} key ids")
    if ids and n > len(ids):
        raise InvalidRecordError(f"{name}.approvals ({n}) exceeds the {len(ids)} approvers named")
    out: dict[str, Any] = {"action": pat}
    if n != 1:
        out["approvals"] = n
    if ids:
        out["approvers"] = ids
    return out


def matches(pattern: str, key: str) -> bool:
    """7.3.1: ``*`` stands for any run of zero or more code points (dots included);
    every other code point stands for itself (case-sensitive, NFC on both sides, no
    other wildcards, no escapes). ``email.*`` matches ``email.send`` and ``email.a.b``,
    not ``emails.x``; a pattern without ``*`` matches only the key equal to it."""
    key = unicodedata.normalize("NFC", key)
    parts = pattern.split("*")
    if len(parts) == 1:
        return key == pattern
    head, *mid, tail = parts
    if len(key) < len(head) + len(tail) or not key.startswith(head) or not key.endswith(tail):
        return False
    pos, stop = len(head), len(key) - len(tail)
    for p in mid:  # leftmost match of each middle part: optimal when `*` is the only wildcard
        i = key.find(p, pos, stop)
        if i < 0:
            return False
        pos = i + len(p)
    return True


@dataclass(frozen=True, slots=True)
class Rule:
    """One active rule: the constraint that carries it and its canonical map."""

    constraint: str  # the constraint record's id (hex)
    scope: str
    text: str
    action: str
    approvals: int
    approvers: tuple[str, ...]

    @classmethod
    def of(cls, rec: Any) -> Rule:
        r = rec.rule
        return cls(rec.id, rec.scope, rec.text, r["action"], r.get("approvals", 1), tuple(r.get("approvers", ())))

    def to_dict(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"action": self.action}
        if self.approvals != 1:
            rule["approvals"] = self.approvals
        if self.approvers:
            rule["approvers"] = list(self.approvers)
        return {"constraint": self.constraint, "scope": self.scope, "text": self.text, "rule": rule}


class PolicyState:
    """The policy view of one committed prefix: its active rules and approvals (7.3.1),
    folded from the records of :data:`POLICY_KINDS` in commit order."""

    def __init__(self, records: Iterable[Any]) -> None:
        recs = list(records)
        dead: set[bytes] = set()
        red: set[bytes] = set()
        for rec in recs:  # 13.1: liveness is the in-order fold of every revert's drop, then restore
            if rec.kind == "revert":
                apply_revert(dead, red, rec)
        live = [r for r in recs if r.kind != "revert" and bytes.fromhex(r.id) not in dead]
        active: dict[tuple[str, str], Any] = {}
        self.approvals: dict[bytes, list[Any]] = {}
        self.decisions: set[bytes] = set()
        for rec in live:
            if rec.kind == "constraint":
                if rec.status == "active":
                    active[(rec.scope, rec.text)] = rec  # 7.3: the latest live record decides
                else:
                    active.pop((rec.scope, rec.text), None)
            elif rec.kind == "approval":
                self.approvals.setdefault(rec.subject, []).append(rec)
            elif rec.kind == "decision":
                self.decisions.add(bytes.fromhex(rec.id))
        self.rules = [Rule.of(c) for _, c in sorted(active.items()) if c.rule]

    def check(self, key: str, inputs: Mapping[str, Any] | None, vouched: Mapping[str, bytes]) -> list[dict[str, Any]]:
        """Each active rule that matches ``key`` and lacks its approvals, as a violation
        dict (rules in (scope, text) order). ``vouched``: key id -> public key of the
        keyset in force (7.4); empty when there is none or its chain does not check."""
        rules = [r for r in self.rules if matches(r.action, key)]
        if not rules:
            return []
        from ..format.keys import PublicKey
        from ..format.signing import pae

        subjects = [action_subject(key)]
        named = decision_of(inputs)
        if named is not None and named in self.decisions:
            subjects.append(named)
        signers: set[str] = set()  # verified approvers of this action (7.4)
        for s in subjects:
            for a in self.approvals.get(s, ()):
                raw = vouched.get(a.approver)
                if raw is not None and a.approver not in signers and \
                        PublicKey(raw).verify(pae(APPROVAL_PAYLOAD_TYPE, s), a.signature):
                    signers.add(a.approver)
        out = []
        for r in rules:
            got = len(signers & set(r.approvers)) if r.approvers else len(signers)
            if got < r.approvals:
                out.append({**r.to_dict(), "key": key, "approvals": got, "need": r.approvals})
        return out


def decision_of(inputs: Mapping[str, Any] | None) -> bytes | None:
    """7.3.1: the decision an action names: its inputs' ``decision``, 64 lowercase hex digits."""
    d = inputs.get("decision") if isinstance(inputs, Mapping) else None
    if isinstance(d, str) and len(d) == 64 and all(c in "0123456789abcdef" for c in d):
        return bytes.fromhex(d)
    return None


def describe(v: Mapping[str, Any]) -> str:
    """One line for a violation dict (the message of ``PolicyViolation``)."""
    rule = v["rule"]
    n = len(rule.get("approvers") or ())
    who = (f"the {n} named keys" if n > 1 else "the named key") if n else "the keyset in force"
    return (f"policy violation: action {v['key']!r} matches {rule['action']!r} (constraint {v['text']!r}, "
            f"{v['constraint'][:12]}) and needs verified approvals from {v['need']} distinct key(s) among "
            f"{who}, in commits before the intent's; {v['approvals']} found")
