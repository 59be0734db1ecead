"""The in-memory index of :class:`CapsuleSaver` (docs/langgraph-saver.md, "The index").

Theory of operation: a checkpoint is a ``langgraph.checkpoint`` record and a ``put_writes`` call
a ``langgraph.writes`` record (``_saver_records``). A deleted checkpoint is a ``forget`` event
(7.7.1), so liveness (13.1) is the only deletion there is, and the index below is a pure
function of the live saver records in commit order: :meth:`SaverIndex.add_checkpoint` and
:meth:`SaverIndex.add_writes` are what ``put`` / ``put_writes`` do *and* what opening the file
replays, so a reopened saver answers exactly as the one that wrote the file.

The index keeps ids and small decoded metadata only (no channel values): a checkpoint costs
about 1 KB of Python objects plus its metadata; a read costs one record fetch by id
(an index lookup and a frame decode), never a scan of history. :class:`RecordCache` spares
most of those fetches: records are content-addressed and never change, so the parsed records
``put`` writes and the replay reads stay valid for good; it is bounded by their bytes.

This module is sans-IO: no capsule handle, no LangGraph import.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._saver_records import CheckpointRec, Key, WritesRec


@dataclass(slots=True)
class Ckpt:
    """One live checkpoint: the record that holds it and what ``list`` filters on."""

    rid: bytes
    parent: str | None
    metadata: dict[str, Any]
    older: list[bytes] = field(default_factory=list)  # earlier puts of the same id, still live


@dataclass(frozen=True, slots=True)
class Write:
    """One pending write: the record holding it and its position in that record's list."""

    rid: bytes
    pos: int
    task_id: str
    channel: str
    task_path: str
    idx: int




