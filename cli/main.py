"""The ``capsule`` command: each command parses, calls one library function, renders.

Code map (each module is one command group; none holds format logic):

- ``store``:  init, put, open, log
- ``records``: get, list (alias records)
- ``keys``:   rotate-keys, rekey (spec 10.3)
- ``state``:  state, keygen, checkpoint, checkpoints, rollback, fork
- ``verify``: verify (spec 13.3, 10.6, 15, 20.8)
- ``lifecycle``: forget, redact, supersede, promote, demote (spec 7.7.1)
- ``run``:    tasks, actions
- ``search``: search, pack, index
- ``inspect``: beliefs, diff, timeline; ``lineage``: why, audit (spec 13.5)
- ``report``: report (the HTML page and its figures)
- ``sync``: push, pull (spec 19)
- ``merge``: merge (spec 20)
- ``export``: export (JSONL / Parquet rows for analytics)
- ``letta``: import-af, export-af (Letta agent files)
- ``serve``: serve --mcp (an MCP server on stdio)
- ``_errors``: the one place errors become exit codes and one-line messages
- ``_render``: consoles, literal table cells, ``--json`` output
- ``_params``: arguments and options shared by several groups
- ``_coerce``: typer coerces plain option values without pydantic (start-up)

This module builds the app, registers the commands in the order ``--help``
lists them, and is the console-script entry point (``main``).
"""

from __future__ import annotations

import inspect as inspect_
import logging
import sys
from typing import Annotated

import typer

import capsule

from . import (
    _coerce,  # noqa: F401  (typer coerces plain values without pydantic: start-up)
    compact,
    export,
    inspect,
    keys,
    letta,
    lifecycle,
    lineage,
    records,
    report,
    run,
    search,
    serve,
    state,
    store,
    sync,
    verify,
)
from . import merge as merge_cli
from ._errors import run_app
from ._keys import with_keys

app = typer.Typer(
    name="capsule",
    help="Portable, crash-safe memory capsules for long-running agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

COMMANDS = (
    ("init", store.init),
    ("put", store.put),
    ("get", records.get),
    ("list", records.list_),
    ("open", store.open_),
    ("log", store.log),
    ("state", state.state),
    ("keygen", state.keygen),
    ("rotate-keys", keys.rotate_keys),
    ("rekey", keys.rekey),
    ("approve", keys.approve),
    ("checkpoint", state.checkpoint),
    ("checkpoints", state.checkpoints),
    ("rollback", state.rollback),
    ("fork", state.fork),
    ("compact", compact.compact),
    ("merge", merge_cli.merge_cmd),
    ("forget", lifecycle.forget),
    ("redact", lifecycle.redact),
    ("supersede", lifecycle.supersede),
    ("promote", lifecycle.promote),
    ("demote", lifecycle.demote),
    ("tasks", run.tasks),
    ("actions", run.actions),
    ("verify", verify.verify),
    ("search", search.search),
    ("pack", search.pack),
    ("index", search.index),
    ("beliefs", inspect.beliefs),
    ("why", lineage.why),
    ("diff", inspect.diff),
    ("timeline", inspect.timeline),
    ("audit", lineage.audit),
    ("report", report.report),
    ("push", sync.push),
    ("pull", sync.pull),
    ("export", export.export),
    ("import-af", letta.import_af),
    ("export-af", letta.export_af),
    ("serve", serve.serve),
)
#: 10: every command that reads or writes contents takes --identity / --passphrase-env
NO_KEYS = frozenset({"keygen"})


def _short(fn: object) -> str:
    """The first paragraph of a command's docstring on one line: typer's rich listing keeps the
    docstring's line breaks, which left ragged rows in `capsule --help`."""
    doc = inspect_.cleandoc(getattr(fn, "__doc__", None) or "")
    return " ".join(doc.split("\n\n", 1)[0].split())


def _flowed(fn: object) -> str:
    """A command's docstring with each paragraph's lines joined: typer's rich help keeps the
    docstring's line breaks and wraps within them, which broke lines mid-sentence ("if the two /
    diverged"). An indented line (an example), a list item and the line after a colon stay apart."""
    out: list[str] = []
    for line in inspect_.cleandoc(getattr(fn, "__doc__", None) or "").split("\n"):
        prev = out[-1] if out else ""
        if prev and line and not line[0].isspace() and not prev[0].isspace() and not prev.endswith(":") \
                and not line.startswith(("- ", "* ", "Example")):
            out[-1] = f"{prev} {line}"
        else:
            out.append(line)
    return "\n".join(out)


for _name, _fn in COMMANDS:
    app.command(_name, short_help=_short(_fn), help=_flowed(_fn))(_fn if _name in NO_KEYS else with_keys(_fn))
app.command("records", hidden=True)(with_keys(records.list_))  # the same command by the name the issue asked for


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    """Portable, crash-safe memory capsules for long-running agents."""
    if version:
        # Plain stdout, not the rich console: `--version` must stay instant (no rich import).
        sys.stdout.write(f"capsule {capsule.__version__} (format {capsule.FORMAT_VERSION})\n")
        raise typer.Exit(0)


class _Stderr(logging.Handler):
    """The library's warnings worth a line (a writer dropping a torn tail, 8.3), on stderr as
    ``capsule: warning: ...``; the library itself only logs (its users decide what to show)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(f"capsule: warning: {record.getMessage()}\n")


def main() -> None:
    """Console-script entry point."""
    log = logging.getLogger("capsule.recovery")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr(logging.WARNING))
    run_app(app)


if __name__ == "__main__":
    main()
