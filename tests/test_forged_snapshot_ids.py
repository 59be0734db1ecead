"""A forged vector snapshot cannot bring back rolled-back records or abort a search
with a usage error (second audit, spec 16.3, 16.6)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import capsule
from capsule.search.vindex import BLOB_TYPE

from .vindex_forge import layout

T0 = 1_700_000_000 * 10**9


def clock() -> int:
    clock.t += 10**9  # type: ignore[attr-defined]
    return clock.t  # type: ignore[attr-defined]


clock.t = T0  # type: ignore[attr-defined]


def build(p: Path) -> tuple[list[str], list[str]]:
    k = capsule.generate_key()
    rng = np.random.default_rng(1)
    with capsule.create(p, clock=clock) as cap:
        with cap.commit() as tx:
            public = [tx.remember(f"public {i}", embedding=rng.normal(size=8)) for i in range(6)]
        cap.checkpoint("c0", key=k)
        with cap.commit() as tx:
            secret = [tx.remember(f"secret {i}", embedding=rng.normal(size=8)) for i in range(3)]
        cap.rollback("c0")
        cap.build_index()
        cap.save_index()
    return public, secret


def forge_ids(p: Path, ids_for_labels: dict[int, bytes]) -> None:
    with capsule.open(p) as cap:
        ref = cap._snap.blobs[BLOB_TYPE]
        from capsule.format.blob import read_blob

        blob, _, check = read_blob(cap._h, ref, cap._snap.header.max_frame_len, cap._snap.end)
        check()
    forged = bytearray(blob)
    lay = layout(forged)
    at, _ = lay.sec["ids"]
    for label, rid in ids_for_labels.items():
        forged[at + 32 * label : at + 32 * label + 32] = rid
    with capsule.open(p, "a") as cap:
        cap._write_commit([], blob=(BLOB_TYPE, bytes(forged)))


def test_rolled_back_ids_repeated_under_other_labels_never_come_back(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    public, secret = build(p)
    forge_ids(p, {i: bytes.fromhex(secret[i]) for i in range(3)})
    with capsule.open(p) as cap:
        for q in np.random.default_rng(5).normal(size=(10, 8)):
            hits = cap.search(vector=q, k=9, mode="vector")
            assert not {h.id for h in hits} & set(secret)


def test_an_id_the_capsule_lacks_makes_the_reader_rebuild_not_fail(tmp_path: Path) -> None:
    # 16.3 (issue 16, remaining items): a snapshot whose ids disagree with the records is
    # not used; it was a CorruptError when a hit was read, now the index is rebuilt and
    # the doubt reported, and verify fails `vindex` (tests/test_audit_rest_snapshot.py).
    p = tmp_path / "a.capsule"
    public, _ = build(p)
    forge_ids(p, {i: bytes([i + 1]) * 32 for i in range(6)})
    with capsule.open(p) as cap:
        hits = cap.search(vector=np.ones(8), k=9, mode="vector")
        assert {h.id for h in hits} <= set(public) and all(h.text.startswith("public") for h in hits)
        assert "vindex" in (cap.index_info()["doubt"] or "")
    assert capsule.verify(p).first_error["check"] == "vindex"  # type: ignore[index]
