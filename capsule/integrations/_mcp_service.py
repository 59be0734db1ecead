"""The capsule side of the MCP server: one method per tool, JSON in, JSON out (no MCP here).

Theory of operation. The server holds one lock-free reader for its whole life and
opens the capsule for writing only for the length of one write tool call:

- A read (search, get, beliefs, why, timeline, the resources) first moves the
  reader to the newest commit (``Capsule.refresh``), so it sees what any writer,
  in this server or another process, has committed. If the path now names another
  file (an in-place ``compact`` renames a new file over it), or the file is shorter than
  last time (cut in place by another tool), the reader is reopened; so it is, once, when
  a read finds bad data (the bytes changed under it), and the error stands only if the
  fresh reader finds it too.
  Reads never take the writer's lock and never write.
- A write (remember, decide, checkpoint) opens the capsule in mode ``"a"``, waiting
  up to ``wait`` seconds for another writer (``open(..., timeout=wait)``), writes one
  commit, and closes, releasing the lock at once. So two servers on one file both
  write, one at a time; a call that cannot get the lock in time fails with
  :class:`~capsule.Locked` ("locked by pid N (waited W s)") and writes nothing.
  Within one server a lock serialises writes, so its own calls never contend. A call
  cancelled while it waits for the lock stops waiting and writes nothing.
- Every answer is the same JSON document the CLI prints with ``--json`` (bin values
  as hex), so an agent and a person see the same thing.

Arguments arrive already checked against the tool's JSON schema (``_mcp_tools``);
what a schema cannot say (an unknown id, a bad time) is the library's to refuse.
A refused write raises before its commit, so the file is left byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ..core.errors import (
    CapsuleNotFound,
    DataError,
    FileReplaced,
    Locked,
    ReadOnlyError,
    UsageError,
)
from ..format.keys import PrivateKey
from ..handle.capsule import Capsule
from ..handle.entry import open as open_capsule
from ..ingest.source import check_regular

T = TypeVar("T")

#: seconds a write waits for another writer by default (``capsule serve --wait``)
DEFAULT_WAIT = 5.0


def plain(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` as plain JSON values, the way the CLI's ``--json`` writes it (bin as hex)."""
    out: dict[str, Any] = json.loads(json.dumps(obj, default=_hex, allow_nan=False))
    return out


