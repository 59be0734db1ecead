"""Findings of a governance review (rules, approvals, rotation, copies), each a regression test:
forks and merges whose inherited intents were never judged, action records put by hand past the
policy gate, a compaction warning that blamed a redaction, audit judging approvals at today's
keyset, carried checkpoints that audit and why did not see, and the violation's wording."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule.run.actions import Action


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          timeout=120)


def _parent_with_a_violation(p: Path) -> None:
    """A capsule whose journal holds an intent its rule forbade (forged past the writer)."""
    key = capsule.generate_key()
    with capsule.create(p) as cap:
        cap.checkpoint("c0", key=key)
        with cap.commit() as tx:
            tx.constrain("email needs approval", rule={"action": "email.*"})
        with cap.commit() as tx:
            tx._put(Action.build(time=cap.clock(), key="email.blast", phase="intent", attempt=1))
    assert not capsule.verify(p, policy=True).ok


def test_a_fork_is_judged_in_its_parent(tmp_path: Path) -> None:
    # a fork's copied intents sit in one commit with its copied rules, so in place no rule was in
    # force for them: verify --policy passed a fork of a parent that fails it, and said nothing
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    _parent_with_a_violation(p)
    capsule.fork(p, f).close()
    alone = capsule.verify(f, policy=True)
    assert alone.ok and any("judged in the parent" in w for w in alone.warnings)
    with_parent = capsule.verify(f, policy=True, parent=p)
    assert not with_parent.ok and with_parent.first_error["check"] == "policy"
    assert "inherited intent" in with_parent.first_error["message"] and str(p) in with_parent.first_error["message"]


def test_a_merge_is_judged_in_both_parents(tmp_path: Path) -> None:
    a, b, m = tmp_path / "a.capsule", tmp_path / "b.capsule", tmp_path / "m.capsule"
    _parent_with_a_violation(a)
    capsule.fork(a, b).close()
    for f, text in ((a, "on A"), (b, "on B")):
        with capsule.open(f, "a") as cap, cap.commit() as tx:
            tx.remember(text)
    capsule.merge(a, b, m)
    rep = capsule.verify_merge(m, [a, b], policy=True)
    assert not rep.ok and rep.first_error["check"] == "policy"
    assert not any("give --parent" in w for w in rep.warnings)
    r = _cli("verify", str(m), "--policy", "--parent", str(a), "--parent", str(b))
    assert r.returncode == 1 and "policy" in r.stderr and "give --parent" not in r.stderr


@pytest.mark.parametrize("kind", ["action", "task", "revert", "vindex"])
def test_records_with_an_api_of_their_own_cannot_be_put(tmp_path: Path, kind: str) -> None:
    # tx.put(capsule.Action(...)) wrote an intent and a result past the policy gate (7.3.1, 7.8)
    from capsule.format.records import _REGISTRY
    from capsule.run.events import TaskAdded
    from capsule.run.tasks import TaskRecord

    p = tmp_path / "k.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.constrain("email needs approval", rule={"action": "email.*"})
        before = p.read_bytes()
        records = {
            "action": lambda: Action.build(time=1, key="email.blast", phase="intent", attempt=1),
            "task": lambda: TaskRecord(TaskAdded(time=1, task="t")),
            "revert": lambda: _REGISTRY["revert"].build(time=1, after=bytes(32), drop=[bytes(32)]),
            "vindex": lambda: _REGISTRY["vindex"].build(time=1, dim=4),
        }
        rec = records[kind]()
        with pytest.raises(capsule.UsageError, match="not put directly"), cap.commit() as tx:
            tx.put(rec)
        assert p.read_bytes() == before
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.blast", lambda: "sent")


def test_a_live_compaction_names_the_true_reason_a_checkpoint_is_not_carried(tmp_path: Path) -> None:
    # it said "its state held a redacted record" of a file with no redaction
    key = tmp_path / "k.key"
    assert _cli("keygen", "-o", str(key)).returncode == 0
    p = tmp_path / "a.capsule"
    assert _cli("init", str(p)).returncode == 0
    rid = _cli("put", str(p), "--text", "first").stdout.strip()
    assert _cli("checkpoint", str(p), "--label", "day-1", "--key", str(key)).returncode == 0
    assert _cli("forget", str(p), rid).returncode == 0
    r = _cli("compact", str(p), "-o", str(tmp_path / "small.capsule"), "--keep", "live")
    assert r.returncode == 0 and "'day-1' (a --keep live file keeps only the last state)" in r.stderr
    assert "redacted" not in r.stderr


def test_audit_judges_approvals_under_the_keyset_of_the_intent(tmp_path: Path) -> None:
    # a 2-of-3 action approved under keyset v2, one approver revoked in v3: audit showed her as
    # "key unknown" and the action as under-approved, while verify --policy said it was fine
    agent, alice, bob, carol = (capsule.generate_key() for _ in range(4))
    p = tmp_path / "r.capsule"
    with capsule.create(p) as cap:
        cap.checkpoint("c0", key=agent)
        cap.rotate_keys(capsule.Keyset.of([k.public_key for k in (agent, alice, bob, carol)], version=2),
                        old_signers=[agent], new_signers=[agent])
        with cap.commit() as tx:
            tx.constrain("pay 2 of 3", rule={"action": "pay.*", "approvals": 2,
                                             "approvers": [alice.key_id, bob.key_id, carol.key_id]})
        with cap.commit() as tx:
            tx.approve(capsule.action_subject("pay.v1"), carol)
            tx.approve(capsule.action_subject("pay.v1"), bob)
        cap.run_once("pay.v1", lambda: "paid")
        cap.rotate_keys(capsule.Keyset.of([k.public_key for k in (agent, alice, bob)], version=3),
                        old_signers=[agent], new_signers=[agent])
        doc = cap.audit("pay.v1").to_dict()
    assert capsule.verify(p, policy=True).ok
    assert {a["approver"]: (a["verified"], a["key_known"]) for a in doc["approvals"]} == {
        carol.key_id: (True, True), bob.key_id: (True, True)}


def test_audit_and_why_see_the_checkpoints_a_copy_carries(tmp_path: Path) -> None:
    # on a compacted copy they said "first checkpoint covering it: none yet" while verify --trust
    # counted the same records as signed through the carried checkpoint (13.4, 15.2)
    key = capsule.generate_key()
    p, c = tmp_path / "p.capsule", tmp_path / "c.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            d = tx.decide("ship it", evidence=[tx.remember("tests pass")])
        cap.run_once("deploy:1", lambda: "ok", inputs={"decision": d})
        cap.checkpoint("signed", key=key)
    capsule.compact(p, c)
    assert capsule.verify(c, trust=key.public_key).ok
    with capsule.open(c) as cap:
        w = cap.why(d, trust=key.public_key).to_dict()["checkpoint"]
        a = cap.audit("deploy:1", trust=key.public_key).to_dict()["checkpoint"]
    for ck in (w, a):
        assert ck is not None and ck["label"] == "signed" and ck["carried"] and ck["signature_ok"] and ck["anchored"]


def test_the_violation_says_how_many_distinct_approvers_it_needs(tmp_path: Path) -> None:
    a, b, c = (capsule.generate_key() for _ in range(3))
    with capsule.create(tmp_path / "w.capsule") as cap:
        with cap.commit() as tx:
            tx.constrain("two of three", rule={"action": "pay.*", "approvals": 2,
                                               "approvers": [a.key_id, b.key_id, c.key_id]})
        with pytest.raises(capsule.PolicyViolation, match="from 2 distinct key\\(s\\) among the 3 named keys"):
            cap.run_once("pay.1", lambda: 1)


def test_verify_policy_says_that_it_judged(tmp_path: Path) -> None:
    # `verify --policy` printed exactly what plain verify prints: nothing said policy was checked
    p = tmp_path / "v.capsule"
    assert _cli("init", str(p)).returncode == 0
    judged = _cli("verify", str(p), "--policy")
    assert judged.returncode == 0 and "policy: no violation" in judged.stdout
    assert "policy:" not in _cli("verify", str(p)).stdout


def _clean_parent(p: Path) -> capsule.PrivateKey:
    """A capsule whose approved action passes verify --policy."""
    key = capsule.generate_key()
    with capsule.create(p) as cap:
        cap.checkpoint("keys", key=key)
        with cap.commit() as tx:
            tx.constrain("mail needs an approval", rule={"action": "email.*"})
            tx.approve(capsule.action_subject("email.send:1"), key)
        cap.run_once("email.send:1", lambda: "sent")
    assert capsule.verify(p, policy=True).ok
    return key


def test_copies_of_copies_are_judged_as_their_parent_judges_itself(tmp_path: Path) -> None:
    # the parent's own inherited intents were judged in place: a clean fork of a compacted file
    # failed, and a fork of a fork of a violating parent passed without a word
    clean, compacted, fork = tmp_path / "clean.capsule", tmp_path / "c.capsule", tmp_path / "f.capsule"
    _clean_parent(clean)
    capsule.compact(clean, compacted)
    capsule.fork(compacted, fork).close()
    assert capsule.verify(fork, policy=True, parent=compacted).ok
    bad, f1, f2 = tmp_path / "bad.capsule", tmp_path / "f1.capsule", tmp_path / "f2.capsule"
    _parent_with_a_violation(bad)
    capsule.fork(bad, f1).close()
    capsule.fork(f1, f2).close()
    assert not capsule.verify(f1, policy=True, parent=bad).ok
    rep = capsule.verify(f2, policy=True, parent=f1)
    assert any("from its own parent" in w and str(f1) in w for w in rep.warnings)


def test_an_inherited_intent_no_parent_holds_fails(tmp_path: Path) -> None:
    # a fork made --at an earlier checkpoint copies the parent's later intents; an older copy of the
    # parent (cut back to the checkpoint, still valid) holds none of them: nothing judged them
    g, old, f = tmp_path / "g.capsule", tmp_path / "old.capsule", tmp_path / "f.capsule"
    with capsule.create(g) as cap:
        with cap.commit() as tx:
            tx.constrain("email needs approval", rule={"action": "email.*"})
        cap.checkpoint("c1", key=capsule.generate_key())
        size = g.stat().st_size
        with cap.commit() as tx:
            tx._put(Action.build(time=cap.clock(), key="email.blast", phase="intent", attempt=1))
    old.write_bytes(g.read_bytes()[:size])
    capsule.fork(g, f, at="c1").close()
    assert not capsule.verify(f, policy=True, parent=g).ok
    rep = capsule.verify(f, policy=True, parent=old)
    # the fork's content check (15) sees the copied intent first: old holds no such record
    msg = rep.first_error["message"]
    assert not rep.ok and ("in no parent given" in msg or f"is not a record of {old}" in msg), msg


def test_a_fork_of_an_empty_parent_inherits_nothing(tmp_path: Path) -> None:
    e, f = tmp_path / "e.capsule", tmp_path / "f.capsule"
    capsule.create(e).close()
    capsule.fork(e, f).close()
    with capsule.open(f, "a") as cap:
        with cap.commit() as tx:
            tx.constrain("mail needs an approval", rule={"action": "email.*"})
        with pytest.raises(capsule.PolicyViolation):
            cap.run_once("email.x", lambda: 1)
    assert not [w for w in capsule.verify(f, policy=True).warnings if "inherited" in w]
    assert capsule.verify(f, policy=True, parent=e).ok


@pytest.mark.parametrize("kind", ["action", "revert"])
def test_put_many_refuses_what_put_refuses(tmp_path: Path, kind: str) -> None:
    from capsule.format.records import _REGISTRY

    p = tmp_path / "m.capsule"
    with capsule.create(p) as cap:
        before = p.read_bytes()
        rec = (Action.build(time=1, key="email.blast", phase="intent", attempt=1) if kind == "action"
               else _REGISTRY["revert"].build(time=1, after=bytes(32), drop=[bytes(32)]))
        with pytest.raises(capsule.UsageError, match="not put directly"), cap.commit() as tx:
            tx.put_many([{"text": "fine"}, rec])
        assert p.read_bytes() == before


def test_audit_on_a_copy_judges_inherited_approvals_as_the_parent_did(tmp_path: Path) -> None:
    p = tmp_path / "p.capsule"
    key = _clean_parent(p)
    for keep in ("history", "live"):
        c = tmp_path / f"{keep}.capsule"
        capsule.compact(p, c, keep=keep)
        with capsule.open(c) as cap:
            [a] = cap.audit("email.send:1").to_dict()["approvals"]
        assert a["approver"] == key.public_key.key_id and a["verified"]
        assert a["before_intent"] is (True if keep == "history" else None)
