"""capsule.merge (spec 20): forks and copies that both grew, united into one verifiable file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.merging import merge
from capsule.merging import plan as merge_plan
from capsule.verifier.merge import verify_merge


def _grow(path: Path, tag: str, shared: str, *, promote: str | None = None) -> dict[str, str]:
    """One side's work after the fork: its own memories, a supersession of the shared memory,
    a run_once, a task completed, a constraint and identity change."""
    out: dict[str, str] = {}
    with capsule.open(path, "a") as cap:
        with cap.commit() as tx:
            out["own"] = tx.remember(f"learned on {tag}")
            out["decision"] = tx.decide(f"decided on {tag}", evidence=[shared])
            tx.set_identity("agent-7", name=f"name-{tag}")
            tx.constrain("no email after 22h", status="revoked" if tag == "a" else "active")
        with cap.commit() as tx:
            if promote is None:
                out["succ"] = tx.supersede(shared, f"the printer moved, says {tag}")
            else:
                out["succ"] = tx.promote(shared, promote)
        cap.run_once("email:1", lambda: f"sent by {tag}")
        cap.tasks.claim("nightly", f"worker-{tag}")
        cap.tasks.complete("nightly", f"worker-{tag}")
    return out


@pytest.fixture
def forks(tmp_path: Path) -> dict[str, Any]:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap:
        with cap.commit() as tx:
            shared = tx.remember("the printer is on floor 2")
            gone = tx.remember("the wifi password is hunter2")
            tx.constrain("no email after 22h")
            tx.set_identity("agent-7", name="seven")
        cap.tasks.add("nightly")
    capsule.fork(a, b).close()
    ra = _grow(a, "a", shared)
    rb = _grow(b, "b", shared)
    with capsule.open(b, "a") as cap:
        cap.run_once("deploy", lambda: "deployed by b")
    with capsule.open(a, "a") as cap:  # later: in the merged order a's intent comes last
        with cap.commit() as tx:
            tx.redact(gone, reason="a secret")
        h = cap.action("deploy")  # 7.8: the intent is committed; the effect never reports: in doubt
        h._release()
    return {"a": a, "b": b, "shared": shared, "gone": gone, "ra": ra, "rb": rb, "dir": tmp_path}


def test_forks_that_both_grew_merge_into_a_verifiable_file(forks: dict[str, Any]) -> None:
    a, b, d = forks["a"], forks["b"], forks["dir"]
    rep = merge(a, b, d / "c.capsule")
    assert rep.relation == "fork" and not rep.dry_run and rep.bytes
    kinds = {c.kind: c for c in rep.conflicts}
    assert set(kinds) == {"identity", "constraint", "supersede", "task", "action-twice", "action-in-doubt"}
    assert kinds["action-in-doubt"].records and kinds["supersede"].records  # settled by records (20.6)
    assert rep.dropped == 1  # the redacted memory's bytes are not copied (7.7.1)
    c = d / "c.capsule"
    assert verify_merge(c, [a, b]).ok
    assert verify_merge(c, [b, a]).ok  # either order
    assert b"hunter2" not in c.read_bytes()
    with capsule.open(c) as cap:
        live = {m["text"] for tier in cap.state().to_dict()["memories"].values() for m in tier}
        acts = {s.key: s for s in cap.actions()}
        lin = capsule.verify(c).lineage
    # both sides' own memories survive; of the two supersessions of one memory exactly one stays
    assert {"learned on a", "learned on b"} <= live
    assert len(live & {"the printer moved, says a", "the printer moved, says b"}) == 1
    assert "the printer is on floor 2" not in live and "the wifi password is hunter2" not in live
    assert acts["deploy"].status == "done" and acts["deploy"].value == "deployed by b"  # in doubt + done = done
    assert acts["email:1"].status == "done"
    assert lin is not None and lin["kept"] == rep.records and lin["ancestor"]["tree_size"] == rep.ancestor["tree_size"]
    # every kept record is byte-identical to a parent's: same ids
    with capsule.open(a) as pa, capsule.open(b) as pb, capsule.open(c) as pc:
        parent_ids = {r.id for r in pa.records()} | {r.id for r in pb.records()}
        merged = [r.id for r in pc.records()]
    assert len(merged) == len(set(merged))
    assert set(merged) - parent_ids == set(kinds["action-in-doubt"].records) | set(kinds["supersede"].records)


def test_merge_ab_and_ba_are_byte_identical(forks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, d = forks["a"], forks["b"], forks["dir"]
    r1, r2 = merge(a, b, d / "ab.capsule"), merge(b, a, d / "ba.capsule")
    assert (d / "ab.capsule").read_bytes() == (d / "ba.capsule").read_bytes()
    # the report names sides as the caller did
    assert r1.only_a == r2.only_b and r1.only_b == r2.only_a
    assert [c.winner for c in r1.conflicts] == [{"a": "b", "b": "a", None: None}[c.winner] for c in r2.conflicts]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    merge(a, b, d / "ab2.capsule")
    merge(b, a, d / "ba2.capsule")
    assert (d / "ab2.capsule").read_bytes() == (d / "ba2.capsule").read_bytes()
    assert (d / "ab2.capsule").read_bytes()[12:28] != (d / "ab.capsule").read_bytes()[12:28]  # 2.5: its own id


def test_signed_merge_is_symmetric_and_anchored(forks: dict[str, Any]) -> None:
    a, b, d = forks["a"], forks["b"], forks["dir"]
    key = capsule.generate_key()
    merge(a, b, d / "s1.capsule", key=key)
    merge(b, a, d / "s2.capsule", key=key)
    assert (d / "s1.capsule").read_bytes() == (d / "s2.capsule").read_bytes()
    assert verify_merge(d / "s1.capsule", [a, b], trust=key.public_key).ok


def test_copies_that_diverged(tmp_path: Path) -> None:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("before the copy")
    shutil.copyfile(a, b)
    for p, tag in ((a, "laptop"), (b, "cloud")):
        with capsule.open(p, "a") as cap, cap.commit() as tx:
            tx.remember(f"on the {tag}")
    rep = merge(a, b, tmp_path / "c.capsule")
    assert rep.relation == "copies" and rep.shared == 1 and rep.only_a == rep.only_b == 1 and not rep.conflicts
    assert verify_merge(tmp_path / "c.capsule", [a, b]).ok
    with capsule.open(tmp_path / "c.capsule") as cap:
        assert sorted(m.text for m in cap.records(kind="memory")) == ["before the copy", "on the cloud",
                                                                       "on the laptop"]


def test_a_merge_of_copies_merges_again_with_either_copy_that_went_on(tmp_path: Path) -> None:
    # The merged file names the copies' one file id twice (parent and merge). The fleet review
    # found the second merge refused with one of the copies (whichever sorted first): only the
    # first name was tried, and that copy does not hold the other's commit.
    a, b, m = (tmp_path / f"{n}.capsule" for n in "abm")
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("base")
    shutil.copyfile(a, b)
    for step in ("1", "2"):
        for p, tag in ((a, "A"), (b, "B")):
            with capsule.open(p, "a") as cap, cap.commit() as tx:
                tx.remember(tag + step)
        if step == "1":
            merge(a, b, m)
    for other, only in ((a, "A2"), (b, "B2")):
        out = tmp_path / f"m-{other.stem}.capsule"
        rep = merge(m, other, out)
        assert rep.relation == "fork" and rep.only_b == 1 and not rep.conflicts
        assert verify_merge(out, [m, other]).ok
        with capsule.open(out) as cap:
            assert sorted(x.text for x in cap.records(kind="memory")) == sorted(["base", "A1", "B1", only])


def test_two_forks_of_one_parent_at_one_commit(tmp_path: Path) -> None:
    p, x, y = (tmp_path / f"{n}.capsule" for n in "pxy")
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("common")
    for f, tag in ((x, "x"), (y, "y")):
        with capsule.fork(p, f) as cap, cap.commit() as tx:
            tx.remember(f"only {tag}")
    rep = merge(x, y, tmp_path / "c.capsule")
    assert rep.relation == "siblings" and rep.shared == 1
    assert verify_merge(tmp_path / "c.capsule", [y, x]).ok


def test_tier_conflict_promote_against_demote(tmp_path: Path) -> None:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        m = tx.remember("tier me")
    capsule.fork(a, b).close()
    for p, tier in ((a, "validated"), (b, "scratch")):
        with capsule.open(p, "a") as cap, cap.commit() as tx:
            (tx.promote if tier == "validated" else tx.demote)(m, tier)
    rep = merge(a, b, tmp_path / "c.capsule")
    (conflict,) = [c for c in rep.conflicts if c.kind == "tier"]
    assert conflict.records and conflict.winner in ("a", "b")
    with capsule.open(tmp_path / "c.capsule") as cap:
        mems = cap.state().to_dict()["memories"]
    want = "validated" if conflict.winner == "a" else "scratch"
    assert [t for t, ms in mems.items() if ms] == [want]
    assert verify_merge(tmp_path / "c.capsule", [a, b]).ok


def test_dry_run_writes_nothing_and_reports_the_conflicts(forks: dict[str, Any]) -> None:
    a, b, d = forks["a"], forks["b"], forks["dir"]
    before = {p: p.read_bytes() for p in (a, b)}
    rep = merge(a, b, d / "c.capsule", dry_run=True)
    assert rep.dry_run and rep.bytes is None and len(rep.conflicts) == 6
    assert not (d / "c.capsule").exists() and not list(d.glob(".c.capsule.*"))
    assert {p: p.read_bytes() for p in (a, b)} == before  # parents are read, never written
    assert rep.to_dict()["conflicts"][0]["kind"] == "action-in-doubt"


def test_refusals(forks: dict[str, Any], tmp_path: Path) -> None:
    a, b = forks["a"], forks["b"]
    other = tmp_path / "other.capsule"
    with capsule.create(other) as cap, cap.commit() as tx:
        tx.remember("a stranger")
    with pytest.raises(capsule.DataError, match="no common ancestor"):
        merge(a, other, tmp_path / "x.capsule")
    with pytest.raises(capsule.UsageError, match="same file"):
        merge(a, a, tmp_path / "x.capsule")
    with pytest.raises(capsule.UsageError, match="one of the parents"):
        merge(a, b, a)
    (tmp_path / "exists.capsule").write_bytes(b"x")
    with pytest.raises(capsule.AlreadyExists):
        merge(a, b, tmp_path / "exists.capsule")
    merge(a, b, tmp_path / "exists.capsule", force=True)
    assert verify_merge(tmp_path / "exists.capsule", [a, b]).ok
    same = tmp_path / "same.capsule"
    shutil.copyfile(a, same)
    with pytest.raises(capsule.UsageError, match="same capsule at the same commit"):
        merge(a, same, tmp_path / "x.capsule")
    with capsule.open(same, "a") as cap, cap.commit() as tx:
        tx.remember("one more")
    with pytest.raises(capsule.UsageError, match="earlier state"):
        merge(a, same, tmp_path / "x.capsule")
    assert not (tmp_path / "x.capsule").exists()


def test_corrupt_parent_is_refused_and_nothing_is_written(forks: dict[str, Any]) -> None:
    a, b, d = forks["a"], forks["b"], forks["dir"]
    bad = d / "bad.capsule"
    data = bytearray(b.read_bytes())
    data[len(data) // 3] ^= 0x40  # damage before the last commit (8.2)
    bad.write_bytes(bytes(data))
    with pytest.raises(capsule.CorruptError):
        merge(a, bad, d / "c.capsule")
    assert not (d / "c.capsule").exists() and not list(d.glob(".c.capsule.*"))


def test_verify_catches_a_tampered_merge(forks: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, d = forks["a"], forks["b"], forks["dir"]
    c = d / "c.capsule"
    merge(a, b, c)
    # 1. a flipped byte: the file's own checks
    t = d / "t.capsule"
    data = bytearray(c.read_bytes())
    data[200] ^= 1
    t.write_bytes(bytes(data))
    assert not verify_merge(t, [a, b]).ok
    # 2. a well-formed file that claims the merge but left a record out: only the parents show it
    real = merge_plan.interleave

    def lossy(first: Any, second: Any, red: set[bytes]) -> list[merge_plan.Group]:
        groups = real(first, second, red)
        victim = next(g for g in groups if g.side == 1 and len(g.records) > 1)
        victim.records.pop()
        return groups

    monkeypatch.setattr(merge_plan, "interleave", lossy)
    merge(a, b, d / "forged.capsule")
    monkeypatch.undo()
    assert capsule.verify(d / "forged.capsule").ok  # consistent on its own
    rep = verify_merge(d / "forged.capsule", [a, b])
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "lineage"
    # 3. the wrong parents
    other = d / "other.capsule"
    with capsule.create(other) as cap, cap.commit() as tx:
        tx.remember("a stranger")
    rep = verify_merge(c, [a, other])
    assert not rep.ok and "parent this merge names" in rep.first_error["message"]  # type: ignore[index]
    # 4. the real one still verifies, after both parents and the merged file grew
    for p in (a, b, c):
        with capsule.open(p, "a") as cap, cap.commit() as tx:
            tx.remember(f"after the merge, in {p.name}")
    assert verify_merge(c, [a, b]).ok


def test_the_lineage_round_trips_and_keeps_old_frames_unchanged() -> None:
    from capsule.format import canonical as canon
    from capsule.format.checkpoint import CommitRef, Lineage, parse_lineage

    fork = Lineage(b"p" * 16, b"r" * 32, 5, b"c" * 32, None)
    assert set(fork.to_value()) == {"chain", "checkpoint", "parent", "root", "tree_size"}
    lin = Lineage(b"a" * 16, b"r" * 32, 5, b"c" * 32, None, (), None, 7,
                  merge=CommitRef(b"b" * 16, 9, b"s" * 32, b"d" * 32, b"k" * 32),
                  ancestor=CommitRef(b"a" * 16, 3, b"t" * 32, b"e" * 32))
    raw = canon.pack(lin.to_value())
    assert parse_lineage(raw, 64, 0) == lin
    swapped = dict(lin.to_value(), parent=b"z" * 16)  # 20.3: the parents in canonical order
    with pytest.raises(capsule.CorruptError, match="not in order"):
        parse_lineage(canon.pack(dict(sorted(swapped.items()))), 64, 0)
    with pytest.raises(capsule.CorruptError, match="merge fields"):
        parse_lineage(canon.pack(dict(sorted({**lin.to_value(), "policy": "live"}.items()))), 64, 0)
