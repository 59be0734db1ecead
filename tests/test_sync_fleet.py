"""Pull onto a local copy and push cost O(tail) (spec 19.6, 19.7), and the tail check
judges a forged tail as ``verify`` does.

Bytes read from the local capsule are counted where every read of it goes through
(:class:`capsule.format.file.ReadHandle`'s ``pread``/``readinto``/``view`` and the kernel
copy a whole-file check would use); the stores are fsspec's own ``file://`` and ``memory://``.
A forged tail is made of real frames whose chain checks (so only the tail check can
catch it), pushed through the real push, and pulled through the real pull.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import capsule
import capsule.sync as sync
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.commit import (
    CommitInfo,
    decode_records_payload,
    encode_commit_payload,
    encode_records_payload,
)
from capsule.format.file import ReadHandle
from capsule.format.frames import encode_frame, raw_payload
from capsule.format.scan import Reader, load
from capsule.sync.manifest import manifest_name, parse_manifest, segment_name


def build(path: Path, commits: int, per: int, hexlen: int = 200) -> Path:
    """A capsule of random (incompressible) memories, through the batch path."""
    with capsule.create(path) as cap:
        for _ in range(commits):
            with cap.commit() as tx:
                tx.put_many([{"text": os.urandom(hexlen // 2).hex()} for _ in range(per)])
    return path


def one_more(path: Path, text: str = "one more fact") -> None:
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        tx.remember(text)


@contextmanager
def local_reads(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Count the bytes read from ``path`` (every handle on it) while the block runs."""
    seen = {"bytes": 0}
    real = {n: getattr(ReadHandle, n) for n in ("pread", "readinto", "view")}
    target = path.resolve()

    def mine(h: ReadHandle) -> bool:
        return Path(h.path).resolve() == target

    def pread(self: ReadHandle, offset: int, n: int) -> bytes:
        out: bytes = real["pread"](self, offset, n)
        if mine(self):
            seen["bytes"] += len(out)
        return out

    def readinto(self: ReadHandle, offset: int, buf: memoryview) -> int:
        k: int = real["readinto"](self, offset, buf)
        if mine(self):
            seen["bytes"] += k
        return k

    def view(self: ReadHandle, offset: int, n: int) -> memoryview:
        if mine(self):
            seen["bytes"] += n
        out: memoryview = real["view"](self, offset, n)
        return out

    copy_range = os.copy_file_range

    def copy_file_range(src: int, dst: int, count: int, *a: Any) -> int:
        k = copy_range(src, dst, count, *a)
        seen["bytes"] += k  # a whole-file copy (the fallback) reads the local file this way
        return k

    monkeypatch.setattr(ReadHandle, "pread", pread)
    monkeypatch.setattr(ReadHandle, "readinto", readinto)
    monkeypatch.setattr(ReadHandle, "view", view)
    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    try:
        yield seen
    finally:
        monkeypatch.undo()


# --- O(tail) -----------------------------------------------------------------------------------


def test_pull_onto_a_copy_reads_the_tail_not_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = build(tmp_path / "a.capsule", 20, 400, hexlen=1000)  # ~5 MB
    url = f"file://{tmp_path}/remote/a"
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    sync.pull(url, b)
    size = b.stat().st_size
    assert size > 4_000_000
    before = a.stat().st_size
    one_more(a)
    r = sync.push(a, url)
    assert r.tail_bytes == a.stat().st_size - before
    with local_reads(b, monkeypatch) as seen:
        res = sync.pull(url, b)
    assert res.status == "pulled" and res.bytes == r.tail_bytes and res.checked == "tail"
    assert seen["bytes"] < 600_000, f"read {seen['bytes']:,} of {size:,} local bytes for a 1-commit tail"
    assert b.read_bytes() == a.read_bytes() and capsule.verify(b).ok
    assert res.records == capsule.verify(a).records


