"""A hostile review of `capsule merge` (spec 20, issue #12), written from the spec and the CLI.

Each test states the clause it holds the merge to. Those that pass pin what the attack could not
break; those marked ``xfail(strict=True, reason="FINDING: ...")`` are what it did break, so the day a
fix lands the marker must go (strict) and the test becomes the regression.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.verifier.merge import verify_merge
from tests.clocks import T0, Clock

CAPSULE = Path(sys.executable).parent / "capsule"
SEC = 10**9


def _clock(offset_s: int, step: int = SEC) -> Clock:
    return Clock(start=T0 + offset_s * SEC, step=step)


def _run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CAPSULE), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def _copies(tmp: Path, build: Any = None) -> tuple[Path, Path]:
    """A and B: one capsule copied (20.2 rule 1); ``build(cap)`` writes the common history."""
    a, b = tmp / "a.capsule", tmp / "b.capsule"
    with capsule.create(a, clock=Clock()) as cap:
        with cap.commit() as tx:
            tx.remember("shared")
        if build is not None:
            build(cap)
    shutil.copyfile(a, b)
    return a, b


@pytest.fixture
def no_epoch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    yield


# --------------------------------------------------------------------------------------------
# What held: symmetry (20.1, 20.7), torn tails (20.1, 8.1), readers of an encrypted merge (20.7),
# the in-doubt rule (20.5, 20.6), hostile paths (20.7), verification with the parents (20.8).
# --------------------------------------------------------------------------------------------

def _both_sides(p: Path, tag: str, ids: dict[str, str], clock: Clock, key: capsule.PrivateKey) -> None:
    """Everything a side can do that a merge must settle: identity, lifecycle on a shared memory,
    actions (done on both, own, in doubt against done), a task, a checkpoint, a redaction."""
    with capsule.open(p, "a", clock=clock) as cap:
        with cap.commit() as tx:
            own = tx.remember(f"own {tag}")
            tx.set_identity("agent", name=tag)
            tx.constrain("no email at night", status="revoked" if tag == "a" else "active")
        with cap.commit() as tx:
            tx.supersede(ids["shared"], f"successor {tag}")
        cap.run_once("both", lambda: tag)
        cap.run_once(f"only-{tag}", lambda: tag)
        cap.tasks.claim("nightly", f"w-{tag}")
        cap.tasks.complete("nightly", f"w-{tag}")
        cap.checkpoint(f"ck-{tag}", key=key)
        if tag == "a":
            with cap.commit() as tx:
                tx.redact(ids["secret"], reason="a secret")
            cap.action("doubt")._release()  # the intent is durable; the effect never reports: in doubt
        else:
            cap.run_once("doubt", lambda: "done by b")
            with cap.commit() as tx:
                tx.forget(own)


@pytest.mark.parametrize("relation", ["copies", "fork"])
def test_merge_is_one_function_of_the_two_parents(tmp_path: Path, relation: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """20 / 20.1 / 20.7: merge(A, B) and merge(B, A) are byte-identical, plain, signed and in
    reproducible mode, with tasks, actions, lifecycle events and redactions on both sides."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    key = capsule.generate_key()
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    ids: dict[str, str] = {}
    with capsule.create(a, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids["shared"] = tx.remember("the printer is on floor 2")
            ids["secret"] = tx.remember("the vault code is 8812")
        cap.tasks.add("nightly")
    if relation == "copies":
        shutil.copyfile(a, b)
    else:
        capsule.fork(a, b, clock=_clock(50)).close()
    _both_sides(a, "a", ids, _clock(100, 7 * SEC // 10), key)
    _both_sides(b, "b", ids, _clock(100), key)
    outs: dict[str, bytes] = {}
    for epoch in (None, "1700000000"):
        if epoch is None:
            monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
        else:
            monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        for signer in (None, key):
            tag = f"{epoch}-{signer is not None}"
            rep = capsule.merge(a, b, tmp_path / f"ab-{tag}", key=signer)
            capsule.merge(b, a, tmp_path / f"ba-{tag}", key=signer)
            outs[tag] = (tmp_path / f"ab-{tag}").read_bytes()
            assert outs[tag] == (tmp_path / f"ba-{tag}").read_bytes(), tag
            assert {c.kind for c in rep.conflicts} >= {"identity", "supersede", "task", "action-twice",
                                                       "action-in-doubt"}
    assert b"8812" not in outs["None-False"]  # 20.4: the redacted record's bytes are not copied
    assert verify_merge(tmp_path / "ab-None-True", [b, a], trust=key.public_key).ok
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    with capsule.open(tmp_path / "ab-None-False") as cap:
        acts = {s.key: s for s in cap.actions()}
    assert acts["doubt"].status == "done" and acts["doubt"].value == "done by b"  # 20.6: done wins
    assert not [s for s in acts.values() if s.status == "in-doubt"]


def test_a_torn_tail_is_not_read(tmp_path: Path, no_epoch: None) -> None:
    """20.1 / 8.1: a parent whose last commit was torn merges as the parent up to its last COMMIT,
    in either order, and the result verifies against the torn file too."""
    a, b = _copies(tmp_path)
    with capsule.open(a, "a", clock=_clock(100)) as cap, cap.commit() as tx:
        tx.remember("on a, committed")
    with capsule.open(b, "a", clock=_clock(100)) as cap, cap.commit() as tx:
        tx.remember("on b")
    cut = tmp_path / "cut.capsule"
    shutil.copyfile(a, cut)
    with capsule.open(a, "a", clock=_clock(200)) as cap:
        with cap.commit() as tx:
            tx.remember("on a, torn by a crash " * 20)
        rows = cap.log()
    torn = tmp_path / "torn.capsule"
    data = a.read_bytes()
    torn.write_bytes(data[: rows[-2].end + (rows[-1].end - rows[-2].end) // 2])
    for n, (x, y) in enumerate(((cut, b), (b, cut), (torn, b), (b, torn))):
        capsule.merge(x, y, tmp_path / f"m{n}")
    assert len({(tmp_path / f"m{n}").read_bytes() for n in range(4)}) == 1
    assert verify_merge(tmp_path / "m0", [torn, b]).ok
    assert verify_merge(tmp_path / "m0", [a, b]).ok  # a grew (and its tear was written over) since


def test_encrypted_merge_is_for_the_readers_both_parents_admit(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """20.7 / 10.3: a key removed from one parent (rekey = compaction under a new file key) and a key
    added to only one read nothing of the merge; a key both admit does; reproducible mode makes
    the encrypted merge byte-identical in either order."""
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    k1, k2, k3 = (capsule.generate_key() for _ in range(3))
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a, clock=Clock(), recipients=[k1.public_key, k2.public_key]) as cap, cap.commit() as tx:
        tx.remember("shared, sealed")
    shutil.copyfile(a, b)
    capsule.rekey(b, identity=k1, remove=[k2.public_key])  # b now has a new file id naming a's
    capsule.rekey(a, identity=k1, add=[k3.public_key])
    for p, tag in ((a, "a"), (b, "b")):
        with capsule.open(p, "a", identity=k1, clock=_clock(100)) as cap, cap.commit() as tx:
            tx.remember(f"learned on {tag}")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    with capsule.unlocking(identity=k1):
        capsule.merge(a, b, tmp_path / "ab")
        capsule.merge(b, a, tmp_path / "ba")
        assert verify_merge(tmp_path / "ab", [a, b]).ok
    assert (tmp_path / "ab").read_bytes() == (tmp_path / "ba").read_bytes()
    assert b"learned on" not in (tmp_path / "ab").read_bytes()
    with capsule.open(tmp_path / "ab", identity=k1) as cap:
        assert cap.encrypted and {m.text for m in cap.records(kind="memory")} == {
            "shared, sealed", "learned on a", "learned on b"}
    for outsider in (k2, k3):
        with pytest.raises(capsule.WrongKey):
            capsule.open(tmp_path / "ab", identity=outsider)


def test_done_on_one_side_in_doubt_on_the_other_is_done_for_the_cli(tmp_path: Path, no_epoch: None) -> None:
    """20.5 `action-in-doubt` / 20.6: `capsule actions --in-doubt` on the result is empty and the
    effect is not run again."""
    a, b = _copies(tmp_path)
    with capsule.open(a, "a", clock=_clock(100)) as cap:
        cap.action("invoice:7")._release()
    with capsule.open(b, "a", clock=_clock(90)) as cap:
        cap.run_once("invoice:7", lambda: "sent by b")
    r = _run("merge", "a.capsule", "b.capsule", "-o", "c.capsule", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run("actions", "c.capsule", "--in-doubt", "--json", cwd=tmp_path)
    assert r.returncode == 0 and "invoice:7" not in r.stdout, r.stdout
    ran: list[str] = []
    with capsule.open(tmp_path / "c.capsule", "a") as cap:
        assert cap.run_once("invoice:7", lambda: ran.append("again") or "twice") == "sent by b"
    assert ran == []


def test_hostile_output_paths_never_touch_a_parent(tmp_path: Path, no_epoch: None) -> None:
    """20.7: -o naming a parent through another spelling, a symbolic link or a hard link is refused,
    with --force too, in one line with a usage exit code; the parents keep their bytes."""
    a, b = _copies(tmp_path)
    for p in (a, b):
        with capsule.open(p, "a", clock=_clock(100)) as cap, cap.commit() as tx:
            tx.remember(f"on {p.stem}")
    before = (a.read_bytes(), b.read_bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "link").symlink_to("a.capsule")
    os.link(a, tmp_path / "hard")
    for out in ("./a.capsule", "sub/../b.capsule", str(a), "link", "hard"):
        for extra in ((), ("--force",)):
            r = _run("merge", "a.capsule", "b.capsule", "-o", out, *extra, cwd=tmp_path)
            assert r.returncode == 2 and "one of the parents" in r.stderr, (out, extra, r.stderr)
            assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = _run("merge", "a.capsule", "link", "-o", "x.capsule", cwd=tmp_path)  # one file named twice
    assert r.returncode == 2 and "same file" in r.stderr
    assert (a.read_bytes(), b.read_bytes()) == before
    assert not (tmp_path / "x.capsule").exists() and not list(tmp_path.glob(".*merge-*"))


def test_verify_with_the_parents_accepts_only_the_merge(tmp_path: Path, no_epoch: None) -> None:
    """20.8: the same parent twice, a copy of a parent that diverged before the merged commit, or a
    merge of an earlier state offered as the merge of the later one are refused; parents that grew
    since, given in either order, are accepted."""
    a, b = _copies(tmp_path)
    early = tmp_path / "b-early.capsule"
    for p in (a, b):
        with capsule.open(p, "a", clock=_clock(100)) as cap, cap.commit() as tx:
            tx.remember(f"first on {p.stem}")
    shutil.copyfile(b, early)
    with capsule.open(b, "a", clock=_clock(200)) as cap, cap.commit() as tx:
        tx.remember("second on b")
    rival = tmp_path / "b-rival.capsule"
    shutil.copyfile(early, rival)
    with capsule.open(rival, "a", clock=_clock(300)) as cap, cap.commit() as tx:
        tx.remember("b's copy went another way")
    c = tmp_path / "c.capsule"
    capsule.merge(a, b, c)
    assert not verify_merge(c, [a, a]).ok
    assert not verify_merge(c, [a, rival]).ok
    assert not verify_merge(c, [a, early]).ok  # early lacks the COMMIT the LINEAGE names
    old = tmp_path / "old.capsule"
    capsule.merge(a, early, old)
    assert verify_merge(old, [a, early]).ok and verify_merge(old, [b, a]).ok  # b grew from early: still its merge
    with capsule.open(a, "a", clock=_clock(400)) as cap, cap.commit() as tx:
        tx.remember("a after the merge")
    assert verify_merge(c, [b, a]).ok


def test_a_parent_that_fails_the_compactor_checks_is_refused(tmp_path: Path, no_epoch: None) -> None:
    """20.1: damage before a parent's last COMMIT (not a tear) is refused, naming the file, and
    nothing is written."""
    a, b = _copies(tmp_path)
    for p in (a, b):
        with capsule.open(p, "a", clock=_clock(100)) as cap, cap.commit() as tx:
            tx.remember(f"on {p.stem} " * 30)
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 0x01
    b.write_bytes(bytes(data))
    r = _run("merge", "a.capsule", "b.capsule", "-o", "c.capsule", cwd=tmp_path)
    assert r.returncode != 0 and "b.capsule" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "c.capsule").exists() and not list(tmp_path.glob(".c.capsule*"))


# --------------------------------------------------------------------------------------------
# Findings.
# --------------------------------------------------------------------------------------------

def test_redacted_text_is_in_no_merged_file(tmp_path: Path, no_epoch: None) -> None:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a, clock=Clock()) as cap, cap.commit() as tx:
        m = tx.remember("the wifi password is hunter2", tier="scratch")
    capsule.fork(a, b, clock=_clock(50)).close()
    with capsule.open(b, "a", clock=_clock(100)) as cap, cap.commit() as tx:
        tx.promote(m, "working")  # the same memory, tier working: another id, the same text
    with capsule.open(a, "a", clock=_clock(200)) as cap, cap.commit() as tx:
        tx.redact(m, reason="a secret")
    rep = capsule.merge(a, b, tmp_path / "c.capsule")
    assert [c.kind for c in rep.conflicts] == ["redact"]  # reported and the copy redacted by the merge ...
    with capsule.open(tmp_path / "c.capsule") as cap:
        assert not any(ms for ms in cap.state().to_dict()["memories"].values())
    assert b"hunter2" not in (tmp_path / "c.capsule").read_bytes()  # ... but its bytes were copied


def _done_here_not_done_there(tmp_path: Path, other: str) -> tuple[Path, Path]:
    """The ancestor crashed inside `pay` (in doubt). A asks the payment system: it was charged (done).
    B says it was not (``other="not-done"``) or B's run fails (``other="failed"``); B is later."""
    a, b = _copies(tmp_path, lambda cap: cap.action("pay")._release())
    with capsule.open(a, "a", clock=_clock(100)) as cap:
        assert cap.run_once("pay", lambda: "charged", reconcile=lambda key: "charge ch_1 found") == "charge ch_1 found"
    with capsule.open(b, "a", clock=_clock(200)) as cap:
        if other == "not-done":
            cap.resolve_action("pay", done=False)
        else:
            def boom() -> None:
                raise RuntimeError("gateway timeout")

            with pytest.raises(RuntimeError):
                cap.run_once("pay", boom, reconcile=lambda key: capsule.NOT_DONE)
    return a, b


def test_an_effect_done_on_one_side_is_not_run_again_after_merge(tmp_path: Path, no_epoch: None) -> None:
    a, b = _done_here_not_done_there(tmp_path, "not-done")
    capsule.merge(a, b, tmp_path / "c.capsule")
    ran: list[str] = []
    with capsule.open(tmp_path / "c.capsule", "a") as cap:
        cap.run_once("pay", lambda: ran.append("charged again"))
    assert ran == []


def test_a_done_result_survives_a_failure_on_the_other_side(tmp_path: Path, no_epoch: None) -> None:
    a, b = _done_here_not_done_there(tmp_path, "failed")
    capsule.merge(a, b, tmp_path / "c.capsule")
    with capsule.open(tmp_path / "c.capsule") as cap:
        st = {s.key: s for s in cap.actions()}["pay"]
    assert (st.status, st.value) == ("done", "charge ch_1 found")


def test_a_forged_redaction_cannot_erase_the_other_sides_journal(tmp_path: Path, no_epoch: None) -> None:
    ran: list[str] = []

    def ancestor(cap: capsule.Capsule) -> None:
        cap.run_once("pay", lambda: ran.append("paid") or "paid")

    a, b = _copies(tmp_path, ancestor)
    with capsule.open(a, "a", clock=_clock(100)) as cap:
        acts = sorted(bytes.fromhex(r.id) for r in cap.records(kind="action"))
        root = bytes.fromhex(cap.root)
        with cap.commit() as tx:  # what a buggy or hostile writer can put in a file (7.7.1: readers apply it)
            tx._put_kind("revert", after=root, op="redact", drop=acts, reason="forged")
    first = capsule.verify(a).first_error
    assert first is not None and first["check"] == "lifecycle-target"  # the parent itself fails verification
    with capsule.open(b, "a", clock=_clock(100)) as cap, cap.commit() as tx:
        tx.remember("honest work on b")
    try:
        capsule.merge(a, b, tmp_path / "c.capsule")
    except capsule.CapsuleError:
        return  # refusing the parent is a fix too
    # today the merged file passes verify_merge(c, [a, b]): it hides what its parent's verify showed
    with capsule.open(tmp_path / "c.capsule", "a") as cap:
        assert {s.key: s.status for s in cap.actions()}.get("pay") == "done"
        cap.run_once("pay", lambda: ran.append("paid again"))
    assert ran == ["paid"]


def test_verifying_an_encrypted_merge_without_the_key_blames_no_parent(tmp_path: Path, no_epoch: None) -> None:
    k = capsule.generate_key()
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a, clock=Clock(), recipients=[k.public_key]) as cap, cap.commit() as tx:
        tx.remember("shared, sealed")
    shutil.copyfile(a, b)
    for p in (a, b):
        with capsule.open(p, "a", identity=k, clock=_clock(100)) as cap, cap.commit() as tx:
            tx.remember(f"on {p.stem}")
    with capsule.unlocking(identity=k):
        capsule.merge(a, b, tmp_path / "c.capsule")
        assert verify_merge(tmp_path / "c.capsule", [a, b]).ok
    r = _run("verify", "c.capsule", "--parent", "a.capsule", "--parent", "b.capsule", cwd=tmp_path,
             env={"CAPSULE_IDENTITY": ""})
    assert "is the first parent" not in r.stderr + r.stdout
    assert r.returncode == 2 and "--identity" in r.stderr


def test_vector_parameters_that_differ_are_reported(tmp_path: Path, no_epoch: None) -> None:
    a, b = _copies(tmp_path)
    with capsule.open(a, "a", clock=_clock(100)) as cap, cap.commit() as tx:
        for i in range(3):
            tx.remember(f"a{i}", embedding=[1.0, float(i), 0.5])
    with capsule.open(b, "a", clock=_clock(200)) as cap, cap.commit() as tx:
        for i in range(3):
            tx.remember(f"b{i}", embedding=[1.0, float(i), 0.5, 0.25])
    try:
        rep = capsule.merge(a, b, tmp_path / "c.capsule")
    except capsule.CapsuleError:
        return  # refused: a fix too
    # today: a search with b's 4-dim vectors is refused ("this capsule's vectors have 3"), and
    # `capsule.verify` passes the file with both dimensions in it
    assert rep.conflicts, "the merge reports nothing"


@pytest.mark.xfail(strict=True, reason="FINDING: 20.5 defines `own` by content id, so a side effect run on both "
                   "copies with equal records (reproducible mode or any deterministic clock) is one shared record: "
                   "`action-twice` ('reported, never hidden') is hidden")
def test_an_effect_run_on_both_copies_is_reported_even_with_equal_records(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a, b = _copies(tmp_path)
    ran: list[str] = []
    for p in (a, b):
        with capsule.open(p, "a") as cap:
            cap.run_once("email:1", lambda stem=p.stem: ran.append(stem) or "sent")
        with capsule.open(p, "a") as cap, cap.commit() as tx:
            tx.remember(f"on {p.stem}")
    assert ran == ["a", "b"]  # the email went out twice
    rep = capsule.merge(a, b, tmp_path / "c.capsule")
    assert "action-twice" in {c.kind for c in rep.conflicts}
