"""A checkpoint inside a commit covers that commit's records (one fsync per agent step)."""

from __future__ import annotations

from pathlib import Path

import pytest

import capsule


def test_checkpoint_in_the_same_commit_names_the_state_after_it(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    key = capsule.PrivateKey.from_seed(b"\x07" * 32)
    with capsule.create(path) as cap:
        for step in range(4):
            commits = cap.commit_count
            with cap.commit() as tx:
                for i in range(25):
                    tx.remember(f"step {step} fact {i}")
                tx.checkpoint(f"step-{step}", key=key, runtime_state=b"loop state %d" % step)
            assert cap.commit_count == commits + 1  # records and checkpoint: one commit
            assert tx.checkpoint_frame is not None
            assert tx.checkpoint_frame.body.state_root.hex() == cap.state_root
        cap.rollback("step-1")
        with cap.commit() as tx:
            tx.remember("after the rollback")
            tx.checkpoint("after", key=key)
        assert tx.checkpoint_frame is not None
        assert tx.checkpoint_frame.body.state_root.hex() == cap.state_root
    rep = capsule.verify(path, trust=key.public_key)
    assert rep.ok and rep.checkpoints == 5, rep.first_error
    with capsule.open(path, at="step-2") as view:
        assert len([r for r in view.records() if r.text.startswith("step 2")]) == 25


def test_one_checkpoint_per_commit_and_a_failed_block_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    key = capsule.generate_key()
    with capsule.create(path) as cap:
        before = path.read_bytes()
        with pytest.raises(capsule.UsageError), cap.commit() as tx:
            tx.checkpoint("a", key=key)
            tx.checkpoint("b", key=key)
        assert path.read_bytes() == before
        with cap.commit() as tx:
            tx.checkpoint("empty-step", key=key)  # a checkpoint with no records is fine
        assert [c.body.label for c in cap.checkpoints()] == ["empty-step"]
