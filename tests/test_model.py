"""Model-based tests: the capsule against a list of committed batches.

The state machine appends records in open transactions, commits or aborts
them, kills the writer (closing its descriptor without the final INDEX, as a
process death would), truncates the file anywhere after the header, tears a
commit half-way through its write, and reopens as reader or writer. After
every step the capsule must show exactly the model's committed records, in
commit order, with the model's count and state root; in-flight batches never.

The model tracks where each commit ends (``cap.size`` after it), because a
truncation at ``t`` keeps precisely the commits ending at or before ``t``.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import capsule
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format import file as _file

# No example database: tests must not write outside their temporary directories.
MODEL_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def model_state_root(ids: list[str]) -> str:
    """Spec 13.1, computed independently of the library."""
    from tests.spec_ref import state_root

    return state_root(bytes.fromhex(i) for i in ids)


@dataclass(frozen=True)
class Commit:
    end: int  # cap.size right after this commit
    ids: tuple[str, ...]  # every committed record id, in commit order, as of this commit


# A small pool so the same content recurs (content addressing dedupes it) and one
# large, compressible text so some RECORDS frames are zstd-compressed.
TEXTS = ["alpha", "beta", "gamma", "caf\u00e9", "\u65e5\u672c", "the same fact again",
         "long and compressible. " * 40]
RECORD = st.fixed_dictionaries(
    {"text": st.sampled_from(TEXTS)},
    optional={
        "tags": st.lists(st.sampled_from(["a", "b", "ops"]), max_size=2),
        "embedding": st.lists(st.sampled_from([0.0, 0.5, -1.25, 3.0]), min_size=4, max_size=4),  # one dim (16.1)
        "meta": st.dictionaries(st.sampled_from(["k", "n"]), st.integers(-3, 3), max_size=2),
    },
)
BATCH = st.lists(RECORD, min_size=1, max_size=4)


class CapsuleMachine(RuleBasedStateMachine):
    def __init__(self, workdir: Path) -> None:
        super().__init__()
        self.path = workdir / "model.capsule"
        # A fixed clock: a text drawn twice with the same options is the same record.
        self.clock: Callable[[], int] = lambda: 1_700_000_000 * 10**9
        self.writer: capsule.Capsule | None = capsule.create(self.path, clock=self.clock)
        self.writer_committed = True  # create() wrote the first commit
        self.bytes_at_open = b""
        self.tx: capsule.Transaction | None = None
        self.pending: list[str] = []  # ids added to the open transaction, in order
        self.history: list[Commit] = [Commit(self.writer.size, ())]
        self.committed: list[str] = []

    # --- model helpers ----------------------------------------------------------
    def note_growth(self, cap: capsule.Capsule) -> None:
        """Record a commit the library made on its own (the close-time INDEX)."""
        if self.history:
            assert cap.size >= self.history[-1].end
        if not self.history or cap.size > self.history[-1].end:
            self.history.append(Commit(cap.size, tuple(self.committed)))

    def expected_end(self) -> int:
        return self.history[-1].end if self.history else C.HEADER_SIZE

    def check(self, cap: capsule.Capsule) -> None:
        ids = [r.id for r in cap.records()]
        assert ids == self.committed
        assert len(cap) == len(self.committed)
        assert cap.state_root == model_state_root(self.committed)
        assert cap.size == self.expected_end()
        for rid in self.pending:
            if rid not in self.committed:
                assert rid not in cap  # in-flight records are never visible

    def kill_writer(self) -> None:
        """Process death: drop the transaction, close the fd (releasing the flock), no INDEX."""
        assert self.writer is not None
        os.close(self.writer._h.fd)
        self.writer._h.fd = -1
        self.writer, self.tx, self.pending = None, None, []

    def file_bytes(self) -> bytes:
        return self.path.read_bytes()

    def committed_batch(self, tx: capsule.Transaction, before: int) -> None:
        """Fold the pending batch into the model after its commit returned."""
        assert self.writer is not None
        # Content addressing: first occurrence wins, and committed records are not stored again.
        new = [i for i in dict.fromkeys(self.pending) if i not in self.committed]
        assert tx.new_ids == new
        self.tx, self.pending = None, []
        if new:
            self.committed.extend(new)
            assert self.writer.size > before
            # A torn tail found at open is dropped by the first commit (8.3): the
            # file now ends exactly at this commit.
            assert os.path.getsize(self.path) == self.writer.size
            self.history.append(Commit(self.writer.size, tuple(self.committed)))
            self.writer_committed = True
        else:
            assert self.writer.size == before  # nothing new: no commit written
        self.check(self.writer)

    def check_verify(self, *, deep: bool) -> None:
        rep = capsule.verify(self.path, deep=deep)
        if self.history:
            assert rep.ok, rep.first_error
            assert rep.torn_tail == os.path.getsize(self.path) - self.expected_end()
            assert rep.records == len(self.committed)
        else:
            assert not rep.ok and rep.first_error is not None
            assert rep.first_error["check"] == "no-commit"

    # --- rules --------------------------------------------------------------------
    @precondition(lambda self: self.writer is not None)
    @rule(recs=BATCH)
    def append(self, recs: list[dict[str, Any]]) -> None:
        """Add records to the open transaction (starting one): in flight, not committed."""
        assert self.writer is not None
        if self.tx is None:
            self.tx = self.writer.commit()
            self.tx.__enter__()
            self.pending = []
        for rec in recs:
            self.pending.append(self.tx.remember(**rec))

    @precondition(lambda self: self.tx is not None)
    @rule()
    def commit(self) -> None:
        assert self.writer is not None and self.tx is not None
        before = self.writer.size
        self.tx.__exit__(None, None, None)
        self.committed_batch(self.tx, before)

    @precondition(lambda self: self.writer is not None and self.tx is None)
    @rule(recs=BATCH)
    def commit_batch(self, recs: list[dict[str, Any]]) -> None:
        """The common path: one `with cap.commit()` block."""
        assert self.writer is not None
        before = self.writer.size
        with self.writer.commit() as tx:
            self.pending = [tx.remember(**rec) for rec in recs]
        self.committed_batch(tx, before)

    @precondition(lambda self: self.tx is not None)
    @rule()
    def abort(self) -> None:
        assert self.writer is not None and self.tx is not None
        before = self.file_bytes()
        err = RuntimeError("caller gave up")
        self.tx.__exit__(RuntimeError, err, None)
        self.tx, self.pending = None, []
        assert self.file_bytes() == before  # a discarded batch writes nothing
        self.check(self.writer)

    @precondition(lambda self: self.writer is not None)
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """Kill the writer, then cut the file anywhere after the header."""
        self.kill_writer()
        size = os.path.getsize(self.path)
        cut = data.draw(
            st.one_of(
                st.just(size),  # died between commits: nothing lost
                st.integers(C.HEADER_SIZE, size),
                # Bias towards the last commit, where a real crash tears things.
                st.integers(max(C.HEADER_SIZE, self.expected_end() - 300), size),
            ),
            label="cut",
        )
        os.truncate(self.path, cut)
        # Only the commits that end at or before the cut survive.
        self.history = [c for c in self.history if c.end <= cut]
        self.committed = list(self.history[-1].ids) if self.history else []

    @precondition(lambda self: self.tx is not None and self.writer is not None)
    @rule(data=st.data())
    def torn_commit(self, data: st.DataObject) -> None:
        """The commit's write stops part-way (the process dies mid-pwrite)."""
        assert self.writer is not None and self.tx is not None
        state: dict[str, int] = {}

        def short_pwrite(fd: int, buf: Any, offset: int) -> int:
            n = data.draw(st.integers(0, len(buf) - 1), label="bytes written")
            state["wrote"] = n
            os.pwrite(fd, bytes(buf[:n]), offset)
            raise OSError(errno.EIO, "simulated power loss")

        real = _file._pwrite
        _file._pwrite = short_pwrite
        try:
            new = [i for i in dict.fromkeys(self.pending) if i not in self.committed]
            if new:
                with pytest.raises(capsule.WriterPoisoned):
                    self.tx.__exit__(None, None, None)
                # Any torn tail was truncated first; part of the new commit landed, and
                # the failed writer cut it back off (a failed write leaves the file as
                # it was; a real power loss leaves the torn tail the `crash` rule makes).
                assert os.path.getsize(self.path) == self.expected_end()
            else:
                self.tx.__exit__(None, None, None)  # nothing to write: the fault never fires
                assert "wrote" not in state
        finally:
            _file._pwrite = real
        self.tx, self.pending = None, []
        self.kill_writer()

    @precondition(lambda self: self.writer is None)
    @rule()
    def reopen_writer(self) -> None:
        self.bytes_at_open = self.file_bytes()
        cap = capsule.open(self.path, "a", clock=self.clock)
        self.writer, self.writer_committed = cap, False
        # Opening writes nothing, not even when there is a torn tail to drop:
        # that waits for the first commit.
        assert self.file_bytes() == self.bytes_at_open
        self.check(cap)

    @precondition(lambda self: self.writer is not None and self.tx is None)
    @rule()
    def close_writer(self) -> None:
        assert self.writer is not None
        cap = self.writer
        cap.close()
        self.writer = None
        if self.writer_committed:
            self.note_growth(cap)  # close() may append TABLE + INDEX + COMMIT
            assert os.path.getsize(self.path) == self.expected_end()
        else:
            # A handle that never committed never writes, not even on close.
            assert self.file_bytes() == self.bytes_at_open
        self.check_verify(deep=True)

    @rule()
    def reopen_reader(self) -> None:
        with capsule.open(self.path) as r:
            self.check(r)
        self.check_verify(deep=False)

    @precondition(lambda self: self.writer is not None)
    @rule()
    def second_writer_is_locked(self) -> None:
        with pytest.raises(capsule.Locked):
            capsule.open(self.path, "a")

    @invariant()
    def writer_shows_only_committed(self) -> None:
        if self.writer is not None:
            self.check(self.writer)

    def teardown(self) -> None:
        if self.writer is not None:
            if self.tx is not None:
                self.tx.__exit__(RuntimeError, RuntimeError("teardown"), None)
            self.writer.close()