def _hex(v: object) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _time(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    from ..format.records import parse_time_arg

    return parse_time_arg(text, name)


class Service:
    """One capsule served: a reader kept fresh, a writer opened per write call."""

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False,
                 keys: Sequence[PrivateKey] = (), wait: float = DEFAULT_WAIT) -> None:
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait < float("inf"):
            raise UsageError(f"wait must be a number of seconds >= 0, not {wait!r}")
        if read_only and keys:
            raise UsageError("a read-only server signs nothing: give no keys")
        self.path = Path(path)
        self.read_only = read_only
        self.keys = list(keys)
        self.wait = float(wait)
        check_regular(self.path)
        if self.path.is_dir():
            raise UsageError(f"{self.path}: is a directory, not a capsule")
        if not self.path.is_file():
            raise CapsuleNotFound(f"{self.path}: no such capsule")
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        # The identity first: a file renamed over the path meanwhile then reads as moved
        # next time (and is reopened), never as the file this reader holds.
        self._ident, self._size = _identity(self.path), self.path.stat().st_size
        # 10: the keys this server opens an encrypted capsule with, for every open from any thread
        # (handlers run in worker threads, which do not inherit capsule.unlocking)
        from ..handle.entry import default_keys

        k = default_keys()
        self._unlock: dict[str, Any] = {"identity": k.identity, "passphrase": k.passphrase}
        self._reader = open_capsule(self.path, **self._unlock)  # a missing, corrupt or future-version file fails here

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()

    # --- the two ways in -------------------------------------------------------------
    def _read(self, fn: Callable[[Capsule], T], at: str | None = None) -> T:
        with self._read_lock:
            try:
                ident, size = _identity(self.path), self.path.stat().st_size
            except FileNotFoundError:
                raise CapsuleNotFound(f"{self.path}: no such capsule (removed while served)") from None
            if ident != self._ident or size < self._size:
                # Replaced whole (an in-place compact), or cut short in place (another tool):
                # no refresh follows that, a fresh reader does.
                self._reopen()
            else:
                try:
                    self._reader.refresh()
                except FileReplaced:  # replaced between the look above and the refresh
                    self._reopen()
                self._size = size
            try:
                return self._ask(fn, at)
            except DataError:
                # The bytes changed under the reader in a way it cannot see (rewritten in place,
                # cut and regrown): once more on a fresh reader, whose error then stands.
                self._reopen()
                return self._ask(fn, at)

    def _ask(self, fn: Callable[[Capsule], T], at: str | None) -> T:
        if at is None:
            return fn(self._reader)
        with self._reader.view(at) as view:
            return fn(view)

    def _reopen(self) -> None:
        """A fresh reader (the old one is kept if the file cannot be opened now). The identity
        and size are taken first: a change meanwhile then reads as a change next time."""
        ident, size = _identity(self.path), self.path.stat().st_size
        fresh = open_capsule(self.path, **self._unlock)
        self._reader.close()
        self._reader, self._ident, self._size = fresh, ident, size

    def _write(self, fn: Callable[[Capsule], T], cancel: threading.Event | None = None) -> T:
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: served read-only (--read-only): writes are refused")
        # this server's calls write one at a time: a call cancelled (or the server stopped) while it
        # waits its turn gives up, as it does while waiting for another process's lock; it had gone
        # on to write after its cancellation was answered
        while not self._write_lock.acquire(timeout=0.01):
            if cancel is not None and cancel.is_set():
                raise UsageError("the call was cancelled before it wrote")
        try:
            if cancel is not None and cancel.is_set():
                raise UsageError("the call was cancelled before it wrote")
            with self._writer(cancel) as cap:
                return fn(cap)
        finally:
            self._write_lock.release()

    def _writer(self, cancel: threading.Event | None) -> Capsule:
        """The capsule opened for writing, waiting up to ``wait`` seconds for another writer;
        a call cancelled meanwhile (``cancel`` set) stops waiting and writes nothing."""
        deadline = time.monotonic() + self.wait
        delay = 0.001
        while True:
            try:
                return open_capsule(self.path, "a", **self._unlock)
            except Locked as e:
                left = deadline - time.monotonic()
                if cancel is not None and cancel.is_set():
                    raise Locked(f"{e} (the call was cancelled)", pid=e.pid, host=e.host) from None
                if left <= 0:
                    if not self.wait:
                        raise
                    raise Locked(f"{e} (waited {self.wait:g} s)", pid=e.pid, host=e.host) from None
                if cancel is not None:
                    cancel.wait(min(delay, left))
                else:
                    time.sleep(min(delay, left))
                delay = min(delay * 2, 0.1)

    # --- resources --------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """``capsule open FILE --json``."""

        def go(cap: Capsule) -> dict[str, Any]:
            info = cap.index_info()
            vec = info["vectors"]
            if vec is not None:
                snap = info["snapshot"]
                vec = {**vec, "snapshot_vectors": snap["vectors"] if snap else 0,
                       "snapshot_bytes": snap["bytes"] if snap else 0}
            return {**cap.summary().to_dict(), "vector_index": vec}

        return plain(self._read(go))

    def state_json(self) -> str:
        """``capsule state FILE --json``: the canonical state document (13.2)."""
        return self._read(lambda cap: cap.state().to_json_bytes()).decode("utf-8")

    # --- read tools ---------------------------------------------------------------------
    def search(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """``capsule search --json`` as ``{"hits": [...], "warnings": [...]}``."""
        valid_at = a.get("valid_at")
        when = None
        if valid_at is not None:
            from ..core.clock import iso
            from ..state.validtime import parse_valid_at

            when = iso(parse_valid_at(valid_at))

        k = a.get("k", 10)
        if type(k) is float and k.is_integer():  # JSON Schema's "integer" takes 5.0: so does the tool
            k = int(k)

        def go(cap: Capsule) -> dict[str, Any]:
            hits = cap.search(a.get("query") or "", vector=a.get("vector"), k=k,
                              mode=a.get("mode", "auto"), tags=a.get("tags"), any_tags=a.get("any_tags"),
                              tier=a.get("tier"), kind=a.get("kind"), since=a.get("since"), until=a.get("until"),
                              meta=a.get("meta") or {}, valid_at=when)
            ranking = getattr(hits, "ranking", None)  # 16.7: the mode auto chose, and why
            how = {} if ranking is None else {"mode": ranking.mode}  # as `capsule search --json` says it
            rows = [{**h.to_dict(), **how} if when is None else {**h.to_dict(), **how, "valid_at": when} for h in hits]
            info = cap.index_info()
            return {"hits": rows, "warnings": [m for m in (info["doubt"], info["notice"]) if m],
                    **({"ranking": ranking.to_dict()} if ranking is not None else {})}

        return plain(self._read(go, a.get("at")))

    def get(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """``capsule get ID --json``."""

        def go(cap: Capsule) -> dict[str, Any]:
            rec = cap.get(a["id"])
            d = {"id": rec.id, "kind": rec.kind, **rec.to_dict()}
            return d if "live" in d else {**d, "live": cap.is_live(rec.id)}  # as the CLI: a record's own field stays

        return plain(self._read(go, a.get("at")))

    def beliefs(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """``capsule beliefs --json``."""
        return plain(self._read(lambda cap: cap.beliefs(limit=a.get("limit", 10)).to_dict(), a.get("at")))

    def why(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """``capsule why ID --json``; ``trust`` is a keyset hash (the client names no files)."""
        trust = a.get("trust")
        return plain(self._read(lambda cap: cap.why(a["id"], trust=trust and trust.lower()).to_dict(), a.get("at")))

    def timeline(self, a: Mapping[str, Any]) -> dict[str, Any]:
        """``capsule timeline --json``."""
        since, until = _time(a.get("since"), "since"), _time(a.get("until"), "until")
        return plain(self._read(lambda cap: cap.timeline(since=since, until=until, kinds=a.get("kinds"),
                                                         limit=a.get("limit")).to_dict(), a.get("at")))

    # --- write tools ----------------------------------------------------------------------
    def _put(self, body: dict[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        """One record in one commit, as ``capsule put --kind K --json-body B --json`` (plus ``id``)."""

        def go(cap: Capsule) -> dict[str, Any]:
            with cap.commit() as tx:
                rid = tx.put_value(body)
            return {"id": rid, "ids": [rid], "count": 1, "new": len(tx.new_ids)}

        return self._write(go, cancel)

    # ``cancel``: set when the client cancels the call; a write still waiting for the lock
    # then gives up (Locked) and writes nothing, one holding it finishes.
    def remember(self, a: Mapping[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        fields = ("text", "tags", "meta", "tier", "ttl", "source", "valid_from", "valid_to", "embedding")
        return self._put({"kind": "memory", **{k: a[k] for k in fields if k in a}}, cancel)

    def decide(self, a: Mapping[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        fields = ("summary", "rationale", "evidence", "inputs", "alternatives")
        return self._put({"kind": "decision", **{k: a[k] for k in fields if k in a}}, cancel)

    def checkpoint(self, a: Mapping[str, Any], cancel: threading.Event | None = None) -> dict[str, Any]:
        """``capsule checkpoint --label L --key K --json``, signed with the keys given at start."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: served read-only (--read-only): writes are refused")
        if not self.keys:
            raise UsageError("no signing key: start the server with --key KEYFILE to sign checkpoints "
                             "(a client never supplies keys)")
        return plain(self._write(lambda cap: cap.checkpoint(a["label"], key=self.keys).to_dict(), cancel))


__all__ = ["DEFAULT_WAIT", "Service", "plain"]
