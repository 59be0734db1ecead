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


def _write(target: Path, text: str, source: Path) -> None:
    """The page, written next to ``target`` and renamed over it (never half a page);
    never over the capsule it was read from."""
    if target.exists() and (target.is_dir() or os.path.samefile(target, source)):
        fail(f"{target}: {'is a directory' if target.is_dir() else 'is the capsule being read'}", EXIT_USAGE)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        fail(f"{target}: no such folder {parent}", EXIT_USAGE)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
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

        with capsule.open(path, at=at) as cap:
            doc = build(cap)
        if output is not None:
            _write(output, render(doc), path)
        return doc

    doc = call(go)
    if json_out:
        emit_json(doc)
    else:
        out.print(f"wrote {output}", markup=False)
