"""A meta filter decodes only the records whose bytes can hold the wanted key and value (16.6).

``capsule search F QUERY --meta i=12345`` on 200k records took 11 s (19 s in vector mode): every
candidate was decoded to read its meta. A canonical map holds a key's bytes and its value's side
by side, so a record whose bytes (checked against its id) lack them cannot match; only the others
are decoded and compared. Results must be those of the full check, on every path.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

import capsule
from capsule.format import store as store_mod
from capsule.search import engine

T0 = 1_700_000_000 * 10**9


@pytest.fixture(scope="module")
def cap_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("meta") / "m.capsule"
    rng = np.random.default_rng(4)
    it = itertools.count(T0, 10**6)
    with capsule.create(p, clock=lambda: next(it)) as cap, cap.commit() as tx:
        for i in range(3000):
            tx.remember(f"latency report number {i}", meta={"i": i, "svc": f"s{i % 7}", "ok": i % 2 == 0},
                        embedding=rng.standard_normal(8))
        tx.note("a latency note (notes carry no meta)")
    return p


@pytest.mark.parametrize("meta", [{"i": 1234}, {"svc": "s3", "ok": False}, {"i": 12}, {"i": "1234"}, {"nope": 1}])
@pytest.mark.parametrize("mode", ["lexical", "vector", "list"])
def test_the_results_are_the_full_checks(cap_path: Path, meta: dict[str, object], mode: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with capsule.open(cap_path) as cap:
        kw: dict[str, object] = {"vector": np.ones(8), "mode": mode} if mode == "vector" else \
            {"query": "latency", "mode": mode} if mode == "lexical" else {}  # no query: the listing (capsule list)
        fast = [(h.id, h.score) for h in cap.search(k=50, meta=meta, **kw)]
    calls = [0]
    real = store_mod.Store.get

    def get(self, rid):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return real(self, rid)

    with capsule.open(cap_path) as cap:
        monkeypatch.setattr(store_mod.Store, "get", get)
        plain = engine.Searcher._meta
        monkeypatch.setattr(engine.Searcher, "_meta", lambda self, rid, needles=(): plain(self, rid))  # no prefilter
        slow = [(h.id, h.score) for h in cap.search(k=50, meta=meta, **kw)]
    assert fast == slow
    assert calls[0] >= (50 if mode == "list" and meta == {"svc": "s3", "ok": False} else 3000)  # the full check


def test_only_the_candidates_that_can_match_are_decoded(cap_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    real = store_mod.Store.get

    def get(self, rid):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return real(self, rid)

    monkeypatch.setattr(store_mod.Store, "get", get)
    with capsule.open(cap_path) as cap:
        hits = cap.search("latency", k=5, meta={"i": 1234})
        listed = cap.search(k=5, meta={"i": 1234})  # capsule list --meta: newest first, read until k pass
    assert [h.text for h in hits] == [h.text for h in listed] == ["latency report number 1234"]
    assert calls[0] < 50, calls[0]