def test_push_reads_the_tail_not_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = build(tmp_path / "a.capsule", 20, 400)
    url = f"memory://fleet-tests/{uuid.uuid4().hex}"
    sync.push(a, url)
    one_more(a)
    with local_reads(a, monkeypatch) as seen:
        r = sync.push(a, url)
    assert r.status == "pushed" and r.merged_bytes == 0
    assert seen["bytes"] < 600_000, f"push read {seen['bytes']:,} local bytes for a {r.tail_bytes:,}-byte tail"


def test_many_tails_through_the_tail_check_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """INDEX frames, table merges (9.3), embeddings and search snapshots arrive through the
    tail check; the copy stays byte-identical and verifies after each pull."""
    a = build(tmp_path / "a.capsule", 3, 300)
    url = f"memory://fleet-tests/{uuid.uuid4().hex}"
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    sync.pull(url, b)
    for step in range(12):
        with capsule.open(a, "a") as cap, cap.commit() as tx:
            emb = step % 3 == 0
            tx.put_many([{"text": f"step {step} item {i} " + os.urandom(8).hex(),
                          **({"embedding": [float(i % 7), 1.0, 0.5]} if emb else {})} for i in range(700)])
        sync.push(a, url)
        size = b.stat().st_size
        with local_reads(b, monkeypatch) as seen:
            assert sync.pull(url, b).status == "pulled"
        assert b.read_bytes() == a.read_bytes()
        if step:  # the first embedding writes a `vindex` record, which the whole file judges (16.1)
            assert seen["bytes"] < size // 2, f"step {step}: read {seen['bytes']:,} of {size:,}"
    rep = capsule.verify(b)
    assert rep.ok, rep.first_error


@pytest.mark.slow
def test_pull_time_follows_the_tail_not_the_file(tmp_path: Path) -> None:
    """1 MB against ~200 MB local copies, one-commit tails: within a generous ratio."""
    times = []
    for name, commits in (("small", 1), ("large", 200)):
        a = build(tmp_path / f"{name}.capsule", commits, 2_500, hexlen=400)
        url = f"file://{tmp_path}/remote/{name}"
        sync.push(a, url)
        b = tmp_path / f"{name}-copy.capsule"
        sync.pull(url, b)
        one_more(a)
        sync.push(a, url)
        t = time.perf_counter()
        assert sync.pull(url, b).status == "pulled"
        times.append(time.perf_counter() - t)
    assert (tmp_path / "large-copy.capsule").stat().st_size > 150 * (tmp_path / "small-copy.capsule").stat().st_size
    assert times[1] < 10 * times[0] + 0.5, times


# --- forged tails: chain-valid, refused as verify refuses them ---------------------------------


def _first_record(path: Path) -> bytes:
    h = ReadHandle(path)
    try:
        snap = load(h, h.size(), strict=False)
        rd = Reader(h, C.HEADER_SIZE, snap.end, 0, snap.header.chain_seed, snap.header.max_frame_len)
        for fh, payload, _ in rd.frames():
            if fh.ftype == C.FT_RECORDS:
                return bytes(decode_records_payload(raw_payload(fh, payload), fh.offset, fh.seq)[0][1])
    finally:
        h.close()
    raise AssertionError("no record")


def forge(path: Path, out: Path, records: list[bytes], *, root: bytes | None = None, count: int = 0,
          commits: int = 1) -> CommitInfo:
    """``path`` plus one commit holding ``records``, every chain link right; ``root``/``count``
    /``commits`` bend the COMMIT's Merkle root, record count and ordinal."""
    h = ReadHandle(path)
    try:
        snap = load(h, h.size(), strict=False)
        data = h.pread(0, snap.end)
    finally:
        h.close()
    c = snap.commit
    assert c is not None
    seq, chain, pos, merkle = snap.next_seq, snap.chain, snap.end, snap.merkle.copy()
    fr = encode_frame(C.FT_RECORDS, seq, encode_records_payload(records), chain)
    merkle.append(fr.leaf)
    pos += len(fr.data)
    info = CommitInfo(pos, 0, seq + 1, 1, root or merkle.root(), snap.records + len(records) + count,
                      c.commits + commits, c.offset, c.index, c.index_hash)
    payload = encode_commit_payload(info)
    cm = encode_frame(C.FT_COMMIT, seq + 1, payload, fr.chain)
    out.write_bytes(data + fr.data + cm.data)
    return dataclasses.replace(info, end=pos + len(cm.data), chain=cm.chain)


