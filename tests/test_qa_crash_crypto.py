"""Regressions from two fresh-context reviews (2026-12-05): durable execution under kill -9, and
encryption, keys and sync. Each test names the defect it pins; CLI ones run `capsule` in a fresh
process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
import capsule.sync

K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)
K2 = capsule.PrivateKey.from_seed(bytes([2]) * 32)


def cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(Path(sys.executable).with_name("capsule")), *map(str, args)], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **env})
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return r


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SOURCE_DATE_EPOCH", "CAPSULE_IDENTITY", "CAPSULE_KEY_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)


# --- an in-place compaction or rekey replaced a 0600 capsule with a 0644 one -------------------------


def test_compact_and_rekey_keep_the_files_permissions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.compaction import rewrite

    f = tmp_path / "m.capsule"
    with capsule.create(f) as cap, cap.commit() as tx:
        tx.remember("private thing")
    f.chmod(0o600)
    born: list[int] = []
    real = rewrite._mode_of

    def spy(parent: Path, fd: int, *, owner: bool = True) -> None:
        born.append(stat.S_IMODE(os.fstat(fd).st_mode))  # before the parent's mode is given
        real(parent, fd, owner=owner)

    monkeypatch.setattr(rewrite, "_mode_of", spy)
    capsule.compact(f)
    assert born == [0o600], "the temporary file is private from its creation (an attack read it at 0644)"
    with capsule.fork(f, tmp_path / "fork.capsule") as fk:  # a second attack: a fork was 0644
        assert stat.S_IMODE(os.fstat(fk._store.h.fd).st_mode) == 0o600
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    capsule.compact(f, tmp_path / "copy.capsule")
    assert stat.S_IMODE((tmp_path / "copy.capsule").stat().st_mode) == 0o600
    e = tmp_path / "e.capsule"
    with capsule.create(e, recipients=[K1.public_key, K2.public_key]) as cap, cap.commit() as tx:
        tx.remember("sealed thing")
    e.chmod(0o640)
    capsule.rekey(e, identity=K1, remove=[K2.public_key])
    assert stat.S_IMODE(e.stat().st_mode) == 0o640
    assert capsule.verify(e, identity=K1).ok


# --- rollback --key killed between its revert and its checkpoint could never be signed -------------


def test_a_rerun_rollback_signs_the_checkpoint_a_crash_left_out(tmp_path: Path) -> None:
    f = tmp_path / "r.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("early")
        cap.checkpoint("early", key=K1)
        with cap.commit() as tx:
            tx.remember("late")
        cap.checkpoint("late", key=K1)
        cap.rollback("early")  # what a kill between the two commits of `rollback --key` leaves
    key = tmp_path / "k.key"
    capsule.save_private_key(key, K1, passphrase=None)  # and k.key.pub beside it
    strict = cli("verify", f, "--trust", _pub(tmp_path), "--strict")
    assert strict.returncode == 1 and "unsigned-tail" in strict.stdout + strict.stderr
    r = cli("rollback", f, "--to", "early", "--key", key)
    assert r.returncode == 0, r.stderr
    assert "signed the checkpoint 'rollback-to-early' it lacked" in r.stdout
    assert cli("verify", f, "--trust", _pub(tmp_path), "--strict").returncode == 0
    again = cli("rollback", f, "--to", "early", "--key", key, "--json")
    assert json.loads(again.stdout)["signed"] is False and "nothing written" not in again.stdout
    with capsule.open(f) as cap:
        assert [c.label for c in cap.checkpoints()] == ["early", "late", "rollback-to-early"]


def _pub(tmp_path: Path) -> Path:
    return tmp_path / "k.key.pub"


# --- $CAPSULE_KEY_PASSPHRASE made every plain -i key fail -----------------------------------------------


def test_the_key_passphrase_variable_leaves_a_plain_identity_alone(tmp_path: Path) -> None:
    f, key = tmp_path / "v.capsule", tmp_path / "a.key"
    capsule.save_private_key(key, K1, passphrase=None)
    with capsule.create(f, recipients=[K1.public_key]) as cap, cap.commit() as tx:
        tx.remember("sealed note")
    r = cli("list", f, "-i", key, "--json", CAPSULE_KEY_PASSPHRASE="for another key")
    assert r.returncode == 0, r.stderr
    assert [x["text"] for x in json.loads(r.stdout)] == ["sealed note"]


# --- `verify --strict` passed an encrypted file whose contents it had not read -------------------------


def test_strict_verify_of_an_encrypted_file_needs_its_key(tmp_path: Path) -> None:
    f = tmp_path / "s.capsule"
    with capsule.create(f, recipients=[K1.public_key]) as cap:
        with cap.commit() as tx:
            tx.remember("sealed")
        cap.checkpoint("c1", key=K1)
    rep = capsule.verify(f, trust=K1.public_key, strict=True)
    assert not rep.ok and rep.first_error["check"] == "keyless"
    assert capsule.verify(f, trust=K1.public_key, strict=True, identity=K1).ok
    assert capsule.verify(f, trust=K1.public_key).ok  # not strict: a warning, as before


# --- a sealed key file with log_n >= 16 * r failed with "out of memory" -------------------------------


def test_scrypt_parameters_beyond_scrypts_own_bound_are_named(tmp_path: Path) -> None:
    from capsule.format import keys as K

    key = tmp_path / "s.key"
    K.save_private_key(key, K1, passphrase=b"pw")
    text = key.read_text()
    import base64
    import re

    from capsule.format import canonical as canon

    body = re.search(r"-----\n(.*?)\n-----END", text, re.S)
    assert body is not None
    v = canon.decode(base64.b64decode(body.group(1)))
    v["log_n"], v["r"] = 16, 1  # 128 * r * N = 8 MiB: inside the memory cap, past N < 2^(16 r)
    forged = text.replace(body.group(1), base64.encodebytes(canon.pack(v)).decode().strip())
    key.write_text(forged)
    key.chmod(0o600)
    with pytest.raises(K.KeyFileError, match=r"log_n < 16 \* r"):
        K.load_private_key(key, b"pw")


# --- a pull that passed over a damaged newest manifest said only "up to date" ----------------------------


def test_pull_warns_when_it_passes_over_a_newer_manifest(tmp_path: Path) -> None:
    f = tmp_path / "z.capsule"
    url = f"file://{tmp_path}/remote/z"
    with capsule.create(f) as cap, cap.commit() as tx:
        tx.remember("one")
    capsule.sync.push(f, url)
    with capsule.open(f, "a") as cap, cap.commit() as tx:
        tx.remember("two")
    capsule.sync.push(f, url)
    newest = sorted((tmp_path / "remote" / "z" / "manifests").iterdir())[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    r = cli("pull", url, tmp_path / "copy.capsule")
    assert r.returncode == 0, r.stderr
    assert "newer manifest(s) could not be read and were passed over" in r.stderr and newest.name in r.stderr
    assert "created" in r.stdout


def test_pull_into_a_missing_folder_names_it_not_its_temporary(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    capsule.create(f).close()
    capsule.sync.push(f, f"file://{tmp_path}/remote/a")
    r = cli("pull", f"file://{tmp_path}/remote/a", tmp_path / "nodir" / "x.capsule")
    assert r.returncode == 2 and "no such folder" in r.stderr and ".pull-" not in r.stderr


# --- --at with a state root prefix (what `capsule checkpoints` shows) said only "no commit root" ----------


def test_at_a_state_root_prefix_names_the_checkpoint_label(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("fact")
        ck = cap.checkpoint("day-1", key=K1)
    prefix = ck.state_root[:8]
    with pytest.raises(capsule.NotFound, match="state root of checkpoint 'day-1': give --at 'day-1'"):
        capsule.open(f, at=prefix)


def test_rerun_signs_after_a_rollback_to_the_newest_checkpoint_and_only_then(tmp_path: Path) -> None:
    """From an attack on the fix: the rerun judged by the newest checkpoint's state root, so a
    rollback to the newest checkpoint was never signed, and a redaction since a checkpoint made
    a rollback that wrote nothing sign one."""
    key = tmp_path / "k.key"
    capsule.save_private_key(key, K1, passphrase=None)
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("a")
        cap.checkpoint("d1", key=K1)
        with cap.commit() as tx:
            tx.remember("b")
        cap.rollback("d1")  # a `rollback --key` killed after its revert
    r = cli("rollback", f, "--to", "d1", "--key", key)
    assert r.returncode == 0 and "signed the checkpoint 'rollback-to-d1'" in r.stdout, r.stdout + r.stderr
    g = tmp_path / "g.capsule"
    with capsule.create(g) as cap:
        with cap.commit() as tx:
            secret = tx.remember("secret")
            tx.remember("kept")
        cap.checkpoint("d1", key=K1)
        with cap.commit() as tx:
            tx.redact(secret)
    r = cli("rollback", g, "--to", "d1", "--key", key)
    assert r.returncode == 0 and "nothing written" in r.stdout, r.stdout + r.stderr
    with capsule.open(g) as cap:
        assert [c.label for c in cap.checkpoints()] == ["d1"]


# --- an attack on this stop's own changes -----------------------------------------------------------------


def _forked_after_an_effect(tmp_path: Path) -> tuple[Path, Path]:
    p, f = tmp_path / "p.capsule", tmp_path / "f.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("before")
        cap.checkpoint("day-1", key=K1)
        cap.run_once("email:1", lambda: "sent")
        with cap.commit() as tx:
            tx.remember("after")
    capsule.fork(p, f, at="day-1").close()
    return p, f


def test_diff_of_a_fork_calls_the_parents_later_journal_journal_only(tmp_path: Path) -> None:
    p, f = _forked_after_an_effect(tmp_path)
    d = json.loads(cli("diff", p, f, "--json").stdout)
    assert d["removed"]["by_reason"] == {"journal only": 2, "not in B": 1}, d["removed"]["by_reason"]


def test_at_a_carried_checkpoints_state_root_names_its_label(tmp_path: Path) -> None:
    _, f = _forked_after_an_effect(tmp_path)
    with capsule.open(f) as cap:
        root = next(c for c in cap.carried_checkpoints() if c.label == "day-1").state_root
    r = cli("state", f, "--at", root[:8])
    assert r.returncode != 0 and "give --at 'day-1'" in r.stderr, r.stderr


def test_export_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    f = tmp_path / "big.capsule"
    with capsule.create(f) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"line {i} " + "x" * 200} for i in range(20000)])
    p = subprocess.Popen([str(Path(sys.executable).with_name("capsule")), "export", str(f), "-o", "-"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.read(100)
    p.stdout.close()  # as `| head -c 100` does
    err = p.stderr.read().decode()
    p.stderr.close()
    assert p.wait(60) == 141 and err == "", err
    r = cli("export-af", f, "-o", "-", "--json")
    assert r.returncode == 2 and "--json" in r.stderr


def test_rerun_signs_past_a_close_that_indexed_after_the_revert(tmp_path: Path) -> None:
    """From a second attack: a close that wrote an INDEX after the revert (a commit of no
    records) hid the unsigned rollback from the rerun."""
    key = tmp_path / "k.key"
    capsule.save_private_key(key, K1, passphrase=None)
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.put_many([{"text": f"early {i}"} for i in range(300)])
        cap.checkpoint("x", key=K1)
        with cap.commit() as tx:
            tx.put_many([{"text": f"late {i}"} for i in range(300)])
        cap.rollback("x")
    with capsule.open(f) as cap:  # the close indexed: the last commit holds no records
        rows = cap.log()
        assert rows[-1].records == 0, rows[-2:]
    r = cli("rollback", f, "--to", "x", "--key", key, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["signed"] is True, r.stdout + r.stderr


_KILLED_SESSION = r"""
import os, sys, capsule
p = sys.argv[1]
cap = capsule.open(p, "a") if os.path.exists(p) else capsule.create(p)
with cap.commit() as tx:
    tx.put_many([{"text": f"session {sys.argv[2]} note {i} about deploys"} for i in range(1000)])
