"""CHECKPOINT and KEYSET frame payloads (spec 14.9). Sans-IO.

A CHECKPOINT frame carries the signed :class:`CheckpointBody` as the exact
bytes that were signed (never re-serialized to verify, DSSE style), the
signatures, the offset of the previous CHECKPOINT frame and an optional
runtime-state blob whose SHA-256 the body names. A KEYSET frame carries a
keyset and, for every keyset after the first, the rotation signatures of a
threshold of the previous keyset and of the new one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from ..core import constants as C
from ..core.errors import CorruptError, NonCanonicalError
from ..format import canonical as canon
from .keys import CHECKPOINT_TAG
from .signing import (
    CheckpointBody,
    Keyset,
    Rotation,
    Signature,
    signatures_from_value,
    signatures_to_value,
)

MAX_RUNTIME = 64 * 1024 * 1024  # 11: a checkpoint's runtime blob


@dataclass(frozen=True, slots=True)
class CheckpointFrame:
    """A signed checkpoint as :meth:`Capsule.checkpoints`, :meth:`Capsule.checkpoint` and
    :meth:`Capsule.find_checkpoint` return it (exported as ``capsule.CheckpointFrame``).

    Read it through the properties (``label``, ``seq``, ``time``, ``state_root``,
    ``root``, ``signers``) or ``to_dict()``, the shape ``capsule checkpoints --json``
    prints; ``body`` is the signed :class:`~capsule.format.signing.CheckpointBody`
    itself and ``runtime`` the runtime-state blob saved with it, if any.

    >>> import capsule
    >>> key = capsule.generate_key()
    >>> with capsule.create("agent.capsule") as cap:
    ...     c = cap.checkpoint("day-1", key=key, runtime_state=b"cursor=7")
    ...     [(c.label, c.state_root == cap.state_root, c.runtime) for c in cap.checkpoints()]
    [('day-1', True, b'cursor=7')]
    """

    offset: int
    body_raw: bytes
    body: CheckpointBody
    sigs: tuple[Signature, ...]
    prev_offset: int | None
    runtime: bytes | None

    @property
    def label(self) -> str:
        """The label it was signed with (14.8); labels need not be unique, the newest wins."""
        return self.body.label

    @property
    def seq(self) -> int:
        """14.8 ``tree_size``: how many frames its Merkle root covers; the seq ``capsule checkpoints`` shows."""
        return self.body.tree_size

    @property
    def time(self) -> int:
        """When it was signed: nanoseconds since the Unix epoch (UTC), from the capsule's clock."""
        return self.body.time

    @property
    def state_root(self) -> str:
        """The state root it signs (hex), as :attr:`Capsule.state_root` gives it."""
        return self.body.state_root.hex()

    @property
    def root(self) -> str:
        """The Merkle root it signs (hex), as :attr:`Capsule.root` gives it."""
        return self.body.root.hex()

    @property
    def signers(self) -> tuple[str, ...]:
        """The key ids that signed it, sorted."""
        return tuple(sorted(s.key_id for s in self.sigs))

    @property
    def hash(self) -> bytes:
        """What the next checkpoint's ``prev`` names: over the stored body bytes."""
        return hashlib.sha256(CHECKPOINT_TAG + self.body_raw).digest()

    def to_dict(self) -> dict[str, Any]:
        from ..core.clock import iso

        return {"label": self.label, "seq": self.seq, "offset": self.offset, "hash": self.hash.hex(),
                "state_root": self.state_root, "root": self.root, "time": iso(self.time),
                "signers": list(self.signers), "keyset": self.body.keyset.hex(),
                "runtime_bytes": None if self.runtime is None else len(self.runtime)}


def encode_checkpoint(body: CheckpointBody, sigs: list[Signature], prev_offset: int | None,
                      runtime: bytes | None) -> bytes:
    return canon.pack({"body": body.body_bytes(), "prev": prev_offset, "runtime": runtime,
                       "sigs": signatures_to_value(sigs)})


