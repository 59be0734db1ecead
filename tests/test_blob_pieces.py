"""Blobs written from pieces (F22): a lexical snapshot goes to the file as views of its
columns, cut into BLOB parts without being joined, and ``put_many`` hands back its ids
without copying them. Each must give exactly the bytes and values of the joined way."""

from __future__ import annotations

import hashlib
import os
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import capsule
from capsule.core import constants as C
from capsule.format import blob as blob_mod
from capsule.format.batch import IdList, RecordBatch
from capsule.format.crypto import FrameCipher
from capsule.format.frames import encode_frame
from capsule.search import lexsnap


def _joined_parts(btype: str, data: bytes, part: int) -> list[bytes]:
    """3.4 written out plainly: the reference the pieces must match."""
    import struct

    from capsule.format import canonical as canon

    bid = hashlib.sha256(data).digest()
    n = max(1, -(-len(data) // part))
    out = []
    for i in range(n):
        head = canon.pack({"id": bid, "part": i, "parts": n, "size": len(data), "type": btype})
        out.append(struct.pack("<H", len(head)) + head + data[i * part : (i + 1) * part])
    return out


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8), st.integers(1, 97))
def test_parts_from_pieces_are_the_parts_of_the_joined_content(data: bytes, cuts: list[int], part: int) -> None:
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)] + [b""]  # an empty piece too
    with pytest.MonkeyPatch.context() as m:
        m.setattr(C, "BLOB_PART", part)
        got, bid, size = blob_mod.blob_parts("bm25", pieces)
        whole, bid2, size2 = blob_mod.blob_parts("bm25", data)
    want = _joined_parts("bm25", data, part)
    assert [b"".join(p) for p in got] == want == [b"".join(p) for p in whole]
    assert bid == bid2 == hashlib.sha256(data).digest() and size == size2 == len(data)


@pytest.mark.parametrize("how", ["plain", "zstd", "sealed"])
def test_a_frame_from_pieces_is_the_frame_of_the_joined_payload(how: str) -> None:
    payload = os.urandom(3000) + b"a" * 5000
    pieces = [payload[:10], memoryview(payload)[10:4000], payload[4000:]]
    crypt = FrameCipher(b"k" * 32, b"f" * 16) if how == "sealed" else None
    ftype = C.FT_RECORDS if how == "zstd" else C.FT_BLOB
    kw = {"compress": how == "zstd", "crypt": crypt}
    a = encode_frame(ftype, 7, list(pieces), b"c" * 32, **kw)  # type: ignore[arg-type]
    b = encode_frame(ftype, 7, payload, b"c" * 32, **kw)  # type: ignore[arg-type]
    assert (a.data or b"".join(a.pieces)) == b.data
    assert (a.chain, a.leaf, a.header) == (b.chain, b.leaf, b.header)
    if how == "plain":  # kept as the caller's pieces: nothing joined
        assert a.data == b"" and any(isinstance(x, memoryview) for x in a.pieces)


