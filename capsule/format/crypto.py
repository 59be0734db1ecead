"""Encryption at rest (spec 10): the file key, its key slots, and frame sealing.

Theory of operation: an encrypted capsule has one random 256-bit *file key*. It is
never stored as such: KEYSLOT frames hold it wrapped, age-style, once per recipient
(an X25519 key agreement with the recipient's capsule key, 10.3) and once per
passphrase (scrypt, 10.4). Two subkeys are derived from it (HKDF-SHA256): one
seals frame payloads with ChaCha20-Poly1305, one derives each frame's nonce as a
PRF of the frame header and its plaintext (a synthetic nonce, as SIV does), so a
nonce repeats only with the same frame at the same place: a torn tail rewritten
after a crash, or two copies of one file that went their own ways, never reuse a
nonce with other bytes, and the same input and keys give the same file. The AAD
binds the file id and the whole frame header (type, flags, seq, lengths), so a
sealed frame cannot be moved, swapped or spliced into another file unnoticed.

Only content is sealed: RECORDS, INDEX, TABLE and BLOB frames. COMMIT, CHECKPOINT,
KEYSET, LINEAGE, RECOVERY and KEYSLOT frames stay plain, and the chain and the
Merkle tree cover the stored (sealed) bytes, so ``verify`` proves a file's
structure, history and signatures without the key (10.6).

Capsule keys are Ed25519 (14.1); a recipient is the same key, mapped to X25519 as
libsodium and age do (10.3), so the keys that sign checkpoints also open files.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import CorruptError, DataError, UsageError
from ..core.lazy import lazy
from . import canonical as canon

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import x25519
    from cryptography.hazmat.primitives.ciphers import aead

    from .commit import CommitInfo
    from .frames import FrameHeader
    from .keys import PrivateKey, PublicKey
else:
    aead = lazy("cryptography.hazmat.primitives.ciphers.aead")
    x25519 = lazy("cryptography.hazmat.primitives.asymmetric.x25519")

NONCE_SIZE = 12  # 10.2
TAG_SIZE = 16  # 10.2
OVERHEAD = NONCE_SIZE + TAG_SIZE  # 10.2: stored payload = nonce || ciphertext || tag
KEY_SIZE = 32
KEY_ID_SIZE = 16  # 10.1
SEALED_TYPES = C.SEALED_TYPES

AAD_TAG = b"capsule/v1/aead\x00"  # 10.2
RUNTIME_AD = b"checkpoint-runtime"  # 10.2: after AAD_TAG and the file id, for a sealed runtime blob
FRAME_KEY_INFO = b"capsule/v1/frame-key"  # 10.1
NONCE_KEY_INFO = b"capsule/v1/nonce-key"  # 10.1
KEY_ID_INFO = b"capsule/v1/key-id"  # 10.1
COMMIT_KEY_INFO = b"capsule/v1/commit-key"  # 10.7
X25519_INFO = b"capsule/v1/x25519-slot"  # 10.3
EPHEMERAL_INFO = b"capsule/v1/ephemeral"  # 10.5 reproducible mode
SCRYPT_SALT_INFO = b"capsule/v1/scrypt-salt"  # 10.5
REPRO_KEY_INFO = b"capsule/v1/reproducible-file-key"  # 10.5
SCRYPT_LOG_N_DEFAULT = 18  # 10.4: 256 MiB, about 0.7 s here (age's default)
SCRYPT_LOG_N_MIN, SCRYPT_LOG_N_MAX = 10, 20  # 10.4: a reader refuses more work (1 GiB, ~3 s)
SCRYPT_R, SCRYPT_P = 8, 1  # 10.4
MAX_SLOTS = 256  # 10.3
_WRAP_NONCE = bytes(NONCE_SIZE)  # 10.3: every wrapping key is used once

# Ed25519 -> X25519 (RFC 7748 section 4.1's birational map; libsodium's
# crypto_sign_ed25519_pk_to_curve25519): u = (1 + y) / (1 - y) mod p.
_P = 2**255 - 19


class KeyRequired(UsageError):
    """An encrypted capsule was opened for its contents without a key (exit 2)."""


class WrongKey(UsageError):
    """No key slot of the capsule opens with the key given (exit 2)."""


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract then expand; hmac's C code, no import cost."""
    prk = hmac.digest(salt, ikm, "sha256")
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        out += block
        i += 1
    return out[:length]