def test_capsule_matches_model(tmp_path: Path) -> None:
    counter = itertools.count()

    def factory() -> CapsuleMachine:
        d = tmp_path / f"run{next(counter)}"
        d.mkdir()
        return CapsuleMachine(d)

    run_state_machine_as_test(factory, settings=MODEL_SETTINGS)  # type: ignore[arg-type]


# --- canonical msgpack round trip --------------------------------------------------


def nfc_text(max_size: int = 12) -> st.SearchStrategy[str]:
    # Map keys that differ only by normalization would collide after NFC; generate NFC.
    return st.text(max_size=max_size).map(lambda s: unicodedata.normalize("NFC", s))


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    nfc_text(),
    st.binary(max_size=16),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(nfc_text(6), inner, max_size=5),
    ),
    max_leaves=20,  # keeps nesting well under the 32-level limit of spec 11
)


def same(a: object, b: object) -> bool:
    """Structural equality that also compares types (True is not 1).

    0.0 and -0.0 compare equal on purpose: the canonical form of -0.0 is 0.0.
    """
    if isinstance(a, float) and isinstance(b, float):
        return a == b and not math.isnan(a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@given(VALUES)
@settings(max_examples=300, deadline=None, database=None)
def test_canonical_round_trip(value: object) -> None:
    raw = canon.encode(value)
    back = canon.decode(raw)
    assert same(back, value)
    assert canon.encode(back) == raw  # decode(encode(x)) re-encodes identically
    if isinstance(back, dict):
        keys = [k.encode() for k in back]
        assert keys == sorted(keys)  # 5.1: keys in UTF-8 byte order


def mutations(raw: bytes) -> st.SearchStrategy[bytes]:
    """Canonical bytes with one byte replaced, inserted or deleted, or truncated."""
    n = len(raw)
    return st.one_of(
        st.tuples(st.integers(0, n - 1), st.integers(0, 255)).map(
            lambda t: raw[: t[0]] + bytes([t[1]]) + raw[t[0] + 1 :]),
        st.tuples(st.integers(0, n), st.integers(0, 255)).map(
            lambda t: raw[: t[0]] + bytes([t[1]]) + raw[t[0] :]),
        st.integers(0, n - 1).map(lambda i: raw[:i] + raw[i + 1 :]),
    )


@given(st.one_of(VALUES.map(canon.encode).flatmap(mutations), st.binary(max_size=64)))
@settings(max_examples=400, deadline=None, database=None)
def test_canonical_decode_accepts_exactly_what_encode_produces(raw: bytes) -> None:
    # Any byte string either decodes to a value whose canonical encoding is
    # exactly those bytes, or is refused with NonCanonicalError (never another
    # exception, never leniently).
    try:
        value = canon.decode(raw)
    except capsule.NonCanonicalError:
        return
    assert canon.encode(value) == raw
