"""Signatures carry over (spec 15.2): a fork keeps the parent's signed checkpoint whose state
it holds exactly, `verify --trust` counts it without the parent, and a forged carried entry
fails with a named check and never counts toward trust. A fork also writes the search
snapshots (16.3, 16.8) so its first search does not rebuild."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner, Result

import capsule
from capsule.format import canonical as canon
from capsule.format.checkpoint import MAX_CARRIED, Carried, Lineage, parse_lineage
from capsule.format.records import encode_record
from capsule.format.signing import Signature
from capsule.handle import carry
from capsule.handle.carry import carried_for, carry_snapshots, copy_keysets
from capsule.handle.entry import create
from capsule.questions.diff_files import lineage_of
from capsule.search.vindex import BLOB_TYPE

K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)
K2 = capsule.PrivateKey.from_seed(bytes([2]) * 32)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def pub(tmp_path: Path, key: capsule.PrivateKey) -> Path:
    p = tmp_path / f"{key.public_key.key_id}.pub"
    p.write_text(key.public_key.to_text() + "\n")
    return p


def parent_with_c1(path: Path, key: capsule.PrivateKey = K1) -> None:
    """c0 (empty state), "a" + c1, then "b" after c1."""
    with capsule.create(path) as cap:
        cap.checkpoint("c0", key=key)
        with cap.commit() as tx:
            tx.remember("a")
        cap.checkpoint("c1", key=key)
        with cap.commit() as tx:
            tx.remember("b")


def check_of(rep: capsule.VerifyReport) -> str | None:
    return None if rep.first_error is None else rep.first_error["check"]


# --- the fix: a fork at a signed checkpoint verifies against that key -----------------------


def test_a_fork_at_c1_verifies_with_trust_and_without_its_parent(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    parent_with_c1(p)
    r = invoke("fork", p, "--at", "c1", "-o", f)
    assert r.exit_code == 0, r.output
    # before 1.3: "--trust given but the capsule has no signed checkpoints" (trust-anchor)
    r = invoke("verify", f, "--trust", pub(tmp_path, K1))
    assert r.exit_code == 0, r.output
    rep = capsule.verify(f, trust=K1.public_key, strict=True)
    assert rep.ok, rep.first_error
    assert rep.trusted_checkpoints == 1 and rep.checkpoints == 1
    with capsule.open(f) as fork, capsule.open(p) as par:
        c1 = par.find_checkpoint("c1")
        assert c1 is not None and fork.checkpoints() == []  # carried, not a CHECKPOINT frame of the fork
        lin = lineage_of(fork)
        assert lin is not None and [c.hash for c in lin.carried] == [c1.hash] and lin.carried[0].commit == 2
        assert fork.state_root == c1.state_root
        assert [k.keyset for k in fork.keysets()] == [k.keyset for k in par.keysets()]
    assert rep.signed_prefix is not None and rep.signed_prefix["label"] == "c1"
    assert rep.signed_prefix["offset"] == 64  # the LINEAGE frame holds it
    assert capsule.verify(f, trust=K1.public_key, parent=p).ok
    assert capsule.verify(f, trust=K1.public_key, deep=False).ok
    # another key is not an anchor of this fork
    assert check_of(capsule.verify(f, trust=K2.public_key)) == "trust-anchor"


def test_a_fork_whose_state_no_checkpoint_signed_carries_nothing(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    parent_with_c1(p)
    with capsule.fork(p, f) as fork:  # "a" and "b": no checkpoint signed that state
        assert fork.keysets() == []
        fork.checkpoint("mine", key=K2)  # so the fork picks its own first keyset, as before 1.3
    assert capsule.verify(f, trust=K2.public_key).ok
    assert check_of(capsule.verify(f, trust=K1.public_key)) == "trust-anchor"


def test_a_fork_at_a_later_commit_carries_the_newest_checkpoint_with_its_state(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    parent_with_c1(p)
    with capsule.open(p, "a") as cap:
        cap.rollback("c1")  # no key: the live state is c1's again, and unsigned
        with cap.commit() as tx:
            tx.note("a note")  # and something after it with another state
        seq = cap.resolve("c1").seq
        rolled = [c.seq for c in cap.log()][-2]
    assert rolled > seq
    capsule.fork(p, f, at=rolled).close()
    rep = capsule.verify(f, trust=K1.public_key, parent=p)
    assert rep.ok and rep.trusted_checkpoints == 1 and rep.signed_prefix["label"] == "c1", rep.to_dict()


def test_a_fork_of_the_empty_state_carries_it_at_the_first_commit(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    parent_with_c1(p)
    with capsule.fork(p, f, at="c0") as fork:
        assert len(fork) == 0
        lin = lineage_of(fork)
        assert lin is not None and [(c.body.label, c.commit) for c in lin.carried] == [("c0", 1)]
    assert capsule.verify(f, trust=K1.public_key, parent=p, strict=True).ok


def test_checkpoints_in_the_fork_extend_under_the_copied_keyset(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    parent_with_c1(p)
    with capsule.fork(p, f, at="c1") as fork:
        with fork.commit() as tx:
            tx.remember("only in the fork")
        with pytest.raises(capsule.UsageError, match="rotate keys first"):
            fork.checkpoint("stranger", key=K2)  # a key outside the parent's keyset
        fork.checkpoint("f1", key=K1)
        fork.rotate_keys(capsule.Keyset.of([K2.public_key], version=2), old_signers=[K1], new_signers=[K2])
        fork.checkpoint("f2", key=K2)  # rotation is the way
    rep = capsule.verify(f, trust=K1.public_key, strict=True)
    assert rep.ok and rep.trusted_checkpoints == 3 and rep.signed_prefix["label"] == "f2", rep.to_dict()
    rep = capsule.verify(f, trust=K2.public_key)
    assert rep.ok and rep.trusted_checkpoints == 1, rep.to_dict()  # only f2 is under the anchored keyset


def test_a_rotation_before_the_fork_is_copied_with_its_signatures(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        cap.checkpoint("c0", key=K1)
        cap.rotate_keys(capsule.Keyset.of([K2.public_key], version=2), old_signers=[K1], new_signers=[K2])
        with cap.commit() as tx:
            tx.remember("a")
        cap.checkpoint("c1", key=K2)
    with capsule.fork(p, f, at="c1") as fork:
        assert [k.keyset.version for k in fork.keysets()] == [1, 2]
        with pytest.raises(capsule.UsageError):
            fork.checkpoint("old key", key=K1)  # K1 was rotated out before the fork
    for anchor in (K1.public_key, K2.public_key):
        rep = capsule.verify(f, trust=anchor, strict=True)
        assert rep.ok and rep.trusted_checkpoints == 1, rep.to_dict()
    r = invoke("verify", f, "--trust", pub(tmp_path, K1))
    assert r.exit_code == 0, r.output


# --- hostile carried entries ----------------------------------------------------------------


def forge(tmp_path: Path, change: Callable[[Lineage], Lineage], *, keys_from: Path | None = None,
          name: str = "forged.capsule") -> Path:
    """A fork of p.capsule at c1 written again with ``change`` applied to its LINEAGE: the
    writer's own path (records, then the keyset chain of ``keys_from``), so every frame is
    well formed and only the carried entries lie."""
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    if not p.exists():
        parent_with_c1(p)
    if not f.exists():
        capsule.fork(p, f, at="c1").close()
    with capsule.open(f) as fork:
        lin = lineage_of(fork)
        items = [encode_record(r) for r in fork.records()]
    assert lin is not None
    out = tmp_path / name
    new = create(out, lineage=canon.pack(change(lin).to_value()))
    with new:
        new._write_commit([(rid, canon.decode(data)["kind"], data) for rid, data in items])
        if keys_from is not None:
            with capsule.open(keys_from) as src:
                copy_keysets(src, new)
    return out


def body_with(c: Carried, **fields: object) -> Carried:
    """``c`` with body fields changed (the signatures stay: they no longer match)."""
    body = dataclasses.replace(c.body, **fields)  # type: ignore[arg-type]
    return Carried(body.body_bytes(), body, c.sigs, c.commit)


def test_the_forge_helper_is_faithful(tmp_path: Path) -> None:
    parent_with_c1(tmp_path / "p.capsule")
    out = forge(tmp_path, lambda lin: lin, keys_from=tmp_path / "p.capsule")
    assert capsule.verify(out, trust=K1.public_key, parent=tmp_path / "p.capsule", strict=True).ok


def test_a_changed_state_root_fails_checkpoint_state(tmp_path: Path) -> None:
    parent_with_c1(tmp_path / "p.capsule")
    out = forge(tmp_path, lambda lin: dataclasses.replace(
        lin, carried=(body_with(lin.carried[0], state_root=bytes(32)),)), keys_from=tmp_path / "p.capsule")
    for trust in (None, K1.public_key):
        rep = capsule.verify(out, trust=trust)
        assert not rep.ok and check_of(rep) == "checkpoint-state", rep.to_dict()
        assert rep.first_error["offset"] == 64 and rep.first_error["seq"] == 0


def test_a_validly_signed_checkpoint_of_another_state_fails_checkpoint_state(tmp_path: Path) -> None:
    p = tmp_path / "p.capsule"
    parent_with_c1(p)
    with capsule.open(p) as par:
        c0 = par.find_checkpoint("c0")
        assert c0 is not None
        wrong = carried_for(par, [(c0, 2)])  # genuinely signed, but the fork holds "a"
    out = forge(tmp_path, lambda lin: dataclasses.replace(lin, carried=tuple(wrong)), keys_from=p)
    rep = capsule.verify(out, trust=K1.public_key)
    assert not rep.ok and check_of(rep) == "checkpoint-state", rep.to_dict()


def test_a_checkpoint_of_another_capsule_fails_checkpoint_origin(tmp_path: Path) -> None:
    p, other = tmp_path / "p.capsule", tmp_path / "other.capsule"
    parent_with_c1(p)
    parent_with_c1(other)  # same records, same key, same state root: only the origin differs
    with capsule.open(other) as o:
        c1 = o.find_checkpoint("c1")
        assert c1 is not None
        spliced = carried_for(o, [(c1, 2)])
    out = forge(tmp_path, lambda lin: dataclasses.replace(lin, carried=tuple(spliced)), keys_from=p)
    rep = capsule.verify(out, trust=K1.public_key)
    assert not rep.ok and check_of(rep) == "checkpoint-origin", rep.to_dict()


def test_a_bad_signature_fails_checkpoint_signature_and_the_cli_says_so(tmp_path: Path) -> None:
    parent_with_c1(tmp_path / "p.capsule")

    def flip(lin: Lineage) -> Lineage:
        c = lin.carried[0]
        s = c.sigs[0]
        bad = Signature(s.key_id, bytes([s.sig[0] ^ 1]) + s.sig[1:])
        return dataclasses.replace(lin, carried=(Carried(c.body_raw, c.body, (bad,), c.commit),))

    out = forge(tmp_path, flip, keys_from=tmp_path / "p.capsule")
    rep = capsule.verify(out, trust=K1.public_key)
    assert not rep.ok and check_of(rep) == "checkpoint-signature", rep.to_dict()
    assert check_of(capsule.verify(out)) == "checkpoint-signature"  # no anchor needed to see it
    r = invoke("verify", out, "--trust", pub(tmp_path, K1))
    assert r.exit_code == 1 and "checkpoint-signature" in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: verify failed:"), r.stderr


def test_a_changed_label_breaks_the_signature(tmp_path: Path) -> None:
    parent_with_c1(tmp_path / "p.capsule")
    out = forge(tmp_path, lambda lin: dataclasses.replace(lin, carried=(body_with(lin.carried[0], label="c9"),)),
                keys_from=tmp_path / "p.capsule")
    assert check_of(capsule.verify(out, trust=K1.public_key)) == "checkpoint-signature"


def test_a_keyset_outside_the_chain_fails_checkpoint_keyset(tmp_path: Path) -> None:
    p, stranger = tmp_path / "p.capsule", tmp_path / "stranger.capsule"
    parent_with_c1(p)
    with capsule.create(stranger) as cap:
        cap.checkpoint("x", key=K2)
    no_keys = forge(tmp_path, lambda lin: lin, name="no-keys.capsule")
    other_keys = forge(tmp_path, lambda lin: lin, keys_from=stranger, name="other-keys.capsule")
    assert check_of(capsule.verify(no_keys)) == "checkpoint-keyset"
    assert check_of(capsule.verify(no_keys, trust=K1.public_key)) == "checkpoint-keyset"
    assert check_of(capsule.verify(other_keys, trust=K2.public_key)) == "checkpoint-keyset"


def test_a_commit_ordinal_out_of_range_fails_lineage(tmp_path: Path) -> None:
    parent_with_c1(tmp_path / "p.capsule")
    out = forge(tmp_path, lambda lin: dataclasses.replace(
        lin, carried=(dataclasses.replace(lin.carried[0], commit=9),)), keys_from=tmp_path / "p.capsule")
    rep = capsule.verify(out, trust=K1.public_key)
    assert not rep.ok and check_of(rep) == "lineage" and "commit 9" in rep.first_error["message"], rep.to_dict()


@pytest.mark.parametrize("how", ["duplicate", "empty", "too-many", "out-of-order", "commit-0"])
def test_malformed_carried_arrays_fail_lineage(tmp_path: Path, how: str) -> None:
    p = tmp_path / "p.capsule"
    parent_with_c1(p)
    with capsule.open(p) as par:
        c0, c1 = par.find_checkpoint("c0"), par.find_checkpoint("c1")
        assert c0 is not None and c1 is not None
        e0, e1 = carried_for(par, [(c0, 1), (c1, 2)])

    def change(lin: Lineage) -> Lineage:
        entries = {"duplicate": [e1, e1], "empty": [], "too-many": [e1] * (MAX_CARRIED + 1),
                   "out-of-order": [e1, e0], "commit-0": [dataclasses.replace(e1, commit=0)]}[how]
        return dataclasses.replace(lin, carried=tuple(entries))

    def raw(lin: Lineage) -> dict[str, object]:
        v = Lineage(lin.parent, lin.root, lin.tree_size, lin.chain, lin.checkpoint).to_value()
        return dict(sorted({**v, "carried": [c.to_value() for c in lin.carried]}.items()))

    # written as raw LINEAGE values: the library's own Lineage omits an empty array
    f = tmp_path / "f.capsule"
    capsule.fork(p, f, at="c1").close()
    with capsule.open(f) as fork:
        lin = lineage_of(fork)
        items = [encode_record(r) for r in fork.records()]
    assert lin is not None
    out = tmp_path / "bad.capsule"
    with create(out, lineage=canon.pack(raw(change(lin)))) as new:
        new._write_commit([(rid, canon.decode(data)["kind"], data) for rid, data in items])
        with capsule.open(p) as src:
            copy_keysets(src, new)
    rep = capsule.verify(out, trust=K1.public_key)
    assert not rep.ok and check_of(rep) == "lineage", rep.to_dict()
    with pytest.raises(capsule.CorruptError):
        parse_lineage(canon.pack(raw(change(lin))), 64, 0)


def test_with_the_parent_a_carried_checkpoint_signed_after_the_fork_point_fails(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("a")
        at = cap.log()[-1].seq
        cap.checkpoint("later", key=K1)  # the same state, signed after the fork point
    capsule.fork(p, f, at=at).close()  # the fork point precedes every checkpoint: nothing carried
    with capsule.open(p) as par:
        later = par.find_checkpoint("later")
        assert later is not None
        entries = carried_for(par, [(later, 2)])
    out = forge(tmp_path, lambda lin: dataclasses.replace(lin, carried=tuple(entries)), keys_from=p)
    assert capsule.verify(out, trust=K1.public_key).ok  # alone, it is a signed state of the parent
    rep = capsule.verify(out, trust=K1.public_key, parent=p)
    assert not rep.ok and check_of(rep) == "lineage", rep.to_dict()


def test_copy_keysets_refuses_a_file_that_has_a_keyset(tmp_path: Path) -> None:
    p = tmp_path / "p.capsule"
    parent_with_c1(p)
    with capsule.create(tmp_path / "n.capsule") as new, capsule.open(p) as par:
        new.checkpoint("own", key=K2)
        with pytest.raises(capsule.UsageError, match="already has a keyset"):
            copy_keysets(par, new)


# --- the fork carries the search snapshots --------------------------------------------------


def embedded(tx: capsule.Transaction, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        tx.remember(f"fact number {i} about topic {i % 7}", embedding=[float(i % 5 + 1), 1.0, float(i % 3), 2.0 + i])


@pytest.fixture
def how(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What carry_snapshots did in each fork (a spy: the real function runs)."""
    seen: list[str] = []

    def spy(*a: object, **k: object) -> str:
        seen.append(carry_snapshots(*a, **k))  # type: ignore[arg-type]
        return seen[-1]

    monkeypatch.setattr(carry, "carry_snapshots", spy)  # _fork imports it when it runs
    return seen


