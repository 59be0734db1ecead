"""Power loss with reordered writes, over every writer operation (spec 6.4, 8.1-8.2).

A writer fsyncs once per commit (twice when the commit writes an INDEX: the
frames before it first, 6.4), and a disk may persist the sectors of each write
in any order, lose some, or leave garbage in them (tests/powerloss.py builds
those crash images, at every fsync of the operation). For every image of every
writer operation:

* a reader opens it and sees exactly the last acknowledged commit or the one in
  flight, never anything else and never an error, and reads every record it lists;
* ``verify`` says ok, with a torn-tail warning exactly when bytes were dropped
  (and ``strict`` fails on that torn tail);
* a writer opens it (recovering the tail, 8.3), commits, and the result verifies
  with every earlier record still there and no committed byte rewritten.

The one exception is ``create``: it is not acknowledged until its fsync, so an
image of it may also be refused as "not a capsule" or open with no commit.

A control checks the other side of 8.2: damage inside durable bytes (before the
end of the commit before the last one, or before the last commit's own INDEX)
is reported and never truncated.

Run with ``-s`` to see "N of N images survived" per operation and in total.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import capsule
from capsule.core import constants as C
from tests.powerloss import JUNK, ZERO, CrashPoint, Image, Op, Recorder, Tally, crash_points, images

T0 = 1_700_000_000 * 10**9
BUDGET = 200  # images per operation in the quick run
FINE = 64  # a harsher sector size, to reach more boundaries in small commits
SLOW_BUDGET = 2_000  # in `make soak` (every image where an operation has fewer)
K1 = capsule.generate_key()
K2 = capsule.generate_key()
TOTALS: list[Tally] = []


def make_clock(start: int = T0) -> Callable[[], int]:
    counter = itertools.count(start, 1_000_000)
    return lambda: next(counter)


@dataclass(frozen=True)
class State:
    """What a reader sees: commits, committed end, record ids in commit order (which
    fix the state root, so the costly root itself is not recomputed per image)."""

    commits: int
    end: int
    ids: tuple[str, ...]

    def short(self) -> str:
        return f"{self.commits} commits / {len(self.ids)} records / end {self.end}"


def write_fresh(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".lock").unlink(missing_ok=True)
    path.write_bytes(data)


def read_state(path: Path) -> State:
    """Open as a reader; every record listed must also read back through the index."""
    with capsule.open(path) as cap:
        ids = tuple(r.id for r in cap.records())
        for rid in ids:
            cap.get(rid)
        return State(cap.commit_count, cap.size, ids)


def state_of(data: bytes, where: Path) -> State | None:
    """The state of a file the writer left whole (None: not a capsule yet)."""
    write_fresh(where, data)
    try:
        return read_state(where)
    except capsule.DataError:
        return None


# --- the checks of one crash image ---------------------------------------------------


def check_image(img: bytes, allowed: list[State | None], where: Path) -> str | None:
    """None if the image survives every promise, else what went wrong."""
    write_fresh(where, img)
    try:
        st = read_state(where)
    except capsule.DataError as e:
        if None not in allowed:
            return f"reader refused: {e!r}"
        # An unacknowledged create may leave no capsule at all; a writer must refuse it too.
        with contextlib.suppress(capsule.DataError):
            capsule.open(where, "a").close()
            return "a reader refused the file but a writer opened it"
        return None if where.read_bytes() == img else "a refused file was modified"
    if st not in allowed:
        want = " or ".join("not a capsule" if a is None else a.short() for a in allowed)
        return f"reader saw {st.short()}, expected {want}"
    torn = len(img) - st.end
    rep = capsule.verify(where)
    if st.commits == 0:
        if rep.ok or rep.first_error is None or rep.first_error["check"] != "no-commit":
            return f"verify of a file with no commit: {rep.first_error}"
    else:
        if not rep.ok:
            return f"verify failed: {rep.first_error}"
        if rep.torn_tail != torn:
            return f"verify torn_tail {rep.torn_tail}, expected {torn}"
        if bool(torn) != any("torn tail" in w for w in rep.warnings):
            return f"verify warnings {rep.warnings} for a torn tail of {torn} bytes"
        if torn:
            strict = capsule.verify(where, strict=True)
            if strict.ok or strict.first_error is None or strict.first_error["check"] != "torn-tail":
                return f"strict verify of a torn tail: {strict.first_error}"
    try:
        with capsule.open(where, "a", clock=make_clock(T0 + 10**15)) as w:
            if (w.commit_count, w.size, len(w)) != (st.commits, st.end, len(st.ids)):
                return f"writer saw {w.commit_count} commits / {len(w)} records, reader {st.short()}"
            with w.commit() as tx:
                new = tx.remember("written after the power loss")
    except capsule.CapsuleError as e:
        return f"writer: {e!r}"
    after = where.read_bytes()
    if after[: st.end] != img[: st.end]:
        return "the writer rewrote committed bytes"
    st2 = read_state(where)
    if st2.ids != (*st.ids, new):
        return f"after the writer's commit: {st2.short()}"
    rep2 = capsule.verify(where)
    if not rep2.ok or rep2.torn_tail:
        return f"verify after the writer's commit: {rep2.first_error} torn {rep2.torn_tail}"
    return None


def survey(name: str, base: bytes, ops: list[Op], budget: int, tmp: Path) -> Tally:
    """Every crash point of one recorded operation, ``budget`` images in all."""
    points = crash_points(base, ops)
    assert points, f"{name}: the operation wrote nothing"
    tally = Tally(name, points=len(points))
    rng = random.Random(f"powerloss:{name}")
    where = tmp / f"{name}.img.capsule"
    per_point = max(20, budget // len(points))
    for point in points:
        allowed = allowed_states(point, where)
        # Every 512-byte image when there are few, then finer 64-byte sectors up to the budget.
        coarse = images(point, per_point, rng)
        fine = images(point, per_point - len(coarse), rng, sector=FINE) if len(coarse) < per_point else []
        seen: set[bytes] = set()
        for image in [*coarse, *fine]:
            data = image.render()
            digest = hashlib.sha256(data).digest()
            if digest not in seen:
                seen.add(digest)
                tally.add(image, check_image(data, allowed, where))
    return tally


def allowed_states(point: CrashPoint, where: Path) -> list[State | None]:
    """The last acknowledged commit and the one in flight (and, before the first
    commit of a file is durable, no capsule or an empty one)."""
    before, after = state_of(point.durable, where), state_of(point.final, where)
    assert after is not None
    allowed = [before, after]
    if before is None:
        allowed.append(state_of(point.final[: C.HEADER_SIZE], where))
    return allowed


# --- writer operations ----------------------------------------------------------------


@dataclass
class Capture:
    base: bytes = b""
    ops: list[Op] = field(default_factory=list)


@contextlib.contextmanager
def recording(rec: Recorder, path: Path) -> Iterator[Capture]:
    got = Capture(path.read_bytes() if path.exists() else b"")
    with rec.record() as ops:
        yield got
    got.ops = list(ops)


def fill(cap: capsule.Capsule, n: int, tag: str) -> None:
    with cap.commit() as tx:
        for i in range(n):
            tx.remember(f"{tag} memory {i}: " + "words " * (i % 5), tags=[tag], meta={"i": i})


def based(path: Path, *, commits: int = 3) -> None:
    with capsule.create(path, clock=make_clock()) as cap:
        for c in range(commits):
            fill(cap, 3, f"base{c}")


def op_create(path: Path, rec: Recorder) -> Capture:
    with recording(rec, path) as got:
        cap = capsule.create(path, clock=make_clock())
    cap.close()
    return got


def op_commit(path: Path, rec: Recorder) -> Capture:
    based(path)
    with capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap, recording(rec, path) as got:
        fill(cap, 6, "flight")
    return got


def op_big_commit(path: Path, rec: Recorder) -> Capture:
    """A commit of many sectors (random bytes keep RECORDS uncompressed)."""
    based(path)
    noise = random.Random(11)
    with (capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap, recording(rec, path) as got,
          cap.commit() as tx):
        for i in range(24):
            tx.remember(f"big {i}", meta={"noise": noise.randbytes(300)})
    return got


def op_checkpoint(path: Path, rec: Recorder) -> Capture:
    """The first checkpoint: KEYSET + CHECKPOINT in a commit with records."""
    based(path)
    with (capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap, recording(rec, path) as got,
          cap.commit() as tx):
        tx.remember("checkpointed with its step")
        tx.checkpoint("step-1", key=K1)
    return got


def op_rotate_keys(path: Path, rec: Recorder) -> Capture:
    based(path)
    with capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap:
        cap.checkpoint("c1", key=K1)
        with recording(rec, path) as got:
            cap.rotate_keys(capsule.Keyset.of([K2.public_key], version=2), old_signers=[K1], new_signers=[K2])
    return got


def op_rollback(path: Path, rec: Recorder) -> Capture:
    """A revert commit, then a signed checkpoint commit: two fsyncs."""
    based(path)
    with capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap:
        cap.checkpoint("c1", key=K1)
        fill(cap, 4, "regret")
        with recording(rec, path) as got:
            assert cap.rollback("c1", key=K1) is not None
    return got


def op_save_index(path: Path, rec: Recorder) -> Capture:
    """A vector index snapshot: BLOB parts, TABLE, INDEX and COMMIT."""
    based(path, commits=1)
    rnd = random.Random(5)
    with capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap:
        cap.configure_vectors(dim=8, M=8)
        with cap.commit() as tx:
            for i in range(24):
                tx.remember(f"vector {i}", embedding=[rnd.uniform(-1, 1) for _ in range(8)])
        cap.build_index()
        with recording(rec, path) as got:
            assert cap.save_index()
    return got


def op_close(path: Path, rec: Recorder) -> Capture:
    """close() writing a final TABLE + INDEX commit."""
    based(path, commits=1)
    cap = capsule.open(path, "a", clock=make_clock(T0 + 10**12))
    for c in range(C.INDEX_ON_CLOSE_FRAMES):
        fill(cap, 1, f"frame{c}")
    with recording(rec, path) as got:
        cap.close()
    assert any(o.kind == "write" for o in got.ops), "close() wrote no INDEX"
    return got


def op_run_once(path: Path, rec: Recorder) -> Capture:
    """The action journal: an intent commit, then a result commit."""
    based(path)
    with capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap, recording(rec, path) as got:
        assert cap.run_once("email:42", lambda: {"sent": True}, what="send the email") == {"sent": True}
    return got


def op_tasks(path: Path, rec: Recorder) -> Capture:
    """Task events: add, claim, complete (three commits)."""
    based(path)
    with capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap, recording(rec, path) as got:
        cap.tasks.add("fetch", priority=1)
        cap.tasks.claim("fetch", "w1", lease=30 * 10**9)
        cap.tasks.complete("fetch", "w1", {"pages": 3})
    return got


def op_recover(path: Path, rec: Recorder) -> Capture:
    """A writer that finds a torn tail: truncate + fsync, then RECOVERY + commit + fsync."""
    based(path)
    scratch = path.with_name("scratch.capsule")
    scratch.write_bytes(path.read_bytes())
    with capsule.open(scratch, "a", clock=make_clock(T0 + 10**11)) as s:
        start = s.size
        fill(s, 4, "torn")
        end = s.size
    torn = scratch.read_bytes()[start : start + (end - start) * 2 // 3]
    with path.open("ab") as f:
        f.write(torn)
    with capsule.open(path, "a", clock=make_clock(T0 + 10**12)) as cap, recording(rec, path) as got:
        fill(cap, 2, "recovered")
    assert [o.kind for o in got.ops][:2] == ["truncate", "sync"]
    return got


OPERATIONS: dict[str, Callable[[Path, Recorder], Capture]] = {
    "create": op_create,
    "commit": op_commit,
    "big-commit": op_big_commit,
    "checkpoint": op_checkpoint,
    "rotate-keys": op_rotate_keys,
    "rollback": op_rollback,
    "save-index": op_save_index,
    "close-index": op_close,
    "run-once": op_run_once,
    "tasks": op_tasks,
    "recover": op_recover,
}


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    if TOTALS:
        tried = sum(t.tried for t in TOTALS)
        survived = sum(t.survived for t in TOTALS)
        print(f"\npower-loss total: {survived} of {tried} images survived "
              f"({len(TOTALS)} surveys, {sum(t.points for t in TOTALS)} crash points)")


def run(name: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, budget: int) -> Tally:
    rec = Recorder(monkeypatch)
    path = tmp / f"{name}.capsule"
    got = OPERATIONS[name](path, rec)
    tally = survey(name, got.base, got.ops, budget, tmp)
    TOTALS.append(tally)
    print("\n" + tally.line())
    return tally


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_power_loss_images_survive(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tally = run(name, tmp_path, monkeypatch, BUDGET)
    assert tally.survived == tally.tried, "\n".join([tally.line(), *tally.failures])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_power_loss_images_survive_exhaustive(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tally = run(name, tmp_path, monkeypatch, SLOW_BUDGET)
    assert tally.survived == tally.tried, "\n".join([tally.line(), *tally.failures])


# --- the control: damage in durable bytes is never a tear -------------------------------


def frame_starts(data: bytes) -> list[tuple[int, int]]:
    """(offset, type) of every frame of a well-formed file."""
    out, off = [], C.HEADER_SIZE
    while off + C.FRAME_HEADER_SIZE <= len(data):
        total, ftype = struct.unpack_from("<IB", data, off)
        out.append((off, ftype))
        off += total
    return out


def test_damage_in_durable_bytes_is_reported_never_truncated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeros or garbage that no power loss can leave: anywhere before the end of the
    commit before the last (it was fsynced before the last one was written), or in
    the last commit before its own INDEX (fsynced before the INDEX was written, 6.4).
    verify reports it, no reader shows a shorter state, no writer truncates it."""
    Recorder(monkeypatch)  # fsync is a no-op here too
    monkeypatch.setattr(C, "INDEX_ON_CLOSE_FRAMES", 1)  # the last commit: close()'s TABLE + INDEX + COMMIT
    path = tmp_path / "durable.capsule"
    with capsule.create(path, clock=make_clock()) as cap:
        for c in range(4):
            fill(cap, 3 + c, f"d{c}")
        cap.checkpoint("c1", key=K1)
        fill(cap, 2, "last")
    data = path.read_bytes()
    full = read_state(path)
    starts = frame_starts(data)
    commits = [off for off, t in starts if t == C.FT_COMMIT]
    last_index = max(off for off, t in starts if t == C.FT_INDEX)
    prev_end = next(off for off, _ in starts if off > commits[-2])
    assert prev_end < last_index < commits[-1], "the last commit should write its own INDEX"
    where = tmp_path / "damaged.capsule"
    tally = Tally("damage-control", points=1)
    rng = random.Random(3)
    for sector in (512, FINE):
        for lo in range(0, last_index, sector):
            hi = min(lo + sector, last_index)
            for f in (ZERO, JUNK):
                bad = bytearray(data)
                bad[lo:hi] = bytes(hi - lo) if f == ZERO else rng.randbytes(hi - lo)
                if bad == data:
                    continue
                image = Image(CrashPoint(0, data, (), data), len(data), (f,), sector)
                tally.add(image, check_damage(bytes(bad), lo, hi, full, where))
    TOTALS.append(tally)
    print("\n" + tally.line().replace("survived", "reported as damage"))
    assert tally.tried >= 100
    assert tally.survived == tally.tried, "\n".join([tally.line(), *tally.failures])


def check_damage(bad: bytes, lo: int, hi: int, full: State, where: Path) -> str | None:
    write_fresh(where, bad)
    rep = capsule.verify(where)
    if rep.ok or rep.torn_tail or rep.first_error is None:
        return f"verify: ok={rep.ok} torn={rep.torn_tail} for damage at [{lo}, {hi})"
    if not isinstance(rep.first_error["offset"], int) or rep.first_error["offset"] >= hi:
        return f"verify blamed {rep.first_error} for damage at [{lo}, {hi})"
    for mode in ("r", "a"):
        try:
            with capsule.open(where, mode) as cap:  # type: ignore[call-overload]
                seen = (cap.commit_count, cap.size, len(cap))
        except capsule.DataError:
            continue
        # The fast path may not read old history; what it shows must be the whole state.
        if seen != (full.commits, full.end, len(full.ids)):
            return f"{mode!r} open showed {seen} instead of {full.short()}"
    if where.read_bytes() != bad:
        return "damage was truncated or rewritten"
    return None
