"""Output for every command: the two consoles, literal table cells, JSON on stdout.

Human output goes through rich consoles; machine output (``--json``) is written
to stdout as UTF-8 bytes, so it is the same on every host and locale.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

# Pipes get a wide console so tables (hashes, times) are not cut at 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def cell(value: object) -> Text:
    """Table text shown literally: no rich markup, control characters escaped (a
    capsule from another host must not be able to drive the terminal)."""
    text = str(value)
    return Text(_CONTROL.sub(lambda m: repr(m.group())[1:-1], text))


def warn(message: str) -> None:
    """A one-line warning on stderr; the command still succeeds."""
    err.print(f"capsule: warning: {message}", markup=False)


def write_out(text: str) -> None:
    """Machine output as UTF-8 whatever the locale's encoding (same bytes everywhere)."""
    sys.stdout.buffer.write(text.encode("utf-8"))


def emit_json(obj: Any) -> None:
    write_out(json.dumps(obj, sort_keys=True, ensure_ascii=False) + "\n")
