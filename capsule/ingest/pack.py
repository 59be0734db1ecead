"""Pack a folder of text / markdown files (or one such file), or a JSONL file, into a capsule.

Read by suffix (any case): text is ``.txt``, ``.md``, ``.markdown``, ``.rst`` and
``.text``; JSONL is ``.jsonl`` and ``.ndjson``. A folder's files of other types are
ignored with one warning naming their suffixes; one file of another type is refused.

Files are read in sorted relative-path order and chunked by paragraphs, so the
same input gives the same records; with ``SOURCE_DATE_EPOCH`` set the capsule
itself is byte-identical (2.5). Each chunk is a memory whose ``meta`` holds ``root``
(the folder's own name, or a single file's folder's; ``root=`` another), ``path`` (the
file's POSIX path relative to the folder), ``chunk`` (its position in the file, from 0) and
``sha256`` (of the whole file's bytes), and whose ``source`` is ``root/path``, so packing
again adds nothing for an unchanged file and supersedes a changed one's chunks, among the
chunks of that root only (``resync.py``). Records go in group commits; the vector index is
built at the end and its snapshot written on close, so the packed capsule opens
straight to search.

Theory of operation: two passes, so the parsed input held at once is one batch
(appending also keeps its one commit's encoded records). The first reads every input once (JSON syntax and objects, UTF-8, sizes
against spec 11's input limits), counts the records, learns whether JSONL
records bring their own embeddings (which picks the embedder) and creates
nothing; between them, once the capsule is open, one pass over its state decides
what each text file needs (``resync.py``); the second pass reads again only the
files that need writing and streams batches into the capsule, checking
that each file hashes as it did the first time, each batch through
``Transaction.put_many`` (the bulk path ``put --jsonl`` shares). A new capsule gets a commit per
batch and is deleted if anything fails (or is interrupted); appending writes one
commit (the lifecycle events of changed and pruned files with it), so a failure
leaves the existing capsule byte for byte as it was.
Only regular files are read, and in a folder a symlink only while it stays inside.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core import constants as C
from ..core.errors import (
    AlreadyExists,
    CapsuleError,
    CapsuleNotFound,
    InvalidRecordError,
    UsageError,
)
from ..search.embed import Embedder, get_embedder
from ..search.part import snapshot_due
from ..search.vindex import VectorParams
from .chunk import CHUNK_CHARS, chunk_text
from .jsonl import read_jsonl
from .jsonl_sync import Packed
from .resync import (
    ADDED,
    CHANGED,
    RESUMED,
    UNCHANGED,
    Chunk,
    SyncReport,
    classify,
    lifecycle_event,
    live_chunks,
    nfc,
    prunable,
    redacted_files,
    root_of,
    same_texts,
    source_of,
)
from .source import (
    FOLDER_UNREAD,
    TEXT_SUFFIXES,
    check_regular,
    open_regular,
    read_regular,
    size_text,
    text_files,
    undecodable,
)

if TYPE_CHECKING:
    from ..format.keys import PublicKey

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class PackReport:
    files: int = 0
    records: int = 0
    new: int = 0
    vectors: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedder: str | None = None
    bytes: int = 0
    #: file by file: added, changed, resumed, unchanged, superseded, pruned (files and chunks; resync.py)
    sync: SyncReport = field(default_factory=SyncReport)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "records": self.records, "new": self.new, "vectors": self.vectors,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "embedder": self.embedder,
                "bytes": self.bytes, **self.sync.to_dict()}


Row = tuple[str, dict[str, Any]]  # (where it came from, for errors; the record)
_PACK_TEXT = "one text file to pack"


@dataclass
class _File:
    rel: str  # relative POSIX path (NFC, as meta stores it)
    path: Path  # what to open
    sha256: str  # of its bytes, at the first pass
    chunks: int  # how many it has now
    status: str = ADDED  # what the plan decided (resync.py)


@dataclass
class _Source:
    """What the first pass learned; ``rows()`` is the second pass."""

    total: int  # records the second pass yields (for text: before the plan)
    own: bool  # some JSONL record brings its own embedding
    rows: Callable[[], Iterator[Row]]
    files: list[_File] | None = None  # text files, in order (None: JSONL)
    listed: set[str] = field(default_factory=set)  # every text file's path, skipped ones too (prune keeps them)
    root: str = ""  # what the files are filed under (resync.py)
    everywhere: dict[str, bytes] | None = None  # text -> a live chunk of the root holding it (embeddings)
    folder: bool = False  # a folder's files (opened without following a final symlink)
    have: dict[str, list[Chunk]] = field(default_factory=dict)  # live chunks by path, before the pack
    replace: dict[str, list[Chunk]] = field(default_factory=dict)  # changed paths: the chunks to supersede
    redacted: set[str] = field(default_factory=set)  # redacted chunks' texts, of any path (7.7.1)
    red_paths: set[str] = field(default_factory=set)  # the paths they came from
    withheld: dict[str, int] = field(default_factory=dict)  # by path, chunks not written: a redacted one's text
    rewritten: set[str] = field(default_factory=set)  # changed files that held redacted text: packed again
    unread: tuple[str, ...] = ()  # folders the walk could not list ("a/b/"): prune keeps what is under them


def _skip(report: PackReport, warn: Callable[[str], None], rel: str, why: str) -> None:
    report.skipped.append((rel, why))  # --json escapes a name's undecodable bytes (\udcXX), as every path
    warn(f"skipped {rel.encode('utf-8', 'backslashreplace').decode()}: {why}")


def _read_text(rel: str, path: Path, nofollow: bool) -> tuple[str | None, str]:
    """(the text, its bytes' SHA-256) or (None, why it is skipped); a file over the
    limit raises (11: an input is never silently cut), which a folder's pack turns into a
    skip it names."""
    try:
        raw = read_regular(path, C.MAX_PACK_TEXT, _PACK_TEXT, nofollow=nofollow)
    except InvalidRecordError:
        raise InvalidRecordError(f"{rel}: larger than {size_text(C.MAX_PACK_TEXT)}, the limit of "
                                 f"{_PACK_TEXT} (spec 11)") from None
    except UsageError:
        return None, "not a regular file"
    except OSError as e:
        return None, e.strerror or str(e)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 text (byte {e.start})"
    if "\0" in text:
        return None, "binary (NUL bytes)"
    return text, hashlib.sha256(raw).hexdigest()


_NOT_TEXT = ("not UTF-8 text", "binary (NUL bytes)")  # _read_text's reasons that say what the bytes are


def _texts(src: Path, report: PackReport, warn: Callable[[str], None], limit: int) -> _Source:
    """A folder's text files (or one text file, by its name); the first pass reads
    each once to skip what is not text, hash it and count its chunks. Its rows are
    :func:`_text_rows`, which follow the plan made once the capsule is open."""
    folder = src.is_dir()
    files = text_files(src, lambda rel, why: _skip(report, warn, rel, why), warn) if folder else [(src.name, src)]
    if not folder:
        check_regular(src)
        if undecodable(src.name):  # its name goes in every chunk's meta (text, 5.1)
            raise UsageError(f"{src.name.encode('utf-8', 'backslashreplace').decode()}: its name is not UTF-8 "
                             "(rename it)")
    source = _Source(0, False, lambda: iter(()), files=[], folder=folder)
    assert source.files is not None
    for rel, p in files:
        try:
            text, note = _read_text(rel, p, folder)
        except InvalidRecordError as e:  # too large (11): in a folder one file is skipped, said, not the pack
            if not folder:
                raise
            text, note = None, str(e).removeprefix(f"{rel}: ")
        if text is None:
            _skip(report, warn, rel, note)
            continue
        report.files += 1
        n = len(chunk_text(text, limit))
        source.total += n
        source.files.append(_File(nfc(rel), p, note, n))
    # prune keeps the chunks of a file it could not read (its text may be there next time), not of one
    # it read that is no longer text: those chunks are stale
    stale = {nfc(rel) for rel, why in report.skipped if why.startswith(_NOT_TEXT)}
    source.listed = ({nfc(rel) for rel, _ in files} | {nfc(rel) for rel, _ in report.skipped}) - stale
    source.unread = tuple("" if rel == "./" else nfc(rel) for rel, why in report.skipped  # "": the folder itself
                          if why.startswith(FOLDER_UNREAD))
    return source


def _plan(source: _Source, have: dict[str, list[Chunk]]) -> None:
    """Each file's status (resync.py) and the chunks the second pass will write."""
    assert source.files is not None
    todo = 0
    for f in source.files:
        olds = have.get(f.rel, [])
        f.status = classify(olds, f.sha256, f.chunks)
        todo += 0 if f.status == UNCHANGED else f.chunks - (len(olds) if f.status == RESUMED else 0)
    source.have, source.total = have, todo


def _text_rows(source: _Source, sync: SyncReport, limit: int,
               vector_of: Callable[[bytes], Any] | None = None,
               skip: Callable[[str, str], None] | None = None) -> Iterator[Row]:
    """The second pass: read again (and check) each file that needs writing, chunk it,
    yield the chunks to write; a changed file's old chunks go to ``source.replace``.
    ``vector_of(id)``: a stored chunk's embedding, which a new chunk of a changed
    file with the very same text takes instead of being embedded again (the
    capsule's vectors all come from one embedder, 16.1)."""
    assert source.files is not None
    for f in source.files:
        olds = source.have.get(f.rel, [])
        if f.status == UNCHANGED:
            sync.unchanged.add(len(olds))
            continue
        text, again = _read_text(f.rel, f.path, source.folder)
        why = None
        if text is None:  # readable in the first pass: say what changed, not that the bytes did
            why = f"could not be read again ({again})"
        elif again != f.sha256:
            why = "changed while it was being packed"
        if why is not None:
            if skip is None:
                raise InvalidRecordError(f"{f.rel}: {why}")
            # a file an agent keeps writing: the others go in, this one keeps what it had (not pruned)
            skip(f.rel, f"{why}: {'its chunks are as they were' if olds else 'not packed'}; pack --append "
                        "again to take it")
            continue
        assert text is not None
        chunks = chunk_text(text, limit)
        numbers = range(len(chunks))
        if f.status == RESUMED:
            if same_texts(olds, chunks):
                there = {c.number for c in olds}
                numbers = [i for i in numbers if i not in there]  # type: ignore[assignment]
            else:  # packed with another chunking: replace it whole
                f.status = CHANGED
                source.total += len(olds)
        if source.redacted:  # 7.7.1: a redacted chunk's text is never written again, under any name
            keep = [i for i in numbers if nfc(chunks[i]) not in source.redacted]
            if len(keep) < len(numbers):
                source.withheld[f.rel] = len(numbers) - len(keep)
            if f.rel in source.red_paths and f.status != UNCHANGED and keep:
                source.rewritten.add(f.rel)  # it held redacted text and changed: packed again, said
            numbers = keep  # type: ignore[assignment]
        same: dict[str, bytes] = {}  # text -> an old chunk holding it
        if f.status == CHANGED:
            source.replace[f.rel] = olds
            if vector_of is not None:
                same = {c.text: c.id for c in olds}
        if vector_of is not None and source.have and not same:  # a renamed or copied file: any live chunk
            if source.everywhere is None:  # of the root with the very same text lends its embedding
                source.everywhere = {c.text: c.id for cs in source.have.values() for c in cs}
            same = source.everywhere
        {ADDED: sync.added, CHANGED: sync.changed, RESUMED: sync.resumed}[f.status].add(len(numbers))
        for i in numbers:
            meta: dict[str, Any] = {"chunk": i, "path": f.rel, "sha256": f.sha256}
            if source.root:
                meta["root"] = source.root
            row = {"kind": "memory", "text": chunks[i], "source": source_of(source.root, f.rel), "meta": meta}
            old = same.get(nfc(chunks[i])) if same else None
            vec = None if old is None or vector_of is None else vector_of(old)
            if vec is not None:
                row["embedding"] = vec
                sync.reused += 1
            yield f"{f.rel} chunk {i}", row


def _jsonl(src: Path) -> _Source:
    """A JSONL file; the first pass parses every line (so bad JSON is refused before
    anything is written) and remembers a hash of what it read."""

    def read(seen: Any) -> Iterator[Row]:
        with open_regular(src) as f:
            for n, obj in read_jsonl(f, f"{src.name} ", seen=seen):
                if not isinstance(obj, dict):
                    raise InvalidRecordError(f"{src.name} line {n}: a record must be a JSON object")
                yield f"{src.name} line {n}", obj

    first = hashlib.sha256()
    total, own = 0, False
    for _, obj in read(first):
        total += 1
        own = own or obj.get("embedding") is not None

    def rows() -> Iterator[Row]:
        again = hashlib.sha256()
        yield from read(again)
        if again.digest() != first.digest():
            raise InvalidRecordError(f"{src.name}: changed while it was being packed")

    return _Source(total, own, rows)


def _batches(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    group: list[Row] = []
    for row in rows:
        group.append(row)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _embedder_for(choice: str | Embedder | None, have: VectorParams | None, own: bool) -> Embedder | None:
    """16.1: which embedder fills in missing vectors; a capsule's vectors all come from one."""
    auto = choice == "auto"
    if auto:  # keep to what made the capsule's vectors; else hash, unless records bring their own
        choice = (have.embedder or None) if have is not None else (None if own else "hash")
    emb = None if choice is None else get_embedder(choice)
    if auto and own and emb is not None:
        # 16.5: vectors of two embedders are not comparable; a query embedded by this one would
        # never find vectors another model made (the summary called them this embedder's)
        raise UsageError(f"these records bring their own embeddings, and this capsule's vectors come from the "
                         f"{emb.name} embedder: leave the embeddings out (the text is embedded), or pass "
                         f"--embedder {emb.name} if they are that embedder's")
    if emb is not None and have is not None and have.embedder != emb.name:
        made = f"the {have.embedder} embedder" if have.embedder else "the agent (no named embedder)"
        raise UsageError(f"this capsule's vectors came from {made}; pack with the same embedder, not {emb.name}")
    return emb


def pack(src: str | Path, out: str | Path, *, embedder: str | Embedder | None = "auto", batch: int = 1000,
         append: bool = False, chunk_chars: int = CHUNK_CHARS, progress: Callable[[int, int], None] | None = None,
         warn: Callable[[str], None] | None = None, build: bool = True,
         on_index: Callable[[], None] | None = None, timeout: float | None = None,
         prune: bool = False, recipients: Sequence[PublicKey] = (), passphrase: bytes | str | None = None,
         root: str | None = None) -> PackReport:
    """Ingest ``src`` (a folder or file of text / markdown, or a JSONL file) into the capsule ``out``.

    ``embedder``: a name (``hash``, ``minilm``, ...), an :class:`Embedder`, ``None``
    for no vectors, or ``"auto"``: ``hash`` for folders and for JSONL whose records
    carry no embeddings of their own. Memories without an embedding get one from it.
    A new capsule gets one commit per ``batch`` records; ``append`` writes them all
    in one commit. Either way a failure (or an interrupt) leaves nothing: a new
    capsule is deleted, an existing one is left byte for byte as it was.
    ``progress(done, total)`` follows the records; ``on_index()`` is called before
    the vector index is built. ``timeout``: with ``append``, how long to wait for
    another writer (as for :func:`capsule.open`).

    Packing text again adds nothing for a file whose bytes are unchanged (each chunk's
    ``meta.sha256`` is its file's): a changed file's new chunks supersede its old ones,
    a pack cut short is completed, so re-running ``append`` keeps a capsule in sync with
    a folder (``resync.py``). ``prune`` (a folder, with ``append``) also forgets the
    chunks of paths no longer in it; without it they are left alone. ``root``: the name
    the files are filed under (default: the folder's name, or a single file's folder's):
    a pack reads, supersedes and prunes only the chunks of its root, so folders packed
    into one capsule stay apart (two folders of one name need a ``root`` each); ``""``
    for chunks packed before roots were kept. ``report.sync`` counts files and chunks by
    what happened to them.

    >>> import capsule, pathlib
    >>> notes = pathlib.Path("notes")
    >>> notes.mkdir()
    >>> _ = (notes / "oncall.md").write_text("# On call\\n\\nPage alice for payments.\\n\\nPage dana for storage.")
    >>> report = capsule.pack(notes, "notes.capsule")
    >>> report.files, report.records, report.embedder  # short paragraphs share a chunk
    (1, 1, 'hash')
    >>> with capsule.open("notes.capsule") as cap:
    ...     [(h.meta["path"], h.meta["chunk"]) for h in cap.search("storage", mode="lexical")]
    [('oncall.md', 0)]
    >>> with capsule.open("notes.capsule") as cap:
    ...     [(h.meta["root"], h.record.source) for h in cap.search("storage", mode="lexical")]
    [('notes', 'notes/oncall.md')]
    """
    from ..handle.entry import create
    from ..handle.entry import open as open_capsule

    src, out = Path(src), Path(out)
    warn = warn or (lambda _m: None)
    if not src.exists():
        raise CapsuleNotFound(f"{src}: no such file or folder")
    if type(batch) is not int or batch < 1:
        raise UsageError("batch must be a positive integer")
    if chunk_chars < 100:
        raise UsageError("chunks must allow at least 100 characters")
    if prune and not (append and src.is_dir()):
        raise UsageError("--prune needs --append and a folder: it forgets the chunks of files no longer in it")
    report = PackReport()
    if src.is_dir() or src.suffix.lower() in TEXT_SUFFIXES:
        source = _texts(src, report, warn, chunk_chars)
        source.root = root_of(src, root)
        # a sync may prune the last file away, or find every file emptied (their chunks then go)
        if not source.total and not (append and (prune or report.files)):
            raise UsageError(f"{src}: no UTF-8 text or markdown files ({', '.join(TEXT_SUFFIXES)}) to pack")
    elif src.suffix.lower() not in JSONL_SUFFIXES:
        raise UsageError(f"{src}: pack reads text ({', '.join(TEXT_SUFFIXES)}) and JSONL "
                         f"({', '.join(JSONL_SUFFIXES)}) files, not {src.suffix or 'files without an extension'}")
    else:
        if root is not None:
            raise UsageError("--root files text files under a name; JSONL records are not filed by path")
        source = _jsonl(src)
        if not source.total:
            raise UsageError(f"{src}: no records")
        report.files = 1
        report.sync.added.files = 1
    check_regular(out)  # a folder or a device where the capsule goes: no --append would help
    if out.is_dir():
        raise UsageError(f"{out}: is a folder; -o names the capsule file to write")
    if out.exists() and not append and out.stat().st_size:  # an empty one: create() decides (a killed create's)
        raise AlreadyExists(f"{out}: already exists (--append adds to it)")
    # A new capsule's embedder is loaded before the file exists, so a missing model
    # leaves nothing behind; appending checks it against the capsule's own.
    emb = None if append else _embedder_for(embedder, None, source.own)
    # 10: a new capsule is encrypted for ``recipients`` / ``passphrase``; one appended to opens
    # with the keys of capsule.unlocking(...) or that passphrase
    cap = (open_capsule(out, "a", timeout=timeout, passphrase=passphrase) if append
           else create(out, recipients=recipients, passphrase=passphrase))
    packed: Packed | None = None
    try:
        if append:  # "auto" keeps to a capsule of memories without vectors (packed --embedder none)
            none = embedder == "auto" and cap.vector_config() is None and cap._snap.kinds.get("memory", 0)
            emb = None if none else _embedder_for(embedder, cap.vector_config(), source.own)
        report.embedder = None if emb is None else emb.name
        if emb is not None and cap.vector_config() is None:
            cap.configure_vectors(dim=emb.dim, embedder=emb.name)
        if source.files is not None:  # text: what is there already decides what is written
            withheld: list[_File] = []
            if append:
                gone, texts = redacted_files(cap)  # 7.7.1: redacted bytes are not packed again, renamed,
                source.redacted = set().union(*texts.values())  # copied or as they were
                source.red_paths = set(texts)
                withheld = [f for f in source.files if (f.rel, f.sha256) in gone]  # as it was, where it was
                for f in withheld:
                    source.files.remove(f)
                    _skip(report, warn, f.rel, "its content was redacted (7.7.1): not packed again")
            roots: set[str] = set()
            _plan(source, live_chunks(cap, source.root, roots) if append else {})
            if source.root and "" in roots:  # packed before roots were kept: this pack would add it all again
                warn("this capsule holds chunks packed without a root (before roots were kept); pack with "
                     "--root '' to keep syncing those, else they stay beside the ones packed now")
            for f in withheld:  # its live chunks of another version left the folder
                if stale := [c for c in source.have.get(f.rel, ()) if c.sha256 not in (None, f.sha256)]:
                    source.replace[f.rel] = stale  # superseded by nothing: forgotten (7.7.1)
            vector_of = None if emb is None else (lambda rid: getattr(cap.get(rid), "embedding", None))
            rows = _text_rows(source, report.sync, chunk_chars, vector_of,  # a folder's other files go in
                              (lambda rel, why: _skip(report, warn, rel, why)) if source.folder else None)
        else:
            rows = source.rows()
            if append:  # a line already packed (all but its time) is not packed again
                packed = Packed(cap)
                rows = packed.filter(rows)
        groups = _batches(rows, batch)
        if append:
            # 6.4: one commit, so a bad record anywhere leaves the capsule as it was; the
            # lifecycle events join the records that replace what they drop (7.7.1).
            new: dict[str, list[bytes]] = {}
            with cap.commit() as tx:
                for group in groups:
                    ids = _add(tx, group, emb, report, progress, source)
                    _note_new(new, group, ids, source.replace)
                _events(tx, source, new, report.sync, prune)
            report.new = len(tx.new_ids) - report.sync.events
        else:
            for group in groups:
                with cap.commit() as tx:
                    _add(tx, group, emb, report, progress, source)
                report.new += len(tx.new_ids)
        if source.withheld:  # 7.7.1: said, with the files
            warn(f"{sum(source.withheld.values())} chunk(s) not written: each is a redacted chunk's text "
                 f"(7.7.1), in {_some(source.withheld)}")
        if source.rewritten:  # only an exact chunk is known to be the secret: an edited file may hold it still
            warn(f"{_some(source.rewritten)} held redacted text and changed, so it was packed again: if the "
                 "redacted text is still in it, it is live again; take it out of the file, then redact again")
        if not append and source.files and not report.records and any(  # every file changed under the pack
                why.endswith("pack --append again to take it") for _, why in report.skipped):
            raise UsageError(f"{src}: nothing was packed: its files changed while they were being packed")
        if source.files is None:
            _jsonl_tally(report, packed.skipped if packed is not None else 0)
            if packed is not None and packed.withheld:
                warn(f"{packed.withheld} line(s) whose record was redacted not packed again (7.7.1)")
        if build and cap.vector_config() is not None and _snapshot_now(cap, report, append):
            if on_index is not None:
                on_index()
            try:
                cap.build_index()
                cap.save_index()  # 16.3: a packed capsule opens straight to search
            except (OSError, CapsuleError) as e:  # after an append's commit: the records are in (6.4)
                if not append:
                    raise
                warn(f"the records are committed, but the search snapshot was not saved ({e}); "
                     "search works without it, and `capsule index` saves it later")
    except BaseException:
        cap.close()
        if not append:  # a failed or interrupted pack leaves no half-made capsule behind
            from ..format.file import lock_path

            out.unlink(missing_ok=True)
            lock_path(out).unlink(missing_ok=True)
        raise
    try:
        cap.close()
    except (OSError, CapsuleError) as e:  # a close's own snapshot (16.3): the commits stand
        if not append:
            raise
        warn(f"the records are committed, but closing failed ({e})")
    report.bytes = out.stat().st_size
    return report


def _some(paths: Collection[str]) -> str:
    names = sorted(paths)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more files" if len(names) > 5 else "")


def _snapshot_now(cap: Any, report: PackReport, append: bool) -> bool:
    """A new pack snapshots its vector index; an append only when it added as many vectors as
    16.3's close policy wants: a snapshot is a whole copy, so a daily sync of a few changed files
    otherwise grew the file by the whole index each time (the close writes one when it is due)."""
    if not append:
        return True
    snap = (cap.index_info().get("snapshot") or {}).get("vectors")
    return snap is None or report.vectors >= snapshot_due(snap)


def _jsonl_tally(report: PackReport, skipped: int) -> None:
    """A JSONL file's line of the sync counts: added (nothing of it was there), unchanged (every
    line was) or changed (some were), with its lines as chunks."""
    sy = report.sync
    if not skipped:
        sy.added.chunks = report.records
        return
    sy.added.files = 0
    sy.unchanged.chunks = skipped
    if report.records:
        sy.changed.files, sy.changed.chunks = 1, report.records
    else:
        sy.unchanged.files = 1


def _note_new(new: dict[str, list[bytes]], group: list[Row], ids: Any, replace: dict[str, list[Chunk]]) -> None:
    """Remember the new chunks of the changed files: the ``by`` of their supersede events."""
    if replace:
        for (_, rec), rid in zip(group, ids, strict=True):
            path = rec["meta"]["path"]
            if path in replace:
                new.setdefault(path, []).append(bytes.fromhex(rid))


def _events(tx: Any, source: _Source, new: dict[str, list[bytes]], sync: SyncReport,
            prune: bool) -> None:
    """A changed file's old chunks are superseded by its new ones (by path); with
    ``prune``, the chunks of paths no longer in the folder are forgotten (7.7.1)."""
    for path, olds in source.replace.items():
        by = list(dict.fromkeys(new.get(path, ())))
        old = {c.id for c in olds}
        # same bytes, same id (content addressing): a chunk in both stays live as it is
        drop = old.difference(by)
        if drop:
            lifecycle_event(tx, "supersede", drop, [b for b in by if b not in old], f"pack: {path} changed")
            sync.events += 1
        sync.superseded.add(len(drop))
    if prune:
        for path, olds in prunable(source.have, source.listed, source.unread):
            lifecycle_event(tx, "forget", [c.id for c in olds], (), f"pack --prune: {path} is no longer there")
            sync.events += 1
            sync.pruned.add(len(olds))


def _add(tx: Any, group: list[Row], emb: Embedder | None, report: PackReport,
         progress: Callable[[int, int], None] | None, source: _Source) -> Any:
    """One batch: embed the memories that need it, add every record to the commit."""
    records = [r for _, r in group]
    todo = [i for i, r in enumerate(records)
            if emb is not None and r.get("kind", "memory") == "memory" and r.get("embedding") is None
            and isinstance(r.get("text"), str)]
    if todo:
        vecs = emb.embed([records[i]["text"] for i in todo])  # type: ignore[union-attr]
        for i, v in zip(todo, vecs, strict=True):
            records[i] = {**records[i], "embedding": v}
    ids = tx.put_many(records, names=lambda i: group[i][0])  # the bulk path; errors name "FILE line N"
    report.vectors += sum(1 for r in records if r.get("embedding") is not None)
    report.records += len(group)
    if progress is not None:
        progress(report.records, source.total)
    return ids
