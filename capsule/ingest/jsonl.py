"""JSON and JSONL input, read strictly: UTF-8 only (a BOM tolerated on line 1),
bad lines named by number, nesting bombs refused, and no line longer than one
record may be (spec 11), so an endless stream without newlines is an error after
16 MiB, not a process that grows until it dies. Shared by ``capsule put --jsonl``
and :func:`capsule.pack`.

:class:`JsonLines` hands on each line's raw bytes, for ``Transaction.put_many``
to decode in C (``format.bulk``); :func:`read_jsonl` decodes them to values."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from ..core import constants as C
from ..core.errors import InvalidRecordError
from .source import size_text

_BOM = b"\xef\xbb\xbf"
# What str.strip() strips from an ASCII line (bytes.strip() leaves \x1c-\x1f)
_ASCII_SPACE = b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f"


class LineSource(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


def loads(text: str, where: str = "") -> Any:
    """One JSON value; ``where`` prefixes the error ("line 3: ")."""
    from ..format.bulk import loads as reference  # msgspec loads on first use, not at start-up

    return reference(text, where)


class JsonLines:
    """The non-blank lines of a binary JSONL stream, as raw bytes, one at a time.

    A line is read with at most ``limit`` + 1 bytes in hand (11: one JSONL line holds
    one record); a BOM is dropped from line 1; a line that is not UTF-8 is refused
    here, by number. ``line`` is the number of the line last handed out, and
    :meth:`name` names it for errors ("notes.jsonl line 7"), so a consumer that takes
    one line at a time can say where a bad record was. ``seen``, if given, is fed
    every raw line (a hash, to tell that a file read twice did not change in between).
    More than ``max_lines`` records (non-blank lines: one commit's worth, 11) is refused,
    before any is written.
    """

    def __init__(self, stream: LineSource, where: str = "", *, limit: int = C.MAX_JSONL_LINE,
                 seen: Any = None, max_lines: int | None = C.MAX_JSONL_COMMIT_LINES) -> None:
        self.stream, self.where, self.limit, self.seen = stream, where, limit, seen
        self.max_lines = max_lines  # None: no bound (a caller that commits in parts)
        self.line = 0

    def name(self, _index: int = 0) -> str:
        return f"{self.where}line {self.line}"

    def __iter__(self) -> Iterator[bytes]:
        readline, limit, seen = self.stream.readline, self.limit, self.seen
        n = self.line
        left = self.max_lines  # records (non-blank lines) one commit may still take
        while True:
            raw = readline(limit + 1)
            if not raw:
                return
            n += 1
            self.line = n
            if len(raw) - (1 if raw.endswith(b"\n") else 0) > limit:
                raise InvalidRecordError(f"{self.where}line {n}: longer than {size_text(limit)}, the limit of "
                                         f"one record (spec 11)")
            if seen is not None:
                seen.update(raw)
            if n == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            if raw.isascii():
                if not raw.strip(_ASCII_SPACE):
                    continue
            else:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidRecordError(f"{self.where}line {n}: not UTF-8 text") from None
                if not text.strip():
                    continue
            if left is not None:
                if left == 0:
                    raise InvalidRecordError(f"{self.where}line {n}: more than {self.max_lines:,} records, too many for "
                                             "one commit (held in memory until it is written): split the input, or "
                                             "give `capsule put --batch N` to commit every N lines")
                left -= 1
            yield raw


def read_jsonl(stream: LineSource, where: str = "", *, limit: int = C.MAX_JSONL_LINE,
               seen: Any = None) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a binary stream (see :class:`JsonLines`;
    no bound on the lines: ``pack`` commits them in batches)."""
    from ..format.bulk import decode_json

    lines = JsonLines(stream, where, limit=limit, seen=seen, max_lines=None)
    for raw in lines:
        yield lines.line, decode_json(raw, f"{where}line {lines.line}: ")


__all__ = ["JsonLines", "LineSource", "loads", "read_jsonl"]
