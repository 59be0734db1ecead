"""Signatures and trust: DSSE encoding, keysets, rotation, checkpoint bodies (spec 14.3-14.8).

Trust is shaped like TUF. A *keyset* names keys and a threshold (14.4); a body
is trusted when a threshold of DISTINCT keys of the keyset signed it (14.5):
signatures by keys outside the keyset, malformed signatures and a second
signature by a key already counted add nothing. A keyset changes only by a
*rotation* (14.6): the next version, signed by a threshold of the old keys AND
a threshold of the new keys. A key the new keyset omits is revoked from then
on, because every later body is checked against the newest keyset only.

A file rewritten whole can carry any keyset its attacker likes, so a chain of
keysets means something only when it starts at a trust anchor held outside the
file (14.7): the anchor key itself, a keyset, or a keyset hash remembered from
an earlier verification.

Checkpoint bodies (14.8) bind the file id, the Merkle tree, the chain head, the
previous checkpoint, the keyset and the state root; signatures cover the stored
body bytes. Pure: no I/O.

>>> k = PrivateKey.from_seed(bytes(32))
>>> ks = Keyset.of([k.public_key])
>>> sigs = sign_body("text/plain", b"hi", [k])
>>> count_valid("text/plain", b"hi", sigs, ks)
1
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..core.errors import InvalidRecordError
from .canonical import decode, encode
from .keys import (
    _HEX,
    _I64,
    _U64,
    CHECKPOINT_PAYLOAD_TYPE,
    CHECKPOINT_TAG,
    FILE_ID_SIZE,
    HASH_SIZE,
    KEY_ID_SIZE,
    KEYSET_TAG,
    MAX_KEYS,
    MAX_LABEL,
    MAX_SIGNATURES,
    PUBLIC_KEY_SIZE,
    ROTATION_PAYLOAD_TYPE,
    SIGNATURE_SIZE,
    AnchorError,
    KeyUsageError,
    PrivateKey,
    PublicKey,
    RotationError,
    SignatureError,
    ThresholdError,
    _bin,
    _fields,
    _int,
)


# --- 14.3 Pre-authentication encoding ------------------------------------------------
def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE v1 PAE: ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` (spec 14.3).

    LEN is the byte length as ASCII decimal without leading zeros; the type is UTF-8.

    >>> pae("http://example.com/HelloWorld", b"hello world")
    b'DSSEv1 29 http://example.com/HelloWorld 11 hello world'
    """
    t = payload_type.encode("utf-8")
    b = bytes(body)
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(b), b)


