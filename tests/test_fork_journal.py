"""The action journal survives rollback and fork (audit F24), and a fork made in
reproducible mode gets its own file id (spec 2.5, 15)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import capsule

T0 = 1_700_000_000 * 10**9


def ticking() -> Callable[[], int]:
    t = [T0]

    def clock() -> int:
        t[0] += 10**9
        return t[0]

    return clock


def test_f24_run_once_rollback_then_fork_never_runs_the_effect_again(tmp_path: Path) -> None:
    k = capsule.generate_key()
    p = tmp_path / "a.capsule"
    calls: list[str] = []
    with capsule.create(p, clock=ticking()) as cap:
        with cap.commit() as tx:
            tx.remember("before the email")
        cap.checkpoint("c0", key=k)
        assert cap.run_once("email:1", lambda: calls.append("sent") or "msg-1") == "msg-1"
        with cap.commit() as tx:
            tx.remember("after the email")
        cap.rollback("c0")
        root_after_rollback = cap.state_root
        # the parent's journal kept the key through the rollback
        assert cap.run_once("email:1", lambda: calls.append("again") or "x") == "msg-1"
    with capsule.fork(p, tmp_path / "f.capsule", clock=ticking()) as fk:
        assert fk.state_root == root_after_rollback  # the live state is the parent's
        assert fk.run_once("email:1", lambda: calls.append("fork") or "y") == "msg-1"
        assert [a.key for a in fk.actions()] == ["email:1"]
        texts = sorted(m["text"] for m in fk.state().to_dict()["memories"]["working"])
        assert texts == ["before the email"]
    assert calls == ["sent"]
    rep = capsule.verify(tmp_path / "f.capsule", parent=p)
    assert rep.ok, rep.first_error


def test_a_fork_at_a_checkpoint_before_the_action_keeps_its_journal_entry(tmp_path: Path) -> None:
    """A fork *at* c0 has the parent's state then, but the effect the parent ran after c0
    happened in the world: the fork's journal answers its key (a fresh-context review found the
    fork ran it again), and its state root is still c0's."""
    p = tmp_path / "a.capsule"
    calls: list[str] = []
    k = capsule.generate_key()
    with capsule.create(p, clock=ticking()) as cap:
        with cap.commit() as tx:
            tx.remember("before")
        cap.checkpoint("c0", key=k)
        assert cap.run_once("email:1", lambda: calls.append("sent") or "msg-1") == "msg-1"
        with pytest.raises(KeyboardInterrupt):  # an intent without a result: in doubt in the parent
            cap.run_once("charge:2", _interrupted)
        with cap.commit() as tx:
            tx.remember("after")
    with capsule.open(p, at="c0") as then:
        root_c0 = then.state_root
    with capsule.fork(p, tmp_path / "f.capsule", at="c0", clock=ticking()) as fk:
        assert fk.state_root == root_c0
        assert sorted(m["text"] for m in fk.state().to_dict()["memories"]["working"]) == ["before"]
        assert fk.run_once("email:1", lambda: calls.append("fork") or "y") == "msg-1"
        with pytest.raises(capsule.InDoubt):
            fk.run_once("charge:2", lambda: calls.append("charge"))
    assert calls == ["sent"]
    f = tmp_path / "f.capsule"
    assert capsule.verify(f, parent=p).ok and capsule.verify(f, trust=k.public_key).ok


def _interrupted() -> None:
    raise KeyboardInterrupt


def test_reproducible_fork_gets_a_new_file_id_and_is_reproducible(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("x")
    ids = []
    for name in ("f1.capsule", "f2.capsule"):
        with capsule.fork(p, tmp_path / name) as fk:
            ids.append(fk.file_id)
    with capsule.open(p) as cap:
        assert cap.file_id not in ids
    assert ids[0] == ids[1]
    assert (tmp_path / "f1.capsule").read_bytes() == (tmp_path / "f2.capsule").read_bytes()
    assert os.environ["SOURCE_DATE_EPOCH"] == "1700000000"
