"""Index tables (spec 9.1, 9.2, 12.6).

A table entry is 52 bytes, ``prefix | id | frame_offset | slot``, sorted by id, in
every version: 1.2 kept them (20-byte entries without the id would leave the state
root, 13.1, to read every record; CHANGES.md, 1.2). These tests pin the layout and
the refusal of the 1.2 draft's ``table_entry`` key, lookups (prefix collisions
included: real ids that share 8 bytes cannot be mined, so those tables are built by
hand), what a forged table can and cannot do, the writer's open that hashes no
table, files created before 1.2, and the verifier's check of order and prefixes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import capsule
from capsule.core import constants as C
from capsule.core.errors import CorruptError
from capsule.format import canonical as canon
from capsule.format.commit import parse_index_payload
from capsule.format.index import ENTRY_SIZE, Segment, SegmentRef, build_table, prefixes_of
from capsule.verifier.tables import tables_match as _tables_match

from .test_tamper import read_frames

VEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
T0 = 1_700_000_000 * 10**9  # record times are fixed, so the same text gives the same id
#: 9.2: the keys a 1.1 reader accepts in an INDEX map (12.5: it refuses any other)
INDEX_KEYS_1_1 = {"blobs", "checkpoint", "frontier", "keyset", "kinds", "labels", "records", "segments", "tree_size"}


def _fill(path: Path, batches: list[int], tag: str = "m") -> list[str]:
    """Records in commits of the given sizes; the caller sets how often an INDEX is due."""
    ids: list[str] = []
    with capsule.create(path, exist_ok=True) as cap:
        for b, n in enumerate(batches):
            with cap.commit() as tx:
                ids += [tx.remember(f"{tag} {b}-{i} " + "x" * (i % 7), time=T0) for i in range(n)]
    return ids


def _indexes(path: Path) -> list[tuple[object, dict[int, bytes], dict[str, object]]]:
    """(IndexMeta, {payload offset: TABLE payload}, the INDEX map) of every INDEX, oldest first."""
    _, frames = read_frames(path)
    tables = {f.old_offset + C.FRAME_HEADER_SIZE: f.raw for f in frames if f.ftype == C.FT_TABLE}  # type: ignore[operator]
    return [(parse_index_payload(f.raw, f.old_offset, f.old_seq), tables, canon.decode(f.raw))  # type: ignore[arg-type]
            for f in frames if f.ftype == C.FT_INDEX]


@pytest.fixture
def often(monkeypatch: pytest.MonkeyPatch) -> None:
    """An INDEX whenever 50 records wait, so small files have several tables and merges."""
    monkeypatch.setattr(C, "INDEX_EVERY_RECORDS", 50)


def _colliding(n: int, p: int = 0x0123456789ABCDEF) -> list[bytes]:
    """``n`` distinct ids whose first 8 bytes are all ``p``, in no particular order."""
    return [p.to_bytes(8, "big") + os.urandom(24) for _ in range(n)]


# --- 9.1: the layout ------------------------------------------------------------------------------------


def test_a_new_file_writes_52_byte_tables_sorted_by_id(tmp_path: Path, often: None) -> None:
    p = tmp_path / "a.capsule"
    ids = _fill(p, [60, 70, 80, 200, 30])
    assert p.read_bytes()[9] == C.FORMAT_MINOR == 4  # 2.1: the minor a 1.4 writer creates
    metas = _indexes(p)
    assert len(metas) >= 4
    for meta, tables, value in metas:
        assert "table_entry" not in value  # the 1.2 draft's key is gone (9.2)
        for s in meta.segments:  # type: ignore[attr-defined]
            raw = tables[s.offset]
            assert len(raw) == ENTRY_SIZE * s.count == 52 * s.count
            col = np.frombuffer(raw, "S32", count=s.count, offset=8 * s.count)
            assert [bytes(x) for x in col] == sorted(bytes(x) for x in col)
            assert np.array_equal(np.frombuffer(raw, "<u8", count=s.count), prefixes_of([bytes(x) for x in col]))
    with capsule.open(p) as cap:
        segs = cap._snap.segments
        assert sum(s.ref.count for s in segs) + len(cap._snap.mem) == len(ids)
        assert all(len(s._buf) == 52 * s.ref.count for s in segs)
    assert capsule.verify(p).ok


def test_label_tables_have_the_same_52_byte_entries() -> None:
    meta, tables, _ = _indexes(VEC / "agent.capsule")[-1]
    assert meta.labels  # type: ignore[attr-defined]
    for s in [*meta.segments, *meta.labels]:  # type: ignore[attr-defined]
        assert len(tables[s.offset]) == ENTRY_SIZE * s.count


@pytest.mark.parametrize("value", [20, 52, 24, "20", -20])
def test_an_index_with_table_entry_is_refused(value: object) -> None:
    """9.2, 12.5: the key of the withdrawn 20-byte layout is refused, as 1.1 readers do."""
    meta, _, v = _indexes(VEC / "indexed.capsule")[-1]
    assert parse_index_payload(canon.pack(v), 10**9, meta.tree_size)  # type: ignore[attr-defined]
    with pytest.raises(CorruptError, match="index fields") as e:
        forged = dict(sorted({**v, "table_entry": value}.items()))  # type: ignore[dict-item]
        parse_index_payload(canon.pack(forged), 10**9, meta.tree_size)  # type: ignore[attr-defined]
    assert e.value.check == "index"


# --- lookups ----------------------------------------------------------------------------------------------


def test_lookups_through_tables_and_the_records_since_the_index(tmp_path: Path, often: None) -> None:
    p = tmp_path / "a.capsule"
    ids = _fill(p, [200, 60])
    with capsule.open(p, "a") as w:
        with w.commit() as tx:
            ids += [tx.remember(f"late {i}", time=T0) for i in range(7)]
        with capsule.open(p) as cap:  # before w's close adds an INDEX
            assert len(cap._snap.segments) >= 2 and cap._snap.mem  # tables, and records since the INDEX
            for rid in ids:
                assert cap.get(rid).id == rid and rid in cap
            assert sorted(bytes.fromhex(r) for r in ids) == [cap.all_ids().tobytes()[i : i + 32]
                                                             for i in range(0, 32 * len(ids), 32)]
            absent = os.urandom(32).hex()
            assert absent not in cap
            with pytest.raises(capsule.NotFound):
                cap.get(absent)


def test_ids_sharing_a_prefix_are_told_apart_by_the_whole_id() -> None:
    """9.1: the prefix column narrows the search; the id column decides."""
    same = _colliding(5)
    other = [(7).to_bytes(8, "big") + bytes(24), (0x0123456789ABCDF0).to_bytes(8, "big") + bytes(24)]
    ids = np.array(same + other, dtype="S32")
    frames = np.arange(100, 100 + len(ids), dtype=np.uint64)
    slots = np.arange(len(ids), dtype=np.uint32)
    raw = build_table(ids, frames, slots)
    seg = Segment(SegmentRef(64, len(ids), b"\0" * 32), raw)
    assert [seg.key(i) for i in range(len(ids))] == sorted(same + other)
    for j, rid in enumerate(same + other):
        assert seg.find(rid) == (100 + j, j)
    miss = same[0][:8] + bytes(24)  # the shared prefix, another id
    assert miss not in same and seg.find(miss) is None
    queries = [same[3], miss, other[0], os.urandom(32)]
    assert seg.contains_many(prefixes_of(queries), queries).tolist() == [True, False, True, False]
    with pytest.raises(CorruptError, match="wrong size"):
        Segment(SegmentRef(64, len(ids), b"\0" * 32), raw + b"\0")


def test_binary_search_in_place_agrees_with_numpy() -> None:
    """The scalar search over the mapped prefix column (no copy) finds what searchsorted finds,
    at any byte alignment of the table in the file."""
    rng = np.random.default_rng(5)
    ids = np.array([rng.bytes(32) for _ in range(300)], dtype="S32")
    raw = build_table(ids, np.zeros(300, np.uint64), np.zeros(300, np.uint32))
    for shift in (0, 1, 3):
        buf = memoryview(b"\0" * shift + raw)[shift:]
        seg = Segment(SegmentRef(64, 300, b"\0" * 32), buf)
        for p in [0, 2**64 - 1, *prefixes_of([bytes(x) for x in ids[::37]]).tolist()]:
            assert seg.first(p) == int(np.searchsorted(seg.prefix, np.uint64(p)))
        assert all(seg.find(bytes(x)) is not None for x in ids[::11])


# --- what a forged table can and cannot do (9.2) ---------------------------------------------------------


def _table_entry(path: Path, rid: str) -> tuple[int, int, int]:
    """(file offset of the table, its count, the entry index) naming ``rid`` in the INDEX in force."""
    with capsule.open(path) as cap:
        for seg in cap._snap.segments:
            for j in range(seg.ref.count):
                if seg.key(j) == bytes.fromhex(rid):
                    return seg.ref.offset, seg.ref.count, j
    raise AssertionError("not in a table")


def _poke(path: Path, at: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_a_forged_entry_never_yields_a_wrong_record(tmp_path: Path, often: None) -> None:
    p = tmp_path / "a.capsule"
    ids = _fill(p, [120])
    a, b = ids[3], ids[40]
    with capsule.open(p) as cap:
        place_a = cap._store.locate(bytes.fromhex(a))
    off, n, j = _table_entry(p, b)
    # b's entry now points at a's place (the table's hash is now wrong)
    _poke(p, off + 40 * n + 8 * j, place_a[0].to_bytes(8, "little"))
    _poke(p, off + 48 * n + 4 * j, place_a[1].to_bytes(4, "little"))
    with capsule.open(p) as cap:
        assert cap.get(a).id == a  # a hit is confirmed by content: no table hash needed
        with pytest.raises(CorruptError) as e:
            cap.get(b)  # the record there is a, not b
        assert e.value.check == "content-id"
    rep = capsule.verify(p)
    assert not rep.ok and rep.first_error["check"] == "chain"  # the TABLE frame's bytes changed


def test_a_forged_entry_cannot_make_the_writer_drop_a_record(tmp_path: Path, often: None) -> None:
    """A writer's "already stored" rests on a table, so that table's hash is checked first (9.2)."""
    with capsule.create(tmp_path / "scratch.capsule") as cap, cap.commit() as tx:
        x = tx.remember("a record a forged entry claims", time=T0)  # its id, before q holds it
    q = tmp_path / "q.capsule"
    ids = _fill(q, [120])
    xb = bytes.fromhex(x)
    with capsule.open(q) as cap:
        seg = cap._snap.segments[0]
        # overwrite the entry where x would sort (prefix and id): the table stays sorted (9.1)
        k = min(int(np.searchsorted(seg.ids, np.array([xb], dtype="S32"))[0]), seg.ref.count - 1)
        victim = seg.key(k).hex()
        at, n = seg.ref.offset, seg.ref.count
    _poke(q, at + 8 * k, prefixes_of([xb]).astype("<u8").tobytes())
    _poke(q, at + 8 * n + 32 * k, xb)
    before = q.read_bytes()
    with capsule.open(q, "a") as cap:
        with pytest.raises(CorruptError, match="hash") as e, cap.commit() as tx:
            tx.remember("a record a forged entry claims", time=T0)
        assert e.value.check == "index-table"  # refused, not dropped
        with pytest.raises(CorruptError, match="hash"):
            cap.get(victim)  # the forged entry hid it: a miss the hash check reports as damage
    assert q.read_bytes() == before
    assert ids and victim in ids


# --- the writer's open (9.2) -----------------------------------------------------------------------------


def test_a_writer_opens_without_hashing_any_table(tmp_path: Path, often: None) -> None:
    p = tmp_path / "a.capsule"
    _fill(p, [60, 70, 80, 200, 30])
    with capsule.open(p, "a") as cap:
        assert cap._snap.segments
        assert not any(s.verified for s in cap._snap.segments)
        with cap.commit() as tx:  # new records: "not stored" needs no hash either
            tx.remember("one more")
        assert not any(s.verified for s in cap._snap.segments[:-1])


def test_a_damaged_table_is_hashed_when_merged_and_never_rewritten(tmp_path: Path, often: None) -> None:
    p = tmp_path / "a.capsule"
    ids = _fill(p, [100])
    off, n, _ = _table_entry(p, ids[0])
    _poke(p, off + 48 * n, (7).to_bytes(4, "little"))  # slot of the first entry: wrong, hash unchanged
    with capsule.open(p, "a") as cap:  # 1.1 writers hashed every table here and refused
        with cap.commit() as tx:
            extra = [tx.remember(f"small {i}") for i in range(10)]
        cap._write_commit([], force_index=True)  # 100 > 2 * 10: the damaged table is not merged
        assert len(cap._snap.segments) == 2
        before = p.read_bytes()
        with pytest.raises(CorruptError, match="hash") as e, cap.commit() as tx:
            for i in range(60):  # 10 <= 2 * 60, then 100 <= 2 * 70: both tables are merged (9.3)
                tx.remember(f"more {i}")
        assert e.value.check == "index-table"
        assert p.read_bytes() == before  # refused before writing anything
    with capsule.open(p) as cap:
        assert [cap.get(r).id for r in extra] == extra


# --- 12.6: files created before 1.2 -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_an_older_file_appended_to_stays_readable_by_its_readers(tmp_path: Path, often: None,
                                                                 version: str) -> None:
    """No `vectors` key in a file created before 1.2 (its readers refuse it, 12.5), and the
    same tables as ever."""
    p = tmp_path / "old.capsule"
    shutil.copy(VEC / f"v{version}" / "indexed.capsule", p)
    minor = p.read_bytes()[9]
    with capsule.open(p) as cap:
        old = [r.id for r in cap.records()]
    with capsule.open(p, "a") as cap:
        cap.configure_vectors(dim=3)
        with cap.commit() as tx:
            tx.remember("with a vector", embedding=[1.0, 0.0, 0.5], time=T0)
    new = _fill(p, [120, 60])
    assert p.read_bytes()[9] == minor  # 12.5: the header is never rewritten
    metas = _indexes(p)
    for meta, tables, value in metas:
        assert set(value) <= INDEX_KEYS_1_1, set(value) - INDEX_KEYS_1_1
        for s in meta.segments:  # type: ignore[attr-defined]
            assert len(tables[s.offset]) == ENTRY_SIZE * s.count
    rep = capsule.verify(p)
    assert rep.ok and rep.format_version == version, rep.first_error
    with capsule.open(p, "a") as cap:
        assert cap._snap.vectors is None
        assert cap.vector_config() == capsule.VectorParams(dim=3)  # from the records (16.1)
        assert [cap.get(r).id for r in old + new] == old + new
        with cap.commit() as tx:  # dedup through the tables
            assert tx.remember("m 0-1 x", time=T0) == new[1]
        assert len(cap) == len(old) + len(new) + 2  # the vindex record and the memory


def test_a_new_file_states_the_vector_parameters_in_every_index(tmp_path: Path, often: None) -> None:
    """9.2: `vectors` in every INDEX of a file whose header says minor 2 or more."""
    p = tmp_path / "a.capsule"
    _fill(p, [60, 70])
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        tx.remember("with a vector", embedding=[1.0, 0.0, 0.5], time=T0)
    _fill(p, [80], tag="n")
    metas = _indexes(p)
    assert len(metas) >= 3
    said = [value["vectors"] for _, _, value in metas]
    assert said[0] == {} and said[-1] == capsule.VectorParams(dim=3).to_value()
    assert capsule.verify(p).ok


# --- 13.3: the verifier's table check ------------------------------------------------------------------


def test_the_verifier_checks_order_and_prefixes_of_tables(tmp_path: Path, often: None) -> None:
    p = tmp_path / "a.capsule"
    ids = _fill(p, [120])
    with capsule.open(p) as cap:
        seg = cap._snap.segments[0]
        locs = [cap._store.locate(bytes.fromhex(r)) for r in ids]
        raw = bytes(seg._buf)
    rids = bytearray(b"".join(bytes.fromhex(r) for r in ids))
    n = len(ids)

    def match(buf: bytes) -> bool:
        return _tables_match([Segment(SegmentRef(0, n, b""), buf)], rids, locs, n)

    assert match(raw)
    col = np.frombuffer(raw, "<u8", count=n).copy()
    col[5] ^= 1  # a wrong prefix (still sorted: its low bit)
    assert not match(col.tobytes() + raw[8 * n :])
    sl = np.frombuffer(raw, "<u4", count=n, offset=48 * n).copy()
    sl[[3, 4]] = sl[[4, 3]]  # two places swapped
    assert not match(raw[: 48 * n] + sl.tobytes())
    assert not match(raw[8:8 * n] + raw[:8] + raw[8 * n :])  # prefixes out of order


def test_the_verifier_checks_id_order_within_a_prefix() -> None:
    """Two entries with one prefix in the wrong order: the prefix column is still sorted and
    matches the ids, and the entries are the right ones, but the table is not sorted by id (9.1)."""
    ids = sorted(_colliding(4))
    locs = [(1000 + 100 * j, j) for j in range(4)]
    raw = build_table(np.array(ids, dtype="S32"), np.array([f for f, _ in locs], np.uint64),
                      np.array([s for _, s in locs], np.uint32))
    rids = bytearray(b"".join(ids))

    def match(buf: bytes) -> bool:
        return _tables_match([Segment(SegmentRef(0, 4, b""), buf)], rids, locs, 4)

    assert match(raw)
    cols = [np.frombuffer(raw, "S32", count=4, offset=32).copy(), np.frombuffer(raw, "<u8", count=4, offset=160).copy(),
            np.frombuffer(raw, "<u4", count=4, offset=192).copy()]
    for c in cols:
        c[[1, 2]] = c[[2, 1]]  # whole entries 1 and 2 swapped
    assert not match(raw[:32] + b"".join(c.tobytes() for c in cols))
