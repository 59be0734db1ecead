"""Pack a folder of text / markdown files (or one such file), or a JSONL file, into a capsule.

Files are read in sorted relative-path order and chunked by paragraphs, so the
same input gives the same records; with ``SOURCE_DATE_EPOCH`` set the capsule
itself is byte-identical (2.5). Each chunk is a memory whose ``source`` is the
file's relative POSIX path and whose ``meta`` holds ``path`` and ``chunk`` (its
position in the file, from 0). Records go in group commits; the vector index is
built at the end and its snapshot written on close, so the packed capsule opens
straight to search.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import AlreadyExists, CapsuleNotFound, DataError, InvalidRecordError, UsageError
from ..search.embed import Embedder, get_embedder
from ..search.vindex import VectorParams
from .jsonl import read_jsonl

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
CHUNK_CHARS = 1200
_PARA = re.compile(r"\n\s*\n")


@dataclass
class PackReport:
    files: int = 0
    records: int = 0
    new: int = 0
    vectors: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embedder: str | None = None
    bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "records": self.records, "new": self.new, "vectors": self.vectors,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "embedder": self.embedder,
                "bytes": self.bytes}


def chunk_text(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed greedily up to ``limit`` characters; a longer paragraph is
    cut at the last whitespace before the limit (or hard, if it has none)."""
    out: list[str] = []
    cur = ""
    for para in (p.strip() for p in _PARA.split(text.replace("\r\n", "\n"))):
        if not para:
            continue
        while len(para) > limit:
            cut = para.rfind(" ", 0, limit)
            cut = cut if cut > limit // 2 else limit
            if cur:
                out.append(cur)
                cur = ""
            out.append(para[:cut].strip())
            para = para[cut:].strip()
        if cur and len(cur) + 2 + len(para) > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


Row = tuple[str, dict[str, Any]]  # (where it came from, for errors; the record)


def _texts(src: Path, report: PackReport, warn: Callable[[str], None], limit: int) -> Iterator[Row]:
    """A folder's text files in sorted relative-path order (or one text file, by its name)."""
    if src.is_dir():
        files = sorted((p.relative_to(src).as_posix(), p) for p in src.rglob("*")
                       if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    else:
        files = [(src.name, src)]
    for rel, p in files:
        try:
            raw = p.read_bytes()
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            report.skipped.append((rel, f"not UTF-8 (byte {e.start})"))
            warn(f"skipped {rel}: not UTF-8 text (byte {e.start})")
            continue
        except OSError as e:
            report.skipped.append((rel, e.strerror or str(e)))
            warn(f"skipped {rel}: {e.strerror or e}")
            continue
        if "\0" in text:
            report.skipped.append((rel, "binary (NUL bytes)"))
            warn(f"skipped {rel}: binary (NUL bytes)")
            continue
        report.files += 1
        for i, chunk in enumerate(chunk_text(text, limit)):
            yield f"{rel} chunk {i}", {"kind": "memory", "text": chunk, "source": rel,
                                       "meta": {"chunk": i, "path": rel}}


def _jsonl(src: Path) -> Iterator[Row]:
    with src.open("rb") as f:
        for n, obj in read_jsonl(f, f"{src.name} "):
            if not isinstance(obj, dict):
                raise InvalidRecordError(f"{src.name} line {n}: a record must be a JSON object")
            yield f"{src.name} line {n}", obj


def _embedder_for(choice: str | Embedder | None, have: VectorParams | None, own: bool) -> Embedder | None:
    """16.1: which embedder fills in missing vectors; a capsule's vectors all come from one."""
    if choice == "auto":  # keep to what made the capsule's vectors; else hash, unless records bring their own
        choice = (have.embedder or None) if have is not None else (None if own else "hash")
    emb = None if choice is None else get_embedder(choice)
    if emb is not None and have is not None and have.embedder != emb.name:
        made = f"the {have.embedder} embedder" if have.embedder else "the agent (no named embedder)"
        raise UsageError(f"this capsule's vectors came from {made}; pack with the same embedder, not {emb.name}")
    return emb


def pack(src: str | Path, out: str | Path, *, embedder: str | Embedder | None = "auto", batch: int = 1000,
         append: bool = False, chunk_chars: int = CHUNK_CHARS, progress: Callable[[int, int], None] | None = None,
         warn: Callable[[str], None] | None = None, build: bool = True) -> PackReport:
    """Ingest ``src`` (a folder or file of text / markdown, or a JSONL file) into the capsule ``out``.

    ``embedder``: a name (``hash``, ``minilm``, ...), an :class:`Embedder`, ``None``
    for no vectors, or ``"auto"``: ``hash`` for folders and for JSONL whose records
    carry no embeddings of their own. Memories without an embedding get one from it.
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
    report = PackReport()
    if src.is_dir() or src.suffix.lower() in TEXT_SUFFIXES:
        rows = list(_texts(src, report, warn, chunk_chars))
        if not rows:
            raise UsageError(f"{src}: no UTF-8 text or markdown files ({', '.join(TEXT_SUFFIXES)}) to pack")
    else:
        rows = list(_jsonl(src))
        if not rows:
            raise UsageError(f"{src}: no records")
        report.files = 1
    own = any(r.get("embedding") is not None for _, r in rows)
    if out.exists() and not append:
        raise AlreadyExists(f"{out}: already exists (pass append=True / --append to add to it)")
    # A new capsule's embedder is loaded before the file exists, so a missing model
    # leaves nothing behind; appending checks it against the capsule's own.
    emb = None if append else _embedder_for(embedder, None, own)
    cap = open_capsule(out, "a") if append else create(out)
    try:
        if append:
            emb = _embedder_for(embedder, cap.vector_config(), own)
        report.embedder = None if emb is None else emb.name
        if emb is not None and cap.vector_config() is None:
            cap.configure_vectors(dim=emb.dim, embedder=emb.name)
        total = len(rows)
        for start in range(0, total, batch):
            group = [r for _, r in rows[start : start + batch]]
            todo = [i for i, r in enumerate(group)
                    if emb is not None and r.get("kind", "memory") == "memory" and r.get("embedding") is None
                    and isinstance(r.get("text"), str)]
            if todo:
                vecs = emb.embed([group[i]["text"] for i in todo])  # type: ignore[union-attr]
                for i, v in zip(todo, vecs, strict=True):
                    group[i] = {**group[i], "embedding": v}
            with cap.commit() as tx:
                for (where, _), r in zip(rows[start : start + batch], group, strict=True):
                    try:
                        tx.put_value(r)
                    except DataError as e:
                        raise InvalidRecordError(f"{where}: {e}") from None
                    if r.get("embedding") is not None:
                        report.vectors += 1
            report.records += len(group)
            report.new += len(tx.new_ids)
            if progress is not None:
                progress(min(start + batch, total), total)
        if build and cap.vector_config() is not None:
            cap.build_index()
            cap.save_index()  # 16.3: a packed capsule opens straight to search
    except BaseException:
        cap.close()
        if not append:  # a failed pack leaves no half-made capsule behind
            from ..format.file import lock_path

            out.unlink(missing_ok=True)
            lock_path(out).unlink(missing_ok=True)
        raise
    cap.close()
    report.bytes = out.stat().st_size
    return report
