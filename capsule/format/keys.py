"""Ed25519 keys and key files (spec 14.1-14.2); signatures and trust are in ``signing``.

Keys are Ed25519 (as in minisign). A key is named by its *key id*, a short
domain-separated hash of the raw public key (14.1); only canonical encodings of
points outside the small subgroup are keys. Private key files are PKCS#8 PEM or
scrypt-sealed (14.2), written 0600 and refused when others can read them.

>>> k = PrivateKey.from_seed(bytes(32))
>>> PublicKey.from_text(k.public_key.to_text()) == k.public_key
True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import AlreadyExists, DataError, InvalidRecordError, NotFound, UsageError
from ..core.lazy import lazy
from ..format.canonical import decode, encode

if TYPE_CHECKING:
    import cryptography.exceptions as _cx
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519 as _ed
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
else:  # cryptography is imported when a key is first used (start-up)
    _cx = lazy("cryptography.exceptions")
    serialization = lazy("cryptography.hazmat.primitives.serialization")
    _ed = lazy("cryptography.hazmat.primitives.asymmetric.ed25519")

# --- Constants (spec 14; to move into _constants.py) ---------------------------
KEY_ID_TAG = b"capsule/v1/key\x00"  # 14.1
KEYSET_TAG = b"capsule/v1/keyset\x00"  # 14.4
CHECKPOINT_TAG = b"capsule/v1/checkpoint\x00"  # 14.8
ROTATION_PAYLOAD_TYPE = "application/vnd.capsule.rotation+msgpack"  # 14.6
CHECKPOINT_PAYLOAD_TYPE = "application/vnd.capsule.checkpoint+msgpack"  # 14.8
PUBLIC_KEY_PREFIX = "capsule-ed25519"  # 14.2: first field of a .pub line
PUBLIC_KEY_SIZE = 32  # 14.1
SIGNATURE_SIZE = 64  # 14.5
KEY_ID_SIZE = 16  # 14.1: bytes, written as 32 lowercase hex digits
HASH_SIZE = 32  # 14.4, 14.8
FILE_ID_SIZE = 16  # 14.8 (spec 2.5)
MAX_KEYS = 256  # 14.4: keys in one keyset
MAX_SIGNATURES = 256  # 14.5: signatures on one body (bounds verification work)
MAX_LABEL = 1024  # 14.8: UTF-8 bytes of a checkpoint label
MAX_KEY_FILE = 64 * 1024  # 14.2: a key file is read no further than this

_U64 = (1 << 64) - 1
_I64 = (1 << 63) - 1
_HEX = frozenset("0123456789abcdef")


# --- Errors ----------------------------------------------------------------------
class KeyFileError(DataError):
    """A key file or public-key line is not what it should be (spec 14.2)."""


class KeyFileNotFound(NotFound, FileNotFoundError):
    """No key file at that path."""


class PassphraseError(UsageError, ValueError):
    """The passphrase does not fit the key file (spec 14.2)."""


class PassphraseRequired(PassphraseError):
    """The key file is encrypted and no passphrase was given."""


class WrongPassphrase(PassphraseError):
    """The passphrase does not decrypt the key file."""


class KeyUsageError(UsageError, ValueError):
    """A caller mistake with keys: too few signers, a malformed anchor, ..."""


class SignatureError(InvalidRecordError):
    """Signatures do not establish trust (spec 14.5-14.7)."""


class ThresholdError(SignatureError):
    """Fewer distinct keys of the keyset signed than its threshold (spec 14.5)."""

    def __init__(self, message: str, *, valid: int, needed: int) -> None:
        super().__init__(message)
        self.valid = valid
        self.needed = needed


class RotationError(SignatureError):
    """A rotation is malformed: the version does not advance by one (spec 14.6)."""


class AnchorError(SignatureError):
    """A chain of keysets does not start at the trust anchor (spec 14.7)."""


# --- Small validators ----------------------------------------------------------
def _fields(value: object, names: tuple[str, ...], what: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise InvalidRecordError(f"{what}: expected a map, got {type(value).__name__}")
    keys = set(value)
    if keys != set(names):
        unknown, missing = sorted(keys - set(names)), sorted(set(names) - keys)
        parts = [f"unknown field(s) {', '.join(map(str, unknown))}"] if unknown else []
        parts += [f"missing field(s) {', '.join(missing)}"] if missing else []
        raise InvalidRecordError(f"{what}: {'; '.join(parts)}")
    return value


def _bin(value: object, size: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise InvalidRecordError(f"{what}: expected {size} bytes")
    return value


def _int(value: object, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:  # type() refuses bool
        raise InvalidRecordError(f"{what}: expected an integer in [{lo}, {hi}]")
    return value


_P = 2**255 - 19
_Y_MASK = (1 << 255) - 1  # the top bit is the sign of x
#: y coordinates of the 8 points of small order (libsodium's blocklist): orders 4, 1, 2 and 8
_SMALL_ORDER_Y = frozenset({
    0, 1, _P - 1,
    int.from_bytes(bytes.fromhex("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"), "little"),
    int.from_bytes(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"), "little"),
})


# --- 14.1 Keys -------------------------------------------------------------------
@dataclass(frozen=True, slots=True, repr=False)
class PublicKey:
    """A raw 32-byte Ed25519 public key (spec 14.1)."""

    raw: bytes

    def __post_init__(self) -> None:
        _bin(self.raw, PUBLIC_KEY_SIZE, "public key (spec 14.1)")
        # 14.1: a point of small order (the identity among them) verifies forged
        # signatures and two encodings of one point would count as two signers,
        # so only canonical encodings of points outside the small subgroup pass.
        y = int.from_bytes(self.raw, "little") & _Y_MASK
        if y >= _P:
            raise InvalidRecordError("public key: not a canonical Ed25519 encoding (spec 14.1)")
        if y in _SMALL_ORDER_Y:
            raise InvalidRecordError("public key: a small-order Ed25519 point, which proves nothing (spec 14.1)")

    @property
    def key_id(self) -> str:
        """Lowercase hex of the first 16 bytes of SHA-256(KEY_ID_TAG || raw) (spec 14.1)."""
        return hashlib.sha256(KEY_ID_TAG + self.raw).digest()[:KEY_ID_SIZE].hex()

    def verify(self, data: bytes, sig: bytes) -> bool:
        """True when ``sig`` is a valid Ed25519 signature of ``data``; never raises."""
        if not isinstance(sig, bytes | bytearray | memoryview) or len(sig) != SIGNATURE_SIZE:
            return False
        try:
            _ed.Ed25519PublicKey.from_public_bytes(self.raw).verify(bytes(sig), bytes(data))
        except (_cx.InvalidSignature, ValueError, TypeError):
            return False
        return True

    def to_text(self) -> str:
        """The one-line ``.pub`` form, without the newline (spec 14.2)."""
        return f"{PUBLIC_KEY_PREFIX} {base64.b64encode(self.raw).decode('ascii')} {self.key_id}"

    @classmethod
    def from_text(cls, text: str) -> PublicKey:
        """Parse ``capsule-ed25519 <base64> <key id>``, strictly (spec 14.2)."""
        line = text.strip()
        parts = line.split(" ")
        if "\n" in line or "\r" in line or len(parts) != 3 or parts[0] != PUBLIC_KEY_PREFIX:
            raise KeyFileError(
                f"not a capsule public key: expected '{PUBLIC_KEY_PREFIX} <base64> <key id>'"
            )
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError("public key: the key is not valid base64") from None
        # 14.2: one spelling only, so a .pub file can be compared byte for byte.
        if len(raw) != PUBLIC_KEY_SIZE or base64.b64encode(raw).decode("ascii") != parts[1]:
            raise KeyFileError(f"public key: expected {PUBLIC_KEY_SIZE} bytes in canonical base64")
        key = cls(raw)
        if key.key_id != parts[2]:
            raise KeyFileError(
                f"public key: key id {parts[2]!r} does not match the key (damaged or edited)"
            )
        return key

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class PrivateKey:
    """An Ed25519 private key; its repr never shows secret material (spec 14.1)."""

    key: Ed25519PrivateKey
    public_key: PublicKey = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, _ed.Ed25519PrivateKey):
            raise KeyUsageError(f"expected an Ed25519 private key, got {type(self.key).__name__}")
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        object.__setattr__(self, "public_key", PublicKey(raw))

    @classmethod
    def from_seed(cls, seed: bytes) -> PrivateKey:
        """The key for a 32-byte RFC 8032 seed (for tests and derived keys)."""
        if type(seed) is not bytes or len(seed) != 32:
            raise KeyUsageError("an Ed25519 seed is exactly 32 bytes")
        return cls(_ed.Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data`` (deterministic, RFC 8032)."""
        return self.key.sign(bytes(data))

    def __repr__(self) -> str:
        return f"PrivateKey(key_id={self.key_id!r})"


