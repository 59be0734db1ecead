"""Crash safety: a cut at every byte offset, and single-bit flips everywhere.

A crashed writer leaves a *prefix* of what it meant to write (spec 8.1), so
truncating a finished capsule at every byte offset enumerates every state a
crash can leave behind. Each prefix must open as exactly the last commit that
lies wholly inside it, and a writer must recover it into a file that verifies.

A flipped bit is the opposite case: damage, not a tear (spec 8.2). It must
always be reported (never classified as a torn tail and never truncated), and
a reader must never silently present a different committed state.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import random
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from tests.spec_ref import state_root as spec_state_root

EMPTY_STATE_ROOT = spec_state_root([])


def make_clock(start: int = 1_700_000_000 * 10**9) -> Callable[[], int]:
    """A deterministic, strictly increasing clock: no two records share a time by accident."""
    counter = itertools.count(start, 1_000)
    return lambda: next(counter)


@dataclass(frozen=True)
class State:
    """What a reader must see when the file is cut at or after ``end``."""

    end: int  # cap.size right after the commit
    records: int
    state_root: str
    ids: tuple[str, ...]  # in commit order
    commits: int


EMPTY = State(C.HEADER_SIZE, 0, EMPTY_STATE_ROOT, (), 0)


def snapshot(cap: capsule.Capsule) -> State:
    return State(cap.size, len(cap), cap.state_root, tuple(r.id for r in cap.records()), cap.commit_count)


def frames(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """(offset, type, flags, total length) of every complete frame of a well-formed file."""
    off = C.HEADER_SIZE
    while off + C.FRAME_HEADER_SIZE <= len(data):
        total, ftype, flags = struct.unpack_from("<IBB", data, off)
        if off + total > len(data):
            return
        yield off, ftype, flags, total
        off += total


def expected_at(states: list[State], cut: int) -> State:
    """The last commit lying wholly inside data[:cut] (EMPTY if there is none)."""
    best = EMPTY
    for s in states:
        if s.end <= cut:
            best = s
    return best


def write_fresh(path: Path, data: bytes) -> None:
    """A new file (new inode) holding ``data``; no stale lock sidecar."""
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".lock").unlink(missing_ok=True)
    path.write_bytes(data)


def build_history(path: Path) -> tuple[bytes, list[State], dict[str, capsule.Memory]]:
    """A capsule of several commits covering every frame kind a writer emits.

    Commits: the empty create commit; records with meta, tags, tier/ttl/source
    and embeddings; one large compressible record (zstd RECORDS frame); enough
    frames that close() writes TABLE + INDEX; then one more commit after that
    INDEX so a cut there exercises the index fast path.
    """
    clock = make_clock()
    states: list[State] = []
    cap = capsule.create(path, clock=clock)
    states.append(snapshot(cap))
    batches: list[list[dict[str, object]]] = [
        [
            {"text": "user prefers metric units", "tags": ["prefs", "units"],
             "meta": {"n": 1, "nested": {"a": [1, 2.5, None, True]}, "raw": b"\x00\xff"}},
            {"text": "vector memory", "embedding": [0.25, -0.0, 1.0, -2.5, 3.0, 0.5, 0.125, 8.0]},
            {"text": "scratch note", "tier": "scratch", "ttl": 3_600 * 10**9, "source": "planner"},
        ],
        [{"text": "a long transcript line that repeats. " * 60, "tags": ["big"]}],
        [
            {"text": "two", "embedding": [float(i) / 7 for i in range(8)]},
            {"text": "three", "meta": {"k": "v"}, "tier": "validated"},
        ],
        [{"text": "caf\u00e9 \u65e5\u672c\u8a9e \U0001f600"}],
        [{"text": f"small {i}", "tags": [f"t{i}"]} for i in range(4)],
        [{"text": "six"}],
        [{"text": "seven", "meta": {"list": [1, -1, 2**40]}}],
        [{"text": "eight"}],
    ]
    for batch in batches:
        with cap.commit() as tx:
            for rec in batch:
                tx.remember(**rec)  # type: ignore[arg-type]
        states.append(snapshot(cap))
    cap.close()  # 17 frames since the start: close() appends TABLE + INDEX + COMMIT
    with capsule.open(path) as r:
        states.append(snapshot(r))
    with capsule.open(path, "a", clock=clock) as cap, cap.commit() as tx:
        tx.remember("after the index", embedding=[1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5])
        tx.remember("and one more")
    with capsule.open(path) as r:
        states.append(snapshot(r))
        memories = {m.id: m for m in r.records()}
    data = path.read_bytes()
    assert states[-1].end == len(data)
    # Every state is a distinct commit boundary in increasing order.
    assert [s.end for s in states] == sorted({s.end for s in states})
    return data, states, memories


def test_crash_at_every_byte_offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, states, memories = build_history(tmp_path / "full.capsule")
    # Durability is not under test here (every prefix is handed over explicitly),
    # and ~4,600 recoveries with real fsyncs would dominate the runtime.
    monkeypatch.setattr(capsule.format.file, "_fsync", lambda fd: None)
    kinds = [(t, f) for _, t, f, _ in frames(data)]
    # The file must really contain what the brief promises to cover.
    assert (C.FT_RECORDS, C.FFLAG_ZSTD) in kinds, "no zstd-compressed RECORDS frame"
    assert (C.FT_RECORDS, 0) in kinds
    assert any(t == C.FT_INDEX for t, _ in kinds) and any(t == C.FT_TABLE for t, _ in kinds)
    assert len(states) >= 6
    assert len(data) < 8192  # keeps the loop below well inside its time budget
    # A header with no complete commit reads as empty: the same root as the empty create commit.
    assert states[0].records == 0 and states[0].state_root == EMPTY_STATE_ROOT

    clock = make_clock(2_000_000_000 * 10**9)
    target = tmp_path / "cut.capsule"
    for cut in range(len(data) + 1):
        prefix = data[:cut]
        write_fresh(target, prefix)
        if cut < C.HEADER_SIZE:
            # A file cut inside its header was never a capsule: refused, never repaired.
            with pytest.raises(capsule.CorruptError):
                capsule.open(target)
            with pytest.raises(capsule.CorruptError):
                capsule.open(target, "a")
            assert target.read_bytes() == prefix
            rep = capsule.verify(target)
            assert not rep.ok and rep.first_error is not None
            assert rep.first_error["check"].startswith("header"), (cut, rep.first_error)
            continue

        want = expected_at(states, cut)
        with capsule.open(target) as cap:
            got = (cap.size, len(cap), cap.state_root, cap.commit_count, tuple(r.id for r in cap.records()))
        assert got == (want.end, want.records, want.state_root, want.commits, want.ids), f"cut at {cut}"

        rep = capsule.verify(target)
        if want.commits:
            assert rep.ok, (cut, rep.first_error)
            assert rep.torn_tail == cut - want.end, cut
            assert rep.records == want.records and rep.commits == want.commits, cut
        else:  # header only, or the create commit itself was torn
            assert not rep.ok and rep.first_error is not None
            assert rep.first_error["check"] == "no-commit", (cut, rep.first_error)

        # A writer recovers: truncates the torn tail, says so, and appends.
        with capsule.open(target, "a", clock=clock) as cap:
            assert (len(cap), cap.state_root) == (want.records, want.state_root), cut
            with cap.commit() as tx:
                new_id = tx.remember(f"written after a cut at {cut}")
        after = target.read_bytes()
        assert after[: want.end] == data[: want.end], "committed bytes were rewritten"
        if cut > want.end:
            # 8.3: a RECOVERY frame right at the old committed end names the dropped bytes.
            off, ftype, _, total = next(f for f in frames(after) if f[0] == want.end)
            assert ftype == C.FT_RECOVERY, cut
            plen = total - C.FRAME_OVERHEAD
            body = canon.decode(after[off + C.FRAME_HEADER_SIZE : off + C.FRAME_HEADER_SIZE + plen])
            assert body == {"length": cut - want.end, "offset": want.end,
                            "sha256": hashlib.sha256(data[want.end : cut]).digest()}, cut
        # Quick mode: the records themselves are compared one by one just below.
        rep = capsule.verify(target, deep=False)
        assert rep.ok and rep.torn_tail == 0, (cut, rep.first_error)
        assert rep.records == want.records + 1 and rep.commits > want.commits, cut
        with capsule.open(target) as cap:
            assert [r.id for r in cap.records()] == [*want.ids, new_id], cut
            for rid in want.ids:
                assert cap.get(rid) == memories[rid], (cut, rid)
            for rid in set(memories) - set(want.ids):
                # Records of commits beyond the cut are gone, never half-visible.
                with pytest.raises(capsule.NotFound):
                    cap.get(rid)


def test_torn_tail_containing_a_locator_lookalike_still_recovers(tmp_path: Path) -> None:
    """A record's *content* must not decide whether a crash is recoverable.

    The torn RECORDS frame below holds, inside a meta bytes value, the 16 bytes
    "CAPSTAIL" + u64(offset of that very frame) -- the shape of a tail locator.
    The frame header at the cut is valid and the frame simply runs past EOF: a
    textbook torn append. The first clause of 8.2(b) ("a tail locator after X
    points at X") takes the look-alike as proof of damage, so readers refuse
    the file and no writer can ever recover it. That clause is only needed when
    the header at X is itself damaged (a valid header ending inside the file is
    already case (a)), so it should not apply when the header at X is valid.
    """
    path = tmp_path / "a.capsule"
    cap = capsule.create(path, clock=make_clock())
    with cap.commit() as tx:
        kept = tx.remember("committed before the crash")
    stop = cap.size
    with cap.commit() as tx:
        # Random bytes keep the frame uncompressed, so the look-alike is stored verbatim.
        noise = random.Random(7).randbytes(300)
        tx.remember("x", meta={"a": b"CAPSTAIL" + stop.to_bytes(8, "little"), "b": noise})
    cap.close()
    data = path.read_bytes()
    rec_off, ftype, flags, total = next(f for f in frames(data) if f[0] == stop)
    assert (ftype, flags) == (C.FT_RECORDS, 0)
    loc = data.find(b"CAPSTAIL", stop)
    # Crash in the middle of the RECORDS payload, well past the look-alike.
    cut = loc + C.TAIL_SIZE + 100
    assert cut < rec_off + total - C.TRAILER_SIZE
    torn = tmp_path / "torn.capsule"
    torn.write_bytes(data[:cut])

    rep = capsule.verify(torn)
    assert rep.ok and rep.torn_tail == cut - stop, rep.first_error
    with capsule.open(torn) as r:
        assert [m.id for m in r.records()] == [kept]
    with capsule.open(torn, "a") as w:
        assert len(w) == 1
        with w.commit() as tx:  # the first commit drops the torn tail (8.3)
            after = tx.remember("written after recovery")
    rep = capsule.verify(torn)
    assert rep.ok and rep.torn_tail == 0, rep.first_error
    with capsule.open(torn) as r:
        assert [m.id for m in r.records()] == [kept, after]


# --- single-bit flips -----------------------------------------------------------


def build_small(path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """~1.5 KB: create commit, a plain and a zstd RECORDS commit, and TABLE + INDEX."""
    # Make close() write its INDEX even for this tiny file, so flips reach INDEX and TABLE.
    with monkeypatch.context() as m:
        m.setattr(C, "INDEX_ON_CLOSE_FRAMES", 1)
        with capsule.create(path, clock=make_clock()) as cap:
            with cap.commit() as tx:
                tx.remember("hello", tags=["a"], meta={"k": 1})
                tx.remember("vec", embedding=[0.5, -1.0])
            with cap.commit() as tx:
                tx.remember("compress me please. " * 20)
    data = path.read_bytes()
    kinds = {(t, f) for _, t, f, _ in frames(data)}
    assert (C.FT_RECORDS, C.FFLAG_ZSTD) in kinds and (C.FT_INDEX, 0) in kinds and (C.FT_TABLE, 0) in kinds
    return data


def read_state(path: Path) -> tuple[int, str, list[tuple[str, str]]]:
    with capsule.open(path) as cap:
        return len(cap), cap.state_root, [(r.id, r.text) for r in cap.records()]


def flip(data: bytes, i: int, bit: int) -> bytes:
    out = bytearray(data)
    out[i] ^= 1 << bit
    return bytes(out)


def test_single_bit_flips_are_always_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "small.capsule"
    data = build_small(src, monkeypatch)
    original = read_state(src)
    assert original[0] == 3
    # 8.2: a power loss during the last commit may leave any of its bytes from its own INDEX
    # on (from the previous commit's end when it wrote none) missing or garbage, so a flip
    # there reads as a torn tail: that commit is rolled back, never half-visible.
    kinds = list(frames(data))
    commits = [off for off, t, _, _ in kinds if t == C.FT_COMMIT]
    prev_end = next(off for off, _, _, _ in kinds if off > commits[-2])
    index = max((off for off, t, _, _ in kinds if t == C.FT_INDEX and off > prev_end), default=prev_end)
    assert index > prev_end, "close() wrote TABLE + INDEX + COMMIT: the TABLE flips must stay damage"
    write_fresh(tmp_path / "before-last.capsule", data[:prev_end])
    rolled_back = read_state(tmp_path / "before-last.capsule")
    target = tmp_path / "flipped.capsule"
    opened_clean = 0
    for i in range(len(data)):
        # Bits 0 and 7 of every byte, plus a third that walks through 1..6.
        for bit in sorted({0, 7, 1 + i % 6}):
            bad = flip(data, i, bit)
            write_fresh(target, bad)
            where = f"byte {i} bit {bit}"
            rep = capsule.verify(target)
            if i >= index and rep.ok:
                assert rep.torn_tail == len(data) - prev_end, where
                assert read_state(target) == rolled_back, where
                strict = capsule.verify(target, strict=True)
                assert not strict.ok and strict.first_error is not None, where
                assert strict.first_error["check"] == "torn-tail", where
                continue
            assert not rep.ok, where
            assert rep.torn_tail == 0, where  # damage is never a torn tail
            err = rep.first_error
            assert err is not None and isinstance(err["offset"], int) and err["check"], where
            assert 0 <= err["offset"] <= i, (where, err)  # blame lands at or before the flip
            try:
                state = read_state(target)
            except capsule.DataError:
                pass
            else:
                opened_clean += 1
                assert state == original, where
            # A writer must refuse damage (or find nothing to do): never truncate it away.
            with contextlib.suppress(capsule.DataError):
                capsule.open(target, "a").close()
            assert target.read_bytes() == bad, where
    # Not a requirement, but with every record read through the chain none should slip by.
    assert opened_clean == 0


def cli() -> list[str]:
    script = Path(sys.executable).with_name("capsule")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from capsule_cli.main import main; main()"]


@pytest.mark.parametrize("where", ["header", "middle", "last-commit-header", "last-byte"])
def test_cli_verify_reports_a_flip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    src = tmp_path / "small.capsule"
    data = build_small(src, monkeypatch)
    last_commit = [off for off, t, _, _ in frames(data) if t == C.FT_COMMIT][-1]
    i = {"header": 20, "middle": len(data) // 2, "last-commit-header": last_commit + 2,
         "last-byte": len(data) - 1}[where]
    target = tmp_path / "bad.capsule"
    target.write_bytes(flip(data, i, 3))
    # 8.2: a flip in the last COMMIT frame reads as a torn tail (a power loss can leave it
    # so); only --strict refuses that.
    strict = ["--strict"] if where.startswith("last") else []
    proc = subprocess.run([*cli(), "verify", str(target), "--json", *strict], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    if strict:
        assert report["ok"] is False and report["first_error"]["check"] == "torn-tail"
        return
    assert report["ok"] is False and report["torn_tail_bytes"] == 0
    assert isinstance(report["first_error"]["offset"], int) and report["first_error"]["offset"] <= i
    assert report["first_error"]["check"]
