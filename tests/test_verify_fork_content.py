"""`verify FORK --parent P` checks what the fork holds, not only that its fork point exists (spec 15).

It used to check that P is the named parent with a COMMIT of that seq, root and chain, and
nothing of the fork's records: a fork whose first commit added a memory, left one out, or
claimed an effect the parent never ran (an `action` record marking a key done, so the fork
would never run it) passed. The verifier now requires that the fork's first commit that
holds records leaves live exactly the parent's live records at the fork point (but those
the parent has redacted since, 7.7.1), and that every other record it holds, but its
`revert`, is a record of the parent.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.format import kindwalk
from capsule.format.records import encode_record
from capsule.handle import entry
from capsule.run.actions import Action

CAPSULE_BIN = Path(sys.executable).with_name("capsule")


@pytest.fixture
def parent(tmp_path: Path) -> tuple[Path, int, dict[str, str]]:
    """A parent with memories, a forgotten one and effects before and after the fork point."""
    path = tmp_path / "p.capsule"
    ids: dict[str, str] = {}
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            ids["alpha"] = tx.remember("alpha")
            ids["gone"] = tx.remember("forgotten before the fork point")
        cap.run_once("k1", lambda: 1)
        with cap.commit() as tx:
            tx.forget(ids["gone"])
            ids["beta"] = tx.remember("beta")
        assert cap._snap.commit is not None
        seq = cap._snap.commit.seq
        cap.run_once("k2", lambda: 2)  # after the fork point: the fork's journal holds it too
    return path, seq, ids


def verify(fork: Path, parent: Path) -> dict[str, Any]:
    p = subprocess.run([str(CAPSULE_BIN), "verify", str(fork), "--parent", str(parent), "--json"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert "Traceback" not in p.stderr, p.stderr
    doc: dict[str, Any] = json.loads(p.stdout)
    assert (p.returncode == 0) == doc["ok"], (p.returncode, doc)
    return doc


def _forged_parent_actions(monkeypatch: pytest.MonkeyPatch, forged: list[Any]) -> None:
    real = kindwalk.walk

    def walk(store: Any, kinds: Any, *a: Any, **k: Any) -> Iterator[tuple[int, int, Any]]:
        yield from real(store, kinds, *a, **k)
        if list(kinds) == ["action"]:
            yield from ((0, 0, r) for r in forged)

    monkeypatch.setattr(kindwalk, "walk", walk)


def _forged_done(key: str, value: Any) -> list[Any]:
    """An intent and a done result for ``key`` that no parent ran, with their ids."""
    acts = [Action(time=1, key=key, phase="intent", attempt=1),
            Action(time=2, key=key, phase="result", attempt=1, value=value, by="fn")]
    return [dataclasses.replace(a, id=encode_record(a)[0].hex()) for a in acts]


def test_an_honest_fork_verifies_against_its_parent(parent: tuple[Path, int, dict[str, str]],
                                                    tmp_path: Path) -> None:
    path, seq, _ = parent
    capsule.fork(path, tmp_path / "f.capsule", at=seq).close()
    assert verify(tmp_path / "f.capsule", path)["ok"]
    with capsule.open(tmp_path / "f.capsule", "a") as f:
        assert f.run_once("k2", lambda: 3) == 2  # the parent ran it after the fork point: not again
        with f.commit() as tx:
            tx.forget(next(r.id for r in f.records(kind="memory")))
    assert verify(tmp_path / "f.capsule", path)["ok"]  # its own later commits are its own


def test_a_fork_made_before_a_redaction_in_the_parent_still_verifies(parent: tuple[Path, int, dict[str, str]],
                                                                      tmp_path: Path) -> None:
    """The reverse too: a fork made after it lacks the redacted record, and verifies."""
    path, seq, ids = parent
    capsule.fork(path, tmp_path / "before.capsule", at=seq).close()
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        tx.redact(ids["alpha"], reason="leaked")
    capsule.fork(path, tmp_path / "after.capsule", at=seq).close()
    with capsule.open(tmp_path / "after.capsule") as f:
        assert ids["alpha"] not in {r.id for r in f.records()}
    assert verify(tmp_path / "before.capsule", path)["ok"]
    assert verify(tmp_path / "after.capsule", path)["ok"]


def test_a_fork_holding_a_record_dead_at_the_fork_point_fails(parent: tuple[Path, int, dict[str, str]],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, seq, ids = parent
    real = entry.live_records

    def plus_dead(every: list[Any]) -> list[Any]:
        return [*real(every), *(r for r in every if r.id == ids["gone"])]

    monkeypatch.setattr(entry, "live_records", plus_dead)
    capsule.fork(path, tmp_path / "f.capsule", at=seq).close()
    doc = verify(tmp_path / "f.capsule", path)
    assert not doc["ok"] and doc["first_error"]["check"] == "lineage"
    assert f"record {ids['gone']} is live in the fork but was not live" in doc["first_error"]["message"]


def test_a_fork_missing_a_live_record_fails(parent: tuple[Path, int, dict[str, str]], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path, seq, ids = parent
    real = entry.live_records

    def minus_beta(every: list[Any]) -> list[Any]:
        return [r for r in real(every) if r.id != ids["beta"]]

    monkeypatch.setattr(entry, "live_records", minus_beta)
    capsule.fork(path, tmp_path / "f.capsule", at=seq).close()
    doc = verify(tmp_path / "f.capsule", path)
    assert not doc["ok"] and doc["first_error"]["check"] == "lineage"
    assert f"record {ids['beta']} was live in" in doc["first_error"]["message"]


def test_a_fork_claiming_an_effect_the_parent_never_ran_fails(parent: tuple[Path, int, dict[str, str]],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The forged journal would make the fork's run_once("k9") return 99 without running."""
    path, seq, _ = parent
    forged = _forged_done("k9", 99)
    _forged_parent_actions(monkeypatch, forged)
    capsule.fork(path, tmp_path / "f.capsule", at=seq).close()
    monkeypatch.undo()
    with capsule.open(tmp_path / "f.capsule", "a") as f:
        assert f.run_once("k9", lambda: 1) == 99  # what a forged fork would do
    doc = verify(tmp_path / "f.capsule", path)
    assert not doc["ok"] and doc["first_error"]["check"] == "lineage"
    assert doc["first_error"]["message"].split()[1] in {a.id for a in forged}
    assert "is not a record of" in doc["first_error"]["message"]