def first_search_loads(f: Path, n: int) -> None:
    with capsule.open(f) as fork:
        hits = fork.search("topic 3", vector=[4.0, 1.0, 0.0, 2.0], k=3, mode="hybrid")
        info = fork.index_info()
        assert len(hits) == 3 and info["doubt"] is None
        assert info["indexed"] == n and info["snapshot"]["vectors"] == n  # loaded, nothing inserted
        assert info["lexical"]["snapshot"] is not None


def test_a_fork_takes_over_the_parents_snapshot(tmp_path: Path, how: list[str]) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            embedded(tx, 0, 300)
        cap.checkpoint("c1", key=K1)  # the close after it snapshots the 300 vectors
    capsule.fork(p, f, at="c1").close()
    assert how == ["parent"]
    first_search_loads(f, 300)
    assert capsule.verify(f, trust=K1.public_key, parent=p, strict=True).ok  # 16.3: entries are the records


def test_a_fork_takes_over_the_graph_of_the_parent_at_the_fork_point(tmp_path: Path, how: list[str]) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        embedded(tx, 0, 300)  # snapshot on close
    with capsule.open(p, "a") as cap:
        with cap.commit() as tx:
            embedded(tx, 300, 320)
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            embedded(tx, 320, 700)  # a newer snapshot holds more than the fork
        assert cap.save_index()
    capsule.fork(p, f, at="c1").close()
    assert how == ["view"]
    first_search_loads(f, 320)
    assert capsule.verify(f, trust=K1.public_key, parent=p, strict=True).ok


