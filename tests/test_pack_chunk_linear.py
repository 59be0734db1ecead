"""``chunk_text`` in one pass over a long paragraph (a review's finding: a 60 MB file never packed).

Each chunk of a paragraph longer than the limit copied the rest of the paragraph
(``para = para[cut:].strip()``), so one 16 MB paragraph took 40 s and 60 MB did not finish in 10
minutes. The rest is now an index into the paragraph. The chunks must be exactly those of the
old way (they are the records, so their ids): it is kept here as the model.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.ingest.chunk import _PARA, CHUNK_CHARS, chunk_text


def model(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """The chunking as it was written first (quadratic in a long paragraph)."""
    out: list[str] = []
    cur = ""
    for para in (p.strip() for p in _PARA.split(text.replace("\r\n", "\n"))):
        if not para:
            continue
        while len(para) > limit:
            cut = para.rfind(" ", 0, limit)
            cut = cut if cut > limit // 2 else limit
            if cur:
                out.append(cur)
                cur = ""
            out.append(para[:cut].strip())
            para = para[cut:].strip()
        if cur and len(cur) + 2 + len(para) > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        out.append(cur)
    return out


pieces = st.sampled_from(["a", "bc", " ", "  ", "\n", "\n\n", "\t", "\u3000", "\u00a0", "\r\n", "é", "x" * 40,
                          " " * 25, "\u2028", "word "])


@settings(max_examples=2000, deadline=None)
@given(st.lists(pieces, max_size=200).map("".join), st.sampled_from([3, 7, 10, 40, 100, CHUNK_CHARS]))
def test_the_chunks_are_the_models(text: str, limit: int) -> None:
    assert chunk_text(text, limit) == model(text, limit)


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    def fail(*_: object) -> None:
        raise TimeoutError(f"over {seconds} s: quadratic again?")

    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_a_paragraph_of_64_mib_is_cut_in_one_pass() -> None:
    """A guard, not a benchmark: the old way needed minutes here (40 s at 16 MB), this takes well under one."""
    text = "word " * (64 * 1024 * 1024 // 5)
    with deadline(60):
        chunks = chunk_text(text)
    assert all(len(c) <= CHUNK_CHARS for c in chunks)
    assert re.sub(r"\s+", " ", " ".join(chunks)) == text.strip()