def parse_checkpoint(payload: bytes, offset: int, seq: int) -> CheckpointFrame:
    def bad(msg: str) -> CorruptError:
        return CorruptError(msg, offset=offset, seq=seq, check="checkpoint")

    try:
        v = canon.decode(payload, max_bin=MAX_RUNTIME)
    except NonCanonicalError as e:
        raise bad(str(e)) from None
    if not isinstance(v, dict) or set(v) != {"body", "prev", "runtime", "sigs"}:
        raise bad("checkpoint fields are wrong")
    prev, runtime, raw = v["prev"], v["runtime"], v["body"]
    if prev is not None and not (type(prev) is int and C.HEADER_SIZE <= prev < offset):
        raise bad("checkpoint prev pointer is malformed")
    if runtime is not None and not isinstance(runtime, bytes):
        raise bad("checkpoint runtime is not bytes")
    if not isinstance(raw, bytes):
        raise bad("checkpoint body is not bytes")
    try:
        body = CheckpointBody.from_bytes(raw)
        sigs = signatures_from_value(v["sigs"])
    except (NonCanonicalError, ValueError) as e:
        raise bad(f"checkpoint body: {e}") from None
    if body.tree_size != seq:
        raise bad("checkpoint tree_size is not its own seq")
    if (runtime is None) != (body.runtime is None) or (
        runtime is not None and hashlib.sha256(runtime).digest() != body.runtime
    ):
        raise bad("checkpoint runtime blob does not match its hash")
    return CheckpointFrame(offset, raw, body, sigs, prev, runtime)


@dataclass(frozen=True, slots=True)
class KeysetFrame:
    """One keyset of the capsule's history, as :meth:`Capsule.keysets` and
    :meth:`Capsule.rotate_keys` return it (exported as ``capsule.KeysetFrame``):
    ``keyset`` (the :class:`Keyset`), the rotation ``sigs`` (empty for the first)."""

    offset: int
    keyset: Keyset
    sigs: tuple[Signature, ...]  # rotation signatures; empty for the first keyset
    prev_offset: int | None

    @property
    def rotation(self) -> Rotation:
        return Rotation(self.keyset, self.sigs)


def encode_keyset(keyset: Keyset, sigs: list[Signature] | tuple[Signature, ...], prev_offset: int | None) -> bytes:
    return canon.pack({"keyset": keyset.to_value(), "prev": prev_offset, "sigs": signatures_to_value(sigs)})


def parse_keyset(payload: bytes, offset: int, seq: int) -> KeysetFrame:
    def bad(msg: str) -> CorruptError:
        return CorruptError(msg, offset=offset, seq=seq, check="keyset")

    try:
        v = canon.decode(payload)
    except NonCanonicalError as e:
        raise bad(str(e)) from None
    if not isinstance(v, dict) or set(v) != {"keyset", "prev", "sigs"}:
        raise bad("keyset fields are wrong")
    prev = v["prev"]
    if prev is not None and not (type(prev) is int and C.HEADER_SIZE <= prev < offset):
        raise bad("keyset prev pointer is malformed")
    try:
        ks = Keyset.from_value(v["keyset"])
        sigs = signatures_from_value(v["sigs"])
    except (NonCanonicalError, ValueError) as e:
        raise bad(f"keyset: {e}") from None
    if (prev is None) != (not sigs):
        raise bad("the first keyset carries no rotation signatures; every later one does")
    return KeysetFrame(offset, ks, sigs, prev)


MAX_CARRIED = 1024  # 11, 15.2: carried checkpoints in one LINEAGE frame


@dataclass(frozen=True, slots=True)
class Carried:
    """A signed checkpoint of the parent carried into a fork or a compacted file (spec 15.2):
    the parent's body bytes exactly as signed, their signatures, and the ordinal (1 = the
    first) of this file's COMMIT whose state root the body's ``state_root`` names."""

    body_raw: bytes
    body: CheckpointBody
    sigs: tuple[Signature, ...]
    commit: int

    @property
    def hash(self) -> bytes:
        """The checkpoint's hash (14.8), as the parent's chain names it."""
        return hashlib.sha256(CHECKPOINT_TAG + self.body_raw).digest()

    def to_value(self) -> dict[str, Any]:
        return {"body": self.body_raw, "commit": self.commit, "sigs": signatures_to_value(self.sigs)}


