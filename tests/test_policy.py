"""Policies (spec 7.3.1): a constraint's ``rule`` gates ``run_once`` and ``verify --policy``.

What is promised:

* ``run_once`` on a key a rule in force matches raises :class:`capsule.PolicyViolation`
  unless enough *verified* approvals (7.4) are committed, of the key's action
  subject or of the live decision the intent names, and writes nothing for it;
* an approval by a key the keyset in force does not hold (one only an identity
  published) does not count, nor one by a key outside the rule's ``approvers``;
* rules change by records: a rollback that drops the constraint lifts the rule;
* ``verify(policy=True)`` / ``capsule verify --policy`` judge every intent against
  the rules and approvals committed before it: a rule added later flags nothing
  older, an approval added later excuses nothing older;
* the rule's encoding is pinned byte for byte, and a constraint without a rule
  keeps its 1.1 bytes;
* the CLI fails with one line and exit 1.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

import capsule
from capsule.format import canonical as canon
from capsule.format.records import record_id
from capsule.state.kinds import Constraint
from capsule.state.rules import matches, parse_rule

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
T0 = 1_700_000_000 * 1_000_000_000


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        self.t += 1_000_000_000
        return self.t


@pytest.fixture
def keys() -> tuple[capsule.PrivateKey, capsule.PrivateKey]:
    return capsule.generate_key(), capsule.generate_key()


def make(path: Path, signer: capsule.PrivateKey, rule: dict[str, Any] | None = None) -> capsule.Capsule:
    """A capsule whose keyset in force is {signer}, with one constraint carrying ``rule``."""
    cap = capsule.create(path, clock=Clock())
    with cap.commit() as tx:
        tx.remember("the user asked for a weekly digest")
    cap.checkpoint("clean", key=signer)
    if rule is not None:
        with cap.commit() as tx:
            tx.constrain("outgoing email needs sign-off", rule=rule)
    return cap


def approve(cap: capsule.Capsule, subject: bytes | str, key: capsule.PrivateKey) -> None:
    with cap.commit() as tx:
        tx.approve(subject, key)


# --- run_once ---------------------------------------------------------------------------------


def test_refused_without_approval(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    with make(tmp_path / "a.capsule", signer, {"action": "email.*"}) as cap:
        calls: list[int] = []
        with pytest.raises(capsule.PolicyViolation) as ei:
            cap.run_once("email.send:42", lambda: calls.append(1))
        assert calls == []
        msg = str(ei.value)
        assert "\n" not in msg and "email.send:42" in msg and "'email.*'" in msg and "0 found" in msg
        [v] = ei.value.violations
        assert v["rule"] == {"action": "email.*"} and v["need"] == 1 and v["approvals"] == 0
        assert isinstance(ei.value, capsule.UsageError)
        assert cap.run_once("calendar.add", lambda: "ok") == "ok"  # not matched: not gated


def test_allowed_with_verified_approval_of_the_key(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    with make(tmp_path / "a.capsule", signer, {"action": "email.*"}) as cap:
        approve(cap, capsule.action_subject("email.send:42"), signer)
        assert cap.run_once("email.send:42", lambda: {"sent": 1}) == {"sent": 1}
        # the approval is of this key only
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.send:43", lambda: {"sent": 2})
    assert capsule.verify(tmp_path / "a.capsule", policy=True).policy == []


def test_allowed_with_approval_of_the_named_decision(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    with make(tmp_path / "a.capsule", signer, {"action": "email.*"}) as cap:
        with cap.commit() as tx:
            d = tx.decide("send the weekly digest")
        approve(cap, d, signer)
        with pytest.raises(capsule.PolicyViolation):  # an intent that names no decision
            cap.run_once("email.digest", lambda: 1)
        with pytest.raises(capsule.PolicyViolation):  # names something that is not a decision
            cap.run_once("email.digest", lambda: 1, inputs={"decision": "00" * 32})
        assert cap.run_once("email.digest", lambda: 2, inputs={"decision": d}) == 2
    assert capsule.verify(tmp_path / "a.capsule", policy=True).ok


def test_refused_with_approval_by_unvouched_key(tmp_path: Path, keys: Any) -> None:
    signer, outsider = keys
    with make(tmp_path / "a.capsule", signer, {"action": "email.*"}) as cap:
        with cap.commit() as tx:  # published by an identity: its signature checks, but nothing vouches for it
            tx.set_identity("agent-1", keys=[outsider.public_key])
        approve(cap, capsule.action_subject("email.send"), outsider)
        with pytest.raises(capsule.PolicyViolation, match="0 found"):
            cap.run_once("email.send", lambda: 1)


def test_named_approvers_and_count(tmp_path: Path, keys: Any) -> None:
    a, b = keys
    rule = {"action": "pay.*", "approvals": 2, "approvers": sorted([a.key_id, b.key_id])}
    path = tmp_path / "a.capsule"
    cap = capsule.create(path, clock=Clock())
    with cap:
        cap.checkpoint("both", key=[a, b])  # keyset {a, b}
        with cap.commit() as tx:
            tx.constrain("two people sign payments", rule=rule)
        approve(cap, capsule.action_subject("pay.rent"), a)
        approve(cap, capsule.action_subject("pay.rent"), a)  # the same key twice counts once
        with pytest.raises(capsule.PolicyViolation, match="1 found"):
            cap.run_once("pay.rent", lambda: 1)
        approve(cap, capsule.action_subject("pay.rent"), b)
        assert cap.run_once("pay.rent", lambda: 1) == 1
        # approvers restrict: a keyset key outside the named set does not count
        with cap.commit() as tx:
            tx.constrain("only b signs refunds", rule={"action": "refund.*", "approvers": [b.key_id]})
        approve(cap, capsule.action_subject("refund.7"), a)
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("refund.7", lambda: 1)


def test_refusal_writes_nothing(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    path = tmp_path / "a.capsule"
    with make(path, signer, {"action": "email.*"}) as cap:
        before = path.read_bytes()
        for _ in range(3):
            with pytest.raises(capsule.PolicyViolation):
                cap.run_once("email.send", lambda: 1)
        with pytest.raises(capsule.PolicyViolation):
            cap.action("email.send")  # the handle API passes the same gate
        assert path.read_bytes() == before
        assert cap.actions() == [] and cap._journal.state("email.send").status == "new"
        approve(cap, capsule.action_subject("email.send"), signer)
        assert cap.run_once("email.send", lambda: 5) == 5  # the key was not stranded in doubt
    with capsule.open(path) as cap:  # a fresh reader: one intent, one result, attempt 1
        [st] = cap.actions()
        assert (st.key, st.status, st.attempt) == ("email.send", "done", 1)


def test_revoking_and_replacing_a_rule(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    with make(tmp_path / "a.capsule", signer, {"action": "email.*"}) as cap:
        with cap.commit() as tx:  # same (scope, text): the latest record's rule replaces the rule
            tx.constrain("outgoing email needs sign-off", rule={"action": "email.bulk"})
        assert cap.run_once("email.one", lambda: 1) == 1
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.bulk", lambda: 1)
        with cap.commit() as tx:
            tx.constrain("outgoing email needs sign-off", status="revoked")
        assert cap.run_once("email.bulk", lambda: 2) == 2
    assert capsule.verify(tmp_path / "a.capsule", policy=True).ok


def test_rollback_of_the_constraint_removes_the_rule(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    path = tmp_path / "a.capsule"
    with make(path, signer, {"action": "email.*"}) as cap:
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.send", lambda: 1)
        cap.rollback("clean", key=signer)  # drops the constraint
        assert cap.state().constraints == {}
        assert cap.run_once("email.send", lambda: 1) == 1
    rep = capsule.verify(path, policy=True)
    assert rep.ok and rep.policy == []


def test_rolled_back_approval_no_longer_counts(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    with make(tmp_path / "a.capsule", signer, {"action": "email.*"}) as cap:
        cap.checkpoint("ruled", key=signer)
        approve(cap, capsule.action_subject("email.send"), signer)
        cap.rollback("ruled", key=signer)  # the rule stays, the approval is dropped
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.send", lambda: 1)


def test_rotated_out_key_stops_counting(tmp_path: Path, keys: Any) -> None:
    old, new = keys
    with make(tmp_path / "a.capsule", old, {"action": "email.*"}) as cap:
        approve(cap, capsule.action_subject("email.send"), old)
        cap.rotate_keys(capsule.Keyset.of([new.public_key], version=2), old_signers=[old], new_signers=[new])
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.send", lambda: 1)


def test_file_without_rules_is_not_gated(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    with make(tmp_path / "a.capsule", signer) as cap:
        with cap.commit() as tx:
            tx.constrain("be polite")  # a rule in words only
        assert cap.run_once("email.send", lambda: 1) == 1


# --- verify --policy ----------------------------------------------------------------------------


def _ungated_run(cap: capsule.Capsule, key: str) -> None:
    """What a writer that ignores 7.3.1 (an older version) leaves: an intent and a result."""
    j = cap._journal
    j._intent(key, 1, "", None)
    j._result(key, 1, ok=True, value=1)


def test_verify_policy_flags_an_ungated_action(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    path = tmp_path / "a.capsule"
    with make(path, signer, {"action": "email.*"}) as cap:
        _ungated_run(cap, "email.send")
        approve(cap, capsule.action_subject("email.send"), signer)  # too late: excuses nothing
    assert capsule.verify(path).ok  # without policy: the bytes are sound
    rep = capsule.verify(path, policy=True)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "policy"
    [v] = rep.policy or []
    assert v["key"] == "email.send" and v["attempt"] == 1 and v["rule"] == {"action": "email.*"}
    assert rep.first_error["offset"] == v["offset"] and rep.first_error["seq"] == v["seq"]
    assert rep.to_dict()["policy_violations"] == rep.policy
    assert "policy_violations" not in capsule.verify(path).to_dict()


def test_rule_added_later_is_not_retroactive(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    path = tmp_path / "a.capsule"
    with make(path, signer) as cap:
        assert cap.run_once("email.send", lambda: 1) == 1  # before any rule
        with cap.commit() as tx:
            tx.constrain("outgoing email needs sign-off", rule={"action": "email.*"})
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.again", lambda: 1)
    rep = capsule.verify(path, policy=True)
    assert rep.ok and rep.policy == []


def test_verify_policy_uses_the_keyset_in_force_at_the_intent(tmp_path: Path, keys: Any) -> None:
    old, new = keys
    path = tmp_path / "a.capsule"
    with make(path, old, {"action": "email.*"}) as cap:
        approve(cap, capsule.action_subject("email.send"), old)
        assert cap.run_once("email.send", lambda: 1) == 1  # vouched by {old} at its intent
        cap.rotate_keys(capsule.Keyset.of([new.public_key], version=2), old_signers=[old], new_signers=[new])
        _ungated_run(cap, "email.late")
        approve(cap, capsule.action_subject("email.late"), old)
    rep = capsule.verify(path, policy=True)
    assert [v["key"] for v in rep.policy or []] == ["email.late"]  # the rotation does not undo the first


# --- the rule's encoding (7.3.1) ---------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "key", "hit"), [
    ("email.*", "email.send", True),
    ("email.*", "email.", True),
    ("email.*", "email.a.b", True),
    ("email.*", "emails.x", False),
    ("email.*", "Email.send", False),
    ("email.*", "email", False),
    ("email.send", "email.send", True),
    ("email.send", "email.send2", False),
    ("*", "", True),
    ("*.send", "email.send", True),
    ("a*b*c", "abc", True),
    ("a*b*c", "aXbYbZc", True),
    ("a*b*c", "acb", False),
    ("a*a", "a", False),
    ("?", "x", False),  # no wildcard but `*`
    ("[ab]", "a", False),
    ("caf\u00e9.*", "cafe\u0301.x", True),  # NFC on both sides
])
def test_matching(pattern: str, key: str, hit: bool) -> None:
    assert matches(parse_rule({"action": pattern})["action"], key) is hit


def test_rule_encoding_pinned() -> None:
    ids = ["00" * 16, "ff" * 16]
    c = Constraint.build(time=T0, text="pay", rule={"action": "pay.*", "approvals": 2, "approvers": ids[::-1]})
    data = canon.encode(c.to_value())
    assert data.hex() == PINNED_RULE_BYTES
    assert c.to_value()["rule"] == {"action": "pay.*", "approvals": 2, "approvers": ids}
    assert record_id("constraint", data).hex() == PINNED_RULE_ID
    # a constraint without a rule has its 1.1 bytes: no `rule` key at all
    assert "rule" not in Constraint.build(time=T0, text="pay").to_value()
    from capsule.state import kinds, rules

    assert rules.APPROVAL_PAYLOAD_TYPE == kinds.APPROVAL_PAYLOAD_TYPE  # one message per 7.4
    # the action subject of a key
    assert capsule.action_subject("email.send") == hashlib.sha256(
        b"capsule/v1/action-approval\x00email.send").digest()


PINNED_RULE_BYTES = (  # {kind, rule: {action, approvals, approvers}, text, time}, keys sorted (5.1)
    "84a46b696e64aa636f6e73747261696e74a472756c6583a6616374696f6ea57061792e2aa9617070726f76616c7302"
    "a9617070726f7665727392d9203030303030303030303030303030303030303030303030303030303030303030d920"
    "6666666666666666666666666666666666666666666666666666666666666666a474657874a3706179a474696d65"
    "cf17979cfe362a0000"
)
PINNED_RULE_ID = "b7f26b5000900eb8361c694faeff0b123d22a504cfbeff5f74a981b89a8318c2"


@pytest.mark.parametrize("rule", [
    {"action": "x", "approvals": 1},  # default spelled out
    {"action": "x", "approvers": ["ff" * 16, "00" * 16]},  # not sorted
    {"action": "x", "approvers": []},  # empty spelled out
    {"action": "x", "extra": 1},
    {"action": ""},
    {"approvals": 2},
    {"action": "x", "approvals": 0},
    {"action": "x", "approvals": 2, "approvers": ["00" * 16]},
    {"action": "x", "approvers": ["AB" * 16]},
])
def test_noncanonical_rule_refused_by_readers(rule: dict[str, Any]) -> None:
    value = {"kind": "constraint", "time": T0, "text": "t", "rule": rule}
    with pytest.raises(capsule.DataError):
        Constraint.from_value(value)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_verify_policy(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    good, bad = tmp_path / "good.capsule", tmp_path / "bad.capsule"
    with make(good, signer, {"action": "email.*"}) as cap:
        approve(cap, capsule.action_subject("email.send"), signer)
        cap.run_once("email.send", lambda: 1)
    with make(bad, signer, {"action": "email.*"}) as cap:
        _ungated_run(cap, "email.send")
        _ungated_run(cap, "email.other")
    ok = subprocess.run([str(CAPSULE_BIN), "verify", str(good), "--policy"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    r = subprocess.run([str(CAPSULE_BIN), "verify", str(bad), "--policy"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "policy" in r.stderr and "email.send" in r.stderr and "1 more" in r.stderr
    assert [v["key"] for v in json.loads(r.stdout)] == ["email.send", "email.other"]
    j = subprocess.run([str(CAPSULE_BIN), "verify", str(bad), "--policy", "--json"], capture_output=True, text=True)
    assert j.returncode == 1
    assert len(json.loads(j.stdout)["policy_violations"]) == 2
    plain = subprocess.run([str(CAPSULE_BIN), "verify", str(bad)], capture_output=True, text=True)
    assert plain.returncode == 0  # the bytes are sound; only --policy judges actions


def test_cli_maps_policy_violation_to_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    from capsule_cli._errors import call

    def refuse() -> None:
        raise capsule.PolicyViolation("policy violation: action 'email.send' needs 1 approval")

    with pytest.raises(typer.Exit) as ei:
        call(refuse)
    assert ei.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and err.startswith("capsule: error: policy violation")


def test_cli_put_constraint_with_rule(tmp_path: Path, keys: Any) -> None:
    signer, _ = keys
    path = tmp_path / "a.capsule"
    make(path, signer).close()
    body = json.dumps({"text": "mail needs sign-off", "rule": {"action": "email.*"}})
    r = subprocess.run([str(CAPSULE_BIN), "put", str(path), "--kind", "constraint", "--json-body", body],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with capsule.open(path, "a") as cap, pytest.raises(capsule.PolicyViolation):
        cap.run_once("email.send", lambda: 1)
    bad = json.dumps({"text": "x", "rule": {"action": "email.*", "approvals": 0}})
    r = subprocess.run([str(CAPSULE_BIN), "put", str(path), "--kind", "constraint", "--json-body", bad],
                       capture_output=True, text=True)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