# --- 14.4 Keysets -------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Keyset:
    """Keys sorted by raw bytes, unique, with 1 <= threshold <= len(keys) (spec 14.4).

    Use :meth:`Keyset.of` to build one from keys in any order.
    """

    version: int
    threshold: int
    keys: tuple[PublicKey, ...]

    def __post_init__(self) -> None:
        _int(self.version, 1, _U64, "keyset version (spec 14.4)")
        if type(self.keys) is not tuple or not all(type(k) is PublicKey for k in self.keys):
            raise InvalidRecordError("keyset keys must be a tuple of PublicKey (spec 14.4)")
        if not 1 <= len(self.keys) <= MAX_KEYS:
            raise InvalidRecordError(f"a keyset holds 1 to {MAX_KEYS} keys (spec 14.4)")
        for a, b in zip(self.keys, self.keys[1:], strict=False):
            if a.raw == b.raw:
                raise InvalidRecordError(f"keyset: duplicate key {a.key_id} (spec 14.4)")
            if a.raw > b.raw:
                raise InvalidRecordError("keyset: keys not sorted by raw bytes (spec 14.4)")
        if len({k.key_id for k in self.keys}) != len(self.keys):  # 14.1: ids name keys
            raise InvalidRecordError("keyset: two keys share a key id (spec 14.4)")
        _int(self.threshold, 1, len(self.keys), "keyset threshold (spec 14.4)")

    @classmethod
    def of(
        cls,
        keys: Iterable[PublicKey | PrivateKey],
        *,
        threshold: int = 1,
        version: int = 1,
    ) -> Keyset:
        """A keyset from keys in any order; duplicates are a caller mistake."""
        pubs = sorted(
            (k.public_key if isinstance(k, PrivateKey) else k for k in keys), key=lambda k: k.raw
        )
        if len({k.raw for k in pubs}) != len(pubs):
            raise KeyUsageError("the same key was given twice")
        return cls(version, threshold, tuple(pubs))

    def to_value(self) -> dict[str, Any]:
        """The canonical map ``{"keys": [bin32...], "threshold": n, "version": v}``."""
        return {
            "keys": [k.raw for k in self.keys],
            "threshold": self.threshold,
            "version": self.version,
        }

    @classmethod
    def from_value(cls, value: object) -> Keyset:
        """Strict inverse of :meth:`to_value` (spec 14.4)."""
        v = _fields(value, ("keys", "threshold", "version"), "keyset (spec 14.4)")
        keys = v["keys"]
        if type(keys) is not list or not 1 <= len(keys) <= MAX_KEYS:
            raise InvalidRecordError(
                f"keyset: keys must be a list of 1 to {MAX_KEYS} keys (spec 14.4)"
            )
        pubs = tuple(PublicKey(_bin(k, PUBLIC_KEY_SIZE, "keyset key (spec 14.4)")) for k in keys)
        return cls(v["version"], v["threshold"], pubs)

    def to_bytes(self) -> bytes:
        return encode(self.to_value())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Keyset:
        return cls.from_value(decode(raw))

    @property
    def digest(self) -> bytes:
        """SHA-256(KEYSET_TAG || canonical bytes) (spec 14.4)."""
        return hashlib.sha256(KEYSET_TAG + self.to_bytes()).digest()

    @property
    def keyset_hash(self) -> str:
        """:attr:`digest` as lowercase hex: the form a trust anchor is written in."""
        return self.digest.hex()

    def get(self, key_id: str) -> PublicKey | None:
        for k in self.keys:
            if k.key_id == key_id:
                return k
        return None


# --- 14.5 Signatures and thresholds ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Signature:
    """One signature over ``pae(type, body)``; ``key_id`` names the signer (spec 14.5).

    The constructor checks types only: a malformed signature is simply invalid
    when counted. :meth:`from_value` is strict about the stored form.
    """

    key_id: str
    sig: bytes

    def __post_init__(self) -> None:
        if type(self.key_id) is not str or type(self.sig) is not bytes:
            raise InvalidRecordError("signature: key_id must be text and sig bytes (spec 14.5)")

    def to_value(self) -> dict[str, Any]:
        return {"keyid": self.key_id, "sig": self.sig}

    @classmethod
    def from_value(cls, value: object) -> Signature:
        v = _fields(value, ("keyid", "sig"), "signature (spec 14.5)")
        kid = v["keyid"]
        if type(kid) is not str or len(kid) != 2 * KEY_ID_SIZE or not set(kid) <= _HEX:
            raise InvalidRecordError("signature: keyid must be 32 lowercase hex digits (spec 14.5)")
        return cls(kid, _bin(v["sig"], SIGNATURE_SIZE, "signature sig (spec 14.5)"))


def signatures_to_value(sigs: Iterable[Signature]) -> list[dict[str, Any]]:
    return [s.to_value() for s in sigs]


def signatures_from_value(value: object) -> tuple[Signature, ...]:
    """A strict list of at most MAX_SIGNATURES signatures (spec 14.5)."""
    if type(value) is not list or len(value) > MAX_SIGNATURES:
        raise InvalidRecordError(
            f"signatures: expected a list of at most {MAX_SIGNATURES} (spec 14.5)"
        )
    return tuple(Signature.from_value(s) for s in value)


def sign_body(payload_type: str, body: bytes, keys: Sequence[PrivateKey]) -> list[Signature]:
    """One signature per key over ``pae(payload_type, body)`` (spec 14.3, 14.5)."""
    message = pae(payload_type, body)
    return [Signature(k.key_id, k.sign(message)) for k in keys]


def count_valid(payload_type: str, body: bytes, sigs: Iterable[Signature], keyset: Keyset) -> int:
    """How many DISTINCT keys of ``keyset`` validly signed the body (spec 14.5).

    A key signing twice counts once; keys outside the keyset and malformed
    signatures are ignored.
    """
    message = pae(payload_type, body)
    by_id = {k.key_id: k for k in keyset.keys}
    counted: set[str] = set()
    for s in sigs:
        if not isinstance(s, Signature) or s.key_id in counted:
            continue  # 14.5: each key counts once, so a second signature is not even checked
        key = by_id.get(s.key_id)
        if key is not None and key.verify(message, s.sig):
            counted.add(s.key_id)
    return len(counted)


