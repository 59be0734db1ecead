"""Arguments and options shared by several command groups, and their parsing."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from capsule import UsageError
from capsule.ingest.source import check_regular

from ._errors import EXIT_USAGE, fail


def regular(value: Path) -> Path:
    """A FIFO or a device where a file belongs would block the open: refused first."""
    try:
        check_regular(value)
    except UsageError as e:
        fail(str(e), EXIT_USAGE)
    return value


FileArg = Annotated[Path, typer.Argument(help="Path to the capsule file.", show_default=False, callback=regular)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AtOpt = Annotated[
    str | None,
    typer.Option("--at", help="View as of a checkpoint label, a seq (the commit that made that frame "
                 "durable), a commit root prefix (>= 4 hex digits) or an ISO-8601 time."),
]


def parse_meta(items: list[str], *, scalars: bool = False) -> dict[str, Any]:
    """KEY=VALUE pairs. With ``scalars`` (search filters) a VALUE that is a JSON
    number, boolean or null is read as one (chunk=0), anything else as text."""
    meta: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--meta expects KEY=VALUE, got {item!r}", EXIT_USAGE)
        meta[key] = value
        if scalars:
            with contextlib.suppress(json.JSONDecodeError, RecursionError):
                parsed = json.loads(value)
                if isinstance(parsed, int | float | bool) or parsed is None:
                    meta[key] = parsed
    return meta
