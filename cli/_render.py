"""Output for every command: the two consoles, literal table cells, JSON on stdout.

Human output goes through rich consoles; machine output (``--json``) is written
to stdout as UTF-8 bytes, so it is the same on every host and locale.

Everything printed for people is literal and escaped in this one place: the
consoles never read rich markup, and every string they print has its control
and format characters (ESC, BEL, newlines, C1 controls, bidi overrides, line
separators, lone surrogates) shown as ``\\xNN`` / ``\\uNNNN``, so a path, a
record's text or a kind name from another host cannot drive the terminal or
break a one-line error. Spaces and the zero-width joiners of emoji and Indic
scripts are text and stay. JSON output keeps its text, but JSON escapes only C0
controls, so C1 and bidi controls are escaped there too (``json_text``).
"""

from __future__ import annotations

import json
import os
import re
import select
import sys
from typing import TYPE_CHECKING, Any

from capsule.core.visible import visible

if TYPE_CHECKING:  # rich is imported when something is first printed for people
    from rich.console import Console
    from rich.table import Table as RichTable
    from rich.text import Text

safe = visible  # every string printed for people (see capsule.core.visible)


def _console(**kw: Any) -> Console:
    from rich.console import Console

    class _Console(Console):
        """A console that prints strings literally and escaped (see the module docstring)."""

        def print(self, *objects: Any, **kw: Any) -> None:
            super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kw)

        def on_broken_pipe(self) -> None:
            # rich exits 1 (the "bad capsule" status, `state | head`): end as any closed pipe does
            from ._errors import stdout_gone

            stdout_gone()

    return _Console(**kw)


class _LazyConsole:
    """A console made on first use, so a command that prints nothing for people
    (``--json``, ``--version``) never imports rich (about 25 ms of start-up)."""

    def __init__(self, **kw: Any) -> None:
        self._kw = kw
        self._made: Console | None = None

    @property
    def rich(self) -> Console:
        """The console itself (for rich objects that take one, like ``Progress``)."""
        if self._made is None:
            self._made = _console(**self._kw)
        return self._made

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)

    def __enter__(self) -> Console:  # rich's Live (progress bars) enters its console
        return self.rich.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.rich.__exit__(*exc)  # type: ignore[arg-type]


def isatty(stream: Any) -> bool:
    """Whether ``stream`` is a terminal; False when it is closed or missing (``capsule ... >&-``
    leaves ``sys.stdout`` None)."""
    try:
        return stream is not None and bool(stream.isatty())
    except (OSError, ValueError):
        return False


# Pipes get a wide console so tables (hashes, times) are not cut at 80 columns.
out = _LazyConsole(highlight=False, markup=False, emoji=False, soft_wrap=True,
                   width=None if isatty(sys.stdout) else 200)
err = _LazyConsole(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def Table(*headers: Any, **kw: Any) -> RichTable:  # noqa: N802  (stands in for the class)
    """rich's ``Table``, imported when a command first draws one."""
    from rich.table import Table

    return Table(*headers, **kw)


def cell(value: object) -> Text:
    """Table text, shown literally and escaped."""
    from rich.text import Text

    return Text(safe(value))


def warn(message: str) -> None:
    """A one-line warning on stderr; the command still succeeds."""
    err.print(f"capsule: warning: {message}")


def write_out(text: str) -> None:
    """Machine output as UTF-8 whatever the locale's encoding (same bytes everywhere)."""
    write_all(text.encode("utf-8"))


def write_all(data: bytes, stream: Any = None) -> None:
    """Every byte to stdout, or the reader's going away raised (BrokenPipeError): written with
    os.write in a loop, not through BufferedWriter, which passes a short write's count on and
    drops the rest when a pipe's reader leaves mid-write (`list --json | head -c 10` exited 0,
    563 KB unsaid) and gives up on a non-blocking pipe that is full (a slow reader, here waited for)."""
    f = sys.stdout if stream is None else stream
    f.flush()
    try:
        fd = f.fileno()
    except (OSError, ValueError, AttributeError):  # a stream with no descriptor (a test runner's)
        f.buffer.write(data)
        f.buffer.flush()
        return
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:  # a non-blocking stdout (set by the parent) that is full: wait
            select.select([], [fd], [])


class OutputError(OSError):
    """Standard output refused a write (a full disk, an I/O error): not the input's fault."""


class ClosedStdout:
    """``sys.stdout`` when the shell closed fd 1 (``capsule export F -o - >&-``): every write
    fails as on a closed descriptor (``echo hi >&-`` says "write error"), so output is never
    dropped with exit 0. (/dev/null holds fd 1, so no file opened later takes it.)"""

    def _closed(self, *_: Any) -> Any:
        raise OutputError(9, "standard output is closed")  # EBADF

    write = fileno = _closed

    @property
    def buffer(self) -> ClosedStdout:
        return self

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


class TextOut:
    """``sys.stdout`` for a command that streams text (``export -o -``): UTF-8, in 64 KiB writes
    by :func:`write_all`, and an error of stdout raised as :class:`OutputError`, so that it is
    told from an error reading the capsule (both carry no file name)."""

    def __init__(self) -> None:
        self._real = sys.stdout
        self._parts: list[str] = []
        self._size = 0

    def write(self, s: str) -> int:
        self._parts.append(s)
        self._size += len(s)
        if self._size >= 1 << 16:
            self.flush()
        return len(s)

    def flush(self) -> None:
        data, self._parts, self._size = "".join(self._parts).encode("utf-8"), [], 0
        try:
            write_all(data, self._real)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OutputError(e.errno, e.strerror) from None


def _jsonable(v: object) -> Any:
    # spec 13.2: a bin value prints as lowercase hex, as in search results (16.7).
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).hex()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


