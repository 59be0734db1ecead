"""The per-commit shortcuts of small commits (issue 14: 1 record per commit against SQLite):
a writer's membership test of a few ids searches each table in place, and a commit with no
embedding and no vindex record moves the vector-parameter scan past itself. Each must answer
exactly as the general path does."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import capsule
from capsule.format.index import prefixes_of


def _general_present(store: object, ids: list[bytes]) -> np.ndarray:
    """Store.present's path for large batches, applied to any batch."""
    snap = store.snap  # type: ignore[attr-defined]
    out = np.array([r in snap.mem and snap.mem[r][0] < snap.end for r in ids], dtype=bool)
    pre = prefixes_of(ids)
    for seg in snap.segments:
        out |= seg.contains_many(pre, ids)
    return out


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 9_999), min_size=1, max_size=16), st.lists(st.integers(0, 10**9), max_size=8))
def test_few_ids_are_found_as_the_batch_path_finds_them(known: list[int], unknown: list[int]) -> None:
    ids = [bytes.fromhex(_IDS[i]) for i in known] + [hashlib.sha256(b"x%d" % u).digest() for u in unknown]
    got = _CAP._store.present(ids)
    assert got.tolist() == _general_present(_CAP._store, ids).tolist()
    assert got.tolist() == [i < len(known) for i in range(len(ids))]


def test_a_forged_entry_is_caught_before_a_yes(tmp_path: Path) -> None:
    """A 'yes' rests on a table's word: the small path checks that table's hash first (9.2)."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"m{i}", "time": i} for i in range(5_000)])  # an INDEX and a table
    with capsule.open(p) as cap:
        seg = cap._store.snap.segments[0]
        n, rid = seg.ref.count, seg.key(7)
    raw = bytearray(p.read_bytes())
    at = seg.ref.offset + 8 * n + 32 * 3  # another entry's id byte: the table no longer hashes
    raw[at] ^= 1
    p.write_bytes(bytes(raw))
    with capsule.open(p, "a") as cap:
        try:
            cap._store.present([rid])
        except capsule.CorruptError as e:
            assert "index table" in str(e)
        else:
            raise AssertionError("a hit in a damaged table was believed")


def test_vector_parameters_after_many_text_commits(tmp_path: Path) -> None:
    """Hundreds of text-only commits (INDEXes among them) skip the parameter scan; the first
    embedding after them still fixes the parameters every later INDEX names (9.2, 16.1)."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        for i in range(300):
            with cap.commit() as tx:
                tx.remember(f"text {i}")
        with cap.commit() as tx:
            tx.remember("with a vector", embedding=[1.0, 0.0, 0.5])
        for i in range(300):
            with cap.commit() as tx:
                tx.remember(f"more {i}")
    with capsule.open(p) as cap:
        assert cap.index_info()["vectors"]["dim"] == 3
        assert cap._store.snap.vectors is not None and cap._store.snap.vectors[1]["dim"] == 3
    assert capsule.verify(p).ok


def test_a_writer_on_an_unindexed_embedding_scans_it_before_skipping(tmp_path: Path) -> None:
    """The shortcut holds only from where this handle's scan reached: a tail left by a killed
    writer (an embedding after the last INDEX) is scanned, not skipped."""
    import subprocess
    import sys

    p = tmp_path / "a.capsule"
    code = (f"import capsule, os\ncap = capsule.create({str(p)!r})\n"
            "for i in range(300):\n    with cap.commit() as tx: tx.remember(f'text {i}')\n"
            "with cap.commit() as tx: tx.remember('with a vector', embedding=[1.0, 0.0, 0.5])\n"
            "os._exit(0)\n")  # no close: no INDEX after the embedding
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with capsule.open(p) as cap:
        assert not (cap._store.snap.vectors or (0, {}))[1], "the tail must hold the only embedding"
    with capsule.open(p, "a") as cap:
        for i in range(300):
            with cap.commit() as tx:
                tx.remember(f"again {i}")
    with capsule.open(p) as cap:
        assert cap._store.snap.vectors[1]["dim"] == 3
    assert capsule.verify(p).ok


def _build() -> tuple[capsule.Capsule, list[str]]:
    import tempfile

    p = Path(tempfile.mkdtemp()) / "known.capsule"
    cap = capsule.create(p)
    ids: list[str] = []
    for lo in range(0, 10_000, 2_500):  # several tables, and ids since the last INDEX
        with cap.commit() as tx:
            ids += tx.put_many([{"text": f"k{i}", "time": i} for i in range(lo, lo + 2_500)])
    return cap, ids


_CAP, _IDS = _build()
