"""A COMMIT planted inside a record's payload is never a commit (spec 8.1, 8.2).

A memory's meta can carry any bytes, among them a frame header, a COMMIT payload
with a tail locator naming it and a chain value that checks against the 32 bytes
before it: a frame that "checks by itself" (8.1) in every way a reader can test
in isolation, with an INDEX of its own if it likes. Recovery must trust only
COMMITs at real frame boundaries: one reached by following frame lengths from a
trusted boundary (offset 64, or the end of a commit that is one), or the COMMIT
that ends exactly where the file ends (a byte string inside a payload cannot end
there: the frame holding it ends later, 6.4). So a power loss, or a cut at any
byte, during the commit that wrote such a record opens at the last real commit:
no damage reported, the planted COMMIT never accepted and never evidence.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import capsule
from capsule.core import constants as C
from capsule.format import frames
from capsule.format.commit import CommitInfo, IndexMeta, encode_commit_payload, parse_commit_payload
from capsule.format.frames import Merkle, chain_next, encode_frame_header, leaf_hash

T0 = 1_700_000_000 * 10**9
BIN = 1024  # bytes of the planted meta value


def clock(start: int = T0) -> Callable[[], int]:
    it = itertools.count(start, 1_000_000)
    return lambda: next(it)


def frame(ftype: int, seq: int, payload: bytes, prev_chain: bytes) -> tuple[bytes, bytes, bytes]:
    """(frame bytes, chain value, Merkle leaf) of an uncompressed frame."""
    hdr = encode_frame_header(ftype, 0, seq, len(payload), len(payload))
    ph = hashlib.sha256(payload).digest()
    chain = chain_next(prev_chain, hdr, ph)
    return hdr + payload + chain, chain, leaf_hash(hdr, ph)


@dataclass(frozen=True)
class Plant:
    """What the planted bytes claim: the fake COMMIT's predecessor and ordinal, and
    whether it brings an INDEX (so its replay checks) and a forged predecessor."""

    name: str
    prev: str  # "last": the real last commit; "none": no predecessor; "bogus": an offset that is no COMMIT
    later: bool = False  # claims an INDEX after the torn bytes (8.2 c evidence, if it were believed)
    index: bool = False  # carries a forged INDEX, so the fake settles by itself (6.3 steps 4-6)
    nested: bool = False  # and a forged predecessor COMMIT before that INDEX


def forge(at: int, plant: Plant, last: CommitInfo) -> tuple[bytes, int]:
    """The planted bytes, whose first byte will sit at file offset ``at``, and where in
    them the planted COMMIT frame ends (random bytes follow, so nothing compresses)."""
    rnd = hashlib.sha256(plant.name.encode()).digest()
    out = bytearray(rnd)  # the 32 bytes the first fake frame's chain link is checked against
    chain = bytes(rnd)
    seq = last.seq + 5
    records = 0
    commits = last.commits + 1
    prev: int | None = {"last": last.offset, "none": None, "bogus": C.HEADER_SIZE}[plant.prev]
    if plant.prev == "none":
        commits = 1
    if plant.nested:  # a fake predecessor: COMMIT(commits) naming the real last commit
        off = at + len(out)
        info = CommitInfo(off, 0, seq, T0, os.urandom(32), 0, commits, prev, None, None)
        data, chain, _ = frame(C.FT_COMMIT, seq, encode_commit_payload(info), chain)
        out += data
        prev, commits, seq = off, commits + 1, seq + 1
    index: tuple[int, bytes] | None = None
    merkle = Merkle()
    if plant.index:
        frontier = [os.urandom(32) for _ in range(bin(seq).count("1"))]
        meta = IndexMeta(seq, frontier, 0, {}, [])
        payload = meta.encode()
        off = at + len(out)
        data, chain, leaf = frame(C.FT_INDEX, seq, payload, chain)
        out += data
        merkle = Merkle(seq, frontier)
        merkle.append(leaf)
        index = (off, hashlib.sha256(payload).digest())
        seq += 1
    off = at + len(out)
    if plant.later and index is None:
        index = (off - 16, os.urandom(32))  # an INDEX "after the torn bytes"
    info = CommitInfo(off, 0, seq, T0 + 1, merkle.root() if plant.index else os.urandom(32), records, commits,
                      prev, None if index is None else index[0], None if index is None else index[1])
    data, _, _ = frame(C.FT_COMMIT, seq, encode_commit_payload(info), chain)
    out += data
    assert len(out) <= BIN
    return bytes(out) + os.urandom(BIN - len(out)), len(out)


PLANTS = [
    Plant("names-the-last-commit-and-a-later-index", "last", later=True),
    Plant("names-no-predecessor", "none"),
    Plant("names-a-bogus-predecessor", "bogus"),
    Plant("settles-with-a-forged-index", "last", index=True),
    Plant("forged-index-and-predecessor", "last", index=True, nested=True),
]


@dataclass(frozen=True)
class Planted:
    before: bytes  # the file at the last real commit
    after: bytes  # the file once the commit holding the plant is durable
    fake_end: int  # where the planted COMMIT frame ends
    fake_offset: int
    seen_before: tuple[int, int]  # (commits, records) at the last real commit
    seen_after: tuple[int, int]
    nested: bool  # the plant forged its INDEX and its predecessor too


def _state(p: Path) -> tuple[int, int]:
    with capsule.open(p) as cap:
        for r in cap.records():
            cap.get(r.id)
        return cap.commit_count, len(cap)


class _NoGain:
    """A compressor that never saves a byte: the writer then stores RECORDS as they are
    (3.3), as it does for any payload zstd cannot shrink, so the plant lies verbatim."""

    def compress(self, raw: bytes) -> bytes:
        return raw + b"?"


def plant_commit(tmp: Path, plant: Plant) -> Planted:
    """Three real commits, then one commit whose memory's meta carries ``plant``."""
    p = tmp / f"{plant.name}.capsule"
    noise = os.urandom(300)
    with capsule.create(p, clock=clock()) as cap:
        for c in range(3):
            with cap.commit() as tx:
                for i in range(3):
                    tx.remember(f"base {c}.{i}", meta={"i": i})
    before = p.read_bytes()
    seen_before = _state(p)
    marker = os.urandom(BIN)

    def write(blob: bytes) -> bytes:
        p.write_bytes(before)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(frames, "_compressor", lambda level: _NoGain())
            with capsule.open(p, "a", clock=clock(T0 + 10**12)) as cap, cap.commit() as tx:
                tx.remember("innocent looking", meta={"blob": blob, "noise": noise})
        return p.read_bytes()

    at = write(marker).find(marker)
    assert at > len(before)
    (loc,) = struct.unpack_from("<Q", before, len(before) - C.TAIL_SIZE + 8)
    last = parse_commit_payload(before[loc + C.FRAME_HEADER_SIZE : len(before) - C.TRAILER_SIZE], loc,
                                struct.unpack_from("<Q", before, loc + 8)[0], len(before), b"")
    blob, n = forge(at, plant, last)
    after = write(blob)
    assert after.find(blob) == at, "the plant must lie verbatim in the file (an uncompressed RECORDS frame)"
    fake_end = at + n
    (fake_off,) = struct.unpack_from("<Q", after, fake_end - C.TRAILER_SIZE - 8)
    assert at < fake_off < fake_end
    return Planted(before, after, fake_end, fake_off, seen_before, _state(p), plant.nested)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Planted]:
    tmp = tmp_path_factory.mktemp("planted")
    return {p.name: plant_commit(tmp, p) for p in PLANTS}


