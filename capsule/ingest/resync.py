"""Packing again is not duplicating: what a re-pack adds, keeps, supersedes and prunes.

Theory of operation: every chunk pack writes is a memory whose ``meta`` holds ``root``
(the name its files are filed under: the packed folder's own name by default, omitted
when empty), ``path`` (the file's POSIX path relative to that folder), ``chunk`` (its
number in the file, from 0) and ``sha256`` (of the whole file's bytes), and whose
``source`` is ``root/path``. Two folders packed into one capsule are two roots: a pack
reads, supersedes and prunes only the chunks of its own root, so their files of one
relative path stay apart (chunks packed before roots existed have none: ``root=""``
syncs them). Before an append, one walk of the memories holding a ``source`` (not a
scan per file, nor a state of every memory) groups the live chunks of the root by path.
Each file of the folder is then, by its bytes' SHA-256 and its chunk count now, without
embedding anything:

- **added**: no live chunk has its path; every chunk is written.
- **unchanged**: its live chunks all carry its SHA-256 and their numbers are
  exactly 0..n-1: nothing is written, the file is not even read again (so a
  pack with another ``chunk_chars`` that gives the same count keeps the old
  chunks: the same text, cut elsewhere).
- **resumed**: they all carry its SHA-256, their numbers are distinct and a
  proper subset of 0..n-1, and each one's text is the chunk of that number now
  (a pack cut short, by kill -9 between two batch commits): only the missing
  chunks are written, the ones there stay as they are.
- **changed**: anything else (other bytes, chunks packed before ``sha256`` was
  kept, duplicates, another chunking): all its chunks are written and its old
  live chunks leave the state by one ``supersede`` event (7.7.1) in the same
  commit, ``by`` the new ones, its reason naming the path. Unchanged paragraphs
  of a changed file get new records too (their ``meta.sha256`` is the new
  file's): a file's live chunks are always one version of it, numbered 0..n-1.
  But a new chunk whose text an old one holds takes that one's stored embedding
  instead of being embedded again (embedding is what costs).

A path with live chunks that is no longer in the folder is left alone, unless
``prune`` asks: then its chunks are forgotten (op ``forget``, reason naming the
path). Only memories pack made count (``source`` equal to ``root/path``, an int
``meta.chunk``); anything else the capsule holds is never touched. JSONL input
is not tracked by file: its records are content-addressed as given (a record
with its own ``time`` is not stored twice; one without gets the clock's).

With times fixed (``SOURCE_DATE_EPOCH``) a chunk's bytes, and so its id, are a
function of its file and number: a pack cut short and completed has the very
live set, and state root, of a clean pack of the same folder.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from ..format.kindwalk import walk
from ..format.records import TIERS
from ..questions._lifecycle import dead_ids, redacted
from .source import undecodable

_TIER_ORDER = {t: i for i, t in enumerate(TIERS)}  # the state's memories dict, tier by tier

ADDED, UNCHANGED, RESUMED, CHANGED = "added", "unchanged", "resumed", "changed"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A live chunk of a packed file, as the state holds it."""

    id: bytes
    number: int
    sha256: str | None
    text: str


def nfc(s: str) -> str:
    """Paths and texts are stored NFC (5.1): compare them so."""
    return s if s.isascii() else unicodedata.normalize("NFC", s)


def root_of(src: Path, root: str | None) -> str:
    """The name a text pack files its chunks under: ``root``, else the folder's own name (a
    single file's folder's), which stays the same wherever the folder is."""
    if root is None:
        root = (src if src.is_dir() else src.parent).resolve().name
        if undecodable(root):
            raise UsageError(f"{src}: its folder's name is not UTF-8; name the root with --root NAME")
    root = nfc(root)
    if "/" in root or root in (".", "..") or undecodable(root) or len(root) > 255:
        raise UsageError(f"--root {root!r}: a plain name is needed (no '/', not . or .., at most 255 characters)")
    return root


def source_of(root: str, path: str) -> str:
    """A packed chunk's ``source``: its file's path under its root."""
    return f"{root}/{path}" if root else path


def _packed(m: Any, root: str | None) -> tuple[str, int, dict[str, Any]] | None:
    """(path, chunk number, meta) of a memory pack made under ``root`` (None: any), else None."""
    meta = getattr(m, "meta", None)
    if not meta:
        return None
    path, n, its = meta.get("path"), meta.get("chunk"), meta.get("root", "")
    if type(path) is not str or type(n) is not int or type(its) is not str or root not in (None, its):
        return None
    return (path, n, meta) if getattr(m, "source", None) == source_of(its, path) else None


