"""The checked-in-C reader of ``task`` records agrees with the reference reader (spec 5.2, 7.9).

``run.eventfast.decode_task`` must give, for any bytes, either nothing (the reference
then decides) or exactly the record the reference reader gives: the same event, field by
field, and the same id. Where the reference refuses a record, the fast reader must not
accept it. Checked on random events built through the API, on random maps written with
no regard for the canonical rules, and on every single-byte change of real records; then
end to end, a queue folded through it equals the queue folded the reference way.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import capsule
from capsule.core.errors import CapsuleError
from capsule.format import canonical as canon
from capsule.format import records as R
from capsule.format.records import decode_record, encode_record, record_id
from capsule.run.eventfast import decode_task
from capsule.run.events import (
    TaskAdded,
    TaskCancelled,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHeartbeat,
)
from capsule.run.tasks import TaskRecord


def reference(data: bytes, kind: str = "task") -> Any:
    """The reference reader's record of ``kind``, or the exception it raises."""
    try:
        value = canon.decode(data)
        if not isinstance(value, dict) or value.get("kind") != kind:
            return CapsuleError(f"not a {kind} record")
        return decode_record(value, record_id(kind, data))
    except (CapsuleError, ValueError, TypeError) as e:
        return e


def same(got: Any, want: Any) -> None:
    """Field by field, types too: a tuple where the reference has a tuple, None for None."""
    assert type(got) is type(want) and got == want
    for f in got.__slots__:
        a, b = getattr(got, f), getattr(want, f)
        assert type(a) is type(b) and a == b, (f, a, b)
    assert got.to_value() == want.to_value()


def agree(data: bytes) -> bool:
    """True when the fast reader took the record (and agrees), False when it left it."""
    got = decode_task(TaskRecord, data)
    want = reference(data)
    if got is None:
        return False
    assert not isinstance(want, Exception), (data, want)
    assert got.id == want.id
    same(got.event, want.event)
    return True


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
ns = st.integers(0, (1 << 63) - 1)
plain = st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | text
value = st.recursive(plain | st.floats(allow_nan=False, allow_infinity=False) | st.binary(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(text, c, max_size=3), max_leaves=6)

events = st.one_of(
    st.builds(TaskAdded, time=ns, task=text, name=st.just("") | text, deps=st.lists(text, max_size=4, unique=True),
              not_before=st.none() | ns, deadline=st.none() | ns, priority=st.integers(-(1 << 63), (1 << 63) - 1),
              max_attempts=st.integers(1, 1000), backoff=ns, backoff_cap=ns,
              payload=st.dictionaries(text, plain, max_size=4) | st.dictionaries(text, value, max_size=3)),
    st.builds(TaskClaimed, time=ns, task=text, worker=text, lease=st.integers(1, (1 << 63) - 1)),
    st.builds(TaskHeartbeat, time=ns, task=text, worker=text, lease=st.integers(1, (1 << 63) - 1)),
    st.builds(TaskCompleted, time=ns, task=text, worker=text, result=plain | value
              | st.dictionaries(text, plain, max_size=4) | st.lists(plain, max_size=4)),
    st.builds(TaskFailed, time=ns, task=text, worker=text, error=st.just("") | text),
    st.builds(TaskCancelled, time=ns, task=text, reason=st.just("") | text),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events)
def test_a_valid_event_reads_back_the_same_both_ways(ev: Any) -> None:
    _, data = encode_record(TaskRecord(ev))
    agree(data)


def test_the_common_events_take_the_fast_way() -> None:
    """Else the fast reader would be dead code and the test above would prove nothing."""
    for ev in (TaskAdded(time=1, task="a", name="n", deps=("b", "c"), payload={"x": 1, "é": "ü"}, priority=-3),
               TaskAdded(time=1, task="a", not_before=5, deadline=9, max_attempts=7, backoff=0, backoff_cap=2),
               TaskClaimed(time=2, task="a", worker="w", lease=10), TaskHeartbeat(time=3, task="a", worker="w", lease=1),
               TaskCompleted(time=4, task="a", worker="w", result={"rows": 3}), TaskCompleted(time=4, task="a",
                                                                                               worker="w"),
               TaskCompleted(time=4, task="a", worker="w", result=[1, "x", None]),
               TaskFailed(time=5, task="a", worker="w", error="boom"), TaskCancelled(time=6, task="a")):
        assert agree(encode_record(TaskRecord(ev))[1]), ev


keys = st.sampled_from(["kind", "op", "task", "time", "name", "deps", "not_before", "deadline", "priority",
                        "max_attempts", "backoff", "backoff_cap", "payload", "worker", "lease", "result", "error",
                        "reason", "other"])
raw_value = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | text | st.floats()
             | st.sampled_from(["task", "add", "claim", "heartbeat", "complete", "fail", "cancel", "A\u030a", "Å"])
             | st.lists(text, max_size=3) | st.dictionaries(text, plain, max_size=2))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, raw_value, min_size=3, max_size=8), st.sampled_from(
    ["add", "claim", "heartbeat", "complete", "fail", "cancel"]), st.booleans())
