"""A bounded, deterministic fuzz run of the snapshot loader (spec 16.2; audit finding F4).

Mutants of a real snapshot (bit flips, and rewrites of the neighbour ids, counts,
levels, entry point and top level that hnswlib trusts; see ``tests/vindex_forge.py``)
are loaded in a child process. Each must either be refused with a ``DataError`` or
load into an index that answers searches through the graph (with and without a
filter) and takes new entries. The child must never die by a signal: a forged
graph that hnswlib would walk off the end of is exactly what this looks for.

The coverage-guided version of this is ``tests/fuzz/fuzz_vindex.py`` (atheris).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests import vindex_forge as forge

ROOT = Path(__file__).resolve().parent.parent
CASES = 700  # per space; ~3 s each here

CHILD = r"""
import json, random, sys
import numpy as np
from capsule.core.errors import DataError
from capsule.search import vindex
from capsule.search.vindex import Entry, VectorIndex
from tests import vindex_forge as forge

vindex.EXACT_BELOW = 0  # every search walks the graph, as a large index's does
path, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = open(path, "rb").read()
x = np.load(path + ".npy")
stats = {"loaded": 0, "rejected": 0, "errors": []}
for case in range(first, first + count):
    rnd = random.Random(case)
    blob, hints, what = forge.mutate(seed, rnd)
    print("case", case, what, flush=True)  # if this process dies, the last line names the case
    try:
        vi = VectorIndex.decode(blob)
    except DataError:
        stats["rejected"] += 1
        continue
    try:
        n = len(vi)
        qs = [x[h] for h in hints[:4]] + [x[rnd.randrange(len(x))] + 0.1]
        even = np.arange(n) % 2 == 0
        for q in qs:
            qq = vi.prepare(q)
            assert len(vi.search(qq, 5, None, 16)) == 5
            assert len(vi.search(qq, 5, even, 16)) == 5
        new = np.random.default_rng(case).normal(size=(5, x.shape[1])).astype(np.float32)
        vi.add([Entry((n + i).to_bytes(32, "big"), 0, 0, 0, ()) for i in range(5)], new)
        for q in [*qs, new[0]]:
            assert len(vi.search(vi.prepare(q), 5, None, 16)) == 5
        stats["loaded"] += 1
    except Exception as e:
        stats["errors"].append(f"case {case} ({what}): {e!r}")
print("RESULT " + json.dumps(stats), flush=True)
"""


@pytest.mark.parametrize("space", ["cosine", "l2"])
def test_mutated_snapshots_load_or_are_refused_never_crash(tmp_path: Path, space: str) -> None:
    blob, x = forge.build(n=200, dim=8, M=4, space=space)
    seed = tmp_path / "seed.hnsw"
    seed.write_bytes(blob)
    np.save(str(seed) + ".npy", x)
    first = 0 if space == "cosine" else 1_000_000
    r = subprocess.run([sys.executable, "-c", CHILD, str(seed), str(first), str(CASES)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    lines = r.stdout.strip().splitlines()
    if r.returncode < 0:
        pytest.fail(f"the loader died by {signal.Signals(-r.returncode).name} on {lines[-1] if lines else '?'} "
                    f"(replay: forge.mutate(seed, random.Random(case)))")
    assert r.returncode == 0, r.stderr
    assert lines and lines[-1].startswith("RESULT "), r.stdout[-2000:]
    stats = json.loads(lines[-1][len("RESULT "):])
    assert stats["errors"] == [], "\n".join(stats["errors"][:20])
    # both outcomes are exercised: mutants that load are searched and extended
    assert stats["loaded"] >= CASES // 10 and stats["rejected"] >= CASES // 2, stats