os._exit(0)  # killed: no close, so no segment on close
"""


def test_sessions_that_never_close_leave_readers_a_bounded_catch_up(tmp_path: Path) -> None:
    """From a second attack: writers killed after their commit wrote no lexical segment, so the
    records a new process tokenizes before its first query grew without bound (42,000 after 140
    sessions, a second per query)."""
    f = tmp_path / "k.capsule"
    for i in range(12):
        subprocess.run([sys.executable, "-c", _KILLED_SESSION, str(f), str(i)], check=True, timeout=120)
    with capsule.open(f) as cap:
        assert len(cap) == 12_000
        assert cap._search.lexical_pending() < 8192 + 1000
        assert cap.search("deploys", k=3, mode="lexical")


def test_a_bulk_ingest_writes_one_lexical_segment_at_close(tmp_path: Path) -> None:
    """The catch-up rule above counts only what other sessions left: a session that commits
    100k records in commits of 10k wrote a segment after every one (61.6 MB became 77.1 MB)."""
    from capsule.search import lexsnap

    f = tmp_path / "bulk.capsule"
    with capsule.create(f) as cap:
        for b in range(3):
            with cap.commit() as tx:
                tx.put_many([{"text": f"bulk {b}-{i} about deploys"} for i in range(9000)])
        assert lexsnap.BLOB_TYPE not in cap._store.snap.blobs  # nothing before the close
    with capsule.open(f) as cap:
        assert cap._search.lexical_pending() == 0


def test_checkpoint_takes_its_label_as_an_argument_too(tmp_path: Path) -> None:
    """docs/sync.md wrote `capsule checkpoint FILE LABEL`, which said "Missing option '--label'"."""
    key = tmp_path / "k.key"
    capsule.save_private_key(key, K1, passphrase=None)
    f = tmp_path / "c.capsule"
    capsule.create(f).close()
    assert cli("checkpoint", f, "day-1", "--key", key).returncode == 0
    assert cli("checkpoint", f, "--label", "day-2", "--key", key).returncode == 0
    both = cli("checkpoint", f, "a", "--label", "b", "--key", key)
    assert both.returncode == 2 and "two labels" in both.stderr
    assert "needs a label" in cli("checkpoint", f, "--key", key).stderr
    assert "give --key" in cli("checkpoint", f, "day-3").stderr
    with capsule.open(f) as cap:
        assert [c.label for c in cap.checkpoints()] == ["day-1", "day-2"]
