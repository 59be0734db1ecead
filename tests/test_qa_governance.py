"""Regressions from a fresh-context review of durable execution and governance (rollback,
diff, checkpoint labels, trust anchors). Each test names the defect it pins; the CLI ones run
`capsule` in a fresh process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule.format.keys import KeyFileError

K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)
K2 = capsule.PrivateKey.from_seed(bytes([2]) * 32)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(Path(sys.executable).with_name("capsule")), *map(str, args)], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr, r.stderr
    return r


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --- rollback --key with a key that cannot sign rolled the state back anyway ----------------------
# The revert was one commit and the checkpoint another: the second failed ("rotate keys first")
# after the first was durable, so the command failed while the agent's beliefs changed. The keys
# are now checked before the revert is written.


def test_a_rollback_whose_key_cannot_sign_writes_nothing(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        cap.checkpoint("day-1", key=K1)
        with cap.commit() as tx:
            tx.remember("important fact")
    before = digest(f)
    with capsule.open(f, "a") as cap:
        with pytest.raises(capsule.UsageError, match="rotate keys first"):
            cap.rollback("day-1", key=K2)
        assert len(cap.state().memories["working"]) == 1
    assert digest(f) == before
    wrong = tmp_path / "wrong.key"
    r = cli("keygen", "-o", wrong)
    assert r.returncode == 0, r.stderr
    r = cli("rollback", f, "--to", "day-1", "--key", wrong)
    assert r.returncode != 0 and "rotate keys first" in r.stderr
    assert digest(f) == before
    with capsule.open(f, "a") as cap:  # the right key: the revert, then its checkpoint
        commits = cap.commit_count
        assert cap.rollback("day-1", key=K1) is not None
        assert cap.commit_count == commits + 2
        assert cap.checkpoints()[-1].label == "rollback-to-day-1"
        assert cap.checkpoints()[-1].state_root == cap.checkpoints()[0].state_root == cap.state_root
    assert capsule.verify(f, trust=K1.public_key).ok


# --- diff counted a record added and then dropped in between as added -------------------------------


@pytest.mark.parametrize("how", ["rollback", "forget"])
def test_diff_leaves_out_a_record_that_came_and_went(tmp_path: Path, how: str) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            keep = tx.remember("kept from before")
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            gone = tx.remember("a mistake")
            stays = tx.remember("a new fact")
        if how == "rollback":
            with cap.commit() as tx:
                tx.forget(stays)  # so the rollback below has something of its own to undo
            with cap.commit() as tx:
                tx.remember("a new fact, again")
            cap.rollback("c1")
            with cap.commit() as tx:
                stays = tx.remember("after the rollback")
        else:
            with cap.commit() as tx:
                tx.forget(gone, reason="wrong")
        cap.checkpoint("c2", key=K1)
        live = {m["id"] for t in cap.state().memories.values() for m in t}
    d = json.loads(cli("diff", f, "--from", "c1", "--to", "c2", "--json").stdout)
    with capsule.open(f) as cap, cap.view("c1") as then:
        was = {m["id"] for t in then.state().memories.values() for m in t}
    added_mem = {n["id"] for n in d["added"]["first"] if n["kind"] == "memory"}
    assert added_mem == live - was, d["added"]
    assert d["added"]["by_kind"].get("memory", 0) == len(live - was)
    assert gone in {n["id"] for n in d["transient"]["first"]}
    assert d["removed"]["count"] == len(was - live) == 0 and keep in live
    assert stays in added_mem
    text = cli("diff", f, "--from", "c1", "--to", "c2").stdout
    assert "transient" in text


def test_diff_of_two_points_with_one_state_shows_no_net_change(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        cap.checkpoint("c1", key=K1)
        with cap.commit() as tx:
            tx.remember("a mistake")
        cap.rollback("c1", key=K1)
        d = cap.diff("c1", "rollback-to-c1").to_dict()
        assert cap.view("c1").state_root == cap.state_root
    assert d["added"]["count"] == 0 and d["removed"]["count"] == 0  # the revert is an event, never live (13.1)
    assert d["transient"]["count"] == 1


# --- a label spelled as a number hid that commit seq from --at -------------------------------------


def test_a_numeric_label_is_refused_so_a_seq_keeps_its_meaning(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        for i in range(3):
            with cap.commit() as tx:
                tx.remember(f"m{i}")
        seq = cap.log()[1].seq
        before = cap.resolve(str(seq))
        for label in (str(seq), "007", "\u0664"):  # ASCII digits, and an Arabic-Indic four
            with pytest.raises(capsule.UsageError, match="must not be a number"):
                cap.checkpoint(label, key=K1)
        with pytest.raises(capsule.UsageError, match="must not start or end with white space"):
            cap.checkpoint(f" {seq} ", key=K1)
        cap.checkpoint(f"step-{seq}", key=K1)
        assert cap.resolve(str(seq)) == before
    key = tmp_path / "k"
    assert cli("keygen", "-o", key).returncode == 0
    size = f.stat().st_size
    r = cli("checkpoint", f, "--label", str(seq), "--key", key)
    assert r.returncode == 2 and f"would hide commit seq {seq}" in r.stderr
    assert f.stat().st_size == size


# --- verify --trust with a file that is no key talked about a private key ---------------------------


def test_trust_with_a_file_that_is_no_key_says_so(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        cap.checkpoint("c1", key=K1)
    junk = tmp_path / "junk.pub"
    junk.write_text("hello\n")
    with pytest.raises(KeyFileError, match="is not a key file") as e:
        capsule.load_public_key(junk)
    assert "private" not in str(e.value).split("(")[0]
    for bad in (junk, f):
        r = cli("verify", f, "--trust", bad)
        # the wrong file named: a usage error (exit 2), as --key and -i say it
        assert r.returncode == 2 and "is not a key file" in r.stderr and "no PEM private key" not in r.stderr


# --- diff A B called B's lifecycle events "rolled back" and showed what B redacted --------------------


def test_a_two_file_diff_names_lifecycle_events_and_withholds_what_b_redacted(tmp_path: Path) -> None:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        secret = tx.remember("the password is hunter2")
        old = tx.remember("old fact")
        gone = tx.remember("stale fact")
    capsule.fork(p, f).close()
    with capsule.open(f, "a") as cap, cap.commit() as tx:
        tx.redact(secret, reason="leak")
        tx.supersede(old, "new fact")
        tx.forget(gone)
    r = cli("diff", p, f, "--json")
    assert r.returncode == 0 and "hunter2" not in r.stdout
    d = json.loads(r.stdout)
    assert d["removed"]["by_reason"] == {"forgotten": 1, "redacted": 1, "superseded": 1}
    assert sorted(e["op"] for e in d["lifecycle"]) == ["forget", "redact", "supersede"]
    node = next(n for n in d["removed"]["first"] if n["id"] == secret)
    assert node["redacted"] is True and "hunter2" not in json.dumps(node)
    assert cli("diff", f, p, "--json").returncode == 0


def test_a_key_outside_the_keyset_is_told_which_keys_sign(tmp_path: Path) -> None:
    """A fork carries its parent's keyset: its owner's own key was refused naming only itself."""
    with capsule.create(tmp_path / "a.capsule") as cap:
        cap.checkpoint("c1", key=K1)
        with pytest.raises(capsule.UsageError) as e:
            cap.checkpoint("c2", key=K2)
    msg = str(e.value)
    assert f"({K1.public_key.key_id})" in msg and f"given ({K2.public_key.key_id})" in msg


def test_merging_a_compacted_fork_says_why_it_is_refused(tmp_path: Path) -> None:
    p, a, b = (tmp_path / f"{n}.capsule" for n in "pab")
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("base")
    for f in (a, b):
        capsule.fork(p, f).close()
        with capsule.open(f, "a") as cap, cap.commit() as tx:
            tx.remember(f"work of {f.stem}")
    assert cli("merge", a, b, "-o", tmp_path / "ab.capsule", "--dry-run").returncode == 0
    assert cli("compact", a).returncode == 0
    r = cli("merge", a, b, "-o", tmp_path / "ab.capsule")
    assert r.returncode == 1 and "is a compacted or rekeyed file" in r.stderr and "merge before compacting" in r.stderr
    assert not (tmp_path / "ab.capsule").exists()
