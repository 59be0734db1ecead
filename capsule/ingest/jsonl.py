"""JSON and JSONL input, read strictly: UTF-8 only (a BOM tolerated on line 1),
bad lines named by number, nesting bombs refused. Shared by ``capsule put
--jsonl`` and :func:`capsule.pack`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from ..core.errors import InvalidRecordError


def loads(text: str, where: str = "") -> Any:
    """One JSON value; ``where`` prefixes the error ("line 3: ")."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidRecordError(f"{where}invalid JSON: {e.msg}") from None
    except RecursionError:
        raise InvalidRecordError(f"{where}JSON nested too deeply") from None


def read_jsonl(lines: Iterable[bytes], where: str = "") -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a binary stream."""
    for n, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError:
            raise InvalidRecordError(f"{where}line {n}: not UTF-8 text") from None
        if line.strip():
            yield n, loads(line, f"{where}line {n}: ")
