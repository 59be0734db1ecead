"""Regressions from a new-user pass over the CLI and library (a fresh-context review).

Each test names the defect it pins; the CLI ones run `capsule` in a fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsule


def cli(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "CAPSULE_IDENTITY"}
    return subprocess.run([str(Path(sys.executable).with_name("capsule")), *map(str, args)], capture_output=True,
                          text=True, timeout=120, env={**base, "COLUMNS": "200", "CAPSULE_SCRYPT_LOG_N": "10", **env})


def ok(*args: str | Path, **env: str) -> subprocess.CompletedProcess[str]:
    r = cli(*args, **env)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r


# --- 1: an encrypted capsule with an INDEX frame and a lifecycle event ------------------------------
# The kind walk read each INDEX's payload with the sealed frame's header, so every liveness fold
# (list, get, state, search, put ...) of such a file raised "this capsule is encrypted" with the key.


@pytest.mark.parametrize("how", ["recipient", "passphrase"])
def test_an_encrypted_capsule_with_an_index_survives_every_lifecycle_verb(tmp_path: Path, how: str) -> None:
    key = capsule.generate_key()
    seal: dict[str, object] = {"recipients": [key.public_key]} if how == "recipient" else {"passphrase": "pw pw pw"}
    unseal: dict[str, object] = {"identity": key} if how == "recipient" else {"passphrase": "pw pw pw"}
    p = tmp_path / "sealed.capsule"
    with capsule.create(p, scrypt_log_n=10, **seal) as cap:  # type: ignore[arg-type]
        with cap.commit() as tx:
            ids = [tx.remember(f"fact {i} about the launch", tags=["t"]) for i in range(5000)]  # past an INDEX
        with cap.commit() as tx:
            tx.forget(ids[0], reason="stale")
        with cap.commit() as tx:
            tx.redact(ids[1], reason="secret")
        with cap.commit() as tx:
            new = tx.supersede(ids[2], "fact 2, revised")
        with cap.commit() as tx:
            tx.promote(ids[3], "validated")
    with capsule.open(p, **unseal) as cap:  # type: ignore[arg-type]
        st = cap.state()
        live = {m["id"] for tier in st.memories.values() for m in tier}
        assert ids[0] not in live and ids[1] not in live and ids[2] not in live and new in live
        assert len(live) == 4998
        assert cap.search("revised", k=1)[0].id == new
    assert capsule.verify(p, **unseal).ok  # type: ignore[arg-type]
    with capsule.open(p, "a", **unseal) as cap, cap.commit() as tx:  # type: ignore[arg-type]
        tx.remember("after the events")


def test_cli_pack_encrypt_then_forget_keeps_the_capsule_readable(tmp_path: Path) -> None:
    ok("keygen", "-o", tmp_path / "a.key")
    src = tmp_path / "r.jsonl"
    src.write_text('{"text":"one"}\n{"text":"two"}\n')
    cap = tmp_path / "v.capsule"
    ok("pack", src, "-o", cap, "--encrypt", "-r", tmp_path / "a.key.pub")  # its close writes an INDEX
    rows = json.loads(ok("list", cap, "-i", tmp_path / "a.key", "--json").stdout)
    ok("forget", cap, rows[0]["id"], "-i", tmp_path / "a.key", "--reason", "x")
    after = json.loads(ok("list", cap, "-i", tmp_path / "a.key", "--json").stdout)
    assert [r["id"] for r in after] == [r["id"] for r in rows[1:]]
    for verb in (("state",), ("log",), ("timeline",), ("verify",), ("search", "two")):
        ok(verb[0], cap, *verb[1:], "-i", tmp_path / "a.key")


# --- 2: a first push published a file damaged before its last INDEX ----------------------------------
# An open reads from the last INDEX on (6.3), so push shipped such a file and every pull refused it.


def _commit_offsets(data: bytes) -> list[int]:
    import struct

    out, at = [], 64
    while at + 32 <= len(data):
        length, ftype = struct.unpack("<IB", data[at : at + 5])
        if ftype == 0x82:
            out.append(at)
        at += length
    return out


def test_a_first_push_refuses_a_file_damaged_before_its_last_index(tmp_path: Path) -> None:
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        for i in range(40):  # one commit each: INDEX frames follow, so an open skips the early frames
            with cap.commit() as tx:
                tx.remember(f"fact {i}")
    data = bytearray(p.read_bytes())
    bad = _commit_offsets(bytes(data))[1] + 60
    data[bad] ^= 0x10
    p.write_bytes(bytes(data))
    remote = tmp_path / "remote"
    r = cli("push", p, remote.as_uri())
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "nothing was pushed" in r.stderr, r.stderr
    assert not (remote / "manifests").exists() or not any((remote / "manifests").iterdir())
    assert p.read_bytes() == bytes(data)  # only read
    good = tmp_path / "g.capsule"
    with capsule.create(good) as cap, cap.commit() as tx:
        tx.remember("fine")
    ok("push", good, (tmp_path / "remote2").as_uri())
