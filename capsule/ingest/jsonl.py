"""JSON and JSONL input, read strictly: UTF-8 only (a BOM tolerated on line 1),
bad lines named by number, nesting bombs refused, and no line longer than one
record may be (spec 11), so an endless stream without newlines is an error after
16 MiB, not a process that grows until it dies. Shared by ``capsule put --jsonl``
and :func:`capsule.pack`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol

from ..core import constants as C
from ..core.errors import InvalidRecordError
from .source import size_text


class LineSource(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def loads(text: str, where: str = "") -> Any:
    """One JSON value; ``where`` prefixes the error ("line 3: ")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRecordError(f"{where}invalid JSON: {e.msg}") from None
    except RecursionError:
        raise InvalidRecordError(f"{where}JSON nested too deeply") from None


def read_jsonl(stream: LineSource, where: str = "", *, limit: int = C.MAX_JSONL_LINE,
               seen: Any = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a binary stream.

    A line is read with at most ``limit`` + 1 bytes in hand (11: one JSONL line
    holds one record). ``seen``, if given, is fed every raw line (a hash, to tell
    that a file read twice did not change in between).
    """
    n = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        n += 1
        if len(raw) - (1 if raw.endswith(b"\n") else 0) > limit:
            raise InvalidRecordError(f"{where}line {n}: longer than {size_text(limit)}, the limit of one "
                                     f"record (spec 11)")
        if seen is not None:
            seen.update(raw)
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise InvalidRecordError(f"{where}line {n}: not UTF-8 text") from None
        if line.strip():
            yield n, loads(line, f"{where}line {n}: ")