def test_a_lexical_snapshot_is_written_as_the_joined_encoding(tmp_path: Path) -> None:
    """The blob in the file is byte for byte lexsnap.encode of the catalog's segment."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"note {i} about deploys and region eu-{i % 7}", "time": i,
                      "tags": [f"t{i % 3}"], "meta": {"session": f"s{i % 5}"} if i % 4 else {}}
                     for i in range(3000)])
    with capsule.open(p) as cap:
        ref = cap._store.snap.blobs[lexsnap.BLOB_TYPE]
        cat = cap._search.searcher().docs()
        (seg,) = cat.segs
        seg.check_all()
        again = lexsnap.encode(seg, [], cat.reverts)
    assert hashlib.sha256(again).digest() == ref.id and len(again) == ref.size  # the content id: the bytes


def test_writing_a_lexical_snapshot_makes_no_copy_of_it(tmp_path: Path) -> None:
    """F22: the snapshot's bytes exist once while written (its columns and coded lists), not
    joined and then copied into parts; and coding the lists takes a bounded transient, not
    hundreds of bytes a posting at once."""
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:  # 240k postings of 120k distinct terms
            tx.put_many([b'{"text":"x %d","time":%d}' % (i, i) for i in range(120_000)])
        part = cap._search
        docs = part.searcher().docs()  # built before measuring: only the snapshot is traced
        if docs.n == docs.covered:
            pytest.skip("the snapshot was written with the commit")
        real_encode, real_write = lexsnap.encode_parts, part._write_blob
        seen: dict[str, int] = {}

        def encode(*a: object) -> list[bytes | memoryview]:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            out = real_encode(*a)  # type: ignore[arg-type]
            owned = sum(len(x) for x in out if not isinstance(x, memoryview))  # bytes made here, kept
            seen["encode"] = tracemalloc.get_traced_memory()[1] - before - owned
            return out

        def write(blob: tuple[str, list[bytes | memoryview]]) -> object:
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            out = real_write(blob)
            seen["write"] = tracemalloc.get_traced_memory()[1] - before
            return out

        tracemalloc.start()
        try:
            with pytest.MonkeyPatch.context() as m:
                m.setattr(lexsnap, "encode_parts", encode)
                m.setattr(part, "_write_blob", write)
                assert part.write_lexical()
        finally:
            tracemalloc.stop()
        size = cap._store.snap.blobs[lexsnap.BLOB_TYPE].size
    assert size > 4_000_000
    assert seen["write"] < 0.1 * size, (seen, size)  # joined and cut into parts: over 2x the size
    assert seen["encode"] < 16_000_000, (seen, size)  # a posting chunk of 2**18 at once: 57 MB here


def test_ids_handed_back_are_copied_when_read_and_stay_right() -> None:
    b = RecordBatch()
    for i in range(5):
        b.add(hashlib.sha256(b"%d" % i).digest(), "memory", b"x")
    ids = IdList.later(b.ids, 1, 4)
    for i in range(5, 3000):  # the batch grows after: its buffer is reallocated, the view is not pinned
        b.add(hashlib.sha256(b"%d" % i).digest(), "memory", b"x")
    want = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(1, 4)]
    assert list(ids) == want and ids[-1] == want[-1] and len(ids) == 3
    assert ids.raw == b"".join(bytes.fromhex(h) for h in want)
    b.truncate(4)  # a failed later call drops records after these: nothing read changes
    assert list(ids) == want and ids == IdList(b"".join(bytes.fromhex(h) for h in want))


def test_ids_read_by_many_threads_at_once() -> None:
    b = RecordBatch()
    for i in range(2000):
        b.add(hashlib.sha256(b"%d" % i).digest(), "memory", b"x")
    for _ in range(50):
        ids = IdList.later(b.ids, 0, 2000)
        got: list[bytes] = []
        go = threading.Barrier(4)

        def read(ids: IdList = ids, go: threading.Barrier = go, got: list[bytes] = got) -> None:
            go.wait()
            got.append(bytes(ids.raw))

        ts = [threading.Thread(target=read) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert got == [bytes(b.ids)] * 4


def test_put_many_ids_after_the_commit(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "a.capsule") as cap:
        with cap.commit() as tx:
            first = tx.put_many([{"text": f"a{i}", "time": i} for i in range(100)])
            second = tx.put_many([{"text": f"b{i}", "time": i} for i in range(50)])
            with pytest.raises(capsule.InvalidRecordError):
                tx.put_many([{"text": "c"}, {"text": 5}])  # dropped again: the batch shrinks
        assert len(first) == 100 and len(second) == 50
        assert [cap.get(r).text for r in first[:3]] == ["a0", "a1", "a2"]
        assert cap.get(second[-1]).text == "b49" and set(first) | set(second) == set(tx.new_ids)


def test_a_vector_snapshot_is_written_from_pieces(tmp_path: Path) -> None:
    """The vector snapshot goes out as the graph's own arrays (F22): the file holds exactly
    encode()'s bytes, and writing it takes a small fraction of its size on the heap."""
    import numpy as np

    from capsule.search.vindex import VectorIndex

    rng = np.random.default_rng(3)
    p = tmp_path / "v.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.put_many([{"text": f"m{i}", "time": i, "embedding": rng.normal(size=64).round(3).tolist()}
                         for i in range(3000)])
        cap.build_index()
        part = cap._search
        real_write = part._write_blob
        seen: dict[str, int] = {}

        def write(blob: tuple[str, list[bytes | memoryview]]) -> object:
            seen["memoryviews"] = sum(isinstance(x, memoryview) for x in blob[1])
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            out = real_write(blob)
            seen["write"] = tracemalloc.get_traced_memory()[1] - before
            return out

        vi = part.searcher().vi
        assert vi is not None
        want = vi.encode()
        tracemalloc.start()
        try:
            with pytest.MonkeyPatch.context() as m:
                m.setattr(part, "_write_blob", write)
                assert cap.save_index()
        finally:
            tracemalloc.stop()
        ref = cap._store.snap.blobs["hnsw"]
    assert hashlib.sha256(want).digest() == ref.id and len(want) == ref.size
    assert seen["memoryviews"] >= 2 and seen["write"] < 0.1 * ref.size, (seen, ref.size)
    with capsule.open(p) as r:  # a reader loads that snapshot as it is, and it encodes back to it
        r.build_index()
        got = r._search.searcher().vi
        assert got is not None and list(got.ids) == list(vi.ids) and got.encode() == want
        assert list(VectorIndex.decode(want).ids) == list(vi.ids)


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 3000), st.lists(st.tuples(st.integers(1, 60), st.integers(0, 3)), min_size=1, max_size=12),
       st.integers(1, 40), st.booleans(), st.randoms(use_true_random=False))
