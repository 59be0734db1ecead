"""Findings of a hostile review of encryption at rest with rekey, compaction and verify (spec
8.3, 10, 13.3, 13.4, 15.2), each a regression test: a write into an encrypted file cut before
its first commit, keyless trust of a carried checkpoint, rekeys that drop signatures, a
no-op rekey that rewrote the file, ``-o`` ignored by an append, and the name of a damaged
KEYSLOT under ``verify -i``."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import capsule


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSULE_SCRYPT_LOG_N", "10")
    for var in ("SOURCE_DATE_EPOCH", "CAPSULE_IDENTITY", "CAPSULE_KEY_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CAPSULE_IDENTITY", "SOURCE_DATE_EPOCH")}
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          env={**env, "CAPSULE_SCRYPT_LOG_N": "10", "COLUMNS": "200"}, timeout=120)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _keys(tmp_path: Path, *names: str) -> list[Path]:
    out = []
    for n in names:
        k = tmp_path / f"{n}.key"
        assert _cli("keygen", "-o", str(k)).returncode == 0
        out.append(k)
    return out


def test_no_write_into_an_encrypted_file_cut_before_its_first_commit(tmp_path: Path) -> None:
    # the writer dropped the only KEYSLOT as a torn tail, sealed the record under a key stored
    # nowhere, said "ok", and the file never opened again (8.3: it now refuses and writes nothing)
    key = capsule.generate_key()
    p = tmp_path / "e.capsule"
    capsule.create(p, recipients=[key.public_key]).close()
    raw = p.read_bytes()
    p.write_bytes(raw[: 64 + struct.unpack_from("<I", raw, 64)[0]])  # header + KEYSLOT: an interrupted create
    before = _sha(p)
    with capsule.open(p, identity=key) as cap:
        assert len(cap) == 0  # 13.3: a file without a COMMIT opens empty
    with (pytest.raises(capsule.CorruptError, match="creation was interrupted") as e,
          capsule.open(p, "a", identity=key) as cap, cap.commit() as tx):
        tx.remember("important memory")
    assert e.value.check == "keyslot" and e.value.offset == 64
    assert _sha(p) == before
    r = _cli("put", str(p), "--text", "x")  # no key: refused before any write, too
    assert r.returncode != 0 and "Traceback" not in r.stderr and _sha(p) == before


def test_keyless_trust_of_a_compacted_encrypted_file_counts_nothing_unsigned(tmp_path: Path) -> None:
    # 10.6 with a carried checkpoint (15.2): it sits at the LINEAGE's offset (64), and keyless
    # verify took every sealed RECORDS frame as after it, so `pull --trust` refused the file
    a, = _keys(tmp_path, "a")
    p = tmp_path / "v.capsule"
    assert _cli("init", str(p), "--encrypt", "-r", f"{a}.pub").returncode == 0
    assert _cli("put", str(p), "-i", str(a), "--text", "hello").returncode == 0
    assert _cli("checkpoint", str(p), "-i", str(a), "--key", str(a), "--label", "day-1").returncode == 0
    assert _cli("compact", str(p), "-i", str(a)).returncode == 0
    with_key = json.loads(_cli("verify", str(p), "-i", str(a), "--trust", f"{a}.pub", "--json").stdout)
    keyless = json.loads(_cli("verify", str(p), "--trust", f"{a}.pub", "--json").stdout)
    assert with_key["ok"] and keyless["ok"]
    assert with_key["unsigned"]["records"] == keyless["unsigned"]["records"] == 0
    # a record after the carried checkpoint is still counted without the key
    assert _cli("put", str(p), "-i", str(a), "--text", "later").returncode == 0
    assert json.loads(_cli("verify", str(p), "--trust", f"{a}.pub", "--json").stdout)["unsigned"]["records"] >= 1


def test_a_rekey_that_cannot_carry_a_signature_says_so_and_key_signs_again(tmp_path: Path) -> None:
    a, b, c = _keys(tmp_path, "a", "b", "c")
    p = tmp_path / "r.capsule"
    assert _cli("init", str(p), "--encrypt", "-r", f"{a}.pub", "-r", f"{b}.pub", "-r", f"{c}.pub").returncode == 0
    assert _cli("put", str(p), "-i", str(a), "--text", "hello").returncode == 0
    assert _cli("checkpoint", str(p), "-i", str(a), "--key", str(a), "--label", "day-1").returncode == 0
    first = _cli("rekey", str(p), "-i", str(a), "--remove-recipient", f"{b}.pub")
    assert first.returncode == 0 and "not carried" not in first.stderr  # day-1 is carried (15.2)
    second = _cli("rekey", str(p), "-i", str(a), "--remove-recipient", f"{c}.pub")
    assert second.returncode == 0  # a carried signature is not carried again: said, not silent
    assert "1 signed checkpoint(s) not carried into the rewritten file" in second.stderr
    assert "'day-1'" in second.stderr and "--key signs" in second.stderr
    assert _cli("verify", str(p), "-i", str(a), "--trust", f"{a}.pub").returncode == 1
    third = _cli("rekey", str(p), "-i", str(a), "--add-recipient", f"{c}.pub")  # an append: nothing lost
    assert third.returncode == 0 and third.stderr == ""
    signed = _cli("rekey", str(p), "-i", str(a), "--remove-recipient", f"{c}.pub", "--key", str(a))
    assert signed.returncode == 0, signed.stderr
    assert _cli("verify", str(p), "-i", str(a), "--trust", f"{a}.pub").returncode == 0
    lib = capsule.load_private_key(a)
    rep = capsule.rekey(p, identity=lib, add=[capsule.load_public_key(Path(f"{c}.pub"))])
    assert rep["how"] == "appended"


def test_no_op_and_misplaced_rekey_options_are_refused_and_write_nothing(tmp_path: Path) -> None:
    a, b = _keys(tmp_path, "a", "b")
    p = tmp_path / "n.capsule"
    assert _cli("init", str(p), "--encrypt", "-r", f"{a}.pub").returncode == 0
    assert _cli("put", str(p), "-i", str(a), "--text", "hello").returncode == 0
    before = _sha(p)
    # no passphrase to drop: a rewrite under a new file id (push saw a diverged remote) for nothing
    r = _cli("rekey", str(p), "-i", str(a), "--drop-passphrase")
    assert r.returncode == 2 and "there is none to drop" in r.stderr and r.stderr.count("\n") == 1
    # -o with an append was ignored: FILE changed in place, NEW never made
    new = tmp_path / "new.capsule"
    r = _cli("rekey", str(p), "-i", str(a), "--add-recipient", f"{b}.pub", "-o", str(new))
    assert r.returncode == 2 and "-o and --key belong to a rewrite" in r.stderr
    r = _cli("rekey", str(p), "-i", str(a), "--add-recipient", f"{b}.pub", "--key", str(a))
    assert r.returncode == 2
    assert _sha(p) == before and not new.exists()


def test_verify_with_the_key_names_a_damaged_keyslot_as_without_it(tmp_path: Path) -> None:
    # 13.3: with -i, the unlock failed first and named "keyslot at offset 64" (and encrypted: false)
    a, = _keys(tmp_path, "a")
    p = tmp_path / "v.capsule"
    assert _cli("init", str(p), "--encrypt", "-r", f"{a}.pub").returncode == 0
    assert _cli("put", str(p), "-i", str(a), "--text", "hello").returncode == 0
    assert _cli("compact", str(p), "-i", str(a)).returncode == 0  # LINEAGE at seq 0, KEYSLOT at seq 1
    raw = p.read_bytes()
    ks = 64 + struct.unpack_from("<I", raw, 64)[0]
    assert raw[ks + 4] == 0x87
    for pos, want in ((ks + 7, ks), (ks - 5, 64)):  # the KEYSLOT's header; the LINEAGE's chain value
        m = bytearray(raw)
        m[pos] ^= 1
        bad = tmp_path / "m.capsule"
        bad.write_bytes(bytes(m))
        plain = json.loads(_cli("verify", str(bad), "--json").stdout)
        keyed = json.loads(_cli("verify", str(bad), "-i", str(a), "--json").stdout)
        assert plain["first_error"]["offset"] == want
        assert (keyed["first_error"]["offset"], keyed["first_error"]["check"], keyed["first_error"]["seq"]) == (
            want, plain["first_error"]["check"], plain["first_error"]["seq"])
        assert keyed["encrypted"] is True and not keyed["ok"]
    # a wrong key is still named as such: the walk without the key finds nothing wrong
    other, = _keys(tmp_path, "other")
    r = _cli("verify", str(p), "-i", str(other))
    assert r.returncode != 0 and "frame-header-crc" not in r.stderr
