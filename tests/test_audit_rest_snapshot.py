"""A vector snapshot whose ids disagree with the records (spec 16.1, 16.3).

Its hash binds a snapshot to the file, not to the records. ``verify`` compares
its ids with the entries of 16.1 (the memories with an embedding of the index's
dimension, in commit order, before the snapshot's first BLOB frame) and fails
``vindex`` at the BLOB frame; a reader does not use such a snapshot: it checks
the entries a search returns against the memories they name and, on the first
disagreement, rebuilds from the records and says so (``doubt``), with no error.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import capsule
from capsule.format.blob import read_blob
from capsule.search.vindex import BLOB_TYPE

from .vindex_forge import layout

T0 = 1_700_000_000 * 10**9
DIM = 8


def clock() -> Callable[[], int]:
    it = itertools.count(T0, 10**9)
    return lambda: next(it)


def build(p: Path) -> dict[str, list[str]]:
    rng = np.random.default_rng(3)
    out: dict[str, list[str]] = {"mem": [], "vec": [], "note": [], "plain": []}
    with capsule.create(p, clock=clock()) as cap:
        with cap.commit() as tx:
            for i in range(12):
                v = rng.normal(size=DIM)
                out["mem"].append(tx.remember(f"memory {i}", embedding=v, tags=[f"t{i % 3}"]))
                out["vec"].append(v)
            out["note"].append(tx.note("a note, not a memory"))
            out["plain"].append(tx.remember("a memory with no embedding"))
        cap.build_index()
        assert cap.save_index()
    return out


def snapshot_blob(p: Path) -> tuple[bytes, int]:
    with capsule.open(p) as cap:
        snap = cap._snap
        ref = snap.blobs[BLOB_TYPE]
        blob, _, check = read_blob(cap._h, ref, snap.header.max_frame_len, snap.end)
        check()
        return bytes(blob), ref.offset


def write_snapshot(p: Path, blob: bytes) -> int:
    """Commit ``blob`` as the newest snapshot (as a hostile writer could); its BLOB frame offset."""
    with capsule.open(p, "a", clock=clock()) as cap:
        cap._write_commit([], blob=(BLOB_TYPE, blob))
    return snapshot_blob(p)[1]


def with_ids(blob: bytes, ids: dict[int, bytes]) -> bytes:
    forged = bytearray(blob)
    at, _ = layout(forged).sec["ids"]
    for label, rid in ids.items():
        forged[at + 32 * label : at + 32 * label + 32] = rid
    return bytes(forged)


def ident(h: str) -> bytes:
    return bytes.fromhex(h)


FORGERIES: dict[str, Callable[[dict[str, list[str]]], dict[int, bytes]]] = {
    # two real memories, each labelled with the other's id: every id is a memory, the order is not 16.1's
    "swapped": lambda r: {2: ident(r["mem"][5]), 5: ident(r["mem"][2])},
    "a-note": lambda r: {4: ident(r["note"][0])},
    "no-embedding": lambda r: {7: ident(r["plain"][0])},
    "not-in-the-capsule": lambda r: {0: bytes(range(32))},
    "twice": lambda r: {1: ident(r["mem"][0])},
}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, list[str]]]:
    p = tmp_path_factory.mktemp("snap") / "base.capsule"
    recs = build(p)
    return p.read_bytes(), recs


def test_an_honest_snapshot_verifies_and_is_used(base: tuple[bytes, dict[str, list[str]]], tmp_path: Path) -> None:
    """The control: the writer's own snapshot passes the new check and is used as is."""
    data, recs = base
    p = tmp_path / "a.capsule"
    p.write_bytes(data)
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error
    with capsule.open(p) as cap:
        for rid, v in zip(recs["mem"], recs["vec"], strict=True):
            assert cap.search(vector=v, k=1, mode="vector")[0].id == rid
        info = cap.index_info()
        assert not info["doubt"], info


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_snapshot_whose_ids_disagree_fails_verify_at_its_blob(base: tuple[bytes, dict[str, list[str]]], name: str,
                                                                tmp_path: Path) -> None:
    data, recs = base
    p = tmp_path / f"{name}.capsule"
    p.write_bytes(data)
    blob, _ = snapshot_blob(p)
    at = write_snapshot(p, with_ids(blob, FORGERIES[name](recs)))
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error is not None
    assert (rep.first_error["check"], rep.first_error["offset"]) == ("vindex", at), rep.first_error


@pytest.mark.parametrize("name", [n for n in FORGERIES if n != "twice"])
def test_a_reader_rebuilds_instead_of_using_a_snapshot_that_disagrees(base: tuple[bytes, dict[str, list[str]]],
                                                                      name: str, tmp_path: Path) -> None:
    """Every memory, searched by its own embedding, is found first, under its own id,
    with no error; the reader says it rebuilt."""
    data, recs = base
    p = tmp_path / f"{name}.capsule"
    p.write_bytes(data)
    blob, _ = snapshot_blob(p)
    write_snapshot(p, with_ids(blob, FORGERIES[name](recs)))
    with capsule.open(p) as cap:
        for rid, v in zip(recs["mem"], recs["vec"], strict=True):
            hits = cap.search(vector=v, k=3, mode="vector")
            assert hits[0].id == rid and hits[0].text == cap.get(rid).text
            assert all(h.kind == "memory" for h in hits)
        doubt = cap.index_info()["doubt"]
        assert doubt and "vindex" in doubt and "rebuilt" in doubt, doubt


def test_a_snapshot_naming_one_id_twice_is_not_loaded(base: tuple[bytes, dict[str, list[str]]],
                                                      tmp_path: Path) -> None:
    data, recs = base
    p = tmp_path / "twice.capsule"
    p.write_bytes(data)
    blob, _ = snapshot_blob(p)
    write_snapshot(p, with_ids(blob, FORGERIES["twice"](recs)))
    with capsule.open(p) as cap:
        assert cap.build_index() == len(recs["mem"])
        assert "appears twice" in (cap.index_info()["doubt"] or "")
        hits = cap.search(vector=recs["vec"][1], k=1, mode="vector")
        assert hits[0].id == recs["mem"][1]