def cuts(pl: Planted, every: int) -> list[int]:
    """Every byte from 40 before the planted COMMIT to 40 past its end, and every
    ``every``-th byte of the rest of the last commit (``every=1``: all of them)."""
    lo, hi = len(pl.before), len(pl.after)
    near = set(range(max(lo, pl.fake_offset - 40), min(hi, pl.fake_end + 40) + 1))
    return sorted(near | set(range(lo, hi + 1, every)) | {lo, hi})


def check_cut(pl: Planted, cut: int, fill: str, where: Path, *, writer: bool) -> str | None:
    """A crash left the planted commit's first ``cut`` bytes: the file ends there
    ("cut") or keeps its new size with zeros after them ("zeros")."""
    img = pl.after[:cut] if fill == "cut" else pl.after[:cut] + bytes(len(pl.after) - cut)
    where.write_bytes(img)
    # zeros in place of bytes that were zeros (a chain value ending in 0x00, ~1 run in 100 with the
    # random marker) leave the whole commit: that image is the finished file, not a torn one
    done = img == pl.after
    want = pl.seen_after if done else pl.seen_before
    end = len(pl.after) if done else len(pl.before)
    try:
        got = _state(where)
    except (capsule.DataError, capsule.NotFound) as e:
        return f"reader: {e!r}"
    if got != want:
        return f"reader saw {got}, expected {want} (the planted COMMIT was taken for a commit)"
    rep = capsule.verify(where)
    if not rep.ok or rep.torn_tail != len(img) - end:
        return f"verify: ok={rep.ok} torn={rep.torn_tail} {rep.first_error}"
    if where.read_bytes() != img:
        return "a reader or verifier wrote"
    if writer:
        try:
            with capsule.open(where, "a", clock=clock(T0 + 10**15)) as cap, cap.commit() as tx:
                tx.remember("after the crash")
        except capsule.DataError as e:
            return f"writer: {e!r}"
        if _state(where) != (want[0] + 1, want[1] + 1) or not capsule.verify(where).ok:
            return "the writer's recovery commit did not land on the last real commit"
    return None


def sweep(pl: Planted, every: int, where: Path) -> list[str]:
    bad = []
    writers = {len(pl.before) + 1, pl.fake_offset, pl.fake_end, pl.fake_end + 1, len(pl.after) - 1}
    for cut in cuts(pl, every):
        for fill in ("cut", "zeros"):
            if plant_residual(pl, cut, fill):
                continue
            err = check_cut(pl, cut, fill, where, writer=cut in writers)
            if err:
                bad.append(f"cut at +{cut - len(pl.before)} ({fill}): {err}")
    return bad


