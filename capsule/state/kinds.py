"""Agent-state record kinds beyond ``memory`` (spec 7.2-7.6).

Every kind here is declared as a table of fields (name, validator, default);
one generic implementation turns that table into the canonical map (defaults
omitted, keys sorted), parses a stored map strictly (unknown fields and
spelled-out defaults refused) and renders JSON. Adding a kind is adding a
table and a frozen dataclass, then :func:`register_kind`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ..core.errors import InvalidRecordError, NonCanonicalError
from ..format.records import parse_meta, parse_text, parse_time, register_kind

_REQUIRED = object()
LIFECYCLE_OPS = ("forget", "redact", "supersede", "promote", "demote")  # 7.7.1 (1.3)


def parse_id(v: object, name: str = "id") -> bytes:
    """A record id: 32 bytes stored as bin; 64 hex digits in JSON."""
    if isinstance(v, bytes) and len(v) == 32:
        return v
    if isinstance(v, str) and len(v) == 64:
        try:
            return bytes.fromhex(v)
        except ValueError:
            pass
    raise InvalidRecordError(f"{name} must be a record id (64 hex digits)")


def parse_ids(v: object, name: str = "evidence") -> tuple[bytes, ...]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence):
        raise InvalidRecordError(f"{name} must be a list of record ids")
    out: list[bytes] = []
    seen: set[bytes] = set()  # a list's `in` made a 7,000-id drop list cost 1.5 ms per id
    for x in v:
        rid = parse_id(x, name)
        if rid in seen:
            raise InvalidRecordError(f"{name} lists {rid.hex()} twice")
        seen.add(rid)
        out.append(rid)
    return tuple(out)


def parse_texts(v: object, name: str) -> tuple[str, ...]:
    if isinstance(v, str | bytes) or not isinstance(v, Sequence):
        raise InvalidRecordError(f"{name} must be a list of strings")
    return tuple(parse_text(x, name) for x in v)


def parse_choice(*choices: str) -> Callable[[object, str], str]:
    def parse(v: object, name: str) -> str:
        if v not in choices:
            raise InvalidRecordError(f"{name} must be one of {', '.join(choices)}, not {v!r}")
        return str(v)

    return parse


def parse_key_id(v: object, name: str) -> str:
    if not (isinstance(v, str) and len(v) == 32 and all(c in "0123456789abcdef" for c in v)):
        raise InvalidRecordError(f"{name} must be a key id (32 lowercase hex digits)")
    return v


def parse_bytes(n: int) -> Callable[[object, str], bytes]:
    def parse(v: object, name: str) -> bytes:
        if isinstance(v, str):
            try:
                v = bytes.fromhex(v)
            except ValueError:
                raise InvalidRecordError(f"{name} must be {n} bytes (hex in JSON)") from None
        if not isinstance(v, bytes) or len(v) != n:
            raise InvalidRecordError(f"{name} must be {n} bytes (hex in JSON)")
        return v

    return parse


def parse_keys(v: object, name: str) -> tuple[bytes, ...]:
    """Ed25519 public keys, raw 32 bytes each (hex in JSON), sorted and unique."""
    if isinstance(v, str | bytes) or not isinstance(v, Sequence):
        raise InvalidRecordError(f"{name} must be a list of public keys")
    from ..format.keys import PublicKey

    keys = {parse_bytes(32)(x, name) for x in v}
    for k in keys:
        PublicKey(k)  # 14.1: canonical, not small order, wherever a key appears (writer and reader alike)
    return tuple(sorted(keys))


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    parse: Callable[[object, str], Any]
    default: Any = _REQUIRED
    # stored form -> canonical msgpack value, and canonical -> JSON
    store: Callable[[Any], Any] = lambda v: v
    show: Callable[[Any], Any] = lambda v: v


def _ids_store(v: tuple[bytes, ...]) -> list[bytes]:
    return list(v)


def _ids_show(v: tuple[bytes, ...]) -> list[str]:
    return [x.hex() for x in v]


class KindBase:
    """Generic behaviour for table-declared kinds (mixed into frozen dataclasses)."""

    kind: ClassVar[str]
    SPEC: ClassVar[tuple[Field, ...]]
    FIELDS: ClassVar[frozenset[str]]
    __slots__ = ()
    if TYPE_CHECKING:  # provided by each dataclass
        id: str
        time: int

        def __init__(self, **kw: Any) -> None: ...

    @classmethod
    def build(cls, *, time: object, **kw: object) -> Any:
        unknown = set(kw) - {f.name for f in cls.SPEC}
        if unknown:
            raise InvalidRecordError(f"unknown {cls.kind} field(s): {', '.join(sorted(unknown))}")
        vals: dict[str, Any] = {"time": parse_time(time)}
        for f in cls.SPEC:
            if f.name in kw and kw[f.name] is not None:
                vals[f.name] = f.parse(kw[f.name], f.name)
            elif f.default is _REQUIRED:
                raise InvalidRecordError(f"{cls.kind} needs {f.name}")
            else:
                vals[f.name] = f.default
        return cls(**vals)

    def to_value(self) -> dict[str, Any]:
        v: dict[str, Any] = {"kind": self.kind, "time": self.time}
        for f in self.SPEC:
            x = getattr(self, f.name)
            if f.default is not _REQUIRED and x == f.default:
                continue  # defaults are omitted: one encoding per record (7)
            v[f.name] = f.store(x)
        return dict(sorted(v.items()))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, "time": self.time}
        for f in self.SPEC:
            d[f.name] = f.show(getattr(self, f.name))
        return d

    @classmethod
    def from_value(cls, v: Mapping[str, Any], rid: str = "") -> Any:
        extra = set(v) - cls.FIELDS
        if extra:
            raise InvalidRecordError(f"unknown {cls.kind} field(s): {', '.join(sorted(extra))}")
        rec = cls.build(time=v.get("time", -1), **{k: x for k, x in v.items() if k not in ("kind", "time")})
        if rec.to_value() != v:
            raise NonCanonicalError(f"{cls.kind} record is not in canonical form (spec 7)")
        names = [f.name for f in fields(cast(Any, cls)) if f.name != "id"]
        return cls(**{n: getattr(rec, n) for n in names}, id=rid)


def _declare(cls: type[Any]) -> type[Any]:
    cls.FIELDS = frozenset({"kind", "time", *(f.name for f in cls.SPEC)})
    return register_kind(cls)


def _meta(v: object, name: str) -> dict[str, Any]:
    try:
        return parse_meta(v)
    except InvalidRecordError as e:
        raise InvalidRecordError(f"{name}{str(e).removeprefix('meta')}") from None


def _text(v: object, name: str) -> str:
    return parse_text(v, name)


def _rule(v: object, name: str) -> dict[str, Any]:
    from .rules import parse_rule  # 7.3.1: the machine-readable rule a constraint may carry

    return parse_rule(v, name)


EMPTY_MAP: Mapping[str, Any] = {}


@_declare
@dataclass(frozen=True, slots=True)
class Decision(KindBase):
    """An immutable decision with the evidence it rests on (spec 7.2)."""

    kind: ClassVar[str] = "decision"
    SPEC: ClassVar[tuple[Field, ...]] = (
        Field("summary", _text),
        Field("rationale", _text, ""),
        Field("evidence", lambda v, n: parse_ids(v, n), (), _ids_store, _ids_show),
        Field("inputs", _meta, EMPTY_MAP, dict, dict),
        Field("alternatives", lambda v, n: parse_texts(v, n), (), list, list),
    )
    time: int
    summary: str
    rationale: str = ""
    evidence: tuple[bytes, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)
    alternatives: tuple[str, ...] = ()
    id: str = field(default="", compare=False)


@_declare
@dataclass(frozen=True, slots=True)
class Constraint(KindBase):
    """A rule the agent must follow (spec 7.3). The latest record for a given
    (scope, text) decides whether it is active; ``status: revoked`` lifts it."""

    kind: ClassVar[str] = "constraint"
    SPEC: ClassVar[tuple[Field, ...]] = (
        Field("text", _text),
        Field("scope", _text, "global"),
        Field("status", parse_choice("active", "revoked"), "active"),
        Field("rule", lambda v, n: _rule(v, n), None, dict, lambda v: v),  # 7.3.1 (1.2)
    )
    time: int
    text: str
    scope: str = "global"
    status: str = "active"
    rule: Mapping[str, Any] | None = None
    id: str = field(default="", compare=False)


@_declare
@dataclass(frozen=True, slots=True)
class Approval(KindBase):
    """``approver`` (a key id) approves the record ``subject`` (spec 7.4):
    ``signature`` is Ed25519 over the DSSE PAE of the subject's 32-byte id."""

    kind: ClassVar[str] = "approval"
    SPEC: ClassVar[tuple[Field, ...]] = (
        Field("subject", lambda v, n: parse_id(v, n), _REQUIRED, lambda v: v, lambda v: v.hex()),
        Field("approver", parse_key_id),
        Field("signature", parse_bytes(64), _REQUIRED, lambda v: v, lambda v: v.hex()),
    )
    time: int
    subject: bytes
    approver: str
    signature: bytes
    id: str = field(default="", compare=False)


