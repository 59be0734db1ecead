"""State root (spec 13.1): the incremental writer cache equals the definition."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from capsule.state.stateroot import RootCache, state_root_of
from tests.spec_ref import state_root as spec_state_root

# Ids that sit on bucket edges as well as arbitrary ones.
EDGE = [bytes(32), b"\xff" * 32, bytes([0x12, 0x30]) + bytes(30), bytes([0x12, 0x2F]) + b"\xff" * 30,
        bytes([0, 0x0F]) + b"\xff" * 30, bytes([0, 0x10]) + bytes(30)]
ids = st.one_of(st.binary(min_size=32, max_size=32), st.sampled_from(EDGE))


def reference(idset: set[bytes]) -> str:
    return spec_state_root(idset)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(ids, max_size=40), max_size=6))
def test_incremental_equals_definition(batches: list[list[bytes]]) -> None:
    seen: set[bytes] = set()
    cache = RootCache(np.zeros(0, dtype="S32"))
    for batch in batches:
        new = [i for i in dict.fromkeys(batch) if i not in seen]
        seen.update(new)
        cache.add(new)
        assert cache.root() == reference(seen) == state_root_of(list(seen))


def test_empty_state_root_is_stable() -> None:
    assert state_root_of([]) == reference(set())
