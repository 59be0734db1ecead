"""Read-only commands cost the same on a long history as on a short one (issue 14).

Each test builds a small and a large capsule through the library (big commits,
so building is quick), then counts what an operation reads from the file: every
``pread`` and ``readinto`` of the read handle, in calls and in bytes. A scan of
history reads in proportion to the records or commits; a flat read does not, so
the counts must match within a small constant. The 20k capsule runs in the
normal suite; the 200k one is marked slow.

Found this way: ``capsule open --json`` asked for the vector index parameters,
which looked for a first embedding through every record of a capsule of text
(spec 16.1); an INDEX of a file created by 1.2 or later now says them (9.2
``vectors``). Its state root (13.1) comes from the id columns of the tables.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.core import constants as C
from capsule.format import file as F
from capsule.state.stateroot import state_root_of

CHECKPOINTS = 3
TAIL_COMMITS = 6  # small commits at the end, the same in every capsule built here


@dataclass
class Reads:
    calls: int = 0
    bytes: int = 0


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    """Count every read the capsule's handles make (tables are mapped, not read: see `view`)."""
    reads = Reads()
    pread, readinto = F.ReadHandle.pread, F.ReadHandle.readinto

    def counted_pread(self: F.ReadHandle, offset: int, n: int) -> bytes:
        reads.calls += 1
        reads.bytes += max(n, 0)
        return pread(self, offset, n)

    def counted_readinto(self: F.ReadHandle, offset: int, buf: memoryview) -> int:
        reads.calls += 1
        reads.bytes += len(buf)
        return readinto(self, offset, buf)

    with monkeypatch.context() as m:
        m.setattr(F.ReadHandle, "pread", counted_pread)
        m.setattr(F.ReadHandle, "readinto", counted_readinto)
        yield reads


@dataclass(frozen=True)
class Built:
    path: Path
    records: int
    some_id: str


def build(path: Path, records: int, commits: int, key: Any) -> Built:
    """``records`` memories of text (no embedding) in about ``commits`` commits, three
    signed checkpoints, then the same few small commits every capsule here ends with."""
    bulk = records - TAIL_COMMITS
    per = max(1, bulk // commits)
    some_id = ""
    with capsule.create(path) as cap:
        done, n = 0, 0
        while done < bulk:
            k = min(per, bulk - done)
            with cap.commit() as tx:
                ids = tx.put_many([{"text": f"note {done + i} about topic {(done + i) % 97}", "tags": ["t"],
                                    "time": done + i} for i in range(k)])
            some_id = some_id or ids[0]
            done, n = done + k, n + 1
            if n in {1, commits // 2}:
                cap.checkpoint(f"cp-{n}", key=key)
        cap.checkpoint("last", key=key)
        for i in range(TAIL_COMMITS):
            with cap.commit() as tx:
                tx.remember(f"tail {i}", time=records + i)
    return Built(path, records, some_id)


@pytest.fixture(scope="module")
def key() -> Any:
    return capsule.PrivateKey.from_seed(bytes(range(32)))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, key: Any) -> Built:
    return build(tmp_path_factory.mktemp("flat") / "small.capsule", 2_000, 20, key)


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory, key: Any) -> Built:
    return build(tmp_path_factory.mktemp("flat") / "large.capsule", 20_000, 200, key)


def _reads(monkeypatch: pytest.MonkeyPatch, fn: Callable[[], Any]) -> Reads:
    with counting(monkeypatch) as reads:
        fn()
    return reads


def _flat(small: Reads, large: Reads, tail: int = 0) -> None:
    """Equal within a small constant: a scan of 10x the history reads about 10x more. ``tail``:
    reads of the frames after the last INDEX, which a close leaves (9.3: fewer than 16 frames
    and 512 records, whatever the history), a header and a body each."""
    assert large.calls <= small.calls + 4 + tail, (small, large)
    assert large.bytes <= 1.25 * small.bytes + (64 << 10), (small, large)


#: 9.3: a close indexes from 16 frames (or 512 records) on, so fewer may follow the last INDEX
#: (a close that writes no lexical segment, 16.8, writes no INDEX for them)
TAIL_READS = 2 * C.INDEX_ON_CLOSE_FRAMES


def _cli(*argv: str) -> Any:
    r = CliRunner().invoke(app, list(argv))
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


# --- the library ---------------------------------------------------------------------


def test_vector_parameters_come_from_the_index(monkeypatch: pytest.MonkeyPatch, small: Built,
                                                large: Built) -> None:
    """No embedding anywhere: the INDEX says so (9.2 `vectors`), no record is read (16.1)."""
    got = []
    for b in (small, large):
        with capsule.open(b.path) as cap:
            got.append(_reads(monkeypatch, lambda cap=cap: (cap.vector_config(), cap.index_info())))
            assert cap.vector_config() is None
            assert cap.index_info()["vectors"] is None
    _flat(*got, tail=TAIL_READS)
    assert got[1].bytes < 64 << 10  # at most the frames after the INDEX, never the history