def live_chunks(cap: Any, root: str = "", roots: set[str] | None = None) -> dict[str, list[Chunk]]:
    """The live memories pack made under ``root``, by path, in the state's order (by tier, then commit
    order): one walk of the memories that hold a ``source`` (the others are not decoded, so a
    capsule of a million memories costs a read of its frames, not a state of a million
    entries), less the ids reverts hold dead. ``roots`` collects every root the walk saw."""
    store = cap._store
    dead = dead_ids(store)
    found: list[tuple[int, str, Chunk]] = []
    for _, _, m in walk(store, ("memory",), field="source"):
        if (got := _packed(m, None)) is None:
            continue
        path, n, meta = got
        rid = bytes.fromhex(m.id)
        if rid in dead:
            continue
        its = meta.get("root", "")
        if roots is not None:
            roots.add(its)
        if its != root:
            continue
        sha = meta.get("sha256")
        found.append((_TIER_ORDER[m.tier], path, Chunk(rid, n, sha if type(sha) is str else None, m.text)))
    out: dict[str, list[Chunk]] = {}
    for _, path, c in sorted(found, key=lambda x: x[0]):  # stable: commit order within a tier
        out.setdefault(path, []).append(c)
    return out


def redacted_files(cap: Any) -> tuple[set[tuple[str, str]], dict[str, set[str]]]:
    """(path, sha256) of every file a redacted chunk came from, under any root (a copy of
    the folder is the same secret), and by path the redacted chunks' texts, read from the
    stored bytes (7.7.1: reads withhold them; compaction purges them, and then nothing is
    known here). A file with that sha256 is not packed again, and a chunk with that text
    is not written either, whatever the path (a renamed or copied file is the same secret)."""
    files: set[tuple[str, str]] = set()
    texts: dict[str, set[str]] = {}
    for rid in redacted(cap._store):
        rec = cap._store.get(rid)
        if (got := _packed(rec, None)) is not None:
            path, _, meta = got
            if type(sha := meta.get("sha256")) is str:
                files.add((nfc(path), sha))
            texts.setdefault(nfc(path), set()).add(nfc(rec.text))
    return files, texts


def classify(olds: list[Chunk], sha256: str, n: int) -> str:
    """A file's status from its live chunks, its SHA-256 and its chunk count now
    (a resumed file's texts are checked when it is read again: :func:`same_texts`)."""
    if not olds:
        return UNCHANGED if n == 0 else ADDED  # an empty file: nothing there, nothing to add
    nums = {c.number for c in olds}
    if len(nums) == len(olds) and all(c.sha256 == sha256 and 0 <= c.number < n for c in olds):
        return UNCHANGED if len(olds) == n else RESUMED
    return CHANGED


def same_texts(olds: list[Chunk], chunks: list[str]) -> bool:
    """Each live chunk's text is the chunk of its number now (same chunking)."""
    return all(c.number < len(chunks) and c.text == nfc(chunks[c.number]) for c in olds)


@dataclass
class Tally:
    files: int = 0
    chunks: int = 0

    def add(self, chunks: int) -> None:
        self.files += 1
        self.chunks += chunks

    def to_dict(self) -> dict[str, int]:
        return {"files": self.files, "chunks": self.chunks}


@dataclass
class SyncReport:
    """What a pack did, file by file: the ``--json`` counts beside the totals."""

    added: Tally = field(default_factory=Tally)  # files new to the capsule, their chunks
    changed: Tally = field(default_factory=Tally)  # changed files, their new chunks
    resumed: Tally = field(default_factory=Tally)  # files a cut-short pack left incomplete, chunks added
    unchanged: Tally = field(default_factory=Tally)  # files left as they were, their live chunks
    superseded: Tally = field(default_factory=Tally)  # changed files, their old chunks dropped
    pruned: Tally = field(default_factory=Tally)  # paths no longer in the folder, chunks forgotten
    events: int = 0  # lifecycle events written
    reused: int = 0  # new chunks of changed files that took an old chunk's embedding (same text)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k).to_dict()
                               for k in ("added", "changed", "resumed", "unchanged", "superseded", "pruned")}
        out["reused_embeddings"] = self.reused
        return out


def lifecycle_event(tx: Any, op: str, drop: Iterable[bytes], by: Iterable[bytes], reason: str) -> None:
    """Write one lifecycle event (7.7.1) into ``tx`` through the checked entry point
    (``handle/lifecycle.py``): a replacement whose bytes are stored but dead (a file
    changed back) is restored by the event itself."""
    drop, by = sorted(drop), list(by)
    if not drop:
        return
    if op == "supersede" and not by:  # nothing replaces them (the file is now empty)
        op = "forget"
    tx.lifecycle(op, drop, by=by if op == "supersede" else (), reason=reason)


def prunable(have: dict[str, list[Chunk]], present: set[str], unread: Sequence[str] = ()
             ) -> list[tuple[str, list[Chunk]]]:
    """Paths with live chunks that are no longer in the folder, in sorted order; never one under
    a folder the walk could not list (``unread``, each ending in "/"): its files may all be there."""
    return [(p, have[p]) for p in sorted(have) if p not in present and not p.startswith(tuple(unread))]


__all__ = ["ADDED", "CHANGED", "RESUMED", "UNCHANGED", "Chunk", "SyncReport", "Tally", "classify",
           "lifecycle_event", "live_chunks", "nfc", "prunable", "root_of", "same_texts", "source_of"]