def check_threshold(
    payload_type: str,
    body: bytes,
    sigs: Iterable[Signature],
    keyset: Keyset,
    *,
    what: str = "body",
) -> int:
    """Raise :class:`ThresholdError` unless a threshold of ``keyset`` signed (spec 14.5).

    Returns the number of valid distinct signers.
    """
    valid = count_valid(payload_type, body, sigs, keyset)
    if valid < keyset.threshold:
        raise ThresholdError(
            f"{what}: {valid} valid signature(s) of {keyset.threshold} needed "
            f"from keyset v{keyset.version} (spec 14.5)",
            valid=valid,
            needed=keyset.threshold,
        )
    return valid


# --- 14.6 Rotation and revocation ---------------------------------------------------------
def rotation_body(old: Keyset, new: Keyset) -> bytes:
    """Canonical bytes of ``{"new": new, "prev": digest(old)}`` (spec 14.6).

    Binding the previous keyset's hash stops a rotation from being replayed
    onto another keyset that happens to share keys.
    """
    return encode({"new": new.to_value(), "prev": old.digest})


@dataclass(frozen=True, slots=True)
class Rotation:
    """The next keyset and the signatures that authorize it (spec 14.6)."""

    new: Keyset
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        if type(self.new) is not Keyset:
            raise InvalidRecordError("rotation: new must be a Keyset (spec 14.6)")
        sigs = self.signatures
        if type(sigs) is not tuple or not all(type(s) is Signature for s in sigs):
            raise InvalidRecordError(
                "rotation: signatures must be a tuple of Signature (spec 14.6)"
            )
        if len(sigs) > MAX_SIGNATURES:
            raise InvalidRecordError(f"rotation: more than {MAX_SIGNATURES} signatures (spec 14.5)")

    def to_value(self) -> dict[str, Any]:
        return {"new": self.new.to_value(), "signatures": signatures_to_value(self.signatures)}

    @classmethod
    def from_value(cls, value: object) -> Rotation:
        v = _fields(value, ("new", "signatures"), "rotation (spec 14.6)")
        return cls(Keyset.from_value(v["new"]), signatures_from_value(v["signatures"]))

    def to_bytes(self) -> bytes:
        return encode(self.to_value())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Rotation:
        return cls.from_value(decode(raw))


def verify_rotation(old: Keyset, rotation: Rotation) -> Keyset:
    """Accept ``rotation.new`` as the successor of ``old``, or raise (spec 14.6).

    It MUST be version ``old.version + 1`` and signed by a threshold of the old
    keys AND a threshold of the new keys, each key counted once per side (a key
    in both keysets signs once and counts on both sides).
    """
    new = rotation.new
    if new.version != old.version + 1:
        raise RotationError(
            f"rotation from keyset v{old.version} must make v{old.version + 1}, not v{new.version} (spec 14.6)"
        )
    body = rotation_body(old, new)
    step = f"rotation v{old.version}->v{new.version}"
    check_threshold(ROTATION_PAYLOAD_TYPE, body, rotation.signatures, old, what=f"{step}, old keys")
    check_threshold(ROTATION_PAYLOAD_TYPE, body, rotation.signatures, new, what=f"{step}, new keys")
    return new


def rotate(
    old_keyset: Keyset,
    new_keyset: Keyset,
    old_signers: Sequence[PrivateKey],
    new_signers: Sequence[PrivateKey],
) -> Rotation:
    """Sign the rotation ``old_keyset -> new_keyset`` (spec 14.6).

    A signer listed on both sides signs once. Raises :class:`KeyUsageError`
    when the result would not verify (wrong version, too few signers).
    """
    signers: dict[bytes, PrivateKey] = {}
    for k in (*old_signers, *new_signers):
        if old_keyset.get(k.key_id) is None and new_keyset.get(k.key_id) is None:
            raise KeyUsageError(f"signer {k.key_id} is in neither keyset")
        signers.setdefault(k.public_key.raw, k)
    body = rotation_body(old_keyset, new_keyset)
    rotation = Rotation(
        new_keyset, tuple(sign_body(ROTATION_PAYLOAD_TYPE, body, list(signers.values())))
    )
    try:
        verify_rotation(old_keyset, rotation)
    except SignatureError as e:
        raise KeyUsageError(f"cannot rotate: {e}") from None
    return rotation