def generate_key() -> PrivateKey:
    """A fresh random Ed25519 key (spec 14.1)."""
    return PrivateKey(_ed.Ed25519PrivateKey.generate())


# --- 14.2 Key files --------------------------------------------------------------
def _pub_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def _write_new(path: Path, data: bytes, mode: int, *, exact: bool) -> None:
    # O_CREAT|O_EXCL: the file never exists with wider permissions, not even for an
    # instant, and a symlink planted at the path is refused rather than followed.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise AlreadyExists(f"{path} already exists; pass overwrite=True to replace it") from None
    try:
        if exact and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # a strange umask may have dropped the owner's bits
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _write(path: Path, data: bytes, mode: int, *, exact: bool, overwrite: bool) -> None:
    if not overwrite:
        _write_new(path, data, mode, exact=exact)
        return
    # Replace atomically through a fresh file, so the old file's mode is never inherited.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    _write_new(tmp, data, mode, exact=exact)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_private_key(
    path: str | os.PathLike[str],
    key: PrivateKey,
    *,
    passphrase: bytes | None,
    overwrite: bool = False,
) -> Path:
    """Write ``key`` as PEM PKCS#8 with mode 0600, and ``<path>.pub`` beside it (spec 14.2).

    The passphrase, when given, seals the seed with scrypt + ChaCha20-Poly1305 (see ``_seal_seed``).
    Existing files are refused with :class:`AlreadyExists` unless ``overwrite``.
    Returns the path of the ``.pub`` file.
    """
    path = Path(path)
    pub = _pub_path(path)
    if passphrase is None:
        pem = key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    elif type(passphrase) is not bytes or not passphrase:
        raise PassphraseError("a passphrase must be non-empty bytes")
    else:
        pem = _seal_seed(key, passphrase)
    if not overwrite:
        for p in (path, pub):  # check both first, so a refusal writes nothing
            if os.path.lexists(p):
                raise AlreadyExists(f"{p} already exists; pass overwrite=True to replace it")
    _write(path, pem, 0o600, exact=True, overwrite=overwrite)
    _write(
        pub,
        (key.public_key.to_text() + "\n").encode("ascii"),
        0o644,
        exact=False,
        overwrite=overwrite,
    )
    return pub


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileNotFound(f"no key file at {os.fspath(path)}") from None
    except IsADirectoryError:
        raise KeyFileError(f"{os.fspath(path)} is a directory, not a key file") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(
            f"{os.fspath(path)} is not a key file (larger than {MAX_KEY_FILE} bytes)"
        )
    return data


