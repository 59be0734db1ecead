"""A compaction or a fork builds its vector index from the records it holds decoded, not by
reading its own file back (16.3): the files must be byte for byte those the read-back build
writes (reproducible mode, 2.5), and their snapshots must verify."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.handle import carry


def _parent(p: Path) -> list[str]:
    rng = random.Random(4)
    ids: list[str] = []
    with capsule.create(p) as cap:
        for c in range(6):
            with cap.commit() as tx:
                for i in range(120):
                    emb = [rng.uniform(-1, 1) for _ in range(8)] if i % 3 else None
                    ids.append(tx.remember(f"fact {c}-{i} about topic {i % 9}", tags=[f"t{i % 4}"],
                                           tier=("scratch", "working", "validated")[i % 3],
                                           ttl=None if i % 5 else 10**15, embedding=emb))
        with cap.commit() as tx:
            tx.forget(ids[5], reason="wrong")
            tx.redact(ids[7], reason="secret")  # drops an entry: the index must be built again
    return ids


def _without_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    real = carry.carry_snapshots

    def read_back(*a: Any, **k: Any) -> str:
        k["complete"] = False
        return real(*a, **k)

    monkeypatch.setattr(carry, "carry_snapshots", read_back)
    import capsule.compaction.rewrite as rw

    if hasattr(rw, "carry_snapshots"):
        monkeypatch.setattr(rw, "carry_snapshots", read_back)


@pytest.mark.parametrize("keep", ["history", "live"])
def test_a_compaction_builds_the_index_the_read_back_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             keep: str) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    p = tmp_path / "p.capsule"
    _parent(p)
    fast, slow = tmp_path / "fast.capsule", tmp_path / "slow.capsule"
    capsule.compact(p, fast, keep=keep)
    with monkeypatch.context() as m:
        _without_shortcut(m)
        capsule.compact(p, slow, keep=keep)
    assert fast.read_bytes() == slow.read_bytes()
    with capsule.open(fast) as cap:
        assert cap.index_info()["snapshot"] is not None
    assert capsule.verify(fast, parent=p).ok


def test_a_fork_builds_the_index_the_read_back_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    p = tmp_path / "p.capsule"
    _parent(p)
    fast, slow = tmp_path / "fast.capsule", tmp_path / "slow.capsule"
    capsule.fork(p, fast)
    with monkeypatch.context() as m:
        _without_shortcut(m)
        capsule.fork(p, slow)
    assert fast.read_bytes() == slow.read_bytes()
    assert capsule.verify(fast).ok
