"""Export a capsule for analytics: JSONL that ``put --jsonl`` reads back, or Parquet rows.

Theory of operation: one pass over the view's frames (``_export_read``), one record at a
time, into a sink that writes as it goes (a JSONL line, or a Parquet row group every
``batch`` rows), so a capsule of a million records exports in bounded memory. The output is
written to a temporary file beside its target and renamed over it only when complete: a
failed export (a corrupt frame, an interrupt, a full disk) leaves nothing behind. The capsule
is opened read-only and lock-free: it is never written, and a capsule another process is
writing exports as of its last commit.

What is exported (docs/export.md):

- the *live* state of the view by default (13.1: what ``capsule state`` holds), or with
  ``history=True`` every committed record (dead ones and revert events too, ``live`` false);
- ``at`` picks the view (a checkpoint label, a commit seq, a root prefix, an ISO time: 6.5);
- ``kinds`` keeps only those kinds;
- ``format="jsonl"`` writes the record form (re-importable), ``"parquet"`` the row form
  (:data:`COLUMNS`), ``partition="agent"`` makes ``out`` a hive-style dataset folder:
  ``out/agent=<agent id>/part-<file id>.parquet``.

>>> with capsule.create("a.capsule") as c:
...     with c.commit() as tx:
...         _ = tx.remember("deploys freeze on Fridays", tags=["ops"], time=0)
>>> r = export("a.capsule", "a.jsonl")
>>> from pathlib import Path
>>> r.rows, r.reimportable, Path("a.jsonl").read_text()
(1, True, '{"kind":"memory","tags":["ops"],"text":"deploys freeze on Fridays","time":0}\\n')
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from ..core.errors import UsageError
from ..format.records import _REGISTRY
from ..handle.entry import open as open_capsule
from ..ingest.source import check_output
from ._export_read import Entry, agent_of, check_kinds, entries
from ._export_rows import COLUMNS, json_line, record_form, row_dict, row_values

if TYPE_CHECKING:
    from ..handle.capsule import Capsule

Format = Literal["jsonl", "parquet"]
FORMATS = ("jsonl", "parquet")
#: progress is reported about this often (records read)
_TICK = 4096


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote (``capsule export --json`` prints :meth:`to_dict`)."""

    out: str
    format: str
    rows: int
    by_kind: dict[str, int]
    file_id: str
    agent_id: str | None
    at_seq: int | None  # the view's last commit seq
    state_root: str  # the view's state root (13.1): what a re-import of a live JSONL export reproduces
    history: bool
    #: JSONL only: records left out because they have no payload to write (redacted, 7.7.1)
    skipped_redacted: int = 0
    #: JSONL only: records written that ``put --jsonl`` refuses, by kind (internal or unknown kinds)
    not_importable: dict[str, int] = field(default_factory=dict)
    #: JSONL only: records with a bin value inside a map, written as hex (re-imported as text)
    lossy: int = 0

    @property
    def reimportable(self) -> bool:
        """True when ``put --jsonl`` of the file into an empty capsule gives this view's state root."""
        return (self.format == "jsonl" and not self.history and not self.skipped_redacted
                and not self.not_importable and not self.lossy)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reimportable": self.reimportable}


def _importable(kind: str) -> bool:
    cls = _REGISTRY.get(kind)
    return cls is not None and not getattr(cls, "INTERNAL", False)


def why_not_importable(kind: str) -> str:
    """Why ``put --jsonl`` refuses records of ``kind`` (for the export's warning)."""
    if kind in _REGISTRY:
        return "written by the capsule itself"
    return "an application kind (spec 12.3, e.g. letta.*), which `put --jsonl` does not take"


def _partition_path(out: Path, agent: str, file_id: str, fmt: str) -> Path:
    # hive style: the value percent-encoded, so an agent id can never name another folder
    return out / f"agent={quote(agent, safe='')}" / f"part-{file_id}.{fmt}"


