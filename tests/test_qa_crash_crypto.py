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


def test_compact_and_rekey_keep_the_files_permissions(tmp_path: Path) -> None:
    f = tmp_path / "m.capsule"
    with capsule.create(f) as cap, cap.commit() as tx:
        tx.remember("private thing")
    f.chmod(0o600)
    capsule.compact(f)
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
