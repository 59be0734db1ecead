"""What `verify --trust` proves (spec 13.4, 14.7): regression tests for audit findings
F1 (unsigned forgery), F2 (revocation bypass by truncation), F10 (unsigned tail),
F11 (freeze / rollback pins) and `--strict` on torn tails and unsigned files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule.core import constants as C
from capsule.format.frames import parse_frame_header

T0 = 1_700_000_000 * 10**9


class Tick:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        self.t += 10**9
        return self.t


def frames(path: Path) -> list[tuple[int, int, int]]:
    """(offset, type, end) of every frame, read through headers only."""
    data = path.read_bytes()
    out, pos, seq = [], C.HEADER_SIZE, 0
    while pos < len(data):
        fh = parse_frame_header(data[pos : pos + C.FRAME_HEADER_SIZE], pos, expect_seq=seq, max_frame_len=1 << 30)
        out.append((pos, fh.ftype, fh.end))
        pos, seq = fh.end, seq + 1
    return out


@pytest.fixture
def keys() -> tuple[capsule.PrivateKey, capsule.PrivateKey]:
    return capsule.generate_key(), capsule.generate_key()


def signed_capsule(path: Path, k: capsule.PrivateKey) -> None:
    with capsule.create(path, clock=Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("the deploy window is Tuesday")
        cap.checkpoint("c1", key=k)


def test_f1_victims_keyset_alone_proves_nothing(tmp_path: Path, keys: tuple) -> None:
    """F1: a forged file (same file id, edited records) carrying only the victim's
    first KEYSET frame and no checkpoint must not pass --trust, nor --strict."""
    k1, _ = keys
    victim = tmp_path / "victim.capsule"
    signed_capsule(victim, k1)
    v = capsule.open(victim)
    fid = bytes.fromhex(v.file_id)
    v.close()
    ks_frame = next((o, e) for o, t, e in frames(victim) if t == C.FT_KEYSET)
    raw = victim.read_bytes()[ks_frame[0] : ks_frame[1]]
    forged = tmp_path / "forged.capsule"
    with capsule.create(forged, clock=Tick(), file_id=fid) as cap:
        with cap.commit() as tx:
            tx.remember("the deploy window is Friday night")  # the edit
        # the victim's public keyset frame, re-chained at this position
        from capsule.format.checkpoint import parse_keyset
        from capsule.format.frames import parse_frame_header as pfh

        hdr = pfh(raw[: C.FRAME_HEADER_SIZE], 0, expect_seq=None, max_frame_len=1 << 30)
        payload = raw[C.FRAME_HEADER_SIZE : C.FRAME_HEADER_SIZE + hdr.payload_len]
        parse_keyset(payload, 0, 0)
        cap._write_commit([], extra=[(C.FT_KEYSET, payload)])
    rep = capsule.verify(forged, trust=k1.public_key)
    assert not rep.ok and rep.first_error["check"] == "trust-unsigned", rep.to_dict()
    rep = capsule.verify(forged, trust=k1.public_key, strict=True)
    assert not rep.ok
    # --strict alone never passes a file no signature covers
    plain = tmp_path / "plain.capsule"
    with capsule.create(plain) as cap, cap.commit() as tx:
        tx.remember("x")
    rep = capsule.verify(plain, strict=True)
    assert not rep.ok and rep.first_error["check"] == "unsigned"
    assert capsule.verify(plain).ok  # without --strict an unsigned file is sound, just unsigned
    assert capsule.verify(victim, trust=k1.public_key, strict=True).ok


def rotated(path: Path, k1: capsule.PrivateKey, k2: capsule.PrivateKey) -> int:
    """c1 signed by k1, then rotation {k1} -> {k2}, then c2 signed by k2; returns the
    end offset of the last commit before the rotation."""
    with capsule.create(path, clock=Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("before rotation")
        cap.checkpoint("c1", key=k1)
        before = cap.size
        cap.rotate_keys(capsule.Keyset.of([k2.public_key], version=2), old_signers=[k1], new_signers=[k2])
        with cap.commit() as tx:
            tx.remember("after rotation")
        cap.checkpoint("c2", key=k2)
    return before


def test_f2_a_leaked_rotated_out_key_cannot_sign_a_truncated_copy(tmp_path: Path, keys: tuple) -> None:
    k1, k2 = keys
    good = tmp_path / "good.capsule"
    cut = rotated(good, k1, k2)
    v2 = capsule.Keyset.of([k2.public_key], version=2).keyset_hash
    for anchor in (k2.public_key, v2):
        rep = capsule.verify(good, trust=anchor, strict=True)
        assert rep.ok, rep.to_dict()
        assert rep.trusted_checkpoints == 1  # c1 was signed before the anchored keyset
    # the attack: cut back to before the rotation, append and sign with the leaked k1
    bad = tmp_path / "bad.capsule"
    shutil.copy(good, bad)
    os.truncate(bad, cut)
    with capsule.open(bad, "a", clock=Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("wire the money to the attacker")
        cap.checkpoint("c3", key=k1)
    for anchor in (k2.public_key, v2):
        rep = capsule.verify(bad, trust=anchor)
        assert not rep.ok and rep.first_error["check"] == "trust-anchor", rep.to_dict()
    # a verifier that only knew k1 is fooled unless it pins what it saw
    assert capsule.verify(bad, trust=k1.public_key).ok
    with capsule.open(good) as cap:
        seen = cap.root
    rep = capsule.verify(bad, trust=k1.public_key, expect_root=seen)
    assert not rep.ok and rep.first_error["check"] == "pin-root"


def test_f10_records_beyond_the_last_checkpoint_are_reported(tmp_path: Path, keys: tuple) -> None:
    k1, _ = keys
    p = tmp_path / "t.capsule"
    signed_capsule(p, k1)
    rep = capsule.verify(p, trust=k1.public_key)
    assert rep.ok and rep.unsigned["records"] == 0
    assert rep.unsigned["commits"] <= 1  # at most the INDEX that close() writes
    assert rep.signed_prefix["label"] == "c1"
    with capsule.open(p, "a", clock=Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("unsigned one")
            tx.remember("unsigned two")
        with cap.commit() as tx:
            tx.constrain("attacker rule")
    rep = capsule.verify(p, trust=k1.public_key)
    assert rep.ok
    assert rep.unsigned["records"] == 3 and rep.unsigned["commits"] >= 2 and rep.unsigned["bytes"] > 0
    assert any("not covered" in w for w in rep.warnings)
    rep = capsule.verify(p, trust=k1.public_key, strict=True)
    assert not rep.ok and rep.first_error["check"] == "unsigned-tail"


def test_f11_pins_catch_a_freeze_to_an_older_signed_commit(tmp_path: Path, keys: tuple) -> None:
    k1, _ = keys
    p = tmp_path / "t.capsule"
    with capsule.create(p, clock=Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("one")
        cap.checkpoint("c1", key=k1)
        old_end = cap.size
        with cap.commit() as tx:
            tx.remember("two")
        ck = cap.checkpoint("c2", key=k1)
        root = cap.root
    new_seq = ck.body.tree_size
    assert capsule.verify(p, trust=k1.public_key, strict=True, min_seq=new_seq, expect_root=root).ok
    frozen = tmp_path / "frozen.capsule"
    shutil.copy(p, frozen)
    os.truncate(frozen, old_end)
    assert capsule.verify(frozen, trust=k1.public_key, strict=True).ok  # still a sound, signed file
    rep = capsule.verify(frozen, trust=k1.public_key, min_seq=new_seq)
    assert not rep.ok and rep.first_error["check"] == "pin-min-seq"
    rep = capsule.verify(frozen, trust=k1.public_key, expect_root=root)
    assert not rep.ok and rep.first_error["check"] == "pin-root"


def test_strict_fails_on_a_torn_tail_and_a_checkpoint_in_it_signs_nothing(tmp_path: Path, keys: tuple) -> None:
    k1, _ = keys
    p = tmp_path / "t.capsule"
    signed_capsule(p, k1)
    with capsule.open(p, "a", clock=Tick()) as cap:
        with cap.commit() as tx:
            tx.remember("more")
        cap.checkpoint("c2", key=k1)
    last_commit = frames(p)[-1]
    assert last_commit[1] == C.FT_COMMIT
    torn = tmp_path / "torn.capsule"
    shutil.copy(p, torn)
    os.truncate(torn, last_commit[0] + 10)  # c2's CHECKPOINT frame is whole, its COMMIT is not
    rep = capsule.verify(torn, trust=k1.public_key)
    assert rep.ok and rep.torn_tail > 0
    assert rep.signed_prefix["label"] == "c1" and rep.checkpoints == 1
    rep = capsule.verify(torn, trust=k1.public_key, strict=True)
    assert not rep.ok and rep.first_error["check"] == "torn-tail"


def cli(*args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_verify_trust_pins_and_strict(tmp_path: Path, keys: tuple) -> None:
    import json

    k1, _ = keys
    pub = capsule.save_private_key(tmp_path / "k1.key", k1, passphrase=None)
    p = tmp_path / "t.capsule"
    signed_capsule(p, k1)
    ok = cli("verify", p, "--trust", pub, "--strict", "--json", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["signed_prefix"]["label"] == "c1" and doc["unsigned"]["records"] == 0
    with capsule.open(p) as cap:
        root = cap.root
    with capsule.open(p, "a", clock=Tick()) as cap, cap.commit() as tx:
        tx.remember("unsigned")
    bad = cli("verify", p, "--trust", pub, "--strict", cwd=tmp_path)
    assert bad.returncode == 1 and "unsigned" in bad.stdout + bad.stderr and "Traceback" not in bad.stderr
    pinned = cli("verify", p, "--trust", pub, "--expect-root", root, "--min-seq", "1", cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    wrong = cli("verify", p, "--expect-root", "ab" * 32, cwd=tmp_path)
    assert wrong.returncode == 1 and "pinned root" in wrong.stdout + wrong.stderr