def _key_type(obj: object) -> str:
    name = type(obj).__name__
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return name or "unknown"


# --- passphrase-sealed keys (14.2) --------------------------------------------------------
# PKCS#8 encryption in `cryptography` is PBKDF2 with 2,048 iterations and cannot
# be raised, which is weak against offline guessing. Sealed keys use scrypt
# (N=2^15, r=8, p=1, ~32 MiB) and ChaCha20-Poly1305 over the 32-byte seed, in a
# PEM-style block; the work factor is capped before computing on load.
_SEALED_BEGIN = b"-----BEGIN CAPSULE ENCRYPTED PRIVATE KEY-----"
_SEALED_END = b"-----END CAPSULE ENCRYPTED PRIVATE KEY-----"
_SCRYPT_LOG_N, _SCRYPT_R, _SCRYPT_P = 15, 8, 1
_SCRYPT_MAX_LOG_N = 17
#: 14.2: scrypt needs 128 * r * N bytes; a reader accepts 4x what a writer uses (32 MiB), so a
#: hostile key file cannot demand GiBs and minutes before "wrong passphrase".
_SCRYPT_MAX_MEMORY = 128 << 20


def _scrypt(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    return Scrypt(salt=salt, length=32, n=1 << log_n, r=r, p=p).derive(passphrase)


def _seal_seed(key: PrivateKey, passphrase: bytes) -> bytes:
    import base64

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    seed = key.key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                 serialization.NoEncryption())
    salt, nonce = os.urandom(16), os.urandom(12)
    kek = _scrypt(passphrase, salt, _SCRYPT_LOG_N, _SCRYPT_R, _SCRYPT_P)
    ct = ChaCha20Poly1305(kek).encrypt(nonce, seed, _SEALED_BEGIN)
    blob = encode({"ct": ct, "kdf": "scrypt", "log_n": _SCRYPT_LOG_N, "nonce": nonce, "p": _SCRYPT_P,
                   "r": _SCRYPT_R, "salt": salt})
    b64 = base64.encodebytes(blob).replace(b"\n", b"")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return b"\n".join([_SEALED_BEGIN, *lines, _SEALED_END]) + b"\n"