@_declare
@dataclass(frozen=True, slots=True)
class Identity(KindBase):
    """Who the agent is (spec 7.5). A change is a new record: the latest wins."""

    kind: ClassVar[str] = "identity"
    SPEC: ClassVar[tuple[Field, ...]] = (
        Field("agent_id", _text),
        Field("name", _text, ""),
        Field("model", _text, ""),
        Field("config", _meta, EMPTY_MAP, dict, dict),
        Field("keys", parse_keys, (), list, lambda v: [x.hex() for x in v]),
    )
    time: int
    agent_id: str
    name: str = ""
    model: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    keys: tuple[bytes, ...] = ()
    id: str = field(default="", compare=False)


@_declare
@dataclass(frozen=True, slots=True)
class Note(KindBase):
    """Free text, e.g. task progress (spec 7.6)."""

    kind: ClassVar[str] = "note"
    SPEC: ClassVar[tuple[Field, ...]] = (Field("text", _text),)
    time: int
    text: str
    id: str = field(default="", compare=False)


@_declare
@dataclass(frozen=True, slots=True)
class Revert(KindBase):
    """A liveness event (spec 7.7): the records in ``drop`` stop being live and
    those in ``restore`` are live again. A rollback names the checkpoint ``to``
    (its hash); re-adding a dropped record is a revert with only ``restore``.
    Events are history, not state."""

    kind: ClassVar[str] = "revert"
    INTERNAL: ClassVar[bool] = True  # written by rollback and re-adds only (7.7)
    SPEC: ClassVar[tuple[Field, ...]] = (
        Field("after", parse_bytes(32), _REQUIRED, lambda v: v, lambda v: v.hex()),
        Field("to", parse_bytes(32), None, lambda v: v, lambda v: None if v is None else v.hex()),
        Field("drop", lambda v, n: parse_ids(v, n), (), _ids_store, _ids_show),
        Field("restore", lambda v, n: parse_ids(v, n), (), _ids_store, _ids_show),
        # 1.3 lifecycle events (7.7.1): what happened, to what, why, by whom
        Field("op", parse_choice(*LIFECYCLE_OPS), None, lambda v: v, lambda v: v),
        Field("by", lambda v, n: parse_ids(v, n), (), _ids_store, _ids_show),
        Field("evidence", lambda v, n: parse_ids(v, n), (), _ids_store, _ids_show),
        Field("reason", _text, ""),
        Field("actor", _text, ""),
    )
    time: int
    after: bytes  # Merkle root of the last commit before it: makes every revert unique
    to: bytes | None = None  # the checkpoint rolled back to; None when re-adding records
    drop: tuple[bytes, ...] = ()
    restore: tuple[bytes, ...] = ()
    op: str | None = None  # None: a rollback or a re-add; else a lifecycle event (7.7.1)
    by: tuple[bytes, ...] = ()  # the replacements (supersede, promote, demote)
    evidence: tuple[bytes, ...] = ()
    reason: str = ""
    actor: str = ""
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        op = self.op
        if op is None:
            if self.by or self.evidence or self.reason or self.actor:
                raise InvalidRecordError("revert: by, evidence, reason and actor need an op (7.7.1)")
            return
        if self.to is not None:
            raise InvalidRecordError(f"revert: a {op} event names no checkpoint (to)")
        if not self.drop:
            raise InvalidRecordError(f"revert: a {op} event drops at least one record")
        if op in ("forget", "redact"):
            if self.by or self.restore:
                raise InvalidRecordError(f"revert: a {op} event has no by or restore")
        elif not self.by:
            raise InvalidRecordError(f"revert: a {op} event names its replacement (by)")
        elif op != "supersede" and (len(self.drop) != 1 or len(self.by) != 1):
            raise InvalidRecordError(f"revert: a {op} event replaces exactly one record by one")
        if set(self.restore) - set(self.by):
            raise InvalidRecordError("revert: a lifecycle event restores only its replacements (by)")
        if set(self.by) & set(self.drop):
            raise InvalidRecordError("revert: a record cannot replace itself")