def _parse_carried(v: object, bad: Any) -> tuple[Carried, ...]:
    """15.2: a non-empty array of at most MAX_CARRIED entries, in the parent's checkpoint
    order (body tree_size strictly increasing) with commit ordinals that never decrease."""
    if not isinstance(v, list) or not 1 <= len(v) <= MAX_CARRIED:
        raise bad(f"lineage carried is not an array of 1..{MAX_CARRIED} checkpoints")
    out: list[Carried] = []
    for i, e in enumerate(v):
        if not isinstance(e, dict) or set(e) != {"body", "commit", "sigs"} or not isinstance(e["body"], bytes) \
                or type(e["commit"]) is not int or e["commit"] < 1:
            raise bad(f"lineage carried checkpoint {i}: fields are wrong")
        try:
            body = CheckpointBody.from_bytes(e["body"])
            sigs = signatures_from_value(e["sigs"])
        except (NonCanonicalError, ValueError) as err:
            raise bad(f"lineage carried checkpoint {i}: {err}") from None
        if out and (body.tree_size <= out[-1].body.tree_size or e["commit"] < out[-1].commit):
            raise bad(f"lineage carried checkpoint {i}: repeated or out of order")
        out.append(Carried(e["body"], body, sigs, e["commit"]))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class CommitRef:
    """A COMMIT of another file, as a merged file's LINEAGE names it (spec 20.3): the file id,
    the COMMIT's seq (``tree_size``), its own ``root`` field, its chain value, and (for a
    parent, not for the ancestor) the hash of that file's newest checkpoint then, or nil."""

    parent: bytes
    tree_size: int
    root: bytes
    chain: bytes
    checkpoint: bytes | None = None

    def to_value(self, with_checkpoint: bool = True) -> dict[str, Any]:
        v: dict[str, Any] = {"chain": self.chain, "parent": self.parent, "root": self.root,
                             "tree_size": self.tree_size}
        if with_checkpoint:
            v["checkpoint"] = self.checkpoint
        return dict(sorted(v.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent.hex(), "tree_size": self.tree_size, "root": self.root.hex(),
                "chain": self.chain.hex(), "checkpoint": None if self.checkpoint is None else self.checkpoint.hex()}


def _parse_ref(v: object, bad: Any, what: str, with_checkpoint: bool) -> CommitRef:
    keys = {"chain", "parent", "root", "tree_size"} | ({"checkpoint"} if with_checkpoint else set())
    if not isinstance(v, dict) or set(v) != keys:
        raise bad(f"lineage {what} fields are wrong")
    ck = v.get("checkpoint")
    ok = (isinstance(v["parent"], bytes) and len(v["parent"]) == 16 and isinstance(v["root"], bytes)
          and len(v["root"]) == 32 and isinstance(v["chain"], bytes) and len(v["chain"]) == 32
          and type(v["tree_size"]) is int and v["tree_size"] >= 0
          and (ck is None or (isinstance(ck, bytes) and len(ck) == 32)))
    if not ok:
        raise bad(f"lineage {what} field types are wrong")
    return CommitRef(v["parent"], v["tree_size"], v["root"], v["chain"], ck)


@dataclass(frozen=True, slots=True)
class Lineage:
    """A fork's proof of where it came from (spec 15); a compacted file's (15.1); a merged
    file's (20.3: ``merge`` names the second parent, ``ancestor`` their common commit and
    ``kept`` how many records at the start are inherited from the two parents)."""

    parent: bytes  # the parent's file id
    root: bytes  # Merkle root named by the parent's commit at the fork point
    tree_size: int  # that commit's seq
    chain: bytes  # that commit's chain value
    checkpoint: bytes | None  # hash of the parent's latest checkpoint at the fork point
    carried: tuple[Carried, ...] = ()  # 15.2 (1.3): the parent's signed checkpoints whose state this file keeps
    # 15.1 (1.3), a compacted file only (all four or none): its policy, how many records it kept
    # (its first `kept` records, inherited), how many it dropped, the Merkle root of the dropped ids
    policy: str | None = None
    kept: int | None = None
    dropped: int | None = None
    dropped_root: bytes | None = None
    # 20.3 (1.5), a merged file only (with `kept`, no policy): the second parent and the ancestor
    merge: CommitRef | None = None
    ancestor: CommitRef | None = None

    @property
    def first(self) -> CommitRef:
        """The parent the top-level keys name (a merged file's first parent, 20.3)."""
        return CommitRef(self.parent, self.tree_size, self.root, self.chain, self.checkpoint)

    def to_value(self) -> dict[str, Any]:
        # keys in 5.1 order (sorted by UTF-8 bytes), so canonical.pack of this is canonical
        merged: dict[str, Any] = {}
        if self.merge is not None and self.ancestor is not None:
            merged = {"merge": self.merge.to_value(), "ancestor": self.ancestor.to_value(False),
                      "kept": self.kept}
        return dict(sorted({"chain": self.chain, "checkpoint": self.checkpoint, "parent": self.parent, "root": self.root,
                "tree_size": self.tree_size,
                **({"carried": [c.to_value() for c in self.carried]} if self.carried else {}),
                **({"policy": self.policy, "kept": self.kept, "dropped": self.dropped,
                    "dropped_root": self.dropped_root} if self.policy is not None else {}),
                **merged}.items()))

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent.hex(), "root": self.root.hex(), "tree_size": self.tree_size,
                "chain": self.chain.hex(), "checkpoint": None if self.checkpoint is None else self.checkpoint.hex(),
                **({"policy": self.policy, "kept": self.kept, "dropped": self.dropped,
                    "dropped_root": self.dropped_root.hex()} if self.dropped_root is not None else {}),
                # 20.3: `kept` here too, so a verifier exempts the inherited reverts (15.1's rule)
                **({"merge": self.merge.to_dict(), "ancestor": self.ancestor.to_dict(), "kept": self.kept}
                   if self.merge is not None and self.ancestor is not None else {})}