def plant_residual(pl: Planted, cut: int, fill: str) -> bool:
    """The one image a cheap open cannot tell from a commit (spec 8.1): the file cut
    at an arbitrary byte, which a power loss does not do (6.4: a file ends where a
    write ended), exactly at the end of a planted COMMIT that also forged its INDEX
    and its predecessor. Following frame lengths from offset 64 (verify) sees it."""
    return pl.nested and fill == "cut" and cut == pl.fake_end


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.name)
def test_a_crash_during_a_commit_holding_a_planted_commit_opens_at_the_last_real_commit(
        planted: dict[str, Planted], plant: Plant, tmp_path: Path) -> None:
    pl = planted[plant.name]
    bad = sweep(pl, 13, tmp_path / "img.capsule")
    assert not bad, "\n".join(bad[:8])


@pytest.mark.slow
@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.name)
def test_a_crash_at_every_byte_of_a_commit_holding_a_planted_commit(
        planted: dict[str, Planted], plant: Plant, tmp_path: Path) -> None:
    pl = planted[plant.name]
    bad = sweep(pl, 1, tmp_path / "img.capsule")
    assert not bad, "\n".join(bad[:8])


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.name)
def test_power_loss_images_of_a_commit_holding_a_planted_commit(planted: dict[str, Planted], plant: Plant,
                                                                tmp_path: Path) -> None:
    """The same commit under the power-loss model of tests/powerloss.py (6.4): its
    sectors persisted in any order, missing ones zero or garbage, the file at its
    old or new size. Every image reads as one of the two real commits, verifies,
    and takes a writer's commit; the planted COMMIT is never a commit nor evidence."""
    from tests.powerloss import Op
    from tests.test_powerloss import survey

    pl = planted[plant.name]
    assert pl.after.startswith(pl.before)
    ops = [Op("write", len(pl.before), pl.after[len(pl.before) :]), Op("sync")]
    tally = survey(f"planted-{plant.name}", pl.before, ops, 120, tmp_path)
    assert tally.survived == tally.tried, "\n".join([tally.line(), *tally.failures])


class Counting:
    """A read source that counts the bytes it hands out (spec 8.1, 17.4: bounded recovery)."""

    def __init__(self, path: Path) -> None:
        self.f = path.open("rb")
        self.read = 0

    def pread(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        b = self.f.read(n)
        self.read += len(b)
        return b

    def size(self) -> int:
        return os.fstat(self.f.fileno()).st_size


def many_commits(p: Path, n: int) -> None:
    with capsule.create(p, clock=clock()) as cap:
        for i in range(n):
            with cap.commit() as tx:
                tx.remember(f"commit {i}", meta={"i": i})


def test_a_sparse_torn_tail_is_not_read_to_recover(tmp_path: Path) -> None:
    """4(d) of the audit: 2 GiB of zeros after the last commit (a file extended
    and never written) made open search all of it for locators, ~3.4 s. Recovery
    now follows frame lengths, which stop at the first zero header: what it
    reads depends on the frames before the tail, not on the tail's size."""
    from capsule.format.scan import load

    p = tmp_path / "sparse.capsule"
    many_commits(p, 20)
    end = p.stat().st_size
    with p.open("r+b") as f:
        f.truncate(end + 2 * 2**30)  # sparse: costs no disk
    src = Counting(p)
    try:
        snap = load(src, src.size())
    finally:
        src.f.close()
    assert snap.end == end and snap.torn == (end, 2 * 2**30)
    assert src.read < 4 * end + (2 << 20), f"recovery read {src.read} bytes of a {end}-byte capsule"
    rep = capsule.verify(p)
    assert rep.ok and rep.torn_tail == 2 * 2**30


def test_a_clean_open_does_not_follow_frames_from_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks that keep a planted COMMIT out cost a clean open nothing like a walk
    from offset 64: following frame lengths happens only for the few frames of the
    last commit, or when the tail is not a COMMIT that settles (6.3, 8.1)."""
    from capsule.format import scan

    p = tmp_path / "many.capsule"
    many_commits(p, 600)  # 1,200 frames
    visited = 0
    real_hop = scan.hop

    def counting_hop(*a: object, **k: object) -> Iterator[object]:
        nonlocal visited
        for fh in real_hop(*a, **k):  # type: ignore[arg-type]
            visited += 1
            yield fh

    monkeypatch.setattr(scan, "hop", counting_hop)
    src = Counting(p)
    try:
        snap = scan.load(src, src.size())
    finally:
        src.f.close()
    commits = snap.commits
    assert commits > 600 and snap.torn is None
    assert visited < 300, f"a clean open followed {visited} frame headers"
    data = p.read_bytes()
    p.write_bytes(data[:-5])  # the same file with its tail torn: now the walk from 64 is the way
    src = Counting(p)
    try:
        snap = scan.load(src, src.size())
    finally:
        src.f.close()
    assert snap.commits == commits - 1 and snap.torn is not None and visited >= 1200