def test_get_checkpoints_and_log_limit_read_flat(monkeypatch: pytest.MonkeyPatch, small: Built,
                                                 large: Built) -> None:
    got: dict[str, list[Reads]] = {"get": [], "checkpoints": [], "log": []}
    for b in (small, large):
        with capsule.open(b.path) as cap:
            got["get"].append(_reads(monkeypatch, lambda cap=cap, b=b: cap.get(b.some_id)))
            got["checkpoints"].append(_reads(monkeypatch, cap.checkpoints))
            got["log"].append(_reads(monkeypatch, lambda cap=cap: cap.log(5)))
            labels = [c.body.label for c in cap.checkpoints()]
            assert len(labels) == CHECKPOINTS and labels[0] == "cp-1" and labels[-1] == "last"
            rows = cap.log(5)
            assert [r.commits for r in rows] == list(range(cap.commit_count - 4, cap.commit_count + 1))
            assert rows == cap.log()[-5:]  # the newest five, with the same record counts
    for name, (s, lg) in got.items():
        assert s.calls and lg.calls, name
        _flat(s, lg)


def test_log_limit_zero_and_beyond_history(small: Built) -> None:
    with capsule.open(small.path) as cap:
        every = cap.log()
        assert cap.log(0) == []
        assert cap.log(len(every) + 10) == every
        with pytest.raises(capsule.UsageError):
            cap.log(-1)


# --- the commands --------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["log", "--limit", "5", "--json"], ["checkpoints", "--json"]])
def test_commands_read_flat(monkeypatch: pytest.MonkeyPatch, small: Built, large: Built, argv: list[str]) -> None:
    got = [_reads(monkeypatch, lambda b=b: _cli(*argv, str(b.path))) for b in (small, large)]
    _flat(*got)


def test_open_json_is_flat(monkeypatch: pytest.MonkeyPatch, small: Built, large: Built) -> None:
    """``capsule open --json``: the vector parameters come from the INDEX (9.2 `vectors`), and
    the state root (13.1) from the id columns of the tables, which are mapped, not read: only
    the frames after the INDEX are. (With the 20-byte tables of the 1.2 draft, which hold no
    ids, the state root read every RECORDS frame.)"""
    got = []
    for b in (small, large):
        got.append(_reads(monkeypatch, lambda b=b: _cli("open", "--json", str(b.path))))
        doc = _cli("open", "--json", str(b.path))
        assert doc["records"] == b.records and doc["vector_index"] is None
        with capsule.open(b.path) as cap:
            assert doc["state_root"] == state_root_of(cap.all_ids())
            assert cap.state_root == state_root_of([bytes.fromhex(r.id) for r in cap.records()])
    _flat(*got, tail=TAIL_READS)


def test_quick_verify_reads_each_byte_once(monkeypatch: pytest.MonkeyPatch, large: Built) -> None:
    """`verify --quick` is one pass over the file: it checks every byte, so it reads
    each once, and nothing a command adds reads history a second time."""
    size = large.path.stat().st_size
    reads = _reads(monkeypatch, lambda: _cli("verify", "--quick", "--json", str(large.path)))
    assert size <= reads.bytes <= 1.1 * size + (1 << 20), (size, reads)


@pytest.mark.slow
def test_open_and_log_flat_at_200k(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: Any,
                                   small: Built) -> None:
    big = build(tmp_path / "200k.capsule", 200_000, 200, key)
    for argv in (["log", "--limit", "5", "--json"], ["checkpoints", "--json"]):
        got = [_reads(monkeypatch, lambda b=b, argv=argv: _cli(*argv, str(b.path))) for b in (small, big)]
        _flat(*got)
    with capsule.open(big.path) as cap:
        reads = _reads(monkeypatch, lambda: (cap.vector_config(), cap.index_info(), cap.get(big.some_id)))
        assert reads.bytes < 2 << 20, reads


# --- 9.2 `vectors`: what the writer states, what verify checks ---------------------------


def _index_vectors(path: Path) -> Any:
    with capsule.open(path) as cap:
        return None if cap._snap.vectors is None else cap._snap.vectors[1]