@functools.lru_cache(maxsize=64)
def x25519_public(ed_public: bytes) -> bytes:
    """10.3: the X25519 public key (u-coordinate) of an Ed25519 public key."""
    y = int.from_bytes(ed_public, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise DataError("recipient: not an Ed25519 public key usable for encryption")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_private(seed: bytes) -> bytes:
    """10.3: the X25519 scalar of an Ed25519 seed: the first half of SHA-512(seed) (clamped by X25519)."""
    return hashlib.sha512(seed).digest()[:32]


def _seed(key: PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization as s

    return key.key.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())


@dataclass(frozen=True)
class Keys:
    """What opens an encrypted capsule: an identity (a capsule private key) and/or a passphrase."""

    identity: PrivateKey | None = None
    passphrase: bytes | None = None

    @classmethod
    def of(cls, identity: PrivateKey | None, passphrase: bytes | str | None) -> Keys:
        if isinstance(passphrase, str):
            passphrase = passphrase.encode()
        if passphrase is not None and not isinstance(passphrase, bytes):
            raise UsageError("passphrase must be str or bytes")
        if identity is not None:
            from ..format.keys import PrivateKey

            if not isinstance(identity, PrivateKey):
                raise UsageError("identity must be a capsule PrivateKey (capsule.load_private_key(path))")
        return cls(identity, passphrase)

    @property
    def given(self) -> bool:
        return self.identity is not None or self.passphrase is not None


# --- 10.1-10.2 the frame cipher ---------------------------------------------------------


class FrameCipher:
    """Seals and opens frame payloads of one file under its file key (10.2)."""

    __slots__ = ("file_id", "key_id", "file_key", "_aead", "_nonce_key", "_commit_key")

    def __init__(self, file_key: bytes, file_id: bytes) -> None:
        if len(file_key) != KEY_SIZE:
            raise UsageError("a file key is 32 bytes")
        self.file_id, self.file_key = file_id, file_key  # the key: to add a slot for it (10.3)
        self.key_id = key_id(file_key, file_id)
        self._aead = aead.ChaCha20Poly1305(hkdf(file_key, file_id, FRAME_KEY_INFO))
        self._nonce_key = hkdf(file_key, file_id, NONCE_KEY_INFO)
        self._commit_key = hkdf(file_key, file_id, COMMIT_KEY_INFO)

    def commit_mac(self, chain_before: bytes, commit_map: bytes) -> bytes:
        """10.7: HMAC over the chain value before a COMMIT (all history) and its map without `mac`."""
        return hmac.digest(self._commit_key, chain_before + commit_map, "sha256")

    def check_commit(self, info: CommitInfo, chain_before: bytes) -> None:
        """10.7: the COMMIT was written by a holder of the file key, after exactly these bytes."""
        want = self.commit_mac(chain_before, canon.pack(info.to_value(mac=False)))
        if info.mac is None or not hmac.compare_digest(want, info.mac):
            raise CorruptError("COMMIT is not authenticated under the file key (history edited or spliced, or "
                               "written without the key)", offset=info.offset, seq=info.seq, check="commit-mac")

    def seal(self, header_raw: bytes, plain: bytes | bytearray) -> bytes:
        """nonce || ChaCha20-Poly1305(plain) || tag; the nonce is a PRF of the AAD and the plaintext."""
        ad = AAD_TAG + self.file_id + header_raw
        mac = hmac.new(self._nonce_key, ad, "sha256")
        mac.update(plain)
        nonce = mac.digest()[:NONCE_SIZE]
        return nonce + self._aead.encrypt(nonce, plain, ad)

    def seal_runtime(self, plain: bytes) -> bytes:
        """10.2: a checkpoint's runtime blob as an encrypted file stores it (its signed hash is of these bytes)."""
        ad = AAD_TAG + self.file_id + RUNTIME_AD
        mac = hmac.new(self._nonce_key, ad, "sha256")
        mac.update(plain)
        nonce = mac.digest()[:NONCE_SIZE]
        return nonce + self._aead.encrypt(nonce, plain, ad)

    def open_runtime(self, stored: bytes, offset: int | None = None) -> bytes:
        from cryptography.exceptions import InvalidTag

        if len(stored) < OVERHEAD:
            raise CorruptError("checkpoint runtime blob is too short to be sealed", offset=offset, check="aead")
        try:
            return self._aead.decrypt(stored[:NONCE_SIZE], stored[NONCE_SIZE:], AAD_TAG + self.file_id + RUNTIME_AD)
        except InvalidTag:
            raise CorruptError("checkpoint runtime blob does not authenticate under the file key", offset=offset,
                               check="aead") from None

    def open(self, fh: FrameHeader, stored: bytes | memoryview) -> bytes:
        """The plaintext of a sealed payload; CorruptError when it does not authenticate."""
        from cryptography.exceptions import InvalidTag

        ad = AAD_TAG + self.file_id + fh.raw
        try:
            mv = memoryview(stored)  # no copy of a large payload before the cipher reads it
            return self._aead.decrypt(bytes(mv[:NONCE_SIZE]), mv[NONCE_SIZE:], ad)
        except InvalidTag:
            raise CorruptError(f"{fh.type_name} frame does not authenticate under the file key (damaged, moved "
                               "or from another file)", offset=fh.offset, seq=fh.seq, check="aead") from None


def key_id(file_key: bytes, file_id: bytes) -> bytes:
    """10.1: names the file key in every KEYSLOT frame, so a slot that unwraps another key is refused."""
    return hkdf(file_key, file_id, KEY_ID_INFO, KEY_ID_SIZE)


def unseal(src: object, fh: FrameHeader, payload: bytes) -> tuple[FrameHeader, bytes]:
    """A frame as its readers see it (10.2): a sealed payload opened, with the header's
    payload length and flags of the plaintext. ``src`` carries the file's cipher
    (``crypt``), or ``keyless`` for a structural check of an encrypted file without its key."""
    sealed = bool(fh.flags & C.FFLAG_AEAD)
    c: FrameCipher | None = getattr(src, "crypt", None)
    if c is None:
        if getattr(src, "keyless", False):
            if (fh.ftype in SEALED_TYPES) != sealed:  # 10.6: without the key, where seals are is still checked
                raise CorruptError(f"{fh.type_name} frame is {'sealed' if sealed else 'not sealed'} in an "
                                   "encrypted capsule (10.2)", offset=fh.offset, seq=fh.seq, check="aead")
            return fh, payload
        if not sealed:
            return fh, payload
        raise CorruptError("sealed frame in a capsule whose header says it is not encrypted", offset=fh.offset,
                           seq=fh.seq, check="aead")
    if (fh.ftype in SEALED_TYPES) != sealed:
        raise CorruptError(f"{fh.type_name} frame is {'sealed' if sealed else 'not sealed'} in an encrypted "
                           "capsule (10.2)", offset=fh.offset, seq=fh.seq, check="aead")
    if not sealed:
        return fh, payload
    plain = c.open(fh, payload)
    return fh.opened(len(plain)), plain


# --- 10.3-10.4 key slots ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slot:
    """One wrapped copy of the file key: for a recipient (``x25519``) or a passphrase (``scrypt``)."""

    type: str
    wrapped: bytes
    recipient: bytes = b""  # x25519: the recipient's Ed25519 public key (14.1)
    epk: bytes = b""  # x25519: the ephemeral X25519 public key
    salt: bytes = b""  # scrypt
    log_n: int = 0  # scrypt

    def to_value(self) -> dict[str, Any]:
        if self.type == "x25519":
            return {"epk": self.epk, "recipient": self.recipient, "type": "x25519", "wrapped": self.wrapped}
        return {"log_n": self.log_n, "salt": self.salt, "type": "scrypt", "wrapped": self.wrapped}


@dataclass(frozen=True, slots=True)
class KeySlots:
    """A KEYSLOT frame (10.3): every slot of the file, the key id, the previous KEYSLOT frame."""

    key_id: bytes
    slots: tuple[Slot, ...]
    prev: int | None

    def encode(self) -> bytes:
        return canon.pack({"key_id": self.key_id, "prev": self.prev, "slots": [s.to_value() for s in self.slots]})

    @property
    def recipients(self) -> list[bytes]:
        return [s.recipient for s in self.slots if s.type == "x25519"]

    @property
    def has_passphrase(self) -> bool:
        return any(s.type == "scrypt" for s in self.slots)


def parse_keyslots(payload: bytes, offset: int, seq: int) -> KeySlots:
    """10.3: a KEYSLOT payload, strictly (closed key sets, sizes, bounds)."""
    def bad(msg: str) -> CorruptError:
        return CorruptError(f"KEYSLOT: {msg}", offset=offset, seq=seq, check="keyslot")

    try:
        v = canon.decode(payload)
    except DataError as e:
        raise bad(str(e)) from None
    if not isinstance(v, dict) or set(v) != {"key_id", "prev", "slots"}:
        raise bad("fields")
    kid, prev, slots = v["key_id"], v["prev"], v["slots"]
    if not isinstance(kid, bytes) or len(kid) != KEY_ID_SIZE:
        raise bad("key_id")
    if prev is not None and not (type(prev) is int and C.HEADER_SIZE <= prev < offset):
        raise bad("prev")
    if not isinstance(slots, list) or not 1 <= len(slots) <= MAX_SLOTS:
        raise bad(f"1 to {MAX_SLOTS} slots")
    out = []
    for s in slots:
        if not isinstance(s, dict):
            raise bad("slot")
        if s.get("type") == "x25519" and set(s) == {"epk", "recipient", "type", "wrapped"}:
            if not all(isinstance(s[k], bytes) and len(s[k]) == 32 for k in ("epk", "recipient")):
                raise bad("x25519 slot keys")
            slot = Slot("x25519", s["wrapped"], recipient=s["recipient"], epk=s["epk"])
        elif s.get("type") == "scrypt" and set(s) == {"log_n", "salt", "type", "wrapped"}:
            if type(s["log_n"]) is not int or not SCRYPT_LOG_N_MIN <= s["log_n"] <= SCRYPT_LOG_N_MAX:
                raise bad(f"scrypt work factor outside {SCRYPT_LOG_N_MIN}..{SCRYPT_LOG_N_MAX}")
            if not isinstance(s["salt"], bytes) or len(s["salt"]) != 16:
                raise bad("scrypt salt")
            slot = Slot("scrypt", s["wrapped"], salt=s["salt"], log_n=s["log_n"])
        else:
            raise bad("unknown slot type or fields")
        if not isinstance(slot.wrapped, bytes) or len(slot.wrapped) != KEY_SIZE + TAG_SIZE:
            raise bad("wrapped key size")
        out.append(slot)
    # 10.3: recipients first, each once, by their key bytes; then at most one passphrase slot
    xs = [s.recipient for s in out if s.type == "x25519"]
    if [s.type for s in out] != ["x25519"] * len(xs) + ["scrypt"] * (len(out) - len(xs)) or len(out) - len(xs) > 1:
        raise bad("slots out of order: recipients first, then at most one passphrase slot")
    if any(a >= b for a, b in zip(xs, xs[1:], strict=False)):
        raise bad("recipient slots not sorted by key, or a recipient twice")
    return KeySlots(kid, tuple(out), prev)


def _wrap(kek: bytes, file_key: bytes, file_id: bytes) -> bytes:
    return aead.ChaCha20Poly1305(kek).encrypt(_WRAP_NONCE, file_key, file_id)


def _unwrap(kek: bytes, wrapped: bytes, file_id: bytes) -> bytes | None:
    from cryptography.exceptions import InvalidTag

    try:
        return aead.ChaCha20Poly1305(kek).decrypt(_WRAP_NONCE, wrapped, file_id)
    except InvalidTag:
        return None


def _x25519_kek(shared: bytes, epk: bytes, their_x: bytes) -> bytes:
    if shared == bytes(32):  # a low-order point: the "agreement" is public
        raise DataError("recipient: a low-order X25519 point")
    return hkdf(shared, epk + their_x, X25519_INFO)


def recipient_slot(recipient: PublicKey, file_key: bytes, file_id: bytes, *, reproducible: bool = False) -> Slot:
    """10.3: wrap the file key for a capsule public key."""
    their_x = x25519_public(recipient.raw)
    if reproducible:  # 10.5: the ephemeral key follows from the file key and the recipient
        esk = x25519.X25519PrivateKey.from_private_bytes(hkdf(file_key, file_id + recipient.raw, EPHEMERAL_INFO))
    else:
        esk = x25519.X25519PrivateKey.generate()
    from cryptography.hazmat.primitives import serialization as s

    epk = esk.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
    shared = esk.exchange(x25519.X25519PublicKey.from_public_bytes(their_x))
    return Slot("x25519", _wrap(_x25519_kek(shared, epk, their_x), file_key, file_id),
                recipient=recipient.raw, epk=epk)


def scrypt_kek(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=1 << log_n, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)


def passphrase_slot(passphrase: bytes, file_key: bytes, file_id: bytes, *, log_n: int = SCRYPT_LOG_N_DEFAULT,
                    reproducible: bool = False) -> Slot:
    """10.4: wrap the file key under a passphrase."""
    if not SCRYPT_LOG_N_MIN <= log_n <= SCRYPT_LOG_N_MAX:
        raise UsageError(f"scrypt work factor must be {SCRYPT_LOG_N_MIN}..{SCRYPT_LOG_N_MAX}")
    if not passphrase:
        raise UsageError("the passphrase is empty")
    salt = hkdf(file_key, file_id, SCRYPT_SALT_INFO, 16) if reproducible else os.urandom(16)
    return Slot("scrypt", _wrap(scrypt_kek(passphrase, salt, log_n), file_key, file_id), salt=salt, log_n=log_n)


def unlock(ks: KeySlots, file_id: bytes, *, identity: PrivateKey | None = None,
           passphrase: bytes | None = None, where: str = "") -> bytes:
    """10.3-10.4: the file key from the first slot the key given opens; its key id must match."""
    if identity is None and passphrase is None:
        raise KeyRequired(f"{where}is encrypted: give --identity KEY or --passphrase-env VAR "
                          "(library: identity= or passphrase=)")
    got = None
    if identity is not None:
        mine = identity.public_key.raw
        for s in ks.slots:
            if s.type == "x25519" and s.recipient == mine:
                sk = x25519.X25519PrivateKey.from_private_bytes(x25519_private(_seed(identity)))
                try:
                    shared = sk.exchange(x25519.X25519PublicKey.from_public_bytes(s.epk))
                    got = _unwrap(_x25519_kek(shared, s.epk, x25519_public(mine)), s.wrapped, file_id)
                except (ValueError, DataError):  # a low-order `epk`: OpenSSL refuses the all-zero agreement
                    got = None
                if got is None:
                    raise CorruptError(f"the key slot for key {identity.key_id} does not open (damaged)",
                                       check="keyslot")
                break
    if got is None and passphrase is not None:
        for s in ks.slots:
            if s.type == "scrypt":
                got = _unwrap(scrypt_kek(passphrase, s.salt, s.log_n), s.wrapped, file_id)
                if got is not None:
                    break
    if got is None:
        what = " and ".join(x for x in ("key " + identity.key_id if identity else "",
                                        "passphrase" if passphrase is not None else "") if x)
        raise WrongKey(f"{where}no key slot opens with the {what} given")
    if not hmac.compare_digest(key_id(got, file_id), ks.key_id):
        raise CorruptError("a key slot holds another file key than the file's", check="keyslot")
    return got


def new_file_key(file_id: bytes, *, reproducible_secret: bytes | None = None,
                 readers: tuple[list[bytes], bool] = ([], False)) -> bytes:
    """10.1: random, or in reproducible mode (10.5) derived from a secret the writer holds and
    from who may read the file (recipients' keys, whether a passphrase opens it), so two files
    for different readers never share a key."""
    if reproducible_secret is None:
        return os.urandom(KEY_SIZE)
    recipients, passphrase = readers
    binding = hashlib.sha256(b"".join(sorted(recipients)) + (b"\x01" if passphrase else b"\x00")).digest()
    return hkdf(reproducible_secret, file_id, REPRO_KEY_INFO + binding)


def reproducible_secret(identity: PrivateKey | None, passphrase: bytes | None, file_id: bytes,
                        log_n: int) -> bytes:
    """10.5: the secret a reproducible file key is derived from: the identity's seed, else the passphrase."""
    if identity is not None:
        return hashlib.sha256(b"capsule/v1/identity-secret\x00" + _seed(identity)).digest()
    if passphrase:
        return scrypt_kek(passphrase, hashlib.sha256(b"capsule/v1/scrypt-file-key\x00" + file_id).digest()[:16],
                          log_n)
    raise UsageError("reproducible mode (SOURCE_DATE_EPOCH) needs a secret to derive the file key from: "
                     "give --identity KEY (one of the recipients) or a passphrase")