def test_a_fork_without_a_graph_to_take_over_builds_one(tmp_path: Path, how: list[str]) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            embedded(tx, 0, 300)
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            embedded(tx, 300, 301)
    with capsule.open(p, "a") as cap:
        cap.rollback("c1")  # the 301st memory is dead: no graph of the parent is the fork's
    capsule.fork(p, f).close()
    assert how == ["built"]
    first_search_loads(f, 300)
    assert capsule.verify(f, trust=K1.public_key, parent=p, strict=True).ok


def test_a_parent_snapshot_that_lies_about_an_entry_is_not_taken_over(tmp_path: Path, how: list[str]) -> None:
    from tests.vindex_forge import layout

    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            embedded(tx, 0, 300)
        cap.checkpoint("c1", key=K1)
        cap.build_index()
        blob = bytearray(cap._search.loaded.vi.encode())  # type: ignore[union-attr]
    at, _ = layout(blob).sec["time"]
    blob[at : at + 8] = (123).to_bytes(8, "little", signed=True)  # entry 0's time, hash made anew
    with capsule.open(p, "a") as cap:
        cap._write_commit([], blob=(BLOB_TYPE, bytes(blob)))  # the newest snapshot
    assert check_of(capsule.verify(p)) == "vindex"  # the parent's writer lied
    capsule.fork(p, f, at="c1").close()
    assert how == ["built"]
    first_search_loads(f, 300)
    assert capsule.verify(f, trust=K1.public_key, parent=p, strict=True).ok


