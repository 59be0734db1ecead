"""Coverage-guided fuzz target for the vector index snapshot loader (spec 16.2).

``VectorIndex.decode`` hands a graph to hnswlib, whose C++ trusts every id, count
and level it is given; a mutated snapshot must therefore either load into an
index that can be searched and extended, or be refused with a ``DataError``.
Anything else (a signal from hnswlib, any other exception) is a crash.

Each input is either a whole snapshot (first byte even: libFuzzer mutates the
bytes itself, starting from the valid seed written into the corpus) or a recipe
(first byte odd: the rest seeds ``tests/vindex_forge.mutate``, which rewrites the
integer fields hnswlib trusts in a real snapshot).

Run from the repository root:

    .venv/bin/python tests/fuzz/fuzz_vindex.py tests/fuzz/corpus_vindex -max_total_time=60
"""

from __future__ import annotations

import os
import random
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

with atheris.instrument_imports():
    import numpy as np

    from capsule.core.errors import DataError
    from capsule.search import vindex
    from capsule.search.vindex import Entry, VectorIndex
    from tests import vindex_forge as forge

vindex.EXACT_BELOW = 0  # every search walks the graph, as a large index's does
SEED, X = forge.build(n=120, dim=8, M=4)


def exercise(vi: VectorIndex, hints: list[int]) -> None:
    n = len(vi)
    even = np.arange(n) % 2 == 0
    for h in [*hints[:3], 0]:
        q = vi.prepare(X[h % len(X)])
        assert len(vi.search(q, 5, None, 16)) == 5
        assert len(vi.search(q, 5, even, 16)) == 5
    vi.add([Entry((n + i).to_bytes(32, "big"), 0, 0, 0, ()) for i in range(3)], X[:3] + 0.5)
    assert len(vi.search(vi.prepare(X[1]), 5, None, 16)) == 5


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    if not data:
        return
    if data[0] % 2 == 0:
        blob, hints = data[1:], [0, 1]
    else:
        blob, hints, _ = forge.mutate(SEED, random.Random(data[1:]))
    try:
        vi = VectorIndex.decode(blob)
    except DataError:
        return
    if len(vi) >= 5:
        exercise(vi, hints)


def main() -> None:
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and not os.path.isfile(corpus[0]):  # a file is one input to replay
        os.makedirs(corpus[0], exist_ok=True)
        with open(os.path.join(corpus[0], "seed-snapshot"), "wb") as f:
            f.write(b"\0" + SEED)
        with open(os.path.join(corpus[0], "seed-recipe"), "wb") as f:
            f.write(b"\1seed")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