def _open_sealed(data: bytes, passphrase: bytes | None, where: str) -> PrivateKey:
    import base64
    import binascii

    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if passphrase is None:
        raise PassphraseRequired(f"{where} is encrypted; a passphrase is required")
    try:
        inner = data.split(_SEALED_BEGIN, 1)[1].split(_SEALED_END, 1)[0]
        v = decode(base64.b64decode(b"".join(inner.split()), validate=True))
        ok = (isinstance(v, dict) and set(v) == {"ct", "kdf", "log_n", "nonce", "p", "r", "salt"}
              and v["kdf"] == "scrypt" and type(v["log_n"]) is int and type(v["r"]) is int
              and type(v["p"]) is int and isinstance(v["salt"], bytes) and isinstance(v["nonce"], bytes)
              and len(v["nonce"]) == 12 and isinstance(v["ct"], bytes) and len(v["ct"]) == 48)
    except (IndexError, ValueError, binascii.Error):
        ok = False
    if not ok:
        raise KeyFileError(f"{where} is not a valid encrypted key file")
    # Cap the work factor before computing: a hostile file must not demand GiBs.
    # log_n < 16 * r: scrypt's own bound (RFC 7914: N < 2^(128 * r / 8)), which OpenSSL enforces
    # by failing as if out of memory
    if not (10 <= v["log_n"] <= _SCRYPT_MAX_LOG_N and 1 <= v["r"] <= 8 and 1 <= v["p"] <= 2
            and v["log_n"] < 16 * v["r"] and 128 * v["r"] * (1 << v["log_n"]) <= _SCRYPT_MAX_MEMORY):
        raise KeyFileError(f"{where}: scrypt parameters out of the allowed range (10 <= log_n <= "
                           f"{_SCRYPT_MAX_LOG_N}, log_n < 16 * r, 1 <= r <= 8, 1 <= p <= 2, at most "
                           f"{_SCRYPT_MAX_MEMORY >> 20} MiB of work memory)")
    kek = _scrypt(passphrase, v["salt"], v["log_n"], v["r"], v["p"])
    try:
        seed = ChaCha20Poly1305(kek).decrypt(v["nonce"], v["ct"], _SEALED_BEGIN)
    except InvalidTag:
        raise WrongPassphrase(f"wrong passphrase for {where} (or the file is damaged)") from None
    return PrivateKey(_ed.Ed25519PrivateKey.from_private_bytes(seed))


