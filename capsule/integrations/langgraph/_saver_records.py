"""The records of :class:`CapsuleSaver`: two application kinds (spec 12.3), docs/langgraph-saver.md.

Theory of operation: a checkpoint is one ``langgraph.checkpoint`` record and a ``put_writes``
call one ``langgraph.writes`` record. Neither is a memory, so neither reaches the agent's
state, search or memory listings; both are forgotten with the format's own ``forget`` event
(7.7.1 lets it name application kinds). What LangGraph serialised rides as the serde's typed
bytes: a type name (``msgpack``, ``json``, ``bytes``, ...) and a bin.

:func:`checkpoint_value` / :func:`writes_value` build the map ``put`` / ``put_writes`` store;
:func:`parse_checkpoint` / :func:`parse_writes` check a stored map and are all the replay at
open trusts: a record of one of these kinds that is not what the builders make raises
``ValueError`` (the saver turns it into :class:`capsule.InvalidRecordError`).

This module is sans-IO: no capsule handle, no LangGraph import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CHECKPOINT = "langgraph.checkpoint"
WRITES = "langgraph.writes"
KINDS = (CHECKPOINT, WRITES)

Typed = tuple[str, bytes]  # the serde's (type, bytes)
Key = tuple[str, str, str]  # (thread_id, checkpoint_ns, checkpoint_id)

_INT64 = (-(2**63), 2**63)


@dataclass(frozen=True, slots=True)
class CheckpointRec:
    """A parsed ``langgraph.checkpoint`` record."""

    key: Key
    parent: str | None
    checkpoint: Typed
    metadata: Typed


@dataclass(frozen=True, slots=True)
class WritesRec:
    """A parsed ``langgraph.writes`` record: ``writes`` holds (idx, channel, value) in stored order."""

    key: Key
    task_id: str
    task_path: str
    writes: tuple[tuple[int, str, Typed], ...]


# --- building (put, put_writes, copy_thread) -------------------------------------------------------
def _readable(plain: Mapping[str, Any]) -> dict[str, Any]:
    """Plain copies of ``step``, ``source`` and ``run_id`` (text, or an int64 step)."""
    out: dict[str, Any] = {}
    for k in ("step", "source", "run_id"):
        v = plain.get(k)
        if isinstance(v, str) or (type(v) is int and _INT64[0] <= v < _INT64[1]):
            out[k] = v
    return out


def checkpoint_value(key: Key, parent: str | None, checkpoint: Typed, metadata: Typed,
                     plain: Mapping[str, Any], *, time: int) -> dict[str, Any]:
    """The map of a ``langgraph.checkpoint`` record. ``plain``: the metadata as a dict, for the
    readable copies of its ``step``, ``source`` and ``run_id``."""
    thread, ns, cid = key
    v: dict[str, Any] = {"time": time, "thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": cid,
                         "checkpoint_type": checkpoint[0], "checkpoint": bytes(checkpoint[1]),
                         "metadata_type": metadata[0], "metadata": bytes(metadata[1]), **_readable(plain)}
    if parent is not None:
        v["parent_checkpoint_id"] = parent
    return v


def writes_value(key: Key, task_id: str, task_path: str, entries: Sequence[tuple[int, str, Typed]], *,
                 time: int) -> dict[str, Any]:
    """The map of a ``langgraph.writes`` record holding ``entries`` ((idx, channel, value))."""
    thread, ns, cid = key
    v: dict[str, Any] = {"time": time, "thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": cid,
                         "task_id": task_id, "writes": [[idx, ch, t, bytes(b)] for idx, ch, (t, b) in entries]}
    if task_path:
        v["task_path"] = task_path
    return v


def copied(value: Mapping[str, Any], thread: str, *, time: int) -> dict[str, Any]:
    """A stored map moved to another thread (``copy_thread``): a new record, a new id."""
    v = {k: x for k, x in value.items() if k != "kind"}
    v["thread_id"], v["time"] = thread, time
    return v


# --- parsing (the replay at open, copy_thread) -----------------------------------------------------
def _text(v: Mapping[str, Any], k: str, default: str | None = None) -> str:
    x = v.get(k, default)
    if type(x) is not str:
        raise ValueError(f"`{k}` is {'missing' if x is None else type(x).__name__}, not text")
    return x


def _typed(v: Mapping[str, Any], k: str) -> Typed:
    t, b = v.get(f"{k}_type"), v.get(k)
    if type(t) is not str or type(b) is not bytes:
        raise ValueError(f"`{k}_type` and `{k}` must be text and bin")
    return t, b


def _key(v: Mapping[str, Any]) -> Key:
    return _text(v, "thread_id"), _text(v, "checkpoint_ns"), _text(v, "checkpoint_id")


def parse_checkpoint(v: Mapping[str, Any]) -> CheckpointRec:
    parent = v.get("parent_checkpoint_id")
    if parent is not None and type(parent) is not str:
        raise ValueError("`parent_checkpoint_id` is not text")
    return CheckpointRec(_key(v), parent, _typed(v, "checkpoint"), _typed(v, "metadata"))


def parse_writes(v: Mapping[str, Any]) -> WritesRec:
    ws = v.get("writes")
    if not isinstance(ws, list):
        raise ValueError("`writes` is not a list")
    out = []
    for w in ws:
        if not (isinstance(w, list) and len(w) == 4 and type(w[0]) is int and type(w[1]) is str
                and type(w[2]) is str and type(w[3]) is bytes):
            raise ValueError("a write is not [idx, channel, type, bin]")
        out.append((w[0], w[1], (w[2], w[3])))
    return WritesRec(_key(v), _text(v, "task_id"), _text(v, "task_path", ""), tuple(out))


__all__ = ["CHECKPOINT", "KINDS", "WRITES", "CheckpointRec", "Key", "Typed", "WritesRec", "checkpoint_value",
           "copied", "parse_checkpoint", "parse_writes", "writes_value"]