#: JSON escapes only C0 controls, but C1 controls (U+0080-U+009F) and the bidi embedding,
#: override, isolate and mark characters (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F,
#: U+061C) from a record's text, a tag or a path drive or reorder a terminal just as well;
#: the line and paragraph separators break line-based readers. Every ``--json`` document
#: writes them as ``\uXXXX`` escapes, which a JSON reader decodes to the same string.
_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in (*range(0x80, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A),
                                            0x200E, 0x200F, 0x061C, 0x2028, 0x2029)}


# The same characters found by a regex: ``str.translate`` with a dict costs a Python lookup per
# character of the document (1.5 s for `state --json` of 37 MB with any non-ASCII text), a
# regex a C scan. Over UTF-8 bytes each character is its whole encoding: a lead byte (C2, D8,
# E2) never occurs inside another character's encoding, so a match is always one character.
# A lone surrogate (a path's undecodable byte, as Python's file system encoding keeps it) has no
# UTF-8 form: it is written as its ``\udcXX`` escape, as json.dumps with ensure_ascii would.
_JSON_ESCAPE_STR = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_JSON_ESCAPES)) + "\ud800-\udfff]")
_JSON_ESCAPE_UTF8 = re.compile(b"|".join(re.escape(chr(c).encode()) for c in sorted(_JSON_ESCAPES)))


def _escape_str(m: re.Match[str]) -> str:
    c = ord(m.group())
    return _JSON_ESCAPES.get(c) or f"\\u{c:04x}"


def _escape_utf8(m: re.Match[bytes]) -> bytes:
    return _JSON_ESCAPES[ord(m.group().decode())].encode()


def json_text(obj: Any, *, compact: bool = False) -> str:
    """Every ``--json`` document: sorted keys, UTF-8, bin values as hex, C1 and bidi
    controls escaped; ``compact`` is the canonical form of ``capsule state --json`` (13.2)."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_jsonable,
                      separators=(",", ":") if compact else None)
    return text if text.isascii() else _JSON_ESCAPE_STR.sub(_escape_str, text)


def escape_json(data: bytes) -> bytes:
    """A JSON document made elsewhere (UTF-8), with the escapes of :func:`json_text`."""
    return data if data.isascii() else _JSON_ESCAPE_UTF8.sub(_escape_utf8, data)


def emit_json(obj: Any, *, compact: bool = False) -> None:
    write_out(json_text(obj, compact=compact) + "\n")


def rule_text(c: Any) -> str:
    """A constraint's rule (7.3.1) in words, or "" without one: ' (rule email.*: 2 approvals
    among 3 named keys)'."""
    rule = c.get("rule")
    if not rule:
        return ""
    n, named = rule.get("approvals", 1), len(rule.get("approvers") or ())
    who = f"among {named} named key{'s' if named > 1 else ''}" if named else "by keys of the keyset"
    return f" (rule {rule['action']}: {n} approval{'s' if n > 1 else ''} {who})"