def is_revoked(key: str | PublicKey, keysets: Sequence[Keyset]) -> bool:
    """True when the key was in an earlier keyset of the chain but the newest omits it (spec 14.6).

    Verification never needs this: bodies are checked against the newest keyset,
    which simply does not hold a revoked key. It exists to explain why.
    """
    key_id = key.key_id if isinstance(key, PublicKey) else key
    if not keysets or keysets[-1].get(key_id) is not None:
        return False
    return any(ks.get(key_id) is not None for ks in keysets[:-1])


# --- 14.7 Trust anchors ------------------------------------------------------------------
def _start(anchor: Keyset | PublicKey | str, genesis: Keyset | None) -> Keyset:
    if isinstance(anchor, Keyset):
        if genesis is not None and genesis != anchor:
            raise AnchorError("the first keyset is not the anchor keyset (spec 14.7)")
        return anchor
    if genesis is None:
        raise KeyUsageError("a key or keyset-hash anchor needs the first keyset (genesis=)")
    if isinstance(anchor, PublicKey):
        # 14.7: exactly the anchor key, threshold 1. "Contains the anchor" would let
        # a forger add a key of their own beside it and sign alone.
        if genesis.keys != (anchor,):
            raise AnchorError(
                f"the first keyset is not the anchor key {anchor.key_id} alone (spec 14.7)"
            )
        return genesis
    if isinstance(anchor, str):
        h = anchor.strip().lower()
        if len(h) != 2 * HASH_SIZE or not set(h) <= _HEX:
            raise KeyUsageError("a keyset-hash anchor is 64 hex digits")
        if genesis.keyset_hash != h:
            raise AnchorError(
                f"the first keyset hashes to {genesis.keyset_hash[:16]}..., "
                f"not the anchor {h[:16]}... (spec 14.7)"
            )
        return genesis
    raise KeyUsageError(
        f"a trust anchor is a Keyset, PublicKey or keyset hash, not {type(anchor).__name__}"
    )


def verify_chain(
    anchor: Keyset | PublicKey | str,
    rotations: Sequence[Rotation],
    *,
    genesis: Keyset | None = None,
) -> Keyset:
    """Walk ``rotations`` from the trust anchor and return the newest keyset (spec 14.7).

    The chain starts at ``genesis`` (the first keyset in the file); it is trusted
    only if it matches the anchor:

    * a :class:`Keyset` anchor: genesis must equal it (or be omitted);
    * a :class:`PublicKey` anchor: genesis must be exactly that one key (any
      version, threshold 1);
    * a keyset-hash string: genesis's :attr:`Keyset.keyset_hash` must equal it.

    Every rotation must then pass :func:`verify_rotation`.
    """
    keyset = _start(anchor, genesis)
    for rotation in rotations:
        keyset = verify_rotation(keyset, rotation)
    return keyset


def anchor_index(anchor: Keyset | PublicKey | str, chain: Sequence[Keyset]) -> int:
    """The position in a file's keyset ``chain`` where trust starts (spec 14.7).

    The anchor may name any keyset of the chain, not only the first: a verifier
    that knows of a rotation anchors on the newer keyset, and then nothing signed
    under an older one counts (so a leaked, rotated-out key cannot sign a
    truncated copy of the file into passing). The earliest match wins.
    """
    if not chain:
        raise AnchorError("the capsule has no keyset (no signed checkpoints)")
    why: AnchorError | None = None
    for i, ks in enumerate(chain):
        try:
            _start(anchor, ks)
            return i
        except AnchorError as e:
            why = why or e
    n = len(chain)
    raise AnchorError(f"no keyset of the {n} in this capsule matches the anchor"
                      + (" (rolled back to before a rotation?)" if n else "")) from why


# --- 14.8 Checkpoint bodies ---------------------------------------------------------------
_CHECKPOINT_FIELDS = (
    "chain",
    "keyset",
    "label",
    "origin",
    "prev",
    "root",
    "runtime",
    "state_root",
    "time",
    "tree_size",
)


