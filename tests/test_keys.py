"""Keys, signatures, keysets, rotation and checkpoint bodies (spec 14)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.core.errors import AlreadyExists, DataError, InvalidRecordError, UsageError
from capsule.format.canonical import decode, encode
from capsule.format.keys import (
    CHECKPOINT_PAYLOAD_TYPE,
    ROTATION_PAYLOAD_TYPE,
    AnchorError,
    KeyFileError,
    KeyFileNotFound,
    KeyUsageError,
    PassphraseError,
    PassphraseRequired,
    PrivateKey,
    PublicKey,
    RotationError,
    SignatureError,
    ThresholdError,
    WrongPassphrase,
    _write_new,
    generate_key,
    load_private_key,
    load_public_key,
    save_private_key,
)
from capsule.format.signing import (
    CheckpointBody,
    Keyset,
    Rotation,
    Signature,
    check_threshold,
    count_valid,
    is_revoked,
    pae,
    rotate,
    rotation_body,
    sign_body,
    signatures_from_value,
    verify_chain,
    verify_checkpoint,
    verify_rotation,
)

T = "application/vnd.test+json"
K = [PrivateKey.from_seed(bytes([i]) * 32) for i in range(1, 9)]  # deterministic keys
seeds = st.binary(min_size=32, max_size=32)
keys_st = seeds.map(PrivateKey.from_seed)


# --- 14.1 keys --------------------------------------------------------------------
# RFC 8032 section 7.1, TEST 1 and TEST 2.
RFC8032 = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        b"",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        b"\x72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


@pytest.mark.parametrize(("seed", "pub", "msg", "sig"), RFC8032)
def test_rfc8032_vectors(seed: str, pub: str, msg: bytes, sig: str) -> None:
    k = PrivateKey.from_seed(bytes.fromhex(seed))
    assert k.public_key.raw.hex() == pub
    assert k.sign(msg).hex() == sig
    assert k.public_key.verify(msg, bytes.fromhex(sig))


def test_key_id_is_domain_separated_sha256_prefix() -> None:
    pub = K[0].public_key
    want = hashlib.sha256(b"capsule/v1/key\x00" + pub.raw).digest()[:16].hex()
    assert pub.key_id == want == K[0].key_id
    assert len(want) == 32 and want == want.lower()


def test_private_key_repr_hides_secret() -> None:
    k = generate_key()
    assert repr(k) == f"PrivateKey(key_id={k.key_id!r})"
    assert k.public_key.raw.hex() not in repr(k)


@settings(max_examples=50, deadline=None)
@given(keys_st, st.binary(max_size=300))
def test_sign_verify_round_trip(key: PrivateKey, data: bytes) -> None:
    assert key.public_key.verify(data, key.sign(data))


@settings(max_examples=50, deadline=None)
@given(keys_st, st.binary(min_size=1, max_size=100), st.data())
def test_tampered_data_or_signature_fails(
    key: PrivateKey, data: bytes, draw: st.DataObject
) -> None:
    sig = key.sign(data)
    i = draw.draw(st.integers(0, len(data) - 1))
    bit = 1 << draw.draw(st.integers(0, 7))
    bad_data = data[:i] + bytes([data[i] ^ bit]) + data[i + 1 :]
    assert not key.public_key.verify(bad_data, sig)
    j = draw.draw(st.integers(0, 63))
    bad_sig = sig[:j] + bytes([sig[j] ^ bit]) + sig[j + 1 :]
    assert not key.public_key.verify(data, bad_sig)


@pytest.mark.parametrize("sig", [b"", b"\x00" * 63, b"\x00" * 65, b"\x00" * 64, "x" * 64, None])
def test_verify_malformed_signature_is_false(sig: object) -> None:
    assert K[0].public_key.verify(b"data", sig) is False  # type: ignore[arg-type]


def test_other_key_does_not_verify() -> None:
    assert not K[1].public_key.verify(b"data", K[0].sign(b"data"))


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33, "a" * 32, bytearray(32)])
def test_public_key_refuses_wrong_shape(raw: object) -> None:
    with pytest.raises(InvalidRecordError):
        PublicKey(raw)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, "x" * 32])
def test_from_seed_refuses_wrong_shape(seed: object) -> None:
    with pytest.raises(KeyUsageError):
        PrivateKey.from_seed(seed)  # type: ignore[arg-type]


# --- 14.2 key files -------------------------------------------------------------------
def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("passphrase", [None, b"correct horse"])
def test_key_file_round_trip(tmp_path: Path, passphrase: bytes | None) -> None:
    path = tmp_path / "agent.key"
    pub = save_private_key(path, K[0], passphrase=passphrase)
    assert pub == tmp_path / "agent.key.pub"
    assert _mode(path) == 0o600
    text = path.read_bytes()
    assert text.startswith(
        b"-----BEGIN CAPSULE ENCRYPTED PRIVATE KEY-----" if passphrase else b"-----BEGIN PRIVATE KEY-----"
    )
    loaded = load_private_key(path, passphrase)
    assert loaded.public_key == K[0].public_key
    assert loaded.sign(b"m") == K[0].sign(b"m")
    line = pub.read_text()
    assert line == (
        f"capsule-ed25519 {base64.b64encode(K[0].public_key.raw).decode()} {K[0].key_id}\n"
    )
    assert load_public_key(pub) == K[0].public_key
    assert load_public_key(line) == K[0].public_key
    assert load_public_key(str(pub)) == K[0].public_key
    assert load_public_key(path, passphrase=passphrase) == K[0].public_key


def test_key_file_mode_is_0600_even_with_open_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_private_key(tmp_path / "k", K[0], passphrase=None)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "k") == 0o600


def test_encrypted_key_needs_the_right_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "k"
    save_private_key(path, K[0], passphrase=b"right")
    with pytest.raises(PassphraseRequired, match="passphrase is required"):
        load_private_key(path)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        load_private_key(path, b"wrong")
    with pytest.raises(PassphraseRequired):
        load_public_key(path)
    assert load_private_key(path, b"right").key_id == K[0].key_id


def test_passphrase_for_plain_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    save_private_key(path, K[0], passphrase=None)
    with pytest.raises(PassphraseError, match="not encrypted"):
        load_private_key(path, b"pw")


@pytest.mark.parametrize("passphrase", [b"", "text"])
def test_bad_passphrase_argument(tmp_path: Path, passphrase: object) -> None:
    with pytest.raises(PassphraseError):
        save_private_key(tmp_path / "k", K[0], passphrase=passphrase)  # type: ignore[arg-type]
    assert not (tmp_path / "k").exists()


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    save_private_key(path, K[0], passphrase=None)
    with pytest.raises(AlreadyExists):
        save_private_key(path, K[1], passphrase=None)
    assert load_private_key(path).key_id == K[0].key_id
    (tmp_path / "k2.pub").write_text("x")  # a stray .pub alone also blocks, and nothing is written
    with pytest.raises(AlreadyExists):
        save_private_key(tmp_path / "k2", K[1], passphrase=None)
    assert not (tmp_path / "k2").exists()
    os.chmod(path, 0o644)
    save_private_key(path, K[1], passphrase=None, overwrite=True)
    assert _mode(path) == 0o600
    assert load_private_key(path).key_id == K[1].key_id
    assert load_public_key(tmp_path / "k.pub") == K[1].public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub", "k2.pub"]  # no temp left


def test_key_file_creation_is_exclusive(tmp_path: Path) -> None:
    # A symlink planted where the key will go is refused, never followed.
    target = tmp_path / "elsewhere"
    (tmp_path / "k").symlink_to(target)
    with pytest.raises(AlreadyExists):
        save_private_key(tmp_path / "k", K[0], passphrase=None)
    assert not target.exists()
    # O_EXCL holds even when the existence pre-check is skipped (a race).
    (tmp_path / "x").write_bytes(b"old")
    with pytest.raises(AlreadyExists):
        _write_new(tmp_path / "x", b"new", 0o600, exact=True)
    assert (tmp_path / "x").read_bytes() == b"old"


def _ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


BAD_KEY_FILES = [
    (b"hello world\n", "not a private key file"),
    (b"", "not a private key file"),
    (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a valid private key"),
    (b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", "OpenSSH"),
    (b"capsule-ed25519 AAAA 00\n", "public key file"),
    (b"x" * (64 * 1024 + 1), "larger than"),
    (None, "EC key; capsule keys are Ed25519"),
]


@pytest.mark.parametrize(("content", "message"), BAD_KEY_FILES)
def test_not_a_private_key_file(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "k"
    path.write_bytes(_ec_pem() if content is None else content)
    with pytest.raises(KeyFileError, match=message) as info:
        load_private_key(path)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, DataError)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileNotFound, match="no key file"):
        load_private_key(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        load_public_key(tmp_path / "nope")


def test_public_key_from_pem_and_wrong_type(tmp_path: Path) -> None:
    pem = (
        K[2]
        .key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "p.pem").write_bytes(pem)
    assert load_public_key(tmp_path / "p.pem") == K[2].public_key
    ec_pub = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "e.pem").write_bytes(ec_pub)
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_public_key(tmp_path / "e.pem")


_GOOD_LINE = K[0].public_key.to_text()
_B64 = base64.b64encode(K[0].public_key.raw).decode()
BAD_PUB_LINES = [
    f"capsule-ed25519 {_B64}",  # no key id
    f"capsule-ed25519 {_B64} {K[1].key_id}",  # wrong key id
    f"capsule-ed25519  {_B64} {K[0].key_id}",  # two spaces
    f"capsule-ed25519 {_B64[:-4]} {K[0].key_id}",  # short key
    f"capsule-ed25519 {_B64[:-2]}!= {K[0].key_id}",  # not base64
    f"capsule-ed25519 {_B64[:-2]}x= {K[0].key_id}",  # non-canonical base64 (padding bits)
    f"capsule-ed25519 {_B64} {K[0].key_id}\nmore",  # two lines
    f"capsule-ed25519 {_B64} {K[0].key_id.upper()}",  # key id not lowercase
    "capsule-ed25519 x y z",
]


@pytest.mark.parametrize("line", BAD_PUB_LINES)
def test_public_key_text_is_strict(line: str) -> None:
    assert PublicKey.from_text(_GOOD_LINE) == K[0].public_key
    with pytest.raises(KeyFileError):
        PublicKey.from_text(line)


def test_public_key_text_round_trip_with_newline() -> None:
    for k in K:
        assert PublicKey.from_text(k.public_key.to_text() + "\n") == k.public_key


# --- 14.3 PAE -------------------------------------------------------------------------
PAE_TABLE = [
    # the example of the DSSE v1 protocol document
    (
        "http://example.com/HelloWorld",
        b"hello world",
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world",
    ),
    ("", b"", b"DSSEv1 0  0 "),
    ("t", b"a b", b"DSSEv1 1 t 3 a b"),
    ("\u00e9", b"\x00" * 10, b"DSSEv1 2 \xc3\xa9 10 " + b"\x00" * 10),  # LEN counts bytes
]


@pytest.mark.parametrize(("ptype", "body", "want"), PAE_TABLE)
def test_pae_golden(ptype: str, body: bytes, want: bytes) -> None:
    assert pae(ptype, body) == want


@given(st.text(max_size=30), st.binary(max_size=50))
def test_pae_frames_type_and_body(ptype: str, body: bytes) -> None:
    raw = pae(ptype, body)
    t = ptype.encode("utf-8")
    assert raw.endswith(b" " + body)
    assert raw.startswith(b"DSSEv1 %d " % len(t))


def test_payload_type_separates_domains() -> None:
    ks = Keyset.of(K[:1])
    sigs = sign_body(CHECKPOINT_PAYLOAD_TYPE, b"body", K[:1])
    assert count_valid(CHECKPOINT_PAYLOAD_TYPE, b"body", sigs, ks) == 1
    assert count_valid(ROTATION_PAYLOAD_TYPE, b"body", sigs, ks) == 0


# --- 14.4 keysets -------------------------------------------------------------------------
keysets_st = st.builds(
    lambda ks, t, v: Keyset.of(ks, threshold=1 + t % len(ks), version=v),
    st.lists(keys_st, min_size=1, max_size=5, unique_by=lambda k: k.public_key.raw),
    st.integers(0, 10),
    st.integers(1, 2**64 - 1),
)


@settings(max_examples=50, deadline=None)
@given(keysets_st)
def test_keyset_round_trip(ks: Keyset) -> None:
    raw = ks.to_bytes()
    assert Keyset.from_bytes(raw) == ks
    assert Keyset.from_value(decode(raw)) == ks
    assert encode(ks.to_value()) == raw
    assert ks.keyset_hash == hashlib.sha256(b"capsule/v1/keyset\x00" + raw).hexdigest()
    assert ks.digest == bytes.fromhex(ks.keyset_hash)


def test_keyset_value_shape_and_sorting() -> None:
    ks = Keyset.of([K[3], K[1], K[2]], threshold=2, version=7)
    raws = sorted(k.public_key.raw for k in K[1:4])
    assert ks.to_value() == {"keys": raws, "threshold": 2, "version": 7}
    assert ks == Keyset.of([K[2].public_key, K[1], K[3]], threshold=2, version=7)
    assert ks.get(K[1].key_id) == K[1].public_key
    assert ks.get(K[0].key_id) is None
    with pytest.raises(KeyUsageError, match="twice"):
        Keyset.of([K[1], K[1].public_key])


_R = sorted(k.public_key.raw for k in K[:3])
BAD_KEYSETS = [
    ({"keys": _R, "threshold": 1, "version": 1, "extra": 0}, "unknown field"),
    ({"keys": _R, "threshold": 1}, "missing field"),
    ({"keys": [_R[1], _R[0]], "threshold": 1, "version": 1}, "not sorted"),
    ({"keys": [_R[0], _R[0]], "threshold": 1, "version": 1}, "duplicate"),
    ({"keys": _R, "threshold": 0, "version": 1}, "threshold"),
    ({"keys": _R, "threshold": 4, "version": 1}, "threshold"),
    ({"keys": _R, "threshold": True, "version": 1}, "threshold"),
    ({"keys": _R, "threshold": 1, "version": 0}, "version"),
    ({"keys": _R, "threshold": 1, "version": -1}, "version"),
    ({"keys": [], "threshold": 1, "version": 1}, "1 to"),
    ({"keys": [_R[0][:31]], "threshold": 1, "version": 1}, "32 bytes"),
    ({"keys": ["a" * 32], "threshold": 1, "version": 1}, "32 bytes"),
    ({"keys": b"".join(_R), "threshold": 1, "version": 1}, "list"),
    ([_R, 1, 1], "map"),
]


@pytest.mark.parametrize(("value", "message"), BAD_KEYSETS)
def test_keyset_from_value_is_strict(value: object, message: str) -> None:
    with pytest.raises(InvalidRecordError, match=message):
        Keyset.from_value(value)
    with pytest.raises(DataError):  # and the same through bytes
        Keyset.from_bytes(encode(value))


def test_keyset_constructor_enforces_invariants() -> None:
    a, b = sorted((K[0].public_key, K[1].public_key), key=lambda k: k.raw)
    assert Keyset(1, 2, (a, b)).threshold == 2
    for args in [(1, 1, (b, a)), (1, 3, (a, b)), (0, 1, (a,)), (1, 1, ()), (1, 1, [a])]:
        with pytest.raises(InvalidRecordError):
            Keyset(*args)  # type: ignore[arg-type]


# --- 14.5 signatures and thresholds ----------------------------------------------------------
def test_signature_value_round_trip_and_strictness() -> None:
    (s,) = sign_body(T, b"b", K[:1])
    assert Signature.from_value(s.to_value()) == s
    assert s.to_value() == {"keyid": K[0].key_id, "sig": s.sig}
    assert signatures_from_value([s.to_value()] * 2) == (s, s)
    bad = [
        {"keyid": s.key_id, "sig": s.sig[:63]},
        {"keyid": s.key_id.upper(), "sig": s.sig},
        {"keyid": s.key_id[:30], "sig": s.sig},
        {"keyid": s.key_id, "sig": s.sig, "x": 1},
        {"keyid": 5, "sig": s.sig},
    ]
    for v in bad:
        with pytest.raises(InvalidRecordError):
            Signature.from_value(v)
    with pytest.raises(InvalidRecordError):
        signatures_from_value([s.to_value()] * 257)


@settings(max_examples=20, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 4), st.integers(0, 4))
def test_threshold_counts_distinct_signers(body: bytes, n: int, dup: int) -> None:
    ks = Keyset.of(K[:4], threshold=2)
    sigs = sign_body(T, body, K[:n])
    sigs += sigs[:1] * dup  # the same key again counts nothing more
    assert count_valid(T, body, sigs, ks) == n
    if n >= 2:
        assert check_threshold(T, body, sigs, ks) == n
    else:
        with pytest.raises(ThresholdError):
            check_threshold(T, body, sigs, ks)


def test_key_counted_once_among_repeats_and_junk() -> None:
    ks = Keyset.of(K[:3], threshold=2)
    # Ed25519 is deterministic, so a repeat is the same signature; a corrupt one
    # under the same key id must neither count nor stop the good one counting.
    (s,) = sign_body(T, b"b", K[:1])
    junk = Signature(s.key_id, bytes(64))
    with pytest.raises(ThresholdError, match="1 valid signature\\(s\\) of 2 needed") as info:
        check_threshold(T, b"b", [junk, s, s, junk], ks)
    assert (info.value.valid, info.value.needed) == (1, 2)


def test_signatures_outside_keyset_and_malformed_are_ignored() -> None:
    ks = Keyset.of(K[:2], threshold=2)
    outsider = sign_body(T, b"b", [K[5]])
    (good,) = sign_body(T, b"b", K[:1])
    relabeled = Signature(K[1].key_id, outsider[0].sig)  # right id, wrong key's signature
    malformed = [
        Signature(K[1].key_id, b""),
        Signature(K[1].key_id, good.sig[:32]),
        Signature("not-a-key-id", good.sig),
    ]
    sigs = [good, *outsider, relabeled, *malformed, "garbage"]
    assert count_valid(T, b"b", sigs, ks) == 1  # type: ignore[arg-type]
    assert count_valid(T, b"other body", sign_body(T, b"b", K[:2]), ks) == 0


# --- 14.6 rotation ------------------------------------------------------------------------------
OLD = Keyset.of(K[0:3], threshold=2, version=1)  # K0 K1 K2, 2 of 3
NEW = Keyset.of(K[2:5], threshold=2, version=2)  # K2 K3 K4, 2 of 3 (K0, K1 revoked)


def _signed(old: Keyset, new: Keyset, signers: list[PrivateKey]) -> Rotation:
    body = rotation_body(old, new)
    return Rotation(new, tuple(sign_body(ROTATION_PAYLOAD_TYPE, body, signers)))


def test_rotation_accepted_with_threshold_of_old_and_new() -> None:
    rot = rotate(OLD, NEW, [K[0], K[1]], [K[3], K[4]])
    assert verify_rotation(OLD, rot) == NEW
    assert Rotation.from_bytes(rot.to_bytes()) == rot
    # K2 is in both keysets: its one signature counts once on each side.
    shared = rotate(OLD, NEW, [K[0], K[2]], [K[2], K[3]])
    assert len(shared.signatures) == 3
    assert verify_rotation(OLD, shared) == NEW


ROTATION_REFUSALS = [
    ("only old keys", [K[0], K[1]], "new keys"),
    ("only new keys", [K[3], K[4]], "old keys"),
    ("one old key twice", [K[0], K[0], K[3], K[4]], "old keys"),
    ("one new key twice", [K[0], K[1], K[3], K[3]], "new keys"),
    ("shared key alone", [K[2], K[2]], "old keys"),
    ("outsiders", [K[5], K[6], K[7]], "old keys"),
]


@pytest.mark.parametrize(("name", "signers", "side"), ROTATION_REFUSALS)
def test_rotation_refused_without_both_thresholds(
    name: str, signers: list[PrivateKey], side: str
) -> None:
    with pytest.raises(ThresholdError, match=side):
        verify_rotation(OLD, _signed(OLD, NEW, signers))


@pytest.mark.parametrize("version", [1, 3, 2**64 - 1])
def test_rotation_refused_unless_version_plus_one(version: int) -> None:
    new = Keyset.of(K[2:5], threshold=2, version=version)
    rot = _signed(OLD, new, K[0:5])
    with pytest.raises(RotationError, match="must make v2"):
        verify_rotation(OLD, rot)
    with pytest.raises(KeyUsageError):
        rotate(OLD, new, K[0:2], K[3:5])


def test_rotation_is_bound_to_the_previous_keyset() -> None:
    # Same keys, other threshold: a rotation signed for OLD does not apply to it.
    other = Keyset.of(K[0:3], threshold=1, version=1)
    rot = rotate(OLD, NEW, [K[0], K[1]], [K[3], K[4]])
    with pytest.raises(ThresholdError, match="old keys"):
        verify_rotation(other, rot)


def test_rotate_refuses_too_few_or_foreign_signers() -> None:
    with pytest.raises(KeyUsageError, match="cannot rotate"):
        rotate(OLD, NEW, [K[0]], [K[3], K[4]])
    with pytest.raises(KeyUsageError, match="neither keyset"):
        rotate(OLD, NEW, [K[0], K[1], K[7]], [K[3], K[4]])


def test_revoked_key_no_longer_counts() -> None:
    rot = rotate(OLD, NEW, [K[0], K[1]], [K[3], K[4]])
    newest = verify_chain(OLD, [rot])
    body = b"checkpoint after rotation"
    sigs = sign_body(T, body, [K[0], K[1], K[2]])  # two revoked keys and one kept
    assert count_valid(T, body, sigs, OLD) == 3
    assert count_valid(T, body, sigs, newest) == 1
    with pytest.raises(ThresholdError):
        check_threshold(T, body, sigs, newest)
    chain = [OLD, newest]
    assert is_revoked(K[0].key_id, chain) and is_revoked(K[1].public_key, chain)
    assert not is_revoked(K[2].key_id, chain)  # kept
    assert not is_revoked(K[4].key_id, chain)  # added
    assert not is_revoked(K[7].key_id, chain)  # never there
    assert not is_revoked(K[0].key_id, [])


# --- 14.7 trust anchors and chains ---------------------------------------------------------------
def _chain() -> tuple[Keyset, list[Rotation]]:
    g = Keyset.of(K[:1], version=1)
    k2 = Keyset.of(K[:2], threshold=1, version=2)
    k3 = Keyset.of(K[1:4], threshold=2, version=3)
    k4 = Keyset.of(K[2:4], threshold=2, version=4)
    rots = [
        rotate(g, k2, [K[0]], [K[1]]),
        rotate(k2, k3, [K[1]], [K[2], K[3]]),
        rotate(k3, k4, [K[2], K[3]], []),
    ]
    return g, rots


def test_chain_from_public_key_anchor() -> None:
    g, rots = _chain()
    last = verify_chain(K[0].public_key, rots, genesis=g)
    assert last.version == 4 and last == rots[-1].new
    assert verify_chain(K[0].public_key, [], genesis=g) == g
    for n in range(len(rots) + 1):
        assert verify_chain(K[0].public_key, rots[:n], genesis=g).version == n + 1


def test_chain_from_keyset_and_hash_anchors() -> None:
    g, rots = _chain()
    assert verify_chain(g, rots).version == 4
    assert verify_chain(g, rots, genesis=g).version == 4
    assert verify_chain(g.keyset_hash, rots, genesis=g).version == 4
    assert verify_chain(g.keyset_hash.upper(), rots, genesis=g).version == 4
    with pytest.raises(AnchorError):
        verify_chain(Keyset.of(K[1:2]).keyset_hash, rots, genesis=g)
    with pytest.raises(AnchorError):
        verify_chain(Keyset.of(K[1:2]), rots, genesis=g)


def test_public_key_anchor_requires_the_key_alone() -> None:
    # A forger who adds their own key beside the anchor at threshold 1 could sign alone.
    forged = Keyset.of([K[0], K[7]], threshold=1)
    with pytest.raises(AnchorError, match="alone"):
        verify_chain(K[0].public_key, [], genesis=forged)
    with pytest.raises(AnchorError):
        verify_chain(K[0].public_key, [], genesis=Keyset.of([K[0], K[7]], threshold=2))


def test_attacker_keyset_refused() -> None:
    g, rots = _chain()
    evil = PrivateKey.from_seed(b"\xee" * 32)
    evil_g = Keyset.of([evil])
    evil_rots = [rotate(evil_g, Keyset.of([evil], version=2), [evil], [evil])]
    assert (
        verify_chain(evil_g, evil_rots).version == 2
    )  # self-consistent, so only the anchor stops it
    with pytest.raises(AnchorError):
        verify_chain(K[0].public_key, evil_rots, genesis=evil_g)
    with pytest.raises(AnchorError):
        verify_chain(g.keyset_hash, evil_rots, genesis=evil_g)
    # A takeover spliced into the real chain: valid signatures, wrong keys.
    k2 = rots[0].new
    takeover = _signed(k2, Keyset.of([evil], version=3), [evil])
    with pytest.raises(SignatureError, match="old keys"):
        verify_chain(K[0].public_key, [rots[0], takeover], genesis=g)
    # Replaying a genuine rotation out of order fails too.
    with pytest.raises(SignatureError):
        verify_chain(K[0].public_key, [rots[0], rots[2]], genesis=g)


@pytest.mark.parametrize("anchor", ["abc", "g" * 64, 5])
def test_malformed_anchor_is_a_usage_error(anchor: object) -> None:
    g, rots = _chain()
    with pytest.raises(UsageError):
        verify_chain(anchor, rots, genesis=g)  # type: ignore[arg-type]


def test_key_anchor_needs_genesis() -> None:
    with pytest.raises(KeyUsageError, match="genesis"):
        verify_chain(K[0].public_key, [])


# --- 14.8 checkpoint bodies -------------------------------------------------------------------------
h32 = st.binary(min_size=32, max_size=32)
bodies_st = st.builds(
    CheckpointBody,
    origin=st.binary(min_size=16, max_size=16),
    tree_size=st.integers(0, 2**64 - 1),
    root=h32,
    chain=h32,
    prev=st.none() | h32,
    keyset=h32,
    state_root=h32,
    label=st.text(max_size=40),
    time=st.integers(0, 2**63 - 1),
)


@given(bodies_st)
def test_checkpoint_body_round_trip(body: CheckpointBody) -> None:
    raw = body.body_bytes()
    assert CheckpointBody.from_bytes(raw) == body
    assert CheckpointBody.from_value(body.to_value()) == body
    assert body.checkpoint_hash() == hashlib.sha256(b"capsule/v1/checkpoint\x00" + raw).digest()


def _body(**kw: object) -> CheckpointBody:
    v: dict[str, object] = {
        "origin": b"\x01" * 16,
        "tree_size": 10,
        "root": b"\x02" * 32,
        "chain": b"\x03" * 32,
        "prev": None,
        "keyset": OLD.digest,
        "state_root": b"\x04" * 32,
        "label": "step-1",
        "time": 1_700_000_000_000_000_000,
    }
    v.update(kw)
    return CheckpointBody(**v)  # type: ignore[arg-type]


def test_checkpoint_value_shape() -> None:
    v = _body().to_value()
    assert sorted(v) == [
        "chain", "keyset", "label", "origin", "prev", "root", "runtime", "state_root", "time", "tree_size",
    ]  # fmt: skip
    assert _body(label="e\u0301").label == "\u00e9"  # stored NFC (spec 5.1)


BAD_BODIES = [
    {"origin": b"\x01" * 15},
    {"tree_size": -1},
    {"tree_size": 2**64},
    {"tree_size": True},
    {"root": b"\x00" * 31},
    {"chain": None},
    {"prev": b"\x00" * 16},
    {"keyset": "ab" * 32},
    {"state_root": b""},
    {"label": b"bytes"},
    {"label": "x" * 1025},
    {"label": "\ud800"},
    {"time": -1},
    {"time": 1.5},
]


@pytest.mark.parametrize("change", BAD_BODIES)
def test_checkpoint_body_is_strict(change: dict[str, object]) -> None:
    with pytest.raises(InvalidRecordError):
        _body(**change)


def test_checkpoint_from_value_refuses_unknown_and_missing_fields() -> None:
    v = _body().to_value()
    with pytest.raises(InvalidRecordError, match="unknown"):
        CheckpointBody.from_value({**v, "extra": 1})
    del v["label"]
    with pytest.raises(InvalidRecordError, match="missing"):
        CheckpointBody.from_value(v)


def test_checkpoint_sign_and_verify() -> None:
    body = _body()
    raw = body.body_bytes()
    sigs = body.sign([K[0], K[2]])
    assert sigs == sign_body(CHECKPOINT_PAYLOAD_TYPE, raw, [K[0], K[2]])
    assert verify_checkpoint(raw, sigs, OLD) == body
    with pytest.raises(ThresholdError, match="checkpoint"):
        verify_checkpoint(raw, sigs[:1], OLD)
    tampered = _body(tree_size=11).body_bytes()
    with pytest.raises(ThresholdError):
        verify_checkpoint(tampered, sigs, OLD)
    # Signed by a threshold of NEW, but the body commits to OLD.
    with pytest.raises(SignatureError, match="names keyset"):
        verify_checkpoint(raw, body.sign([K[3], K[4]]), NEW)


def test_checkpoint_hash_links_and_ignores_signatures() -> None:
    first = _body()
    second = _body(prev=first.checkpoint_hash(), tree_size=20)
    assert second.prev == first.checkpoint_hash() != second.checkpoint_hash()
    assert _body(prev=b"\x00" * 32).checkpoint_hash() != first.checkpoint_hash()


def test_sealed_key_refuses_hostile_work_factor(tmp_path: Path) -> None:
    """A sealed key file naming an enormous scrypt cost is refused before computing."""
    import base64

    from capsule.format.canonical import decode, encode

    path = tmp_path / "k.key"
    save_private_key(path, K[0], passphrase=b"pw")
    lines = path.read_bytes().split(b"\n")
    v = decode(base64.b64decode(b"".join(lines[1:-2])))
    v["log_n"] = 40
    blob = base64.encodebytes(encode(v)).replace(b"\n", b"")
    path.write_bytes(b"\n".join([lines[0], blob, lines[-2]]) + b"\n")
    with pytest.raises(KeyFileError, match="scrypt"):
        load_private_key(path, b"pw")
