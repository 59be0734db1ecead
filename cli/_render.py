"""Output for every command: the two consoles, literal table cells, JSON on stdout.

Human output goes through rich consoles; machine output (``--json``) is written
to stdout as UTF-8 bytes, so it is the same on every host and locale.

Everything printed for people is literal and escaped in this one place: the
consoles never read rich markup, and every string they print has its control
and format characters (ESC, BEL, newlines, C1 controls, bidi overrides, line
separators, lone surrogates) shown as ``\\xNN`` / ``\\uNNNN``, so a path, a
record's text or a kind name from another host cannot drive the terminal or
break a one-line error. Spaces and the zero-width joiners of emoji and Indic
scripts are text and stay. JSON output is not escaped here: JSON escapes
control characters itself.
"""

from __future__ import annotations

import json
import sys
import unicodedata
from typing import Any

from rich.console import Console
from rich.text import Text

_UNSAFE = frozenset({"Cc", "Cs", "Zl", "Zp", "Cf"})  # controls, surrogates, line breaks, format
_JOINERS = frozenset("\u200c\u200d")


def safe(value: object) -> str:
    """``str(value)`` with control and format characters escaped (``\\x1b``, ``\\u202e``)."""
    text = str(value)
    if text.isprintable():  # the common case; isprintable() is false for a superset
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE and c not in _JOINERS else c for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


class _Console(Console):
    """A console that prints strings literally and escaped (see the module docstring)."""

    def print(self, *objects: Any, **kw: Any) -> None:
        super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kw)


# Pipes get a wide console so tables (hashes, times) are not cut at 80 columns.
out = _Console(highlight=False, markup=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = _Console(stderr=True, highlight=False, markup=False, soft_wrap=True)


def cell(value: object) -> Text:
    """Table text, shown literally and escaped."""
    return Text(safe(value))


def warn(message: str) -> None:
    """A one-line warning on stderr; the command still succeeds."""
    err.print(f"capsule: warning: {message}")


def write_out(text: str) -> None:
    """Machine output as UTF-8 whatever the locale's encoding (same bytes everywhere)."""
    sys.stdout.buffer.write(text.encode("utf-8"))


def _jsonable(v: object) -> Any:
    # spec 13.2: a bin value prints as lowercase hex, as in search results (16.7).
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


def json_text(obj: Any, *, compact: bool = False) -> str:
    """Every ``--json`` document: sorted keys, UTF-8, bin values as hex; ``compact``
    is the canonical form of ``capsule state --json`` (13.2)."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_jsonable,
                      separators=(",", ":") if compact else None)


def emit_json(obj: Any, *, compact: bool = False) -> None:
    write_out(json_text(obj, compact=compact) + "\n")
