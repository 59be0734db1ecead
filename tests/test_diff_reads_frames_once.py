"""``diff --from`` reads each frame of the records it removed once (a review's finding).

After a rollback of 120k records, ``capsule diff F --from full`` took 31 s to print 20 of them:
it read every removed record by id, in id order, so each read missed the 8-frame cache and
decompressed a whole frame again. The records are now read in file order.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import capsule
from capsule.format import store as store_mod

T0 = 1_700_000_000 * 10**9


def test_each_frame_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.capsule"
    key = capsule.generate_key()
    it = itertools.count(T0, 10**6)
    with capsule.create(p, clock=lambda: next(it)) as cap:
        with cap.commit() as tx:
            tx.remember("seed")
        cap.checkpoint("empty", key=key)
        for c in range(20):  # 20 commits of 150 records: 20 frames at least
            with cap.commit() as tx:
                for i in range(150):
                    tx.remember(f"record {c}.{i}")
        cap.checkpoint("full", key=key)
        cap.rollback("empty")
    loads = []
    real = store_mod.read_frame_at

    def counting(*a, **kw):  # type: ignore[no-untyped-def]
        loads.append(a[1])
        return real(*a, **kw)

    monkeypatch.setattr(store_mod, "read_frame_at", counting)
    with capsule.open(p) as cap:
        d = cap.diff("full").to_dict()
        frames = len({off for off in loads})
    assert d["removed"]["by_reason"] == {"rolled back": 3000}
    assert len(loads) <= frames + 8, (len(loads), frames)  # once each, not once per record
