"""``capsule push`` and ``capsule pull``: a capsule to and from object storage (spec 19)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from capsule.ingest.source import check_regular

from ._errors import EXIT_USAGE, call, fail
from ._keys import trust_key
from ._params import FileArg, JsonOpt, WaitOpt
from ._render import emit_json, err, isatty, out, warn

UrlArg = Annotated[str, typer.Argument(help="Remote capsule: any fsspec URL (s3://bucket/prefix/name, "
                                       "file:///srv/capsules/name). Credentials come from the "
                                       "store's usual environment or config.", metavar="URL", show_default=False)]


#: a store that stops answering is waited for (its client's timeouts and retries decide how long),
#: but not in silence: after this many seconds without a step, and then every 30 s, stderr says so
STALL_SAY = 20.0


def _with_progress(json_out: bool, run: Callable[[Callable[[str, int, int], None] | None], Any]) -> Any:
    """Run ``run(progress)``; a bar on stderr when it is a terminal (never with --json), and a line
    on stderr while no step has come for a while (a store that accepts and never answers)."""
    import threading
    import time

    last, done = [time.monotonic()], threading.Event()

    def watch() -> None:
        say = STALL_SAY
        while not done.wait(min(say, 5.0)):
            idle = time.monotonic() - last[0]
            if idle < STALL_SAY:
                say = STALL_SAY
            elif idle >= say:
                warn(f"still working: {idle:.0f} s since the last step (a store that stops answering is "
                     "waited for as long as its client retries; Ctrl-C stops it safely)")
                say += 30.0

    threading.Thread(target=watch, daemon=True, name="capsule-stall").start()
    try:
        if json_out or not isatty(sys.stderr):
            return run(lambda *_: last.__setitem__(0, time.monotonic()))
        from rich.progress import BarColumn, DownloadColumn, Progress

        with Progress("{task.description}", BarColumn(), DownloadColumn(), console=err.rich, transient=True) as bar:
            task = bar.add_task("contacting", total=None)

            def step(stage: str, n: int, total: int) -> None:
                last[0] = time.monotonic()
                bar.update(task, description=stage, completed=n, total=total)

            return run(step)
    finally:
        done.set()


def _not_memory(url: str) -> None:
    """memory:// is one process's dict: from the command line a push there is gone at exit."""
    if url.lower().startswith("memory:"):
        fail(f"{url}: memory:// lives inside one process, so from the command line it is gone when the command "
             "exits; use a path, file:///path or s3://bucket/prefix (memory:// is for the library)", EXIT_USAGE)


def push(
    path: FileArg,
    url: UrlArg,
    as_name: Annotated[str | None, typer.Option("--as", metavar="NAME", help="Push beside URL, under this name in "
                                                "the same folder (for a copy that diverged from URL).")] = None,
    check: Annotated[bool, typer.Option("--check", help="Also read back every segment the remote names and "
                                        "upload again, from FILE, any that is damaged or missing (a remote that "
                                        "pull refuses).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Push the committed part of a capsule; only the tail the remote lacks is sent.

    The remote must be a prefix of FILE (same chain value at its last commit); if the two
    diverged (a fork), push refuses with exit 1 naming both and the last common commit.
    FILE is only read. Two pushes racing on one URL: one wins, the other says "remote moved".

    Examples:
      capsule push agent.capsule s3://fleet/agents/agent-7
      capsule push agent.capsule s3://fleet/agents/agent-7 --as agent-7-laptop --json
    """
    import capsule.sync

    _not_memory(url)
    rep = call(lambda: _with_progress(json_out, lambda pr: capsule.sync.push(path, url, as_name=as_name,
                                                                                progress=pr, check=check)))
    if json_out:
        emit_json(rep.to_dict())
        return
    _skipped(rep.skipped)
    if rep.repaired:
        out.print(f"repaired {len(rep.repaired)} damaged segment(s) of {rep.url}: {', '.join(rep.repaired)}",
                  markup=False)
    if rep.status == "up-to-date":
        out.print(f"{rep.url} is up to date (commit {rep.commits}, generation {rep.generation})", markup=False)
        return
    merged = f", {rep.merged_bytes} re-sent to merge segments" if rep.merged_bytes else ""
    out.print(f"pushed {path} to {rep.url}: generation {rep.generation}, commit {rep.commits} (seq {rep.seq}); "
              f"{rep.tail_bytes} new bytes, {rep.bytes} written{merged}", markup=False)


def pull(
    url: UrlArg,
    path: Annotated[Path, typer.Argument(help="Local capsule: created if absent, else extended (the remote must "
                                         "extend it).", metavar="FILE", show_default=False)],
    trust: Annotated[str | None, typer.Option("--trust", metavar="KEY.pub", help="Refuse the remote unless a "
                                              "checkpoint signed by this key (or keyset hash) covers its new "
                                              "records (spec 13.4).")] = None,
    wait: WaitOpt = 0.0,
    json_out: JsonOpt = False,
) -> None:
    """Pull a remote capsule into a new file, or append what a local copy lacks.

    Every byte is verified before it lands. A new FILE: segment SHA-256s, then the whole
    capsule (chain, Merkle roots, records) and, with --trust, the signatures. An existing
    FILE: only the tail it lacks is downloaded and checked from its last commit on (chain,
    records, commits, indexes), without reading FILE again; a tail holding a checkpoint is
    checked with FILE as one file. FILE is extended under its writer lock, one commit at a
    time. --json says which in "checked" ("tail" or "file").

    Examples:
      capsule pull s3://fleet/agents/agent-7 agent.capsule
      capsule pull s3://fleet/agents/agent-7 agent.capsule --trust agent.key.pub --json
    """
    import capsule.sync

    _not_memory(url)

    def go() -> Any:
        anchor: Any = None
        if trust is not None:
            tp = Path(trust)
            if tp.exists():
                check_regular(tp, "--trust ")
                anchor = trust_key(tp)
            elif len(trust) == 64 and all(c in "0123456789abcdefABCDEF" for c in trust):
                anchor = trust.lower()
            else:
                raise capsule.UsageError(f"--trust {trust!r} is neither a key file nor a keyset hash")
        if path.exists():
            check_regular(path)
        return _with_progress(json_out, lambda pr: capsule.sync.pull(url, path, trust=anchor, progress=pr,
                                                                        timeout=wait or None))

    rep = call(go)
    if json_out:
        emit_json(rep.to_dict())
        return
    _skipped(rep.skipped)
    said = {"created": f"created {rep.path} from {rep.url}",
            "pulled": f"pulled {rep.url} into {rep.path}",
            "up-to-date": f"{rep.path} is up to date with {rep.url}",
            "ahead": f"{rep.path} is ahead of {rep.url} (push it)"}[rep.status]
    signed = f"; signed through seq {rep.signed_prefix['seq']}" if rep.signed_prefix else ""
    # pulled with nothing checked now: a killed pull's journal was finished, nothing downloaded
    moved = (f"{rep.bytes} bytes appended from an interrupted pull's journal"
             if rep.status == "pulled" and rep.checked is None else f"{rep.bytes} bytes downloaded")
    out.print(f"{said}: commit {rep.commits} (seq {rep.seq}), {moved}{signed}", markup=False)


def _skipped(names: list[str]) -> None:
    """19.2: a newer manifest that could not be read was passed over for an older generation:
    said, since "up to date" may then mean up to date with what is left of the remote."""
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        warn(f"{len(names)} newer manifest(s) could not be read and were passed over: {shown}; this used an "
             "older generation, so the remote's newest commits may be out of reach (spec 19.2)")
