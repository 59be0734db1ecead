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

import unicodedata
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType
from msgspec.structs import astuple

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
_Flat = dict[str, _Plain]


class _Base(msgspec.Struct, tag_field="op", omit_defaults=True, forbid_unknown_fields=True):
    kind: Literal["task"]
    task: _Id
    time: _Ns


class _Add(_Base, tag="add"):
    name: Annotated[str, Meta(max_length=MAX_NAME)] = ""
    deps: Annotated[set[_Id], Meta(max_length=MAX_DEPS)] = set()
    not_before: _Ns | UnsetType = UNSET
    deadline: _Ns | UnsetType = UNSET
    priority: Annotated[int, Meta(ge=-(1 << 63), le=_NS_MAX)] = 0
    max_attempts: Annotated[int, Meta(ge=1, le=MAX_ATTEMPTS)] = 3
    backoff: _Ns = 1_000_000_000
    backoff_cap: _Ns = 3_600_000_000_000
    payload: _Flat = {}


class _Claim(_Base, tag="claim"):
    worker: _Id
    lease: Annotated[int, Meta(ge=1, le=_NS_MAX)]


class _Heartbeat(_Claim, tag="heartbeat"):
    pass


class _Complete(_Base, tag="complete"):
    worker: _Id
    result: _Flat | list[_Plain] | _Plain | UnsetType = UNSET


class _Fail(_Base, tag="fail"):
    worker: _Id
    error: Annotated[str, Meta(max_length=MAX_TEXT)] = ""


class _Cancel(_Base, tag="cancel"):
    reason: Annotated[str, Meta(max_length=MAX_TEXT)] = ""


_STRUCTS = (_Add, _Claim, _Heartbeat, _Complete, _Fail, _Cancel)
#: per op: its event class and the fields it takes beyond task and time
_EVENTS = {s.__struct_config__.tag: (EVENT_TYPES[s.__struct_config__.tag],  # type: ignore[index]
                                     tuple(f for f in s.__struct_fields__ if f not in ("kind", "task", "time")))
           for s in _STRUCTS}

#: fields whose stored form is not the event's: a set of deps (a sorted tuple), UNSET (None)
_FIX = frozenset({"deps", "not_before", "deadline", "result"})

_codecs: list[tuple[Any, Any, Any]] = []


def _get() -> tuple[Any, Any, Any]:
    if not _codecs:  # two threads may both build them: each gets a whole set
        _codecs.append((msgspec.msgpack.Decoder(_Add | _Claim | _Heartbeat | _Complete | _Fail | _Cancel),
                        msgspec.msgpack.Encoder(order="sorted"), msgspec.json.Encoder()))
    return _codecs[0]


def decode_task(record: Any, data: bytes) -> Any:
    """The ``record`` class's record (:class:`~capsule.run.tasks.TaskRecord`) the stored bytes
    ``data`` hold, or None to take the exact way."""
    dec, enc, to_json = _get()
    try:
        t = dec.decode(data)
        if enc.encode(t) != data:
            return None
        text = to_json.encode(t)  # 5.1: NFC, over every string at once
    except (msgspec.DecodeError, msgspec.EncodeError, ValueError):
        return None
    if not text.isascii() and not unicodedata.is_normalized("NFC", text.decode()):
        return None
    if type(t) is _Complete and t.result is None:
        return None  # nil spelled out, the default: the exact way names it
    cls, names = _EVENTS[t.__struct_config__.tag]
    ev: Event = object.__new__(cls)
    setattr_ = object.__setattr__
    _, task, time, *rest = astuple(t)
    setattr_(ev, "time", time)
    setattr_(ev, "task", task)
    for f, v in zip(names, rest, strict=True):  # the checks of __post_init__ are the struct's, above
        setattr_(ev, f, v if f not in _FIX else tuple(sorted(v)) if f == "deps" else None if v is UNSET else v)
    return record(ev, record_id("task", data).hex())


class _Action(msgspec.Struct, tag_field="kind", tag="action", omit_defaults=True, forbid_unknown_fields=True):
    """7.8, in the order ``Action`` builds its record from."""

    key: str
    phase: Literal["intent", "result", "resolve"]
    attempt: Annotated[int, Meta(ge=1, le=(1 << 31) - 1)]
    time: _Ns
    what: str = ""
    inputs: _Flat = {}
    ok: bool = True
    value: _Flat | list[_Plain] | _Plain | UnsetType = UNSET
    error: str = ""
    by: Literal["", "fn", "reconcile", "human", "retry"] = ""


_action_codecs: list[tuple[Any, Any, Any]] = []


def decode_action(record: Any, data: bytes) -> Any:
    """The ``record`` class's record (:class:`~capsule.run.actions.Action`) the stored bytes
    ``data`` hold, or None to take the exact way."""
    if not _action_codecs:  # two threads may both build them: each gets a whole set
        _action_codecs.append((msgspec.msgpack.Decoder(_Action), msgspec.msgpack.Encoder(order="sorted"),
                               msgspec.json.Encoder()))
    dec, enc, to_json = _action_codecs[0]
    try:
        a = dec.decode(data)
        if enc.encode(a) != data:
            return None
        text = to_json.encode(a)  # 5.1: NFC, over every string at once
    except (msgspec.DecodeError, msgspec.EncodeError, ValueError):
        return None
    if a.value is None or not text.isascii() and not unicodedata.is_normalized("NFC", text.decode()):
        return None  # a nil value spelled out (its default), or text not NFC: the exact way names it
    return record(time=a.time, key=a.key, phase=a.phase, attempt=a.attempt, what=a.what, inputs=a.inputs,
                  ok=a.ok, value=None if a.value is UNSET else a.value, error=a.error, by=a.by,
                  id=record_id("action", data).hex())


__all__ = ["decode_action", "decode_task"]
