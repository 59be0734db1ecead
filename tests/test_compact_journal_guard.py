"""15.1, 7.8: a redaction that names an action record (7.7.1 forbids it; verify reports
`lifecycle-target`) cannot make compaction drop the journal entry: the effect never runs twice."""

from __future__ import annotations

from pathlib import Path

import capsule


def test_compaction_keeps_an_action_a_forged_redact_names(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    ran: list[str] = []
    with capsule.create(p) as cap:
        cap.run_once("pay", lambda: ran.append("paid") or "paid")
        acts = sorted(bytes.fromhex(r.id) for r in cap.records(kind="action"))
        with cap.commit() as tx:  # what a buggy or hostile writer can put in a file
            tx._put_kind("revert", after=bytes.fromhex(cap.root), op="redact", drop=acts, reason="forged")
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "lifecycle-target"
    for keep in ("history", "checkpoints", "live"):
        out = tmp_path / f"{keep}.capsule"
        capsule.compact(p, out, keep=keep)
        with capsule.open(out) as cap:
            assert {bytes.fromhex(r.id) for r in cap.records(kind="action")} == set(acts), keep
        with capsule.open(out, "a") as cap:
            cap.run_once("pay", lambda: ran.append("paid again") or "again")
    assert ran == ["paid"]