def test_frequent_terms_are_coded_a_slice_at_a_time_to_the_same_bytes(
        n: int, terms: list[tuple[int, int]], chunk: int, with_tf: bool, rnd: object) -> None:
    """A term with more postings than a chunk is coded slice by slice (_encode_one): the
    blocks are byte for byte those of the one-chunk coder."""
    import random

    import numpy as np

    from capsule.search import lexcodec as lc

    assert isinstance(rnd, random.Random)
    lists = []
    for size, extra in terms:
        m = min(n, size * (extra + 1))
        lists.append((sorted(rnd.sample(range(n), m)), [1 + rnd.randrange(3) for _ in range(m)]))
    off = np.cumsum([0] + [len(d) for d, _ in lists]).astype(np.int64)
    docs = np.array([x for d, _ in lists for x in d], np.uint32)
    tf = np.array([x for _, t in lists for x in t], np.uint32) if with_tf else None
    whole = lc.encode_blocks(n, off, docs, tf)  # every term within one chunk of 2**15
    with pytest.MonkeyPatch.context() as m:
        m.setattr(lc, "_ENCODE_CHUNK", chunk)
        assert lc.encode_blocks(n, off, docs, tf) == whole
    d2, t2 = lc.decode_blocks(np.frombuffer(whole, np.uint8), n, np.diff(off),
                              None if tf is None else np.add.reduceat(tf.astype(np.int64) - 1, off[:-1]))
    assert d2.tolist() == docs.tolist() and (tf is None or t2.tolist() == tf.tolist())


def test_the_catalog_views_the_ids_of_a_written_batch(tmp_path: Path) -> None:
    """F22: a sealed batch never changes again, so its ids reach the lexical segment as a
    view, not a 32-byte-a-record copy; the batch still refuses a late record."""
    import numpy as np

    with capsule.create(tmp_path / "a.capsule") as cap:
        with cap.commit() as tx:
            tx.put_many([b'{"text":"note %d","time":%d}' % (i, i) for i in range(5000)])
        segs = cap._search.searcher().docs().segs
        fresh = [s for s in segs if s.ref is None]
        assert fresh and np.shares_memory(fresh[0].ids, np.frombuffer(tx.new_ids.raw, np.uint8))
        with pytest.raises(capsule.UsageError):
            tx.remember("late")
        assert [h.text for h in cap.search("note 4321", k=1)] == ["note 4321"]
