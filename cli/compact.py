"""``capsule compact``: a smaller file with provable lineage (spec 15.1)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

import capsule

from ._errors import call
from ._params import FileArg, JsonOpt, WaitOpt
from ._render import emit_json, err, isatty, out, warn
from .state import PassOpt, _load_keys


def warn_not_carried(rep: dict[str, Any], what: str) -> None:
    """Say which signed checkpoints a rewrite (compaction, rekey) could not carry (15.2), and why."""
    if not rep["not_carried"]:
        return
    gone = rep["not_carried_why"]
    reasons: dict[str, list[str]] = {}
    for g in gone:
        reasons.setdefault(g["why"], []).append(repr(g["label"]))
    parts = "; ".join(", ".join(ls[:5]) + (f" and {len(ls) - 5} more" if len(ls) > 5 else "") + f" ({why})"
                      for why, ls in reasons.items())
    warn(f"{len(gone)} signed checkpoint(s) not carried into the {what} file, their labels gone: {parts}"
         + ("" if rep["signed"] else f"; --key signs the {what} state"))


def compact(
    path: FileArg,
    out_path: Annotated[Path | None, typer.Option("-o", "--out", help="Write this new file (refused if it exists) "
                                                  "instead of replacing FILE in place.")] = None,
    keep: Annotated[str, typer.Option("--keep", help="history (every record but redacted payloads), checkpoints "
                                      "(what signed checkpoints and the live state need) or live (the live state "
                                      "only). The action journal, task and lifecycle events always stay.")]
    = "history",
    key: Annotated[list[Path] | None, typer.Option("--key", help="Sign a checkpoint of the compacted head with this "
                                                   "private key file; repeat for a threshold.")] = None,
    passphrase_env: PassOpt = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Rewrite a capsule without what its policy drops; `verify NEW --parent OLD` proves it.

    In place: temporary file, fsync, rename, so a crash leaves the old file or the new one; a file
    with bytes after its last commit (a torn tail) is compacted to a new file only (-o), which keeps it.

    Examples:
      capsule compact agent.capsule
      capsule compact agent.capsule -o small.capsule --keep live --key agent.key
      capsule verify small.capsule --parent agent.capsule
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress

    def go() -> dict[str, Any]:
        if passphrase_env and not key:
            raise capsule.UsageError("--passphrase-env unlocks the signing --key, and no --key was given (the "
                                     "capsule's own passphrase is --capsule-passphrase-env)")
        keys = _load_keys(key, passphrase_env) if key else None
        kw: dict[str, Any] = {"keep": keep, "key": keys, "timeout": wait or None}
        if json_out or not isatty(sys.stderr):
            return capsule.compact(path, out_path, **kw)
        with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), console=err, transient=True) as bar:
            task = bar.add_task("compacting", total=None)
            return capsule.compact(path, out_path, progress=lambda d, t: bar.update(task, completed=d, total=t), **kw)

    rep = call(go)
    if json_out:
        emit_json(rep)
        return
    warn_not_carried(rep, "compacted")
    if rep.get("torn_tail_bytes"):
        warn(f"{rep['path']} has {rep['torn_tail_bytes']} bytes after its last commit (an interrupted write, or "
             f"damage to the newest commit): not in {rep['out']}; {rep['path']} keeps them (capsule verify says which)")
    out.print(f"compacted {rep['path']} into {rep['out']} ({rep['policy']}): {rep['kept']} records kept, "
              f"{rep['dropped']} dropped; {rep['bytes_before']} -> {rep['bytes_after']} bytes", markup=False)