class SaverIndex:
    """thread -> namespace -> checkpoint id -> :class:`Ckpt`, plus the writes of each checkpoint."""

    def __init__(self) -> None:
        self.threads: dict[str, dict[str, dict[str, Ckpt]]] = {}
        self._sorted: dict[tuple[str, str], list[str]] = {}  # checkpoint ids, ascending
        self.writes: dict[Key, dict[tuple[str, int], Write]] = {}
        self.write_rids: dict[Key, list[bytes]] = {}  # every live writes record of a checkpoint

    # --- applying records (put, put_writes and the replay at open) ------------------------
    def add_checkpoint(self, thread: str, ns: str, cid: str, rid: bytes, parent: str | None,
                       metadata: dict[str, Any]) -> None:
        by_ns = self.threads.setdefault(thread, {}).setdefault(ns, {})
        old = by_ns.get(cid)
        if old is not None:  # a put of an id already stored replaces it (as InMemorySaver does)
            older = [*old.older, old.rid] if old.rid != rid else old.older
            by_ns[cid] = Ckpt(rid, parent, metadata, older)
            return
        by_ns[cid] = Ckpt(rid, parent, metadata)
        ids = self._sorted.setdefault((thread, ns), [])
        if not ids or ids[-1] < cid:
            ids.append(cid)  # ids are uuid6, time-ordered: the usual case
        else:
            bisect.insort(ids, cid)

    def new_writes(self, key: Key, task_id: str, channels: Sequence[tuple[str, int]]) -> list[int]:
        """Positions of ``channels`` ((channel, idx) pairs) a ``put_writes`` must store: a
        regular write (idx >= 0) already stored for (task, idx) is not stored again; a special
        one (negative idx: error, interrupt, ...) replaces the stored one."""
        have = self.writes.get(key, {})
        return [i for i, (_, idx) in enumerate(channels) if idx < 0 or (task_id, idx) not in have]

    def add_writes(self, key: Key, rid: bytes, task_id: str, task_path: str,
                   entries: Sequence[tuple[int, str]]) -> None:
        """``entries``: (idx, channel) of each write the record holds, in its order."""
        ws = self.writes.setdefault(key, {})
        for pos, (idx, channel) in enumerate(entries):
            if idx >= 0 and (task_id, idx) in ws:
                continue
            ws[(task_id, idx)] = Write(rid, pos, task_id, channel, task_path, idx)
        rids = self.write_rids.setdefault(key, [])
        if rid not in rids:
            rids.append(rid)

    # --- reads -------------------------------------------------------------------------------
    def get(self, thread: str, ns: str, cid: str | None) -> tuple[str, Ckpt] | None:
        by_ns = self.threads.get(thread, {}).get(ns)
        if not by_ns:
            return None
        if cid is None:
            ids = self._sorted[(thread, ns)]
            cid = ids[-1]
        c = by_ns.get(cid)
        return None if c is None else (cid, c)

    def ids_desc(self, thread: str, ns: str) -> Iterator[str]:
        return reversed(self._sorted.get((thread, ns), []))

    def namespaces(self, thread: str) -> list[str]:
        return list(self.threads.get(thread, {}))

    def ordered_writes(self, key: Key) -> list[Write]:
        ws = self.writes.get(key)
        if not ws:
            return []
        return sorted(ws.values(), key=lambda w: (w.task_path, w.task_id, w.idx))

    # --- removal (the records go through forget events) ------------------------------------
    def checkpoint_rids(self, key: Key) -> list[bytes]:
        """Every live record of one checkpoint: its own (every put of it) and its writes."""
        thread, ns, cid = key
        c = self.threads.get(thread, {}).get(ns, {}).get(cid)
        out = [*c.older, c.rid] if c is not None else []
        return out + self.write_rids.get(key, [])

    def drop_checkpoint(self, key: Key) -> None:
        thread, ns, cid = key
        by_ns = self.threads.get(thread, {}).get(ns)
        if by_ns is not None and by_ns.pop(cid, None) is not None:
            ids = self._sorted[(thread, ns)]
            i = bisect.bisect_left(ids, cid)
            if i < len(ids) and ids[i] == cid:
                del ids[i]
            if not by_ns:
                del self.threads[thread][ns]
                del self._sorted[(thread, ns)]
            if not self.threads[thread]:
                del self.threads[thread]
        self.writes.pop(key, None)
        self.write_rids.pop(key, None)

    def thread_keys(self, thread: str) -> list[Key]:
        """Every checkpoint key of a thread, and keys that hold writes but no checkpoint."""
        keys = {(thread, ns, cid) for ns, by in self.threads.get(thread, {}).items() for cid in by}
        keys.update(k for k in self.write_rids if k[0] == thread)
        return sorted(keys)

    def run_keys(self, run_ids: set[str]) -> list[Key]:
        return sorted((t, ns, cid) for t, by_ns in self.threads.items() for ns, by in by_ns.items()
                      for cid, c in by.items() if c.metadata.get("run_id") in run_ids)


class RecordCache:
    """Parsed saver records by id, least recently used out first, at most ``limit`` bytes of
    serialised values (``0``: keep none). Correct without invalidation: an id names its bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._items: OrderedDict[bytes, tuple[CheckpointRec | WritesRec, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, rid: bytes) -> CheckpointRec | WritesRec | None:
        hit = self._items.get(rid)
        if hit is None:
            return None
        self._items.move_to_end(rid)
        return hit[0]

    def add(self, rid: bytes, rec: CheckpointRec | WritesRec) -> None:
        n = _size(rec)
        if n > self.limit or rid in self._items:
            return
        self._items[rid] = (rec, n)
        self.size += n
        while self.size > self.limit:
            _, (_, dropped) = self._items.popitem(last=False)
            self.size -= dropped


def _size(rec: CheckpointRec | WritesRec) -> int:
    """About what the record holds: its serialised values, plus a little per value."""
    if isinstance(rec, CheckpointRec):
        return len(rec.checkpoint[1]) + len(rec.metadata[1]) + 200
    return sum(len(w[2][1]) + 100 for w in rec.writes) + 200


__all__ = ["Ckpt", "Key", "RecordCache", "SaverIndex", "Write"]