def test_a_small_fork_writes_no_snapshot_as_a_close_would_not(tmp_path: Path, how: list[str]) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        embedded(tx, 0, 10)
    with capsule.fork(p, f) as fork:
        assert how == ["none"] and fork.index_info()["snapshot"] is None


def test_a_fork_with_carried_checkpoint_and_snapshots_is_reproducible(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "p.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            embedded(tx, 0, 300)
        cap.checkpoint("c1", key=K1)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    capsule.fork(p, tmp_path / "a.capsule", at="c1").close()
    capsule.fork(p, tmp_path / "b.capsule", at="c1").close()
    assert (tmp_path / "a.capsule").read_bytes() == (tmp_path / "b.capsule").read_bytes()
    assert capsule.verify(tmp_path / "a.capsule", trust=K1.public_key, strict=True).ok


def test_carried_for_keeps_the_parents_order_and_refuses_bad_ordinals(tmp_path: Path) -> None:
    p = tmp_path / "p.capsule"
    parent_with_c1(p)
    with capsule.open(p) as par:
        c0, c1 = par.checkpoints()
        got = carried_for(par, [(c1, 3), (c0, 1), (c1, 3)])  # one entry per checkpoint, parent order
        assert [(c.body.label, c.commit) for c in got] == [("c0", 1), ("c1", 3)]
        with pytest.raises(capsule.UsageError):
            carried_for(par, [(c0, 2), (c1, 1)])  # a later state cannot be written earlier
        with pytest.raises(capsule.UsageError):
            carried_for(par, [(c1, 0)])
    with capsule.open(tmp_path / "p.capsule") as other_view, capsule.create(tmp_path / "o.capsule") as other:
        other.checkpoint("x", key=K1)
        assert carried_for(other_view, [(other.checkpoints()[0], 1)]) == []  # not the parent's own


def test_a_fork_at_c1_after_a_redaction_carries_nothing(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("keep")
            secret = tx.remember("a secret")
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            tx.redact(secret)
    with capsule.fork(p, f, at="c1") as fork:  # the secret is not copied: the state is not c1's
        lin = lineage_of(fork)
        assert lin is not None and lin.carried == () and fork.keysets() == []
    assert check_of(capsule.verify(f, trust=K1.public_key)) == "trust-anchor"
    assert capsule.verify(f, parent=p).ok
