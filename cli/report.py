"""The report command: one self-contained HTML page of a capsule, and its figures as JSON."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import EXIT_USAGE, call, fail
from ._params import AtOpt, FileArg, JsonOpt
from ._render import emit_json, out


def _write(target: Path, text: str, source: Path, force: bool) -> None:
    """The page, written next to ``target`` and renamed over it (never half a page); never
    over the capsule it was read from, a device, a FIFO or a link, nor, without ``force``, over
    a file that exists."""
    from capsule.ingest.source import check_output

    check_output(target, source, force=force)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:100]}.", suffix=".tmp", dir=target.parent if str(target.parent)
                               else Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:  # a path's undecodable byte
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report(
    path: FileArg,
    output: Annotated[Path | None, typer.Option("--output", "-o", metavar="HTML",
                                                help="Write the HTML page here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the -o file if it exists.")] = False,
    json_out: JsonOpt = False,
    at: AtOpt = None,
) -> None:
    """Write a self-contained HTML report (no script, no network): summary, timeline,
    tiers, decision graph, checkpoints and signers, actions, tasks. --json prints the
    same figures.

    Example: capsule report agent.capsule -o report.html
    """
    if output is None and not json_out:
        fail("give -o FILE.html for the page, or --json for the figures", EXIT_USAGE)

    def go() -> dict[str, Any]:
        import capsule
        from capsule.report.report import report as build
        from capsule.report.report_html import render

        with capsule.open(path) as whole, (whole.view(at) if at is not None else whole) as cap:
            doc = build(cap)
            if at is not None:  # say on the page that it is not the newest state
                doc["summary"]["view"] = {"at": at, "newer_commits": whole.commit_count - cap.commit_count}
        if output is not None:
            _write(output, render(doc), path, force)
        return doc

    doc = call(go)
    if json_out:
        emit_json(doc)
    else:
        out.print(f"wrote {output}", markup=False)
