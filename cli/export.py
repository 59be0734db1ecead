"""The export command: a capsule's records as JSONL (re-importable) or Parquet rows (analytics)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from capsule import DataError

from ._errors import EXIT_USAGE, call, fail, stdout_gone
from ._params import AtOpt, FileArg, JsonOpt
from ._render import OutputError, TextOut, emit_json, err, isatty, out, warn


def export(
    path: FileArg,
    output: Annotated[str, typer.Option("--output", "-o", metavar="OUT", show_default=False,
                                        help="The file to write (a dataset folder with --by-agent; - for JSONL "
                                             "on standard output).")],
    fmt: Annotated[str, typer.Option("--format", "-f", metavar="jsonl|parquet",
                                     help="jsonl: one record per line, as `put --jsonl` reads it back. parquet: "
                                     "one row per record (id, kind, seq, time, text, tags, meta, embedding ...), "
                                     "needs pyarrow.")] = "jsonl",
    kind: Annotated[list[str] | None, typer.Option("--kind", metavar="KIND",
                                                   help="Only records of this kind (repeatable).")] = None,
    at: AtOpt = None,
    history: Annotated[bool, typer.Option("--history", help="Every committed record, not only the live state: "
                                          "dead records and lifecycle events too (a `live` column says which). "
                                          "Not re-importable.")] = False,
    by_agent: Annotated[bool, typer.Option("--by-agent", help="OUT is a dataset folder: write "
                                           "OUT/agent=<agent id>/part-<file id>.<format> (hive-style, "
                                           "for a fleet of capsules).")] = False,
    dim: Annotated[int | None, typer.Option("--dim", min=1, max=65536, metavar="D", help="Parquet: the embedding "
                                            "column's size (default: the capsule's vector dimension).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export the live records (or --history) for analytics or re-import; the capsule is only read.

    JSONL lines are records as `capsule put --jsonl` takes them: put into a new capsule, they give the same state root.

    Parquet rows have fixed columns (docs/export.md), one row group per 65,536 rows.

    Examples:
      capsule export agent.capsule -o agent.jsonl
      capsule export agent.capsule -f parquet -o agent.parquet --kind memory --at day-1
      capsule export agent.capsule -f parquet --by-agent -o fleet/
    """
    from capsule.integrations.export import FORMATS
    from capsule.integrations.export import export as run

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}", EXIT_USAGE)
    if dim is not None and fmt != "parquet":
        fail("--dim goes with --format parquet", EXIT_USAGE)
    if path.is_dir():
        fail(f"{path}: is a directory, not a capsule", EXIT_USAGE)
    if not path.is_file():
        fail(f"{path}: no such capsule", EXIT_USAGE)
    kw: dict[str, Any] = {"format": fmt, "kinds": kind or None, "at": at, "history": history,
                          "partition": "agent" if by_agent else None, "dim": dim, "force": force}

    if output == "-" and json_out:
        fail("-o - writes the records to standard output; --json would print there too", EXIT_USAGE)

    def go() -> Any:
        if output == "-":  # the JSONL is written through TextOut: an error of stdout is told apart
            real, sys.stdout = sys.stdout, TextOut()  # type: ignore[assignment]
            try:
                return run(path, output, **kw)
            except OutputError as e:  # /dev/full: as every command says it (exit 1)
                raise DataError(f"cannot write output: {e.strerror or e}") from None
            finally:
                sys.stdout = real
        if json_out or not isatty(sys.stderr):
            return run(path, output, **kw)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err.rich,
                      transient=True) as bar:
            task = bar.add_task("exporting", total=None)
            return run(path, output, progress=lambda d, t: bar.update(task, completed=d, total=t), **kw)

    try:
        res = call(go)
    except BrokenPipeError:  # -o - into `| head`: the reader went away
        stdout_gone()
    if json_out:
        emit_json(res.to_dict())
        return
    kinds = ", ".join(f"{n} {k}" for k, n in res.by_kind.items()) or "no records"
    # with -o - the records are standard output: what was written goes to standard error
    (err if output == "-" else out).print(f"wrote {res.out}: {res.rows} {'row' if res.rows == 1 else 'rows'} "
                                          f"({kinds})", markup=False)
    if fmt == "jsonl" and not history:
        if res.not_importable:
            from capsule.integrations.export import why_not_importable

            why: dict[str, list[str]] = {}
            for k, n in res.not_importable.items():
                why.setdefault(why_not_importable(k), []).append(f"{n} {k}")
            for reason, which in why.items():
                warn(f"{', '.join(which)} record(s) cannot be put back with `put --jsonl` ({reason}); "
                     "leave them out with --kind")
        if res.skipped_redacted:
            warn(f"{res.skipped_redacted} redacted record(s) left out: their payload is never exported")
        if res.lossy:
            warn(f"{res.lossy} record(s) hold binary values in a map, written as hex: they re-import as text")
