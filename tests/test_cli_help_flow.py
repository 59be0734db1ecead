"""`capsule CMD --help` flows each paragraph instead of breaking lines where the docstring did.

Typer's rich help keeps a docstring's line breaks and wraps within them, so a long docstring line
became a line and a stub ("...; if the two" / "diverged (a fork), ..."). Each paragraph's lines are
now joined; examples (indented lines) and the line after a colon keep their own lines.
"""

from __future__ import annotations

import re

from .clirun import capsule_cli


def test_no_help_line_is_a_stub_of_a_broken_sentence() -> None:
    for cmd in ("push", "serve", "compact", "pull", "redact"):
        text = capsule_cli(cmd, "--help", env={"COLUMNS": "80"}).stdout  # as a terminal of 80 columns shows it
        head = text.split("╭")[0]  # the description, before the option panels
        lines = [ln.strip() for ln in head.splitlines()]
        for a, b in zip(lines, lines[1:], strict=False):
            # a line far shorter than the width followed by a continuation in lower case was a break
            if b.startswith(("capsule ", "{")):
                continue  # an example line
            assert not (a and b and len(a) < 40 and b[:1].islower() and not a.endswith((":", "."))), (cmd, a, b)
    verify = capsule_cli("verify", "--help", env={"COLUMNS": "80"}).stdout
    assert re.search(r"\n\s*Example: capsule verify", verify), verify  # its own line, not run into the prose
    serve = capsule_cli("serve", "--help").stdout
    assert re.search(r"\n\s+capsule serve agent.capsule --mcp --key agent.key", serve)  # examples keep their lines
