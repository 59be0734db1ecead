"""The checked-in-C reader of ``action`` records agrees with the reference reader (spec 5.2, 7.8).

As for task records (tests/test_task_fast_decode.py): for any bytes, ``decode_action`` gives
nothing or exactly the record the reference gives, field by field, id included, and refuses
what the reference refuses. Then the state and verify of a capsule of actions, through it,
equal their reference folds, and a bad action record fails both the same way.
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
from capsule.format.records import encode_record, record_id
from capsule.run.actions import Action
from capsule.run.eventfast import decode_action

from .test_task_fast_decode import packed, plain, reference, same, text, value


def agree(data: bytes) -> bool:
    got = decode_action(Action, data)
    want = reference(data, "action")
    if got is None:
        return False
    assert not isinstance(want, Exception), (data, want)
    assert got.id == want.id
    same(got, want)
    return True


actions = st.builds(
    Action, time=st.integers(0, (1 << 63) - 1), key=text, phase=st.sampled_from(["intent", "result", "resolve"]),
    attempt=st.integers(1, (1 << 31) - 1), what=st.just("") | text,
    inputs=st.dictionaries(text, plain, max_size=4) | st.dictionaries(text, value, max_size=3),
    ok=st.booleans(), value=plain | value | st.dictionaries(text, plain, max_size=3) | st.lists(plain, max_size=3),
    error=st.just("") | text, by=st.sampled_from(["", "fn", "reconcile", "human", "retry"]))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions)
def test_a_valid_action_reads_back_the_same_both_ways(a: Action) -> None:
    agree(encode_record(a)[1])


def test_the_common_actions_take_the_fast_way() -> None:
    for a in (Action(time=1, key="send-1", phase="intent", attempt=1, what="email", inputs={"to": "ü@x"}),
              Action(time=2, key="send-1", phase="result", attempt=1, value={"id": 7, "ok": True}),
              Action(time=2, key="send-1", phase="result", attempt=1),
              Action(time=3, key="k", phase="resolve", attempt=2, ok=False, error="gone", by="human")):
        assert agree(encode_record(a)[1]), a


keys = st.sampled_from(["kind", "key", "phase", "attempt", "time", "what", "inputs", "ok", "value", "error", "by",
                        "other"])
raw_value = (st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1) | text | st.floats()
             | st.sampled_from(["action", "intent", "result", "resolve", "fn", "human", "A\u030a", ""])
             | st.lists(text, max_size=3) | st.dictionaries(text, plain, max_size=2))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, raw_value, min_size=3, max_size=8), st.booleans())
def test_any_map_is_refused_or_read_as_the_reference_reads_it(m: dict[str, Any], sort: bool) -> None:
    m = {**m, "kind": "action"}
    items = sorted(m.items()) if sort else list(m.items())
    agree(msgpack.packb(dict(items), use_bin_type=True))


def test_what_the_reference_refuses_the_fast_reader_refuses() -> None:
    base = {"kind": "action", "key": "k", "phase": "intent", "attempt": 1, "time": 1}
    for m in [{**base, "ok": True}, {**base, "value": None}, {**base, "what": ""}, {**base, "inputs": {}},
              {**base, "by": ""}, {**base, "error": ""}, {**base, "attempt": 0}, {**base, "attempt": 1 << 31},
              {**base, "phase": "done"}, {**base, "by": "robot"}, {**base, "key": "A\u030a"},
              {**base, "value": {"x": "A\u030a"}}, {**base, "other": 1}, {**base, "time": -1},
              {k: v for k, v in base.items() if k != "key"}, {**base, "kind": "task"},
              {**base, "inputs": {f"k{i}": i for i in range(100_001)}},  # 11: past the map bound
              {**base, "value": list(range(1_000_001))}]:  # 11: past the array bound
        data = packed(m)
        assert isinstance(reference(data, "action"), Exception), m
        assert decode_action(Action, data) is None, m
    good = packed({**base, "ok": False})
    assert agree(good)
    assert decode_action(Action, good + b"\xc0") is None


def test_every_byte_of_real_records_changed() -> None:
    rng = random.Random(7)
    taken = 0
    for a in (Action(time=10**18, key="send-42", phase="intent", attempt=3, what="email", inputs={"to": "a", "n": 2}),
              Action(time=10**18, key="send-42", phase="result", attempt=3, value={"id": 9}, by="fn")):
        data = encode_record(a)[1]
        for i in range(len(data)):
            for b in {data[i] ^ 1, data[i] ^ 0x80, rng.randrange(256)} - {data[i]}:
                taken += agree(data[:i] + bytes([b]) + data[i + 1 :])
    assert taken


T0 = 1_700_000_000 * 10**9


@pytest.mark.parametrize("bad", [None, "ok-true", "nfc"])
def test_state_and_verify_read_actions_as_their_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           bad: str | None) -> None:
    from capsule.format.writer import write_commit
    from capsule.state.fold import fold
    from capsule.verifier import fast

    p = tmp_path / "a.capsule"
    it = itertools.count(T0, 10**6)
    with capsule.create(p, clock=lambda: next(it)) as cap:
        for i in range(40):
            cap.run_once(f"send-{i}", lambda i=i: {"n": i} if i % 3 else [i, "x"])
        cap.run_once("float", lambda: 0.5)  # the exact way
        with cap.commit() as tx:
            tx.remember("a memory", tags=["action"])
        if bad is not None:
            m = {"kind": "action", "key": "forged", "phase": "intent", "attempt": 1, "time": T0,
                 **({"ok": True} if bad == "ok-true" else {"what": "A\u030a"})}
            data = packed(m)
            write_commit(cap._store, [(record_id("action", data), "action", data)])
    with capsule.open(p) as cap:
        if bad is None:
            assert cap.state().to_json_bytes() == fold(cap._store.records()).to_json_bytes()
            assert cap.state().other == {"action": 82}
        else:
            with pytest.raises(CapsuleError) as got:
                cap.state()
            with pytest.raises(CapsuleError) as want:
                fold(cap._store.records())
            assert str(got.value) == str(want.value)
    got_v = capsule.verify(p)
    monkeypatch.setattr(fast, "BULK", False)
    want_v = capsule.verify(p)
    assert (got_v.ok, got_v.first_error, got_v.records) == (want_v.ok, want_v.first_error, want_v.records)
    assert got_v.ok == (bad is None)