def parse_lineage(payload: bytes, offset: int, seq: int) -> Lineage:
    def bad(msg: str) -> CorruptError:
        return CorruptError(msg, offset=offset, seq=seq, check="lineage")

    try:
        v = canon.decode(payload)
    except NonCanonicalError as e:
        raise bad(str(e)) from None
    if not isinstance(v, dict) or not {"chain", "checkpoint", "parent", "root", "tree_size"} <= set(v) \
            or not set(v) <= {"carried", "chain", "checkpoint", "parent", "root", "tree_size", *_COMPACTED, *_MERGED}:
        raise bad("lineage fields are wrong")
    ok = (isinstance(v["parent"], bytes) and len(v["parent"]) == 16 and isinstance(v["root"], bytes)
          and len(v["root"]) == 32 and isinstance(v["chain"], bytes) and len(v["chain"]) == 32
          and type(v["tree_size"]) is int and v["tree_size"] >= 0
          and (v["checkpoint"] is None or (isinstance(v["checkpoint"], bytes) and len(v["checkpoint"]) == 32)))
    if not ok:
        raise bad("lineage field types are wrong")
    carried = _parse_carried(v["carried"], bad) if "carried" in v else ()
    if "merge" in v or "ancestor" in v:
        return _parse_merged(v, bad, carried)
    return Lineage(v["parent"], v["root"], v["tree_size"], v["chain"], v["checkpoint"], carried,
                   *_parse_compacted(v, bad))


_COMPACTED = ("policy", "kept", "dropped", "dropped_root")  # 15.1 (1.3)
_MERGED = ("merge", "ancestor")  # 20.3 (1.5), with `kept`


def _parse_merged(v: dict[str, Any], bad: Any, carried: tuple[Carried, ...]) -> Lineage:
    """20.3: `merge`, `ancestor` and `kept` all present; no compaction key, nothing carried."""
    if not {"merge", "ancestor", "kept"} <= set(v) or carried or any(k in v for k in _COMPACTED if k != "kept"):
        raise bad("lineage merge fields are wrong")
    kept = v["kept"]
    if type(kept) is not int or kept < 0:
        raise bad("lineage merge field types are wrong")
    second = _parse_ref(v["merge"], bad, "merge", True)
    ancestor = _parse_ref(v["ancestor"], bad, "ancestor", False)
    first = (v["parent"], v["chain"])
    if (second.parent, second.chain) <= first:  # 20.3: the parents in their order, distinct
        raise bad("lineage merge parents are not in order")
    return Lineage(v["parent"], v["root"], v["tree_size"], v["chain"], v["checkpoint"], (), None, kept,
                   merge=second, ancestor=ancestor)


def _parse_compacted(v: dict[str, Any], bad: Any) -> tuple[Any, ...]:
    """15.1: a compacted file's four fields, all present or none."""
    have = [k for k in _COMPACTED if k in v]
    if not have:
        return (None, None, None, None)
    pol, kept, dropped, root = (v.get(k) for k in _COMPACTED)
    if len(have) != 4 or pol not in ("history", "checkpoints", "live") or type(kept) is not int or kept < 0 \
            or type(dropped) is not int or dropped < 0 or not isinstance(root, bytes) or len(root) != 32:
        raise bad("lineage compaction fields are wrong")
    return (pol, kept, dropped, root)