def test_any_map_is_refused_or_read_as_the_reference_reads_it(m: dict[str, Any], op: str, sort: bool) -> None:
    m = {**m, "kind": "task", "op": op}
    items = sorted(m.items()) if sort else list(m.items())
    agree(msgpack.packb(dict(items), use_bin_type=True))


def packed(m: dict[str, Any]) -> bytes:
    """``m`` in msgpack's shortest forms with its keys sorted, its text as given (NFC or not)."""
    return msgpack.packb(dict(sorted(m.items())), use_bin_type=True)


def test_what_the_reference_refuses_the_fast_reader_refuses() -> None:
    base = {"kind": "task", "op": "add", "task": "t", "time": 1}
    cases = [
        {**base, "priority": 0},  # a default spelled out
        {**base, "backoff": 1_000_000_000},  # a large int: msgspec omits only the default object itself
        {**base, "backoff_cap": 3_600_000_000_000},
        {**base, "max_attempts": 3},
        {**base, "payload": {f"k{i}": i for i in range(100_001)}},  # 11: past the map bound
        {**base, "op": "complete", "worker": "w", "result": list(range(1_000_001))},  # 11: past the array bound
        {**base, "op": "complete", "worker": "w", "result": {f"k{i}": 0 for i in range(100_001)}},
        {**base, "name": ""},
        {**base, "deps": []},
        {**base, "payload": {}},
        {**base, "not_before": None},
        {**base, "deps": ["b", "a"]},  # unsorted
        {**base, "deps": ["a", "a"]},  # twice
        {**base, "task": ""},
        {**base, "task": "x" * 257},
        {**base, "name": "A\u030a"},  # not NFC
        {**base, "payload": {"k": "A\u030a"}},
        {**base, "max_attempts": 0},
        {**base, "max_attempts": 1001},
        {**base, "worker": "w"},  # a field add does not take
        {**base, "other": 1},
        {**base, "time": -1},
        {**base, "time": 1 << 63},
        {**base, "op": "claim", "worker": "w"},  # no lease
        {**base, "op": "claim", "worker": "w", "lease": 0},
        {**base, "op": "claim", "lease": 5},
        {**base, "op": "claim", "worker": "w", "lease": 5, "name": "n"},
        {**base, "op": "complete", "worker": "w", "result": None},  # nil spelled out
        {**base, "op": "fail", "worker": "w", "error": ""},
        {**base, "op": "cancel", "reason": ""},
        {**base, "op": "cancel", "worker": "w"},
        {**base, "op": "retry"},
        {**base, "kind": "memory"},
    ]
    for m in cases:
        data = packed(m)
        assert isinstance(reference(data), Exception), m
        assert decode_task(TaskRecord, data) is None, m
    # bytes the canonical packer would never write: keys out of order, a long int form
    good = packed({**base, "priority": 5})
    assert agree(good)
    assert decode_task(TaskRecord, msgpack.packb(dict(reversed(list({**base, "priority": 5}.items()))))) is None
    assert decode_task(TaskRecord, good.replace(b"\xa8priority\x05", b"\xa8priority\xd0\x05")) is None
    assert decode_task(TaskRecord, good + b"\xc0") is None  # trailing bytes


def test_every_byte_of_real_records_changed() -> None:
    rng = random.Random(5)
    evs = [TaskAdded(time=10**18, task="fetch-1", name="fetch", deps=("a", "b"), payload={"url": "x", "n": 3},
                     not_before=7, priority=2),
           TaskClaimed(time=10**18, task="fetch-1", worker="w-1", lease=60 * 10**9),
           TaskCompleted(time=10**18, task="fetch-1", worker="w-1", result={"rows": 3, "ok": True}),
           TaskFailed(time=10**18, task="fetch-1", worker="w-1", error="timeout")]
    taken = 0
    for ev in evs:
        data = encode_record(TaskRecord(ev))[1]
        for i in range(len(data)):
            for b in {data[i] ^ 1, data[i] ^ 0x80, rng.randrange(256)} - {data[i]}:
                taken += agree(data[:i] + bytes([b]) + data[i + 1 :])
    assert taken  # some changes are other valid events (another digit, another letter), read alike


T0 = 1_700_000_000 * 10**9


