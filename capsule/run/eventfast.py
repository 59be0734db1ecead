"""Stored ``task`` and ``action`` records straight to their record objects, checked in C (5.2, 7.8, 7.9).

Theory of operation: the queue is a fold of every task record of a file (7.9), and the state
counts every task and action record, so an agent with 100k tasks or side effects reads 100k+
of them when a process first asks what is due or what it believes, and each went through the
generic reader (``canonical.decode`` checking every scalar in Python, then the record's own
parse, which re-encodes it to compare): 30-40 µs a record, seconds at 100k. msgspec decodes
the record into a struct whose declared types and bounds are the spec's table (text lengths
in code points, int ranges, deps as a set of task ids, no unknown field), and one re-encoding
with the keys sorted must give the bytes back: that is the canonical check of 5.2 for them
(key order, shortest forms, a default spelled out, deps sorted and distinct: a set
re-encodes sorted and without the repeat), as in ``memframe`` and ``state.revfast``. What is
left is checked here: the fields a task event's ``op`` allows and needs, a nil ``result`` or
``value`` spelled out (their default), and NFC over the record's JSON text.

``payload``, ``inputs``, ``result`` and ``value`` are taken here only when they are flat (a map
of text, integers, booleans and nil; ``result`` and ``value`` may also be a list of those or
one of them); anything else (a float, bytes, nesting) leaves the record to the exact way,
which accepts it or raises the reader's error, so the result is what the exact way gives,
or nothing.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from msgspec.structs import astuple

from ..core import constants as C
from ..format import canonical as canon
from ..format.records import record_id
from .events import (
    _NS_MAX,
    EVENT_TYPES,
    MAX_ATTEMPTS,
    MAX_DEPS,
    MAX_NAME,
    MAX_TASK_ID,
    MAX_TEXT,
    Event,
)

_Ns = Annotated[int, Meta(ge=0, le=_NS_MAX)]
_Id = Annotated[str, Meta(min_length=1, max_length=MAX_TASK_ID)]
_Plain = str | int | bool | None
_Flat = Annotated[dict[str, _Plain], Meta(max_length=C.MAX_MAP)]  # 11: as the reference reader bounds them
_List = Annotated[list[_Plain], Meta(max_length=C.MAX_ARRAY)]
_U = UnsetType

# Every optional field is UNSET when absent, and a present one equal to its default is refused
# below (a default spelled out): msgspec's omit_defaults leaves out only the default object
# itself, so a decoded 1_000_000_000 equal to ``backoff``'s default would be written back and
# pass the byte comparison.


class _Base(msgspec.Struct, tag_field="op", forbid_unknown_fields=True):
    kind: Literal["task"]
    task: _Id
    time: _Ns


class _Add(_Base, tag="add"):
    name: Annotated[str, Meta(max_length=MAX_NAME)] | _U = UNSET
    deps: Annotated[set[_Id], Meta(max_length=MAX_DEPS)] | _U = UNSET
    not_before: _Ns | _U = UNSET
    deadline: _Ns | _U = UNSET
    priority: Annotated[int, Meta(ge=-(1 << 63), le=_NS_MAX)] | _U = UNSET
    max_attempts: Annotated[int, Meta(ge=1, le=MAX_ATTEMPTS)] | _U = UNSET
    backoff: _Ns | _U = UNSET
    backoff_cap: _Ns | _U = UNSET
    payload: _Flat | _U = UNSET


class _Claim(_Base, tag="claim"):
    worker: _Id
    lease: Annotated[int, Meta(ge=1, le=_NS_MAX)]


class _Heartbeat(_Claim, tag="heartbeat"):
    pass


class _Complete(_Base, tag="complete"):
    worker: _Id
    result: _Flat | _List | _Plain | _U = UNSET


class _Fail(_Base, tag="fail"):
    worker: _Id
    error: Annotated[str, Meta(max_length=MAX_TEXT)] | _U = UNSET


class _Cancel(_Base, tag="cancel"):
    reason: Annotated[str, Meta(max_length=MAX_TEXT)] | _U = UNSET


_STRUCTS = (_Add, _Claim, _Heartbeat, _Complete, _Fail, _Cancel)
_REQUIRED: Any = object()
#: per op: its event class and the fields it takes beyond task and time, each with its default
#: as the event holds it (_REQUIRED: a field decoding already demanded); filled with the decoder
_EVENTS: dict[str, tuple[type, tuple[tuple[str, Any], ...]]] = {}


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: (f.default if f.default is not dataclasses.MISSING else
                     f.default_factory() if f.default_factory is not dataclasses.MISSING else _REQUIRED)
            for f in dataclasses.fields(cls)}


def _spelled(v: Any, default: Any) -> bool:
    """A present value equal to its default (of the same type: ``True`` is not ``1``)."""
    return type(v) is type(default) and v == default


_task_dec: list[Any] = []


def _canonical(dec: Any, data: bytes) -> Any:
    """The struct ``dec`` decodes ``data`` into when those bytes are its canonical form (5.2: the
    sorted re-encoding gives them back, with the codecs ``canonical.decode_bulk`` uses, which
    stand down if msgspec ever spells a header form otherwise than the reference packer) and
    every string is NFC (5.1, over the JSON text at once); else None, and the exact way decides."""
    enc, to_json, _, reference_too = canon._bulk_codecs()
    if reference_too or len(data) > C.MAX_RECORD_BYTES:
        return None
    try:
        s = dec.decode(data)
        if enc.encode(s) != data:
            return None
        text = to_json.encode(s)
    except (msgspec.DecodeError, msgspec.EncodeError, ValueError):
        return None
    return s if text.isascii() or unicodedata.is_normalized("NFC", text.decode()) else None


def decode_task(record: Any, data: bytes) -> Any:
    """The ``record`` class's record (:class:`~capsule.run.tasks.TaskRecord`) the stored bytes
    ``data`` hold, or None to take the exact way."""
    if not _task_dec:  # two threads may both build it: the table first, then the decoder
        for st in _STRUCTS:
            op = str(st.__struct_config__.tag)
            cls = EVENT_TYPES[op]
            defaults = _defaults(cls)
            _EVENTS[op] = (cls, tuple((f, defaults[f]) for f in st.__struct_fields__
                                      if f not in ("kind", "task", "time")))
        _task_dec.append(msgspec.msgpack.Decoder(_Add | _Claim | _Heartbeat | _Complete | _Fail | _Cancel))
    t = _canonical(_task_dec[0], data)
    if t is None:
        return None
    cls, names = _EVENTS[t.__struct_config__.tag]
    ev: Event = object.__new__(cls)
    setattr_ = object.__setattr__
    _, task, time, *rest = astuple(t)
    setattr_(ev, "time", time)
    setattr_(ev, "task", task)
    for (f, default), v in zip(names, rest, strict=True):  # the checks of __post_init__ are the struct's, above
        if v is UNSET:
            v = default
        elif default is not _REQUIRED and _spelled(v if f != "deps" else tuple(v), default):
            return None  # a default spelled out (7.9): the exact way names it
        elif f == "deps":
            v = tuple(sorted(v))
        setattr_(ev, f, v)
    return record(ev, record_id("task", data).hex())


class _Action(msgspec.Struct, tag_field="kind", tag="action", forbid_unknown_fields=True):
    """7.8; an optional field absent is UNSET, present and equal to its default is refused."""

    key: str
    phase: Literal["intent", "result", "resolve"]
    attempt: Annotated[int, Meta(ge=1, le=(1 << 31) - 1)]
    time: _Ns
    what: str | _U = UNSET
    inputs: _Flat | _U = UNSET
    ok: bool | _U = UNSET
    value: _Flat | _List | _Plain | _U = UNSET
    error: str | _U = UNSET
    by: Literal["", "fn", "reconcile", "human", "retry"] | _U = UNSET


_ACTION_OPTIONAL = ("what", "inputs", "ok", "value", "error", "by")
_action_dec: list[tuple[Any, dict[str, Any]]] = []


def decode_action(record: Any, data: bytes) -> Any:
    """The ``record`` class's record (:class:`~capsule.run.actions.Action`) the stored bytes
    ``data`` hold, or None to take the exact way."""
    if not _action_dec:  # two threads may both build it: each gets a whole pair
        _action_dec.append((msgspec.msgpack.Decoder(_Action), _defaults(record)))
    dec, defaults = _action_dec[0]
    a = _canonical(dec, data)
    if a is None:
        return None
    vals = {}
    for f in _ACTION_OPTIONAL:
        v = getattr(a, f)
        if v is UNSET:
            v = defaults[f]
        elif _spelled(v, defaults[f]):
            return None  # a default spelled out (7.8): the exact way names it
        vals[f] = v
    return record(time=a.time, key=a.key, phase=a.phase, attempt=a.attempt, **vals,
                  id=record_id("action", data).hex())


__all__ = ["decode_action", "decode_task"]
