"""``verify`` compares every entry of a vector snapshot with the memory it names (spec 16.3).

The ids of a forged snapshot may be right while an entry's vector, time, ttl, tier or
tags are another memory's: a reader checks only the entries a search returns, so
verify reads each memory back from its RECORDS frame and compares. The memories here
sit in several frames between notes, decisions and memories without an embedding, so
a memory's slot in its frame differs from its place among the entries, and the first
frame takes verify's record-by-record walk rather than its bulk check; each forgery
must fail ``vindex`` at the forged BLOB frame, and the honest file must pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import capsule
from capsule.search.vindex import TIERS, Entry, VectorIndex

from .test_audit_rest_snapshot import snapshot_blob, write_snapshot

T0 = 1_700_000_000 * 10**9
DIM = 6


def clock() -> Callable[[], int]:
    it = itertools.count(T0, 10**9)
    return lambda: next(it)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    p = tmp_path_factory.mktemp("entries") / "base.capsule"
    rng = np.random.default_rng(11)
    with capsule.create(p, clock=clock()) as cap:
        # committed with the first embedding: a vindex record sends the first frame to verify's
        # record-by-record walk, the others take its bulk check
        cap.configure_vectors(M=8)
        for c in range(4):  # one RECORDS frame per commit, each a mix of kinds
            with cap.commit() as tx:
                tx.note(f"note {c}")
                for i in range(5):
                    if i % 2:
                        tx.remember(f"plain {c}.{i}", tags=["plain"])
                    tx.remember(f"memory {c}.{i}", embedding=rng.normal(size=DIM), tags=[f"t{i}", "v"],
                                tier=("scratch", "working", "validated")[i % 3], ttl=(i + 1) * 10**12 if i % 2 else None)
                tx.decide(f"decision {c}", rationale="because")
        cap.build_index()
        assert cap.save_index()
    return p.read_bytes()


def forged(blob: bytes, how: str, forged_label: int = 13) -> bytes:
    vi = VectorIndex.decode(blob)
    out = VectorIndex(vi.params)
    for label in range(len(vi)):
        time, ttl, tier = int(vi.times[label]), int(vi.ttls[label]), int(vi.tiers[label])
        tags = vi.tags_of(label)
        vec = vi._vecs[label].astype(np.float64)
        if label == forged_label:
            if how == "vector":
                vec = vi._vecs[2].astype(np.float64)  # another memory's embedding
            elif how == "time":
                time += 1
            elif how == "ttl":
                ttl = ttl + 10**9 if ttl else 5 * 10**9
            elif how == "tier":
                tier = TIERS["validated"] if tier != TIERS["validated"] else TIERS["scratch"]
            elif how == "tags":
                tags = (*tags, "forged")
        out.add([Entry(vi.ids[label], time, ttl, tier, tuple(sorted(tags)))],
                vec.reshape(1, -1))
    return out.encode()


def test_the_honest_snapshot_verifies(base: bytes, tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    p.write_bytes(base)
    blob, _ = snapshot_blob(p)
    assert len(VectorIndex.decode(blob)) == 20
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error
    # re-encoding the snapshot unchanged (the forgeries' path) is honest too
    write_snapshot(p, forged(blob, "none"))
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error


@pytest.mark.parametrize("label", [3, 13])  # in the first frame (the record-by-record walk), in the fourth
@pytest.mark.parametrize("how", ["vector", "time", "ttl", "tier", "tags"])
def test_an_entry_that_holds_another_value_fails_verify(base: bytes, how: str, label: int, tmp_path: Path) -> None:
    p = tmp_path / f"{how}.capsule"
    p.write_bytes(base)
    blob, _ = snapshot_blob(p)
    at = write_snapshot(p, forged(blob, how, label))
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None
    assert (rep.first_error["check"], rep.first_error["offset"]) == ("vindex", at), rep.first_error
    assert f"entry {label} " in rep.first_error["message"], rep.first_error
