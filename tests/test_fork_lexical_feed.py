"""A fork builds its lexical snapshot from the records it copies, not by reading them back (16.8, 15).

``capsule fork`` reads the parent's records once; its lexical snapshot (written so that the
fork's first search loads it) is built from the batch it commits, as compaction's and merge's
are, instead of a second pass over the new file that decoded every record again (half of a
100k-record fork). The snapshot must be byte for byte the one a read-back builds: the fork
made both ways in reproducible mode is the same file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.search import catalog, engine

T0 = 1_700_000_000 * 10**9


def clock() -> Callable[[], int]:
    it = itertools.count(T0, 10**9)
    return lambda: next(it)


@pytest.fixture()
def parent(tmp_path: Path) -> Path:
    p = tmp_path / "parent.capsule"
    words = ["deploy", "friday", "freeze", "rollback", "incident", "database", "latency", "budget", "release"]
    with capsule.create(p, clock=clock()) as cap:
        ids = []
        for c in range(3):
            with cap.commit() as tx:
                for i in range(200):
                    w = [words[(i * k + c) % len(words)] for k in (1, 3, 7)]
                    ids.append(tx.remember(f"memory {c}.{i}: {' '.join(w)}", tags=[w[0]],
                                           meta={"session": f"s{i % 4}"} if i % 5 == 0 else None))
                tx.note(f"note {c} about the {words[c]}")
                tx.decide(f"decision {c}: {words[c + 3]}", rationale=f"because of the {words[c + 4]}")
        with cap.commit() as tx:
            tx.forget(ids[7], reason="wrong")
            tx.supersede(ids[9], "memory revised: deploy freeze lifted", reason="news")
        cap.run_once("effect-1", lambda: 1)
    return p


def _fork(parent: Path, out: Path, monkeypatch: pytest.MonkeyPatch, *, read_back: bool) -> int:
    """Fork ``parent`` to ``out``; the number of records the search layer read from a file."""
    scanned = [0]
    real = engine.Searcher._scan

    def counting(self: Any, *a: Any, **kw: Any) -> Iterator[Any]:
        for x in real(self, *a, **kw):
            scanned[0] += 1
            yield x

    with monkeypatch.context() as m:
        m.setenv("SOURCE_DATE_EPOCH", "1700000000")
        m.setattr(engine.Searcher, "_scan", counting)
        if read_back:  # the way before: nothing fed, the catalog reads the new file
            m.setattr(catalog.LexicalIndex, "feed", lambda *a, **kw: None)
        with capsule.fork(parent, out) as f:
            assert f._search.lexical_pending() == 0  # the snapshot covers every searchable record
    return scanned[0]


def test_the_fork_reads_no_record_back_and_writes_the_same_file(parent: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fed, read = tmp_path / "fed.capsule", tmp_path / "read.capsule"
    assert _fork(parent, fed, monkeypatch, read_back=False) == 0
    assert _fork(parent, read, monkeypatch, read_back=True) > 600  # the control: it did read them
    assert fed.read_bytes() == read.read_bytes()
    rep = capsule.verify(fed, parent=parent)
    assert rep.ok, rep.first_error
    with capsule.open(fed) as f, capsule.open(parent) as p:
        assert f.state_root == p.state_root
        assert f.index_info().get("doubt") is None
        top = f.search("deploy freeze lifted", k=1, mode="lexical")[0]
        assert top.text == "memory revised: deploy freeze lifted"