@dataclass(frozen=True, slots=True)
class CheckpointBody:
    """What a checkpoint signature covers (spec 14.8).

    ``origin`` is the 16-byte file id, ``root`` the RFC 6962 Merkle root over
    ``tree_size`` frames, ``chain`` the chain value at that point, ``prev`` the
    :meth:`checkpoint_hash` of the previous checkpoint (None for the first),
    ``keyset`` the :attr:`Keyset.digest` of the signing keyset and ``time``
    nanoseconds since the Unix epoch (UTC).
    """

    origin: bytes
    tree_size: int
    root: bytes
    chain: bytes
    prev: bytes | None
    keyset: bytes
    state_root: bytes
    label: str
    time: int
    runtime: bytes | None = None  # SHA-256 of the runtime state blob saved with it, if any

    def __post_init__(self) -> None:
        _bin(self.origin, FILE_ID_SIZE, "checkpoint origin (spec 14.8)")
        _int(self.tree_size, 0, _U64, "checkpoint tree_size (spec 14.8)")
        for name in ("root", "chain", "keyset", "state_root"):
            _bin(getattr(self, name), HASH_SIZE, f"checkpoint {name} (spec 14.8)")
        if self.prev is not None:
            _bin(self.prev, HASH_SIZE, "checkpoint prev (spec 14.8)")
        if self.runtime is not None:
            _bin(self.runtime, HASH_SIZE, "checkpoint runtime (spec 14.8)")
        if type(self.label) is not str:
            raise InvalidRecordError("checkpoint label: expected text (spec 14.8)")
        try:
            size = len(self.label.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidRecordError("checkpoint label: not valid Unicode (spec 14.8)") from None
        if size > MAX_LABEL:
            raise InvalidRecordError(f"checkpoint label: longer than {MAX_LABEL} bytes (spec 14.8)")
        # 5.1: text is stored NFC; normalizing here keeps from_bytes(body_bytes()) == self.
        object.__setattr__(self, "label", unicodedata.normalize("NFC", self.label))
        _int(self.time, 0, _I64, "checkpoint time (spec 14.8)")

    def to_value(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CHECKPOINT_FIELDS}

    @classmethod
    def from_value(cls, value: object) -> CheckpointBody:
        v = _fields(value, _CHECKPOINT_FIELDS, "checkpoint body (spec 14.8)")
        return cls(**v)

    def body_bytes(self) -> bytes:
        """The canonical bytes that are stored and signed (spec 14.8)."""
        return encode(self.to_value())

    @classmethod
    def from_bytes(cls, raw: bytes) -> CheckpointBody:
        """Parse stored body bytes; non-canonical bytes are refused (spec 5.2)."""
        return cls.from_value(decode(raw))

    def checkpoint_hash(self) -> bytes:
        """SHA-256(CHECKPOINT_TAG || body bytes): what the next checkpoint's ``prev`` holds.

        Signatures are outside the hash, so adding a signature does not change it.
        """
        return hashlib.sha256(CHECKPOINT_TAG + self.body_bytes()).digest()

    def sign(self, keys: Sequence[PrivateKey]) -> list[Signature]:
        """Signatures over ``pae(CHECKPOINT_PAYLOAD_TYPE, body_bytes())`` (spec 14.8)."""
        return sign_body(CHECKPOINT_PAYLOAD_TYPE, self.body_bytes(), keys)


def verify_checkpoint(raw: bytes, sigs: Iterable[Signature], keyset: Keyset) -> CheckpointBody:
    """Check a threshold of ``keyset`` signed the stored bytes ``raw``, then parse them (spec 14.8).

    The body must also name ``keyset`` by its digest, so a checkpoint cannot be
    presented as signed under a keyset it did not commit to.
    """
    check_threshold(CHECKPOINT_PAYLOAD_TYPE, raw, sigs, keyset, what="checkpoint")
    body = CheckpointBody.from_bytes(raw)
    if body.keyset != keyset.digest:
        raise SignatureError(
            f"checkpoint names keyset {body.keyset.hex()[:16]}..., "
            f"not the verifying keyset v{keyset.version} (spec 14.8)"
        )
    return body
