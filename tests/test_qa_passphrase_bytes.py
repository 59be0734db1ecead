"""A passphrase variable holding bytes that are not UTF-8 (a review's finding 6; spec 10).

Spec 10: a passphrase is its bytes as given. ``PASS=$(printf 'pass\\xff\\xfe')`` made every
passphrase path (init --encrypt, put, rekey --new-passphrase-env, keygen, a sealed key file
through $CAPSULE_KEY_PASSPHRASE) die with "internal error: UnicodeEncodeError ... (a bug in
capsule)", exit 70. The CLI now reads the variable's bytes as they are; the library opens
the capsule with the same bytes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import capsule

from .clirun import CAPSULE_BIN

RAW = b"pass\xff\xfe"


def _run(*args: str, env: dict[bytes, bytes] | None = None) -> subprocess.CompletedProcess[str]:
    e = {**os.environb, b"BADUTF": RAW, **(env or {})}
    return subprocess.run([CAPSULE_BIN, *args], env=e, capture_output=True, text=True, timeout=120)


def test_every_passphrase_path_takes_the_bytes_as_given(tmp_path: Path) -> None:
    p, k = tmp_path / "e.capsule", tmp_path / "k.key"
    for args in (["init", str(p), "--encrypt", "--passphrase-env", "BADUTF"],
                 ["put", str(p), "--text", "hello", "--passphrase-env", "BADUTF"],
                 ["keygen", "-o", str(k), "--passphrase-env", "BADUTF"]):
        r = _run(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert "internal error" not in r.stderr
    with capsule.open(p, passphrase=RAW) as cap:
        assert [m.text for m in cap.records()] == ["hello"]
    assert capsule.load_private_key(k, RAW).key_id
    # the sealed key through $CAPSULE_KEY_PASSPHRASE, as -i takes it
    r = _run("rekey", str(p), "--passphrase-env", "BADUTF", "--add-recipient", str(k) + ".pub",
             env={b"CAPSULE_KEY_PASSPHRASE": RAW})
    assert r.returncode == 0, r.stderr
    r = _run("state", str(p), "--json", "-i", str(k), env={b"CAPSULE_KEY_PASSPHRASE": RAW})
    assert r.returncode == 0 and '"hello"' in r.stdout, r.stderr
    # a new passphrase that is not UTF-8 either
    r = _run("rekey", str(p), "--passphrase-env", "BADUTF", "--new-passphrase-env", "OTHER",
             env={b"OTHER": b"\xc3\x28other"})
    assert r.returncode == 0, r.stderr
    with capsule.open(p, passphrase=b"\xc3\x28other") as cap:
        assert len(list(cap.records())) == 1