def test_a_fork_of_an_empty_state_verifies(tmp_path: Path) -> None:
    path = tmp_path / "p.capsule"
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            rid = tx.remember("x")
        with cap.commit() as tx:
            tx.forget(rid)
    with capsule.fork(path, tmp_path / "f.capsule") as f:
        assert verify(tmp_path / "f.capsule", path)["ok"]
        with f.commit() as tx:  # the fork's own commit 2: not inherited, the parent's state was empty
            tx.remember("the fork's own")
    assert verify(tmp_path / "f.capsule", path)["ok"]
    capsule.fork(tmp_path / "f.capsule", tmp_path / "g.capsule").close()  # a fork of a fork
    assert verify(tmp_path / "g.capsule", tmp_path / "f.capsule")["ok"]
    assert not verify(tmp_path / "g.capsule", path)["ok"]  # not its parent


def test_a_fork_of_a_state_all_redacted_since_verifies_after_its_own_commit(tmp_path: Path) -> None:
    """Attack on the first version: nothing was copied (all of it redacted since), so commit 1 is the
    inherited one; the fork's own commit was compared as if inherited and failed."""
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            r = tx.remember("the only memory")
        assert cap._snap.commit is not None
        seq = cap._snap.commit.seq
        with cap.commit() as tx:
            tx.redact(r, reason="leak")
    with capsule.fork(p, f, at=seq) as fk, fk.commit() as tx:
        tx.remember("the fork's own")
    assert verify(f, p)["ok"]


@pytest.mark.parametrize("empty", [True, False])
def test_a_forged_journal_fails_whether_or_not_the_parent_state_was_empty(tmp_path: Path, empty: bool,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack on the first version: with an empty state at the fork point, commit 1 was taken as the
    inherited one, and the journal commit 2 (with a forged done result) was never read."""
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    forged = _forged_done("email:FORGED", "never ran")
    key = capsule.generate_key()
    with capsule.create(p) as cap:
        if not empty:
            with cap.commit() as tx:
                tx.remember("alpha")
        cap.checkpoint("c1", key=key)
        cap.run_once("email:1", lambda: "sent")
    _forged_parent_actions(monkeypatch, forged)
    capsule.fork(p, f, at="c1").close()
    monkeypatch.undo()
    doc = verify(f, p)
    assert not doc["ok"] and "is not a record of" in doc["first_error"]["message"], doc
    honest = tmp_path / "h.capsule"
    capsule.fork(p, honest, at="c1").close()
    assert verify(honest, p)["ok"]


def test_a_fork_missing_an_action_the_parent_ran_before_the_fork_point_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal must survive a fork (15): a rolled-back effect's records, dead at the fork point,
    are the parent's up to it and so must be in the fork."""
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    key = capsule.generate_key()
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("alpha")
        cap.checkpoint("c1", key=key)
        cap.run_once("email:1", lambda: "sent")  # then rolled back: dead, yet it happened
        cap.rollback("c1", key=key)
    from capsule.handle.capsule import Capsule

    orig = Capsule._write_commit

    def strip(self: Any, items: Any, **k: Any) -> Any:  # the journal revert and what it drops, left out
        items = list(items)
        if any(it[1] == "revert" for it in items):
            items = [it for it in items if it[1] not in ("revert", "action")]
        return orig(self, items, **k)

    monkeypatch.setattr(Capsule, "_write_commit", strip)
    capsule.fork(p, f).close()
    monkeypatch.undo()
    with capsule.open(f, "a") as fk:
        assert fk.actions() == []  # it would send email:1 again
    doc = verify(f, p)
    assert not doc["ok"] and doc["first_error"]["message"].startswith("action record "), doc
    assert "must survive the fork" in doc["first_error"]["message"]
    honest = tmp_path / "h.capsule"
    capsule.fork(p, honest).close()
    assert verify(honest, p)["ok"]