APPROVAL_PAYLOAD_TYPE = "application/vnd.capsule.approval"


def approval_message(subject: bytes) -> bytes:
    """What an approver signs: DSSE PAE over the subject's raw id (spec 7.4)."""
    from ..format.signing import pae

    return pae(APPROVAL_PAYLOAD_TYPE, subject)


def _int_in(lo: int, hi: int) -> Callable[[object, str], int]:
    def parse(v: object, name: str) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise InvalidRecordError(f"{name} must be an integer in {lo}..{hi}")
        return v

    return parse


@_declare
@dataclass(frozen=True, slots=True)
class VectorConfig(KindBase):
    """How this capsule's vector index is built (spec 7.10): fixed at first use.

    The first one in commit order governs; a writer never adds a second."""

    kind: ClassVar[str] = "vindex"
    INTERNAL: ClassVar[bool] = True  # written by the capsule with the first embedding
    SPEC: ClassVar[tuple[Field, ...]] = (
        Field("dim", _int_in(1, 65536)),
        Field("space", parse_choice("cosine", "ip", "l2"), "cosine"),
        Field("M", _int_in(2, 128), 16),
        Field("ef_construction", _int_in(1, 100_000), 200),
        Field("seed", _int_in(0, (1 << 31) - 1), 100),
        Field("embedder", lambda v, n: parse_text(v, n) if v != "" else "", ""),
    )
    time: int
    dim: int
    space: str = "cosine"
    M: int = 16
    ef_construction: int = 200
    seed: int = 100
    embedder: str = ""
    id: str = field(default="", compare=False)


def _register_fast() -> None:
    """Reverts are read in bulk by every liveness fold (13.1): their checked-in-C decoder."""
    from functools import partial

    from ..format.records import register_fast
    from .revfast import decode_revert

    register_fast("revert", partial(decode_revert, Revert))


_register_fast()
