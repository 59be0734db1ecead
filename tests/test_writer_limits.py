"""A writer never writes what its own reader refuses (spec 11; audit F8, F9).

Frames stay under the header's max frame length (RECORDS are batched to fit,
index tables are split into runs), an INDEX never exceeds its limit, and a
commit that cannot fit is refused whole: nothing is written, the file still opens.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import capsule
from capsule.core import constants as C
from capsule.core.clock import default_clock
from capsule.format.file import WriteHandle
from capsule.format.frames import FileHeader, Merkle
from capsule.format.scan import Snapshot
from capsule.handle.capsule import Capsule

from .test_hostile import append_frames, build_base, record_payload, records_frame


def small_frames(path: Path, max_frame_len: int) -> Capsule:
    """A new capsule whose header allows only small frames (as another writer may choose)."""
    h = WriteHandle(path, create=True)
    header = FileHeader(bytes(range(16)), max_frame_len=max_frame_len)
    h.append_at(0, header.encode())
    cap = Capsule(path, h, Snapshot(header, C.HEADER_SIZE, None, header.chain_seed, Merkle(), 0), "a",
                  default_clock())
    cap._write_commit([])
    return cap


def test_f9_a_record_too_big_for_the_header_is_refused_and_nothing_written(tmp_path: Path) -> None:
    p = tmp_path / "small.capsule"
    with small_frames(p, 4096) as cap:
        with cap.commit() as tx:
            tx.remember("fits")
        before = p.read_bytes()
        with pytest.raises(capsule.InvalidRecordError, match="max frame length"), cap.commit() as tx:
            tx.remember(os.urandom(6000).hex())  # 12 KB that zstd cannot shrink
        assert p.read_bytes() == before
        with cap.commit() as tx:  # the writer is still usable
            ids = [tx.remember(f"small {i} " + "y" * 100) for i in range(200)]
    assert capsule.verify(p).ok
    with capsule.open(p) as cap:
        assert [cap.get(i).text[:8] for i in ids[:3]] == ["small 0 ", "small 1 ", "small 2 "]
        assert len(cap) == 201


def test_index_tables_split_to_fit_the_frame_limit(tmp_path: Path) -> None:
    p = tmp_path / "small.capsule"
    per_table = (4096 - C.FRAME_OVERHEAD) // 52
    with small_frames(p, 4096) as cap:
        ids = []
        for batch in range(6):
            with cap.commit() as tx:
                ids += [tx.remember(f"m{batch}-{i}") for i in range(per_table)]
            cap._write_commit([], force_index=True)
        assert all(s.ref.count <= per_table for s in cap._snap.segments)
    rep = capsule.verify(p)
    assert rep.ok, rep.first_error
    with capsule.open(p) as cap:
        assert len(cap) == len(ids)
        assert all(cap.get(i).text.startswith("m") for i in ids[:: per_table // 3])


def test_too_many_tables_is_refused_before_writing(tmp_path: Path) -> None:
    p = tmp_path / "tiny.capsule"
    with small_frames(p, 1024) as cap, pytest.raises(capsule.InvalidRecordError,
                                                      match="index tables|max frame length"):
        for i in range(200):
            with cap.commit() as tx:
                for j in range(20):
                    tx.remember(f"{i}-{j}")
            before = p.read_bytes()
            cap._write_commit([], force_index=True)
    assert p.read_bytes() == before
    assert capsule.verify(p).ok
    with capsule.open(p) as cap:
        assert len(cap) > 0


def test_f8_an_index_over_its_limit_is_never_written(tmp_path: Path) -> None:
    """40,000 distinct unknown kinds forged into the file, then a put: refused with one
    line, nothing written, and the file still opens (it did not before the fix)."""
    p = tmp_path / "kinds.capsule"
    build_base(p)
    n = 40_000
    recs = [{"kind": f"unknown-kind-with-a-long-name-{i:06d}", "time": 5} for i in range(n)]
    per = 5000
    for lo in range(0, n, per):
        append_frames(p, [records_frame(record_payload(*recs[lo : lo + per]))], new_records=per)
    with capsule.open(p) as cap:
        assert len(cap.kinds()) > n
    before = p.read_bytes()
    with capsule.open(p, "a") as cap, pytest.raises(capsule.InvalidRecordError, match="INDEX"):
        cap._write_commit([], force_index=True)
    assert p.read_bytes() == before
    with capsule.open(p) as cap:
        assert len(cap) == n + 4


def test_a_refused_commit_after_recovery_keeps_the_recovery_frame(tmp_path: Path) -> None:
    """8.3: the tail is truncated by the first write attempt; if that commit is then
    refused, the next one still carries the RECOVERY frame that records the truncation."""
    from .test_trust import frames

    p = tmp_path / "torn.capsule"
    with small_frames(p, 4096) as cap, cap.commit() as tx:
        tx.remember("kept")
    with p.open("ab") as f:
        f.write(b"\x00garbage tail" * 10)
    with capsule.open(p, "a") as cap:
        with pytest.raises(capsule.InvalidRecordError, match="max frame length"), cap.commit() as tx:
            tx.remember(os.urandom(6000).hex())  # refused inside the writer, after the truncation
        with cap.commit() as tx:
            tx.remember("after")
    rep = capsule.verify(p)
    assert rep.ok and rep.torn_tail == 0, rep.first_error
    assert any(t == C.FT_RECOVERY for _, t, _ in frames(p)), "the RECOVERY frame was lost"
