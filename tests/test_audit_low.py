"""Regression tests for the audit's low findings on frames and keys:
F15 (bytes hidden after a zstd frame), F16 (small-order and non-canonical Ed25519
public keys), F17 (a private key others can read), F18 (scrypt work factor caps)."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path

import pytest
import zstandard

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.keys import KeyFileError, PublicKey
from capsule.format.signing import Keyset, count_valid, sign_body

from .test_hostile import append_frames, assert_refused, build_base, record_payload

P = 2**255 - 19


@pytest.mark.parametrize("extra", [b"junk", "second-frame"])
def test_f15_bytes_after_the_zstd_frame_are_refused(tmp_path: Path, extra: object) -> None:
    path = tmp_path / "a.capsule"
    build_base(path)
    raw = record_payload({"kind": "memory", "text": "hidden " * 50, "time": 7})
    z = zstandard.ZstdCompressor(write_content_size=True).compress(raw)
    tail = z if extra == "second-frame" else extra
    assert isinstance(tail, bytes)
    append_frames(path, [(C.FT_RECORDS, C.FFLAG_ZSTD, z + tail, len(raw))], new_records=1)
    rep = assert_refused(path)
    assert rep.first_error["check"] == "zstd"


def small_order_encodings() -> list[bytes]:
    ys = [0, 1, P - 1,
          int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little"),
          int.from_bytes(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little")]
    out = []
    for y in ys:
        for sign in (0, 1 << 255):
            out.append((y | sign).to_bytes(32, "little"))
    return out


@pytest.mark.parametrize("raw", small_order_encodings() + [(P + 1).to_bytes(32, "little"),
                                                           (P + 3).to_bytes(32, "little"),
                                                           ((1 << 255) - 1).to_bytes(32, "little")])
def test_f16_small_order_and_non_canonical_keys_are_refused(raw: bytes) -> None:
    with pytest.raises(capsule.DataError):
        PublicKey(raw)
    line = f"capsule-ed25519 {base64.b64encode(raw).decode()} {'0' * 32}"
    with pytest.raises(capsule.DataError):
        PublicKey.from_text(line)


def test_f16_the_identity_key_would_have_verified_anything() -> None:
    """Why the check exists: under the identity point, (R = identity, s = 0) is a valid
    signature of every message, and the crypto library accepts it; so such a key must
    never get into a keyset, and {identity, identity'} never count as two signers."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    ident = (1).to_bytes(32, "little")
    Ed25519PublicKey.from_public_bytes(ident).verify(ident + bytes(32), b"any message at all")
    with pytest.raises(capsule.DataError):
        Keyset.of([PublicKey(ident), PublicKey((1 | 1 << 255).to_bytes(32, "little"))], threshold=2)
    k = capsule.generate_key()  # control: a real key still signs and counts
    assert count_valid("t", b"body", sign_body("t", b"body", [k]), Keyset.of([k.public_key])) == 1


def test_f16_a_keyset_frame_naming_a_small_order_key_is_corrupt(tmp_path: Path) -> None:
    from capsule.format.checkpoint import parse_keyset

    payload = canon.encode({"keyset": {"keys": [(1).to_bytes(32, "little")], "threshold": 1, "version": 1},
                            "prev": None, "sigs": []})
    with pytest.raises(capsule.DataError):
        parse_keyset(payload, 64, 1)


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640, 0o604, 0o660])
def test_f17_a_private_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    k = capsule.generate_key()
    path = tmp_path / "agent.key"
    capsule.save_private_key(path, k, passphrase=None)
    assert capsule.load_private_key(path).key_id == k.key_id  # 0600 as written
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        capsule.load_private_key(path)


def test_f18_a_sealed_key_demanding_gibs_fails_fast(tmp_path: Path) -> None:
    from capsule.format import keys as K

    k = capsule.generate_key()
    path = tmp_path / "sealed.key"
    capsule.save_private_key(path, k, passphrase=b"pw")
    assert capsule.load_private_key(path, b"pw").key_id == k.key_id
    data = path.read_bytes()
    inner = data.split(K._SEALED_BEGIN, 1)[1].split(K._SEALED_END, 1)[0]
    v = canon.decode(base64.b64decode(b"".join(inner.split())))
    for log_n, r, p in [(20, 16, 4), (20, 8, 1), (18, 8, 1), (17, 16, 1), (16, 8, 4)]:
        forged = canon.encode({**v, "log_n": log_n, "r": r, "p": p})
        b64 = base64.encodebytes(forged).replace(b"\n", b"")
        path.write_bytes(K._SEALED_BEGIN + b"\n" + b64 + b"\n" + K._SEALED_END + b"\n")
        os.chmod(path, 0o600)
        t0 = time.monotonic()
        with pytest.raises(KeyFileError, match="out of the allowed range"):
            capsule.load_private_key(path, b"wrong")
        assert time.monotonic() - t0 < 0.5
