"""Carried labels name views (spec 14.9, 15.2): after `capsule compact` (any policy) or a fork,
the parent's checkpoints the new file carries are listed by `capsule checkpoints`, and their
labels still work with `--at` and `rollback --to`, as they did in the parent. Own labels win."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import capsule

from .test_carried import forge, parent_with_c1

K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def cli(*args: str | Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed command in a fresh process, as a user runs it."""
    r = subprocess.run([sys.executable, "-c", "from capsule_cli.main import main; main()", *map(str, args)],
                       capture_output=True, text=True, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert (r.returncode == 0) == ok, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def parent(path: Path) -> dict[str, str]:
    """day-1 over {a, b}, day-2 over {a, b, c}, then b forgotten and d added: the state roots
    each label signed."""
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            tx.remember("alpha fact")
            b = tx.remember("beta fact")
        day1 = cap.checkpoint("day-1", key=K1).state_root
        with cap.commit() as tx:
            tx.remember("gamma fact")
        day2 = cap.checkpoint("day-2", key=K1).state_root
        with cap.commit() as tx:
            tx.forget(b, reason="stale")
            tx.remember("delta fact")
        return {"day-1": day1, "day-2": day2, "end": cap.state_root}


@pytest.mark.parametrize("keep", ["history", "checkpoints"])
def test_after_compaction_in_place_the_parents_labels_still_name_their_states(tmp_path: Path, keep: str) -> None:
    f = tmp_path / "agent.capsule"
    roots = parent(f)
    cli("compact", f, "--keep", keep)
    rows = json.loads(cli("checkpoints", f, "--json").stdout)
    carried = [r for r in rows if r["carried"]]
    assert [(r["label"], r["state_root"]) for r in carried] == [("day-1", roots["day-1"]), ("day-2", roots["day-2"])]
    assert all(r["origin"] and r["signers"] == [K1.public_key.key_id] for r in carried)
    for label in ("day-1", "day-2"):
        st = json.loads(cli("state", f, "--at", label, "--json").stdout)
        assert st["state_root"] == roots[label], label
    assert json.loads(cli("state", f, "--json").stdout)["state_root"] == roots["end"]
    # rollback to a carried checkpoint: the state root is the one the parent signed, and the
    # revert naming the carried checkpoint's hash verifies under the parent's key
    back = json.loads(cli("rollback", f, "--to", "day-1", "--json").stdout)
    assert back["changed"] and back["matches_checkpoint"] and back["state_root"] == roots["day-1"]
    with capsule.open(f) as cap:
        revert = cap.get(back["revert"])
        assert revert.to == next(c.hash for c in cap.carried_checkpoints() if c.label == "day-1")
    assert capsule.verify(f, trust=K1.public_key).ok
    again = json.loads(cli("rollback", f, "--to", "day-1", "--json").stdout)
    assert not again["changed"] and again["matches_checkpoint"]
    cli("rollback", f, "--to", "day-2")
    assert json.loads(cli("state", f, "--json").stdout)["state_root"] == roots["day-2"]
    out = cli("checkpoints", f).stdout
    assert "day-1" in out and "parent " in out and "this file" not in out  # nothing signed here yet


def test_live_compaction_carries_only_the_final_state_and_its_label_names_it(tmp_path: Path) -> None:
    f = tmp_path / "agent.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("kept")
        cap.checkpoint("old", key=K1)
        with cap.commit() as tx:
            tx.remember("also kept")
        root = cap.checkpoint("final", key=K1).state_root
    small = tmp_path / "small.capsule"
    cli("compact", f, "-o", small, "--keep", "live")
    rows = json.loads(cli("checkpoints", small, "--json").stdout)
    assert [(r["label"], r["carried"]) for r in rows] == [("final", True)]
    assert json.loads(cli("state", small, "--at", "final", "--json").stdout)["state_root"] == root
    r = cli("state", small, "--at", "old", ok=False)
    assert r.returncode != 0 and "'old' is not a checkpoint label" in r.stderr


def test_own_labels_win_over_carried_ones(tmp_path: Path) -> None:
    f = tmp_path / "agent.capsule"
    roots = parent(f)
    with capsule.open(f, "a") as cap:
        cap.compact()
    with capsule.open(f, "a") as cap:
        day1 = next(c for c in cap.carried_checkpoints() if c.label == "day-1")
        assert cap.resolve("day-1") == day1.commit
        own = cap.checkpoint("day-1", key=K1).state_root  # a new day-1, signed in this file
        assert own == roots["end"] != roots["day-1"]
        with cap.view("day-1") as v:
            assert v.state_root == own
        assert cap.rollback("day-1") is None  # already at the own day-1's state
    rows = json.loads(cli("checkpoints", f, "--json").stdout)
    assert [(r["label"], r["carried"]) for r in rows] == [("day-1", True), ("day-2", True), ("day-1", False)]


def test_a_view_holds_only_the_carried_states_up_to_its_commit(tmp_path: Path) -> None:
    f = tmp_path / "agent.capsule"
    roots = parent(f)
    with capsule.open(f, "a") as cap:
        cap.compact()
    with capsule.open(f) as cap:
        first, second = cap.carried_checkpoints()
        assert first.commit.commits < second.commit.commits <= len(cap.log())
        with cap.view("day-1") as then:
            assert then.state_root == roots["day-1"]
            assert [c.label for c in then.carried_checkpoints()] == ["day-1"]
            with pytest.raises(capsule.UsageError):  # day-2's COMMIT is after this view
                then.resolve("day-2")


def test_a_fork_at_a_label_keeps_it(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    parent_with_c1(p)
    capsule.fork(p, f, at="c1").close()
    with capsule.open(f, "a") as fork:
        (c,) = fork.carried_checkpoints()
        assert (c.label, c.commit.commits) == ("c1", 2)
        with fork.commit() as tx:
            tx.remember("after the fork")
        assert fork.rollback("c1") is not None
        assert fork.state_root == c.state_root
    assert capsule.verify(f, trust=K1.public_key).ok
    r = cli("rollback", f, "--to", "nope", ok=False)
    assert r.returncode != 0 and r.stderr.strip().endswith("no checkpoint labelled 'nope' (see `capsule checkpoints`)")


def test_a_carried_entry_whose_state_is_not_the_files_is_refused_by_rollback(tmp_path: Path) -> None:
    """A forged entry (its ordinal moved to a COMMIT with another state) names a view, as any
    label does, but a rollback checks the state root before it writes anything."""
    parent_with_c1(tmp_path / "p.capsule")
    out = forge(tmp_path, lambda lin: dataclasses.replace(
        lin, carried=(dataclasses.replace(lin.carried[0], commit=1),)), keys_from=tmp_path / "p.capsule")
    before = out.read_bytes()
    with capsule.open(out, "a") as cap, pytest.raises(capsule.CorruptError, match="does not match the records before"):
        cap.rollback("c1")
    assert out.read_bytes() == before
