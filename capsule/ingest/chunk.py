"""Text into chunks for ``pack`` (spec 17): paragraphs packed greedily up to a limit.

The chunks are the records a pack writes, so their ids: the cut must stay exactly as it is
(tests/test_pack_chunk_linear.py keeps the first version as the model).
"""

from __future__ import annotations

import re

CHUNK_CHARS = 1200
_PARA = re.compile(r"\n\s*\n")


def chunk_text(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Paragraphs packed greedily up to ``limit`` characters; a longer paragraph is
    cut at the last whitespace before the limit (or hard, if it has none)."""
    out: list[str] = []
    cur = ""
    for para in (p.strip() for p in _PARA.split(text.replace("\r\n", "\n"))):
        if not para:
            continue
        # the rest of a long paragraph is para[at:] (its left stripped, its right already is):
        # an index, not a copy of the rest per chunk, which made one 16 MB paragraph take 40 s
        at, n = 0, len(para)
        while n - at > limit:
            cut = para.rfind(" ", at, at + limit)
            cut = cut if cut - at > limit // 2 else at + limit
            if cur:
                out.append(cur)
                cur = ""
            out.append(para[at:cut].strip())
            at = cut
            while at < n and para[at].isspace():
                at += 1
        para = para[at:] if at else para
        if cur and len(cur) + 2 + len(para) > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


__all__ = ["CHUNK_CHARS", "chunk_text"]
