"""Text shown to people, with the characters that could drive or reorder what they see
written out: controls (ESC, BEL, C1), lone surrogates, line and paragraph separators and
format characters (bidi overrides and isolates, zero-width marks) become ``\\xNN`` /
``\\uNNNN`` / ``\\UNNNNNNNN``. The zero-width joiners of emoji and Indic scripts are text and
stay. The terminal (``cli/_render``) and the HTML report both print through :func:`visible`,
so a record's text cannot reverse the id or the time printed beside it (U+202E), on either."""

from __future__ import annotations

import unicodedata

UNSAFE = frozenset({"Cc", "Cs", "Zl", "Zp", "Cf"})  # controls, surrogates, line breaks, format
JOINERS = frozenset("\u200c\u200d")


def visible(value: object) -> str:
    """``str(value)`` with control and format characters escaped (``\\x1b``, ``\\u202e``)."""
    text = str(value)
    if text.isprintable():  # the common case; isprintable() is false for a superset
        return text
    return "".join(_escape(c) if unicodedata.category(c) in UNSAFE and c not in JOINERS else c for c in text)


def _escape(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


__all__ = ["UNSAFE", "visible"]
