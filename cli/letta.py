"""Letta agent files: import an .af into a new capsule, export a capsule back to an .af."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import EXIT_USAGE, call, fail, stdout_gone
from ._params import AtOpt, FileArg, JsonOpt, regular
from ._render import emit_json, out


def _plural(n: int, one: str) -> str:
    return f"{n} {one}{'' if n == 1 else 's'}"


def _summary(rep: Any) -> str:
    how = f"schema {rep.schema}" + (", JSON encoded twice" if rep.encoded_twice else "")
    return (f"{_plural(rep.agents, 'agent')}, {_plural(rep.blocks, 'block')}, {_plural(rep.messages, 'message')}, "
            f"{_plural(rep.tools, 'tool')} ({how})")


def import_af(
    src: Annotated[Path, typer.Argument(help="The Letta agent file (.af) to read: schema v1 or v2, plain JSON or "
                                        "a JSON string holding it.", show_default=False, callback=regular,
                                        metavar="AGENT.af")],
    output: Annotated[Path, typer.Option("-o", "--output", metavar="FILE", show_default=False,
                                         help="The capsule to create (one that exists is refused).")],
    json_out: JsonOpt = False,
) -> None:
    """Import a Letta agent file into a new capsule.

    Memory blocks become memories tagged letta:block (and with their label),
    messages notes ("role: text", at their created_at), the first agent the
    identity (model, system prompt, llm and embedding config), and every object
    whole as letta.* records, unknown fields included, so export-af writes the
    same file back. An invalid file is refused with the JSON path of what is
    wrong, and nothing is written. With SOURCE_DATE_EPOCH set, two imports are
    byte-identical.

    Examples:
      capsule import-af memgpt_agent.af -o agent.capsule
      capsule search agent.capsule "what does the user like" --tag letta:block
    """
    from capsule.integrations.letta import import_af as do_import

    rep = call(lambda: do_import(src, output))
    if json_out:
        emit_json(rep.to_dict())
        return
    out.print(f"imported {_summary(rep)} into {output} ({_plural(rep.records, 'record')}, "
              f"{_plural(rep.bytes, 'byte')})")


def export_af(
    path: FileArg,
    output: Annotated[Path, typer.Option("-o", "--output", metavar="AGENT.af", show_default=False,
                                         help="The agent file to write (- for standard output).")],
    at: AtOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the output file if it exists.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export the Letta agent file a capsule holds (made by import-af).

    Blocks are the capsule's live block memories (a superseded block exports its new
    text, a forgotten one is left out) and the first agent's system prompt and configs
    are the current identity's; everything else is written back as imported, in the
    file's own layout. The file is written whole or not at all; the capsule is only read.

    Examples:
      capsule export-af agent.capsule -o agent.af
      capsule export-af agent.capsule -o day1.af --at day-1 --force
    """
    from capsule.integrations.letta import export_af as do_export

    if str(output) == "-":
        if json_out:
            fail("-o - writes the agent file to standard output; --json would print there too", EXIT_USAGE)
        from capsule.integrations.letta import dump_af, export_agent

        data = call(lambda: dump_af(export_agent(path, at=at)))
        try:
            sys.stdout.flush()
            try:
                fd = sys.stdout.fileno()
            except (OSError, ValueError):  # a stream with no descriptor (a test runner's)
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
                return
            view = memoryview(data)
            while view:  # every byte, or the reader's going away said (a short write is not the end)
                view = view[os.write(fd, view):]
        except BrokenPipeError:
            stdout_gone()
        return
    rep = call(lambda: do_export(path, output, at=at, overwrite=force))
    if json_out:
        emit_json(rep.to_dict())
        return
    out.print(f"exported {_summary(rep)} to {output} ({_plural(rep.bytes, 'byte')})")
