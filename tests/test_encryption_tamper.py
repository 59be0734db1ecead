"""An attacker at the bytes of an encrypted capsule (spec 10.2, 10.3, 10.6).

The forgeries here fix up everything a structural check looks at (frame CRCs, seq, the
chain, every COMMIT's Merkle root), so only what encryption adds can catch them: the
AEAD tag, the AEAD flag rules and the key id of a KEYSLOT frame. Each forgery has its
positive control: the keyless verifier, which cannot read a sealed payload, passes the
file, so the rechaining is right and the catch really is the AEAD's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.commit import CommitInfo, encode_commit_payload, parse_commit_payload
from capsule.format.crypto import (
    FrameCipher,
    KeySlots,
    new_file_key,
    parse_keyslots,
    recipient_slot,
)
from capsule.format.frames import (
    Merkle,
    chain_next,
    encode_frame_header,
    leaf_hash,
    parse_frame_header,
)
from tests.test_encryption import frames, sha

RawFrame = tuple[int, int, bytes, int]  # (type, flags, stored payload, raw_len)


@pytest.fixture(autouse=True)
def _fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSULE_SCRYPT_LOG_N", "10")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="module")
def key() -> capsule.PrivateKey:
    return capsule.generate_key()


@pytest.fixture(scope="module")
def attacker() -> capsule.PrivateKey:
    return capsule.generate_key()


# --- forging helpers ---------------------------------------------------------------------


def refix(data: bytes) -> bytes:
    """Recompute every frame's chain value and every COMMIT's Merkle root (4.2, 4.3, 6.1)
    after same-length edits: the file is then structurally valid whatever the payloads say."""
    chain = hashlib.sha256(C.CHAIN_SEED_TAG + data[: C.HEADER_SIZE]).digest()
    merkle = Merkle()
    out, off = bytearray(data[: C.HEADER_SIZE]), C.HEADER_SIZE
    while off < len(data):
        total = struct.unpack_from("<I", data, off)[0]
        hdr, payload = data[off : off + 32], data[off + 32 : off + total - 32]
        if hdr[4] == C.FT_COMMIT:
            info = parse_commit_payload(payload, off, struct.unpack_from("<Q", hdr, 8)[0], off + total, b"")
            payload = encode_commit_payload(dataclasses.replace(info, root=merkle.root()))
            assert len(payload) == total - 64
        ph = hashlib.sha256(payload).digest()
        chain = chain_next(chain, hdr, ph)
        merkle.append(leaf_hash(hdr, ph))
        out += hdr + payload + chain
        off += total
    return bytes(out)


def append(path: Path, new: list[RawFrame], *, new_records: int = 0, keyslots: Any = "same",
           commit: bool = True) -> list[int]:
    """Append hand-made frames, chained and in the Merkle tree, then a valid COMMIT (whose
    `keyslots` is the last one's unless given: None leaves it out). Returns their offsets."""
    data = path.read_bytes()
    merkle, seq, off = Merkle(), 0, C.HEADER_SIZE
    last: CommitInfo | None = None
    while off < len(data):
        total = struct.unpack_from("<I", data, off)[0]
        hdr, payload = data[off : off + 32], data[off + 32 : off + total - 32]
        if hdr[4] == C.FT_COMMIT:
            last = parse_commit_payload(payload, off, seq, off + total, b"")
        merkle.append(leaf_hash(hdr, hashlib.sha256(payload).digest()))
        seq, off = seq + 1, off + total
    assert last is not None and off == len(data)
    chain = data[-32:]
    out, offsets = bytearray(), []
    for ftype, flags, payload, raw_len in new:
        hdr = encode_frame_header(ftype, flags, seq, len(payload), raw_len)
        ph = hashlib.sha256(payload).digest()
        chain = chain_next(chain, hdr, ph)
        merkle.append(leaf_hash(hdr, ph))
        offsets.append(off)
        out += hdr + payload + chain
        off, seq = off + 64 + len(payload), seq + 1
    if commit:
        ks = last.keyslots if keyslots == "same" else keyslots
        info = CommitInfo(offset=off, end=0, seq=seq, time=last.time + 1, root=merkle.root(),
                          records=last.records + new_records, commits=last.commits + 1, prev=last.offset,
                          index=last.index, index_hash=last.index_hash, keyslots=ks,
                          mac=None if ks is None else bytes(32))  # 10.7: a forger without the key cannot MAC
        payload = encode_commit_payload(info)
        hdr = encode_frame_header(C.FT_COMMIT, 0, seq, len(payload), len(payload))
        out += hdr + payload + chain_next(chain, hdr, hashlib.sha256(payload).digest())
    with path.open("ab") as f:
        f.write(out)
    return offsets


def base(path: Path, key: capsule.PrivateKey, *, texts: list[str] | None = None, index: bool = True) -> None:
    """An encrypted capsule: a commit per text (equal-length texts give equal-length frames),
    then, with ``index``, a vector snapshot and an INDEX, and a last commit after them."""
    with capsule.create(path, recipients=[key.public_key]) as cap:
        for t in texts or ["alpha 1", "alpha 2", "alpha 3"]:
            with cap.commit() as tx:
                tx.remember(t, tags=["t"], embedding=[1.0, 0.5, 0.25])
        if index:
            cap.save_index()
            with cap.commit() as tx:
                tx.remember("the last commit " * 30)


def file_cipher(path: Path, key: capsule.PrivateKey) -> FrameCipher:
    with capsule.open(path, identity=key) as cap:
        c = cap._h.crypt
        assert c is not None
        return c


def plain_records(*texts: str) -> bytes:
    return canon.encode([{"kind": "memory", "text": t, "time": 7} for t in texts])


def first_error(rep: capsule.VerifyReport) -> tuple[int, str]:
    assert not rep.ok and rep.first_error is not None, rep
    return rep.first_error["offset"], rep.first_error["check"]


def refused_with_key(path: Path, key: capsule.PrivateKey, off: int, check: str) -> None:
    """verify with the key names the frame and the check; readers and writers refuse; no byte changes."""
    before = sha(path)
    assert first_error(capsule.verify(path, identity=key)) == (off, check)
    with pytest.raises(capsule.CorruptError) as e, capsule.open(path, identity=key) as cap:
        list(cap.records())
        cap.search("alpha")
    assert e.value.check == check
    with pytest.raises(capsule.CorruptError), capsule.open(path, "a", identity=key) as cap:
        list(cap.records())
    assert sha(path) == before


def sealed_offsets(data: bytes, ftype: int) -> list[int]:
    return [o for o, t, fl, _ in frames(data) if t == ftype and fl & C.FFLAG_AEAD]


# --- the AEAD catches what the chain no longer can --------------------------------------


def test_refix_is_a_no_op_on_a_good_file(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    base(path, key)
    assert refix(path.read_bytes()) == path.read_bytes()


@pytest.mark.parametrize("ftype", [C.FT_RECORDS, C.FT_INDEX, C.FT_BLOB])
@pytest.mark.parametrize("where", ["nonce", "ciphertext", "tag"])
def test_flipped_ciphertext_byte_fails_aead(tmp_path: Path, key: capsule.PrivateKey, ftype: int, where: str) -> None:
    path = tmp_path / "a.capsule"
    base(path, key)
    data = bytearray(path.read_bytes())
    # RECORDS: the last commit's, after the INDEX (whose sealed Merkle frontier would
    # otherwise tell the reader the roots were redone, and no forger can reseal it)
    off = sealed_offsets(bytes(data), ftype)[-1 if ftype == C.FT_RECORDS else 0]
    plen = struct.unpack_from("<I", data, off + 16)[0]
    at = off + 32 + {"nonce": 3, "ciphertext": 12 + (plen - 28) // 2, "tag": plen - 5}[where]
    data[at] ^= 0x01
    path.write_bytes(refix(bytes(data)))
    assert capsule.verify(path).ok  # control: structurally the forgery is perfect
    assert first_error(capsule.verify(path, identity=key)) == (off, "aead")
    if ftype == C.FT_RECORDS:
        refused_with_key(path, key, off, "aead")
        return
    before = sha(path)
    # the reader refuses the file too, and writes nothing
    with pytest.raises(capsule.CorruptError), capsule.open(path, identity=key) as cap:
        list(cap.records())
        cap.search(vector=[1.0, 0.5, 0.25], k=2, mode="vector")
    assert sha(path) == before


def test_swapped_sealed_frames_fail_aead(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    data = bytearray(path.read_bytes())
    a, b = sealed_offsets(bytes(data), C.FT_RECORDS)[:2]
    la, lb = (struct.unpack_from("<I", data, o)[0] for o in (a, b))
    assert la == lb  # equal-length frames: the swap changes no offset
    pa, pb = bytes(data[a + 32 : a + la - 32]), bytes(data[b + 32 : b + lb - 32])
    assert pa != pb
    data[a + 32 : a + la - 32], data[b + 32 : b + lb - 32] = pb, pa
    path.write_bytes(refix(bytes(data)))
    assert capsule.verify(path).ok
    refused_with_key(path, key, a, "aead")


def test_sealed_frame_from_another_file_with_the_same_recipients(tmp_path: Path, key: capsule.PrivateKey) -> None:
    victim, donor = tmp_path / "victim.capsule", tmp_path / "donor.capsule"
    base(victim, key, texts=["alpha 1", "alpha 2"], index=False)
    base(donor, key, texts=["omega 1", "omega 2"], index=False)
    data, other = bytearray(victim.read_bytes()), donor.read_bytes()
    a, b = sealed_offsets(bytes(data), C.FT_RECORDS)[1], sealed_offsets(other, C.FT_RECORDS)[1]
    assert a == b and data[a : a + 32] == other[b : b + 32]  # same place, same header: only the AAD's file id differs
    n = struct.unpack_from("<I", data, a)[0]
    data[a + 32 : a + n - 32] = other[b + 32 : b + n - 32]
    victim.write_bytes(refix(bytes(data)))
    assert capsule.verify(victim).ok
    refused_with_key(victim, key, a, "aead")


def test_plaintext_records_in_an_encrypted_file_are_refused(tmp_path: Path, key: capsule.PrivateKey) -> None:
    """The AEAD flag stripped, plaintext stored: anyone could inject records so; refused (10.2)."""
    path = tmp_path / "a.capsule"
    base(path, key)
    payload = plain_records("injected by someone without the key")
    (off,) = append(path, [(C.FT_RECORDS, 0, payload, len(payload))], new_records=1)
    refused_with_key(path, key, off, "aead")


def test_plaintext_records_in_an_encrypted_file_fail_keyless_verify(tmp_path: Path, key: capsule.PrivateKey) -> None:
    """10.6: without the key the verifier still checks that sealed frames are exactly the content frames."""
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    payload = plain_records("injected by someone without the key")
    (off,) = append(path, [(C.FT_RECORDS, 0, payload, len(payload))], new_records=1)
    assert first_error(capsule.verify(path)) == (off, "aead")


def test_a_sealed_frames_plaintext_with_the_flag_stripped_is_refused(tmp_path: Path, key: capsule.PrivateKey) -> None:
    """The genuine plaintext of a sealed frame (as a key holder would see it) put back unsealed."""
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    data = path.read_bytes()
    off = sealed_offsets(data, C.FT_RECORDS)[-1]
    fr = [f for f in frames(data) if f[0] >= off]
    assert [t for _, t, _, _ in fr] == [C.FT_RECORDS, C.FT_COMMIT]  # the last commit: cut and redo it
    n = struct.unpack_from("<I", data, off)[0]
    fh = parse_frame_header(data[off : off + 32], off, expect_seq=fr[0][3], max_frame_len=1 << 30)
    plain = file_cipher(path, key).open(fh, data[off + 32 : off + n - 32])
    path.write_bytes(data[:off])
    flags = fh.flags & ~C.FFLAG_AEAD
    (got,) = append(path, [(C.FT_RECORDS, flags, plain, fh.raw_len)], new_records=1)
    assert got == off
    refused_with_key(path, key, off, "aead")


def test_sealed_frame_in_a_plain_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        tx.remember("plain")
    payload = bytes(12) + plain_records("x") + bytes(16)
    (off,) = append(path, [(C.FT_RECORDS, C.FFLAG_AEAD, payload, len(payload) - 28)], new_records=1)
    assert first_error(capsule.verify(path)) == (off, "aead")
    with pytest.raises(capsule.CorruptError), capsule.open(path) as cap:
        list(cap.records())


# --- KEYSLOT and COMMIT forgeries (10.3) --------------------------------------------------


def _forged_slots(path: Path, victim: capsule.PublicKey, *, key_id: bytes | None = None) -> tuple[bytes, bytes]:
    """A KEYSLOT payload whose one slot wraps the attacker's file key for the victim, and that key."""
    data = path.read_bytes()
    fid = data[12:28]
    first = next(o for o, t, _, _ in frames(data) if t == C.FT_KEYSLOT)
    n = struct.unpack_from("<I", data, first)[0]
    real = parse_keyslots(data[first + 32 : first + n - 32], first, 0)
    fk = new_file_key(fid)
    ks = KeySlots(real.key_id if key_id is None else key_id, (recipient_slot(victim, fk, fid),), first)
    return ks.encode(), fk


def test_forged_keyslot_wrapping_another_key_is_refused(tmp_path: Path, key: capsule.PrivateKey) -> None:
    """Someone without the file key appends a slot for the victim that hands it the attacker's
    key (and records sealed under it): the key id check refuses it (10.3)."""
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    data = path.read_bytes()
    fid, end = data[12:28], len(data)
    slots, fk = _forged_slots(path, key.public_key)
    append(path, [(C.FT_KEYSLOT, 0, slots, len(slots))], keyslots=end)
    # then records sealed under the attacker's key, as the victim's reader would accept them
    body = plain_records("attacker's words")
    evil = FrameCipher(fk, fid)
    d2 = path.read_bytes()
    seq = len(frames(d2))
    hdr = encode_frame_header(C.FT_RECORDS, C.FFLAG_AEAD, seq, len(body) + 28, len(body))
    append(path, [(C.FT_RECORDS, C.FFLAG_AEAD, evil.seal(hdr, body), len(body))], new_records=1)
    assert capsule.verify(path).ok  # the key id is copied: without the key nothing shows
    before = sha(path)
    with pytest.raises(capsule.CorruptError) as e:
        capsule.open(path, identity=key)
    assert e.value.check == "keyslot"
    with pytest.raises(capsule.CorruptError):
        capsule.open(path, "a", identity=key)
    rep = capsule.verify(path, identity=key)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "keyslot"
    assert sha(path) == before


def test_keyslot_naming_another_key_id_fails_keyless_verify(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    end = path.stat().st_size
    slots, _ = _forged_slots(path, key.public_key, key_id=bytes(range(16)))
    (off,) = append(path, [(C.FT_KEYSLOT, 0, slots, len(slots))], keyslots=end)
    assert first_error(capsule.verify(path)) == (off, "keyslot")
    with pytest.raises(capsule.CorruptError):
        capsule.open(path, identity=key)


def test_keyslot_frame_in_a_plain_file(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path) as cap, cap.commit() as tx:
        tx.remember("plain")
    fid = path.read_bytes()[12:28]
    fk = new_file_key(fid)
    from capsule.format.crypto import key_id

    slots = KeySlots(key_id(fk, fid), (recipient_slot(key.public_key, fk, fid),), None).encode()
    end = path.stat().st_size
    (off,) = append(path, [(C.FT_KEYSLOT, 0, slots, len(slots))], keyslots=end)
    assert first_error(capsule.verify(path)) == (off, "keyslot")


def test_commit_without_keyslots_in_an_encrypted_file(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    append(path, [], keyslots=None)
    data = path.read_bytes()
    commit = [o for o, t, _, _ in frames(data) if t == C.FT_COMMIT][-1]
    assert first_error(capsule.verify(path)) == (commit, "keyslot")
    assert first_error(capsule.verify(path, identity=key))[1] == "keyslot"


def test_commit_naming_an_old_keyslot_frame(tmp_path: Path, key: capsule.PrivateKey, attacker: capsule.PrivateKey) -> None:
    """A recipient added (second KEYSLOT), then a COMMIT that points back at the first."""
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    capsule.rekey(path, identity=key, add=[attacker.public_key])
    append(path, [], keyslots=C.HEADER_SIZE)
    commit = [o for o, t, _, _ in frames(path.read_bytes()) if t == C.FT_COMMIT][-1]
    assert first_error(capsule.verify(path)) == (commit, "keyslot")


@pytest.mark.parametrize("change", [{"flags": 0}, {"aead": 0}, {"aead": 2}])
def test_header_encryption_fields_both_or_neither(tmp_path: Path, key: capsule.PrivateKey,
                                                  change: dict[str, int]) -> None:
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    data = bytearray(path.read_bytes())
    if "flags" in change:
        struct.pack_into("<H", data, 10, change["flags"])
    else:
        data[29] = change["aead"]
    data[60:64] = zlib.crc32(bytes(data[:60])).to_bytes(4, "little")
    path.write_bytes(refix(bytes(data)))
    before = sha(path)
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None
    with pytest.raises(capsule.DataError):
        capsule.open(path, identity=key)
    assert sha(path) == before


# --- keyless verify (10.6) ---------------------------------------------------------------


def test_keyless_verify_of_a_good_file(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    base(path, key)
    rep = capsule.verify(path)
    assert rep.ok and rep.encrypted and rep.contents_checked is False
    assert rep.records == 4 and rep.commits >= 5
    assert any("contents" in w for w in rep.warnings)
    rep = capsule.verify(path, identity=key)
    assert rep.ok and rep.contents_checked is True


def test_keyless_verify_checks_signatures_with_trust(tmp_path: Path, key: capsule.PrivateKey,
                                                     attacker: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    base(path, key, index=False)
    with capsule.open(path, "a", identity=key) as cap:
        cp = cap.checkpoint("day-1", key=key)
    rep = capsule.verify(path, trust=key.public_key)
    assert rep.ok and rep.trusted_checkpoints == 1 and rep.contents_checked is False, rep.first_error
    rep = capsule.verify(path, trust=attacker.public_key)
    assert not rep.ok or not rep.trusted_checkpoints
    # a flipped signature byte, rechained: only the signature check can see it, and it does
    data = bytearray(path.read_bytes())
    n = struct.unpack_from("<I", data, cp.offset)[0]
    data[cp.offset + n - 32 - 10] ^= 0x01
    path.write_bytes(refix(bytes(data)))
    rep = capsule.verify(path, trust=key.public_key)
    assert not rep.ok and rep.first_error is not None
    assert rep.first_error["offset"] == cp.offset


def test_keyless_verify_catches_a_flipped_byte_anywhere(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    base(path, key)
    good = path.read_bytes()
    last_commit = [o for o, t, _, _ in frames(good) if t == C.FT_COMMIT][-2]
    end_of_prev = last_commit + struct.unpack_from("<I", good, last_commit)[0]
    rng = random.Random(5)
    positions = sorted(rng.sample(range(len(good)), 150) + [0, 12, 29, C.HEADER_SIZE + 40])
    for pos in positions:
        data = bytearray(good)
        data[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            rep = capsule.verify(path)
        except capsule.DataError:
            continue  # refused outright (the header): caught
        if pos >= end_of_prev:
            # 8.2: damage inside the last commit reads as a torn tail, never as intact
            assert not rep.ok or rep.torn_tail > 0, pos
        else:
            assert not rep.ok, pos