def publish(url: str, forged: Path, info: CommitInfo) -> None:
    """Generation 2 of the remote at ``url``: its segments, then one for the forged tail.
    (A push would refuse a file whose last commit does not settle, 8.1.)"""
    r = sync.Remote(url)
    old = parse_manifest(r.read(manifest_name(1)), manifest_name(1))
    tail = forged.read_bytes()[old.size :]
    name = segment_name(old.size, info.chain)
    r.write(name, [tail])
    segs = (*old.segments, sync.Segment(name, old.size, len(tail), hashlib.sha256(tail).hexdigest()))
    m = sync.Manifest(2, {"generation": 1, "sha256": hashlib.sha256(r.read(manifest_name(1))).hexdigest()},
                      old.file_id, info.end, info.commits, info.seq, info.offset, info.chain.hex(), info.root.hex(),
                      segs)
    r.create(manifest_name(2), m.encode())


def memory(text: str) -> bytes:
    return bytes(canon.encode({"kind": "memory", "text": text, "time": 1_700_000_000_000_000_000}))


@pytest.mark.parametrize("how", ["duplicate-local", "duplicate-tail", "merkle-root", "record-count", "commit-prev"])
def test_a_forged_tail_is_refused_with_verifys_check(tmp_path: Path, how: str) -> None:
    a = build(tmp_path / "a.capsule", 6, 900)  # an INDEX and tables: a local duplicate is found there
    url = f"file://{tmp_path}/remote/{how}"
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    sync.pull(url, b)
    fresh = memory("a fresh fact " + os.urandom(4).hex())
    recs = {"duplicate-local": [_first_record(a)], "duplicate-tail": [fresh, fresh]}.get(how, [fresh])
    forged = tmp_path / "forged.capsule"
    info = forge(a, forged, recs, root=b"\x01" * 32 if how == "merkle-root" else None,
          count=1 if how == "record-count" else 0, commits=2 if how == "commit-prev" else 1)
    want = capsule.verify(forged)
    assert not want.ok and want.first_error is not None
    publish(url, forged, info)
    before = b.read_bytes()
    with pytest.raises(sync.RemoteCorrupt) as e:
        sync.pull(url, b)
    assert e.value.check == want.first_error["check"], (str(e.value), want.first_error)
    assert "segments/" in str(e.value)
    assert b.read_bytes() == before
    assert not list(tmp_path.glob(".b.capsule.pull-*"))


def test_a_signed_tail_is_checked_whole_and_an_unsigned_one_refused_from_the_tail(tmp_path: Path) -> None:
    """A CHECKPOINT's state root and keyset chain span the file: such a tail is checked
    whole (19.7); with an anchor, a tail of records and no checkpoint is refused at once."""
    key = capsule.generate_key()
    a = build(tmp_path / "a.capsule", 2, 50)
    with capsule.open(a, "a") as cap:
        cap.checkpoint("day-1", key=key)
    url = f"memory://fleet-tests/{uuid.uuid4().hex}"
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    sync.pull(url, b, trust=key.public_key)
    one_more(a)
    with capsule.open(a, "a") as cap:
        cap.checkpoint("day-2", key=key)
    sync.push(a, url)
    res = sync.pull(url, b, trust=key.public_key)
    assert (res.status, res.checked) == ("pulled", "file") and res.signed_prefix is not None
    assert res.signed_prefix["label"] == "day-2"
    one_more(a, "unsigned")
    sync.push(a, url)
    before = b.read_bytes()
    with pytest.raises(sync.RemoteUntrusted, match="not covered"):
        sync.pull(url, b, trust=key.public_key)
    assert b.read_bytes() == before
    assert sync.pull(url, b).checked == "tail"  # without an anchor the same tail is taken, checked from the tail