def _parse_private(data: bytes, passphrase: bytes | None, where: str) -> PrivateKey:
    if _SEALED_BEGIN in data:
        return _open_sealed(data, passphrase, where)
    if data.lstrip().startswith(PUBLIC_KEY_PREFIX.encode("ascii") + b" "):
        raise KeyFileError(f"{where} is a public key file; a private key file is needed")
    if b"OPENSSH PRIVATE KEY" in data:
        raise KeyFileError(f"{where} is an OpenSSH key; convert it with `ssh-keygen -p -m PKCS8`")
    if b"-----BEGIN " not in data or b"PRIVATE KEY-----" not in data:
        raise KeyFileError(f"{where} is not a private key file (no PEM private key block)")
    encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data
    if encrypted and passphrase is None:
        raise PassphraseRequired(f"{where} is encrypted; a passphrase is required")
    try:
        loaded = serialization.load_pem_private_key(data, passphrase)
    except TypeError as e:  # cryptography's way of saying "passphrase needed / not needed"
        if "not encrypted" in str(e):
            raise PassphraseError(f"{where} is not encrypted; do not pass a passphrase") from None
        raise PassphraseRequired(f"{where} is encrypted; a passphrase is required") from None
    except _cx.UnsupportedAlgorithm:
        raise KeyFileError(f"{where}: unsupported key type or encryption") from None
    except ValueError:
        if encrypted:
            raise WrongPassphrase(
                f"wrong passphrase for {where} (or the file is damaged)"
            ) from None
        raise KeyFileError(f"{where} is not a valid private key file") from None
    if not isinstance(loaded, _ed.Ed25519PrivateKey):
        raise KeyFileError(f"{where} holds an {_key_type(loaded)} key; capsule keys are Ed25519")
    return PrivateKey(loaded)


def load_private_key(path: str | os.PathLike[str], passphrase: bytes | None = None) -> PrivateKey:
    """Load a key written by :func:`save_private_key` (spec 14.2).

    Raises :class:`PassphraseRequired`, :class:`WrongPassphrase`,
    :class:`KeyFileError` (not a key file, wrong key type) or
    :class:`KeyFileNotFound`, each with a one-line message.
    """
    key = _parse_private(_read_key_file(path), passphrase, os.fspath(path))
    mode = os.stat(path).st_mode
    if mode & 0o077:
        # 14.2: like ssh, a private key others can read or replace is not used.
        raise KeyFileError(f"{os.fspath(path)} is accessible by other users (mode {mode & 0o777:o}); "
                           f"run: chmod 600 {os.fspath(path)}")
    return key


def load_public_key(
    source: str | os.PathLike[str], *, passphrase: bytes | None = None
) -> PublicKey:
    """A public key from a ``.pub`` line, a ``.pub`` file, a PEM public key or a
    private key file (the public half is derived; ``passphrase`` if encrypted) (spec 14.2).
    """
    if isinstance(source, str) and source.lstrip().startswith(PUBLIC_KEY_PREFIX + " "):
        return PublicKey.from_text(source)
    data = _read_key_file(source)
    where = os.fspath(source)
    if data.lstrip().startswith(PUBLIC_KEY_PREFIX.encode("ascii") + b" "):
        try:
            return PublicKey.from_text(data.decode("ascii"))
        except UnicodeDecodeError:
            raise KeyFileError(f"{where} is not a capsule public key file") from None
    if b"-----BEGIN PUBLIC KEY-----" in data:
        try:
            loaded = serialization.load_pem_public_key(data)
        except (ValueError, _cx.UnsupportedAlgorithm):
            raise KeyFileError(f"{where} is not a valid public key file") from None
        if not isinstance(loaded, _ed.Ed25519PublicKey):
            raise KeyFileError(
                f"{where} holds an {_key_type(loaded)} key; capsule keys are Ed25519"
            )
        return PublicKey(loaded.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    if b"PRIVATE KEY-----" not in data and _SEALED_BEGIN not in data:
        raise KeyFileError(f"{where} is not a key file (a KEY.pub from `capsule keygen`, a PEM public key "
                           "or a private key)")
    return _parse_private(data, passphrase, where).public_key