def test_a_queue_folded_through_it_equals_the_reference_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    p = tmp_path / "q.capsule"
    it = itertools.count(T0, 10**6)
    with capsule.create(p, clock=lambda: next(it)) as cap:
        cap.tasks.add_many([{"task": f"t{i}", "name": "job", "payload": {"i": i, "s": f"é{i}"},
                             "deps": [f"t{i - 1}"] if i % 3 else [], "priority": i % 5} for i in range(60)])
        cap.tasks.add("odd", payload={"f": 0.5, "nested": {"a": [1, 2]}})  # the exact way, in the same fold
        for i in range(0, 60, 3):
            cap.tasks.claim(f"t{i}", "w", lease=10**12)
            if i % 2:
                cap.tasks.complete(f"t{i}", "w", result={"n": i})
            else:
                cap.tasks.fail(f"t{i}", "w", error=f"bad {i}")
        cap.tasks.cancel("t1", reason="no")
        with cap.commit() as tx:
            tx.remember("a memory tagged task", tags=["task"])  # holds the needle, is no task

    def fold() -> Any:
        with capsule.open(p) as cap:
            return cap.tasks.to_dict(now=T0 + 10**15), [t.id for t in cap.tasks.due(now=T0 + 10**15)]

    calls = []
    real = R._FAST["task"]
    monkeypatch.setitem(R._FAST, "task", (real[0], lambda d: calls.append(r := real[1](d)) or r))
    fast = fold()
    assert sum(r is not None for r in calls) >= 100 and any(r is None for r in calls)
    monkeypatch.delitem(R._FAST, "task")
    assert fold() == fast


def test_state_counts_task_records_as_the_reference_fold(tmp_path: Path) -> None:
    """``state`` reads task records through the fast reader too: the same state as folding
    ``records()``, and a task record the reference refuses fails the state the same way."""
    from capsule.format.writer import write_commit
    from capsule.state.fold import fold

    p = tmp_path / "s.capsule"
    it = itertools.count(T0, 10**6)
    with capsule.create(p, clock=lambda: next(it)) as cap:
        cap.tasks.add_many([{"task": f"t{i}", "payload": {"i": i}} for i in range(30)])
        cap.tasks.claim("t0", "w", lease=10**12)
        cap.tasks.complete("t0", "w", result=[1, 2])
        cap.tasks.add("float", payload={"x": 0.25})
        with cap.commit() as tx:
            tx.remember("a memory tagged task", tags=["task"])
            tx.note("a note")
    with capsule.open(p) as cap:
        st = cap.state()
        assert st.to_json_bytes() == fold(cap._store.records()).to_json_bytes()
        assert st.other == {"task": 33}
    bad = packed({"kind": "task", "op": "add", "task": "x", "time": T0, "priority": 0})  # a default spelled out
    with capsule.open(p, "a") as cap:
        write_commit(cap._store, [(record_id("task", bad), "task", bad)])
    with capsule.open(p) as cap:
        with pytest.raises(CapsuleError) as fast:
            cap.state()
        with pytest.raises(CapsuleError) as ref:
            fold(cap._store.records())
        assert str(fast.value) == str(ref.value)


@pytest.mark.parametrize("bad", [None, "default", "nfc", "unknown-field"])
def test_verify_reads_task_records_as_its_reference_walk_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              bad: str | None) -> None:
    """verify's bulk check takes task records through the fast reader: the same verdict and
    first error as its record-by-record walk (fast.BULK off), on a good file and on bad records."""
    from capsule.format.writer import write_commit
    from capsule.verifier import fast

    p = tmp_path / "v.capsule"
    it = itertools.count(T0, 10**6)
    with capsule.create(p, clock=lambda: next(it)) as cap:
        cap.tasks.add_many([{"task": f"t{i}", "payload": {"i": i}} for i in range(20)])
        cap.tasks.claim("t0", "w", lease=10**12)
        with cap.commit() as tx:
            tx.remember("a memory", tags=["task"])
        if bad is not None:
            m = {"kind": "task", "op": "add", "task": "x", "time": T0,
                 **{"default": {"priority": 0}, "nfc": {"name": "A\u030a"}, "unknown-field": {"colour": "red"}}[bad]}
            data = packed(m)
            write_commit(cap._store, [(record_id("task", data), "task", data), *[
                (record_id("task", d), "task", d) for d in [packed({"kind": "task", "op": "add", "task": "y",
                                                                    "time": T0})]]])
    got = capsule.verify(p)
    monkeypatch.setattr(fast, "BULK", False)
    want = capsule.verify(p)
    assert (got.ok, got.first_error, got.records) == (want.ok, want.first_error, want.records)
    assert got.ok == (bad is None)