def _target(cap: Capsule, src: Path, out: Path, *, force: bool) -> None:
    """Refuse an output that exists (unless ``force``), is a folder, a device, a FIFO or a
    link (the rename would replace it with a plain file), or is the capsule itself."""
    check_output(out, src, force=force, what="the capsule being exported")


def export(
    path: str | Path,
    out: str | Path,
    *,
    format: Format = "jsonl",  # noqa: A002  (the CLI's --format)
    kinds: Collection[str] | None = None,
    at: str | int | None = None,
    history: bool = False,
    partition: Literal["agent"] | None = None,
    dim: int | None = None,
    force: bool = False,
    batch: int = 65_536,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Export the capsule at ``path`` to ``out``; returns what was written.

    ``progress(done, total)`` is called as records are read (``total``: the view's records).
    ``dim`` fixes the Parquet embedding size (default: the capsule's vector dimension).
    Raises :class:`~capsule.AlreadyExists` for an existing ``out`` without ``force``,
    :class:`~capsule.UsageError` for an unknown kind or format or a missing pyarrow, and the
    reader's :class:`~capsule.DataError` for a damaged capsule; nothing is written then.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown format {format!r} (known: {', '.join(FORMATS)})")
    if partition not in (None, "agent"):
        raise UsageError(f"unknown partition {partition!r} (known: agent)")
    if dim is not None and (type(dim) is not int or not 1 <= dim <= 65536):
        raise UsageError("dim must be an integer in 1..65536")
    if format == "parquet":
        from ._export_parquet import arrow

        arrow()  # the missing extra is said before anything is read
    if isinstance(out, str) and out == "-":  # JSONL to standard output, as the CLI's `-o -`
        if format != "jsonl" or partition is not None:
            raise UsageError("-o - (standard output) is for JSONL only; name a file for parquet or --by-agent")
        with open_capsule(Path(path), at=at) as cap:
            return _stream(cap, check_kinds(cap, kinds), history)
    src, target = Path(path), Path(out)
    with open_capsule(src, at=at) as cap:
        want = check_kinds(cap, kinds)
        agent, fid = agent_of(cap), cap.file_id
        made: list[Path] = []
        if partition is not None:
            if target.exists() and not target.is_dir():
                raise UsageError(f"{target}: not a directory (a partitioned export writes a dataset folder)")
            final = _partition_path(target, agent or fid, fid, format)
            if len(os.fsencode(final.parent.name)) > 255:  # NAME_MAX: refused before a folder is made
                raise UsageError(f"agent id {(agent or '')[:40]!r}... is too long for a folder name "
                                 f"({len(os.fsencode(final.parent.name))} bytes encoded, at most 255)")
            for d in (target, final.parent):
                if not d.exists():
                    made.append(d)
        else:
            final = target
        if not made:
            _target(cap, src, final, force=force)
        try:
            for d in made:
                d.mkdir()
            return _write(cap, src, final, format, want, history, agent, fid, dim, batch, progress)
        except BaseException:
            for d in reversed(made):
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise


def _write(cap: Capsule, src: Path, final: Path, fmt: str, want: frozenset[str] | None, history: bool,
           agent: str | None, fid: str, dim: int | None, batch: int,
           progress: Callable[[int, int], None] | None) -> ExportResult:
    total = len(cap)
    done = [0, 0]  # records read, and read when progress was last reported

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None and done[0] - done[1] >= _TICK:
            done[1] = done[0]
            progress(done[0], total)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name[:100]}.", suffix=".tmp", dir=final.parent)
    tmp = Path(tmp_name)
    by_kind: Counter[str] = Counter()
    skipped = lossy = 0
    refused: Counter[str] = Counter()
    try:
        it = entries(cap, want, history=history, tick=tick)
        if fmt == "jsonl":
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
                skipped, lossy = _jsonl(it, f, by_kind, refused)
                f.flush()
                os.fsync(f.fileno())
        else:
            os.close(fd)
            vec = cap.index_info()["vectors"]
            if dim is None:
                dim = None if vec is None else int(vec["dim"])
            elif vec is not None and int(vec["dim"]) != dim:  # 16.1: one dimension per capsule
                raise UsageError(f"dim {dim} was asked for, but this capsule's vectors have {vec['dim']} "
                                 "dimensions; leave it out to use theirs")
            _parquet(it, tmp, dim, batch, agent, fid, by_kind)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if progress is not None:
        progress(total, total)
    commit = cap.log(1)
    return ExportResult(str(final), fmt, sum(by_kind.values()), dict(sorted(by_kind.items())), fid, agent,
                        commit[-1].seq if commit else None, cap.state_root, history, skipped,
                        dict(sorted(refused.items())), lossy)


def _stream(cap: Capsule, want: frozenset[str] | None, history: bool) -> ExportResult:
    """JSONL to standard output (nothing to sync or rename; a closed pipe is the reader's choice)."""
    by_kind: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    out = sys.stdout
    skipped, lossy = _jsonl(entries(cap, want, history=history), out, by_kind, refused)
    out.flush()
    commit = cap.log(1)
    return ExportResult("-", "jsonl", sum(by_kind.values()), dict(sorted(by_kind.items())), cap.file_id,
                        agent_of(cap), commit[-1].seq if commit else None, cap.state_root, history, skipped,
                        dict(sorted(refused.items())), lossy)


def _jsonl(it: Iterator[Entry], f: IO[str], by_kind: Counter[str], refused: Counter[str]) -> tuple[int, int]:
    skipped = lossy = 0
    write = f.write
    for e in it:
        if e.redacted:
            skipped += 1  # 7.7.1: no payload to write
            continue
        obj, bad = record_form(e.rec)
        lossy += bad
        kind = e.rec.kind
        if not _importable(kind):
            refused[kind] += 1
        by_kind[kind] += 1
        write(json_line(obj))
        write("\n")
    return skipped, lossy


def _parquet(it: Iterator[Entry], tmp: Path, dim: int | None, batch: int, agent: str | None, fid: str,
             by_kind: Counter[str]) -> None:
    from ._export_parquet import ParquetSink

    sink = ParquetSink(tmp, dim, batch=batch)
    try:
        for e in it:
            row, emb = row_values(e)
            row[0], row[1] = agent, fid
            sink.add(row, emb, row[2])
            by_kind[e.rec.kind] += 1
    except BaseException:
        sink.abort()
        raise
    sink.close()


def rows(source: str | Path | Capsule, *, kinds: Collection[str] | None = None, at: str | int | None = None,
         history: bool = False) -> Iterator[dict[str, Any]]:
    """The analytics rows of a capsule (a path, or an open capsule, read as it is), one dict
    per record with the keys of :data:`COLUMNS`: times as int ns, ``meta`` and ``fields`` as
    dicts, the embedding as a list of floats. A generator: nothing is held but the current
    frame's records.

    >>> with capsule.create("r.capsule") as c:
    ...     with c.commit() as tx:
    ...         _ = tx.remember("p95 budget is 300 ms", tags=["slo"], meta={"ms": 300}, time=5)
    >>> [(r["kind"], r["text"], r["tags"], r["meta"], r["time"], r["live"]) for r in rows("r.capsule")]
    [('memory', 'p95 budget is 300 ms', ['slo'], {'ms': 300}, 5, True)]
    """
    if isinstance(source, str | Path):
        with open_capsule(source, at=at) as cap:
            yield from _rows(cap, kinds, history)
    else:
        if at is None:
            yield from _rows(source, kinds, history)
        else:
            with source.view(at) as view:
                yield from _rows(view, kinds, history)


def _rows(cap: Capsule, kinds: Collection[str] | None, history: bool) -> Iterator[dict[str, Any]]:
    want = check_kinds(cap, kinds)
    agent, fid = agent_of(cap), cap.file_id
    for e in entries(cap, want, history=history):
        yield row_dict(e, agent, fid)


__all__ = ["COLUMNS", "FORMATS", "ExportResult", "export", "rows", "why_not_importable"]