def test_index_states_parameters_once_an_embedding_is_committed(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """Text first, then the first embedding (16.1: the defaults with its dimension), then
    text again: every later INDEX says the parameters, so a reader needs no record."""
    path = tmp_path / "late.capsule"
    with capsule.create(path) as cap:
        with cap.commit() as tx:
            tx.put_many([{"text": f"t{i}", "time": i} for i in range(5_000)])
        assert cap._snap.vectors is not None and cap._snap.vectors[1] == {}
        with cap.commit() as tx:
            tx.remember("first with a vector", embedding=[0.5, 0.25, 1.0], time=10**9)
            tx.put_many([{"text": f"u{i}", "time": i} for i in range(5_000)])
    want = capsule.VectorParams(dim=3)
    assert _index_vectors(path) == want.to_value()
    with capsule.open(path) as cap:
        reads = _reads(monkeypatch, cap.vector_config)
        assert cap.vector_config() == want
    assert reads.calls == 0
    assert capsule.verify(path).ok


def test_index_states_configured_parameters(tmp_path: Path) -> None:
    path = tmp_path / "configured.capsule"
    with capsule.create(path) as cap:
        cap.configure_vectors(dim=4, M=8, embedder="hash-4")
        with cap.commit() as tx:
            tx.put_many([{"text": f"t{i}", "time": i} for i in range(5_000)])
    assert _index_vectors(path) == capsule.VectorParams("cosine", 4, 8, 200, 100, "hash-4").to_value()
    assert capsule.verify(path).ok


def test_verify_refuses_an_index_that_misstates_the_parameters(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """A writer that states other parameters than the records fix is caught (13.3 `index`);
    a reader that finds a map no writer writes looks in the records instead (16.1)."""
    from capsule.search.engine import Searcher

    lie = capsule.VectorParams(dim=7).to_value()
    path = tmp_path / "lie.capsule"
    with monkeypatch.context() as m:
        m.setattr(Searcher, "index_value", lambda self, items: lie)
        with capsule.create(path) as cap, cap.commit() as tx:
            tx.put_many([{"text": f"t{i}", "time": i} for i in range(5_000)])
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error["check"] == "index"
    assert capsule.verify(path, deep=False).ok  # quick mode decodes no record to compare with

    nonsense = tmp_path / "nonsense.capsule"
    with monkeypatch.context() as m:
        m.setattr(Searcher, "index_value", lambda self, items: {"dim": 0, "space": "cosine", "M": 16,
                                                                 "ef_construction": 200, "seed": 100})
        with capsule.create(nonsense) as cap, cap.commit() as tx:
            tx.remember("with a vector", embedding=[1.0, 0.0])
            tx.put_many([{"text": f"t{i}", "time": i} for i in range(5_000)])
    with capsule.open(nonsense) as cap:
        assert cap.vector_config() == capsule.VectorParams(dim=2)  # from the records, as 16.1 says
    assert capsule.verify(nonsense).first_error["check"] == "index"


def test_files_without_the_key_are_read_as_before(tmp_path: Path) -> None:
    """1.1 INDEXes carry no `vectors`: the parameters come from the snapshot or the records.
    A file created before 1.2 gets none when a 1.2 writer indexes it either, so its own
    readers, which refuse the key (12.5), can still read it (12.6)."""
    root = Path(__file__).resolve().parent.parent / "spec" / "vectors" / "v1.1"
    with capsule.open(root / "search.capsule") as cap:
        assert cap._snap.vectors is None
        assert cap.vector_config() == capsule.VectorParams("cosine", 4, 4, 20, 7)
    old = tmp_path / "old.capsule"
    old.write_bytes((root / "search.capsule").read_bytes())
    size = old.stat().st_size
    with capsule.open(old, "a") as cap:
        with cap.commit() as tx:
            tx.put_many([{"text": f"t{i}", "time": i} for i in range(5_000)])  # an INDEX is due
        c = cap._snap.commit
        assert c is not None and c.index is not None and c.index > size  # it was written
        assert cap._snap.vectors is None
    assert old.read_bytes()[9] == 1 and _index_vectors(old) is None
    with capsule.open(old) as cap:
        assert cap.vector_config() == capsule.VectorParams("cosine", 4, 4, 20, 7)
    assert capsule.verify(old).ok


def test_get_from_a_big_commit_reads_one_small_frame(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A record is read by decompressing its RECORDS frame: a writer keeps those near 64 KiB
    (9.3), so a get from a commit of 40k records does not inflate a megabyte-sized frame
    (1.57 ms per get at 100k records in benchmarks/scale.py before, 0.02 ms at 10k)."""
    import hashlib

    p = tmp_path / "big.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:  # ~3.6 MB of text that zstd cannot shrink much
        ids = tx.put_many([{"text": f"record {i} " + hashlib.sha256(b"%d" % i).hexdigest()}
                           for i in range(40_000)])
    with capsule.open(p) as cap:
        reads = _reads(monkeypatch, lambda: cap.get(ids[len(ids) // 2]))
        assert cap.get(ids[-1]).text.startswith("record 39999")
    assert reads.bytes <= 96 << 10, reads
