"""Regression tests for audit findings F4 and F14 (spec 16.2, 9.2).

F4: a forged vector snapshot whose level-1 lists name a level-0 node (every id < n,
every count <= M) passed ``verify`` and killed ``capsule search --mode vector``
with SIGSEGV: hnswlib follows a neighbour on level L into that neighbour's own
list on level L, which a node below L does not have. 16.2 now lists the graph
invariants a reader MUST check; each has a forged case here, refused by the
loader, reported by ``verify`` at the blob, and rebuilt around (with a doubt) by
search. A snapshot whose ``ef_construction`` is below ``M`` (a legal
configuration) also crashed the loader with a traceback; it must load.

F14: an INDEX ``blobs`` entry of 2^20 parts / 32 TiB made ``verify`` and
``search`` try to allocate 32 TiB. 9.2 now bounds parts and size by the file
before the INDEX; the CLI gives one line, with bounded memory.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import capsule
from capsule.core import constants as C
from capsule.core.errors import CorruptError
from capsule.format import blob as _blob
from capsule.format import writer as _writer
from capsule.search import vindex as _vindex
from capsule.search.vindex import VectorIndex, VectorParams
from tests import vindex_forge as forge

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
T0 = 1_700_000_000 * 10**9


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    # a small address-space limit must not be spent on BLAS thread buffers
    env.update(COLUMNS="200", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def run_capsule(*args: str | Path, max_memory: int | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script; with ``max_memory``, under that address-space limit."""
    def limit() -> None:
        if max_memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (max_memory, max_memory))

    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], input="", capture_output=True, text=True,
                          env=child_env(), timeout=120, check=False, preexec_fn=limit)


def assert_one_line(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)  # not killed, not a crash
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# --- capsules with a snapshot, and forged snapshots ---------------------------------------


def snapshotted(path: Path, n: int = 300, dim: int = 8, M: int = 4, ef_construction: int = 16,
                seed: int = 3) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    with capsule.create(path, clock=lambda: T0) as cap:
        cap.configure_vectors(dim=dim, M=M, ef_construction=ef_construction)
        with cap.commit() as tx:
            ids = [tx.remember(f"m{i}", embedding=x[i], time=T0 + i) for i in range(n)]
        assert cap.save_index()
    return ids, x


def stored_snapshot(path: Path) -> bytes:
    with capsule.open(path) as cap:
        vi = cap._search.searcher().vectors()
        assert vi is not None and cap.index_info()["doubt"] is None
        return vi.encode()  # decode -> encode is the identity on a valid snapshot


def write_snapshot(path: Path, blob: bytes) -> int:
    """Commit ``blob`` as the newest snapshot, as a buggy or hostile writer would; its offset."""
    with capsule.open(path, "a") as cap:
        cap._write_commit([], blob=(_vindex.BLOB_TYPE, blob))
        return int(cap.index_info()["snapshot"]["offset"])


def _first_used(b: bytearray, at: int) -> None:
    forge.put_u32(b, at, max(1, forge.u32(b, at)))


def level1_names_level0(blob: bytes) -> bytes:
    """F4 exactly: every level-1 list's first neighbour is a level-0 node."""
    b = bytearray(blob)
    lay = forge.layout(b)
    assert forge.point_level_at_lower(b, lay, 1, int(np.flatnonzero(lay.levels == 0)[0]))
    return bytes(b)


def level2_names_level1(blob: bytes) -> bytes:
    """A level-2 list naming a level-1 node: its list is one level short (a heap over-read)."""
    b = bytearray(blob)
    lay = forge.layout(b)
    i = int(np.flatnonzero(lay.levels >= 2)[0])
    at = lay.link(i, 2)
    _first_used(b, at)
    forge.put_u32(b, at + 4, int(np.flatnonzero(lay.levels == 1)[0]))
    return bytes(b)


def level0_self_loop(blob: bytes) -> bytes:
    b = bytearray(blob)
    lay = forge.layout(b)
    _first_used(b, lay.level0(5))
    forge.put_u32(b, lay.level0(5) + 4, 5)
    return bytes(b)


def upper_self_loop(blob: bytes) -> bytes:
    b = bytearray(blob)
    lay = forge.layout(b)
    i, lv = lay.upper_rows()[0]
    _first_used(b, lay.link(i, lv))
    forge.put_u32(b, lay.link(i, lv) + 4, i)
    return bytes(b)


def empty_with_a_top_level(blob: bytes) -> bytes:
    p = forge.layout(blob).header["params"]
    return forge.with_header(VectorIndex(VectorParams.from_value(p)).encode(), max_level=2)


def empty_with_an_entry_point(blob: bytes) -> bytes:
    p = forge.layout(blob).header["params"]
    return forge.with_header(VectorIndex(VectorParams.from_value(p)).encode(), enterpoint=7)


FORGERIES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "level-1 list names a level-0 node (F4)": (level1_names_level0, "no list on that level"),
    "level-2 list names a level-1 node": (level2_names_level1, "no list on that level"),
    "level-0 self loop": (level0_self_loop, "names its own element"),
    "upper-level self loop": (upper_self_loop, "names its own element"),
    "empty snapshot with a top level": (empty_with_a_top_level, "entry point or top level"),
    "empty snapshot with an entry point": (empty_with_an_entry_point, "entry point or top level"),
}


@pytest.fixture(scope="module")
def seed_capsule(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], np.ndarray, bytes]:
    path = tmp_path_factory.mktemp("seed") / "seed.capsule"
    ids, x = snapshotted(path)
    blob = stored_snapshot(path)
    assert forge.layout(blob).top >= 2, "setup: the forgeries need a graph with two upper levels"
    return path, ids, x, blob


# --- the loader --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORGERIES)
def test_the_loader_refuses_each_forged_invariant(seed_capsule: tuple[Path, list[str], np.ndarray, bytes],
                                                  name: str) -> None:
    forge_fn, message = FORGERIES[name]
    blob = seed_capsule[3]
    with pytest.raises(CorruptError, match=message) as e:
        VectorIndex.decode(forge_fn(blob), where=1234)
    assert e.value.check == "vindex" and e.value.offset == 1234


def test_only_used_slots_are_held_to_the_level_rule(seed_capsule: tuple[Path, list[str], np.ndarray, bytes]) -> None:
    """hnswlib reads the first `count` slots; a stale id past them is harmless and loads
    (zeroed slots name node 0 whatever its level), while the same id in a used slot is refused."""
    blob = seed_capsule[3]
    lay = forge.layout(blob)
    low = int(np.flatnonzero(lay.levels == 0)[0])
    i, lv = next((i, lv) for i, lv in lay.upper_rows() if forge.u32(blob, lay.link(i, lv)) < lay.m)
    at = lay.link(i, lv)
    count = forge.u32(blob, at)
    unused, used = bytearray(blob), bytearray(blob)
    forge.put_u32(unused, at + 4 + 4 * count, low)
    assert len(VectorIndex.decode(bytes(unused))) == lay.n
    forge.put_u32(used, at, count + 1)
    forge.put_u32(used, at + 4 + 4 * count, low)
    with pytest.raises(CorruptError, match="no list on that level"):
        VectorIndex.decode(bytes(used))


# --- verify and search over a capsule holding a forged snapshot ----------------------------


@pytest.mark.parametrize("name", FORGERIES)
def test_verify_names_the_blob_and_search_rebuilds_with_a_doubt(
        seed_capsule: tuple[Path, list[str], np.ndarray, bytes], tmp_path: Path, name: str) -> None:
    src, ids, x, blob = seed_capsule
    path = tmp_path / "forged.capsule"
    path.write_bytes(src.read_bytes())
    with capsule.open(path) as cap:
        want = [[(h.id, h.score) for h in cap.search(vector=x[i], k=5, mode="vector")] for i in (0, 150, 299)]
    forge_fn, message = FORGERIES[name]
    at = write_snapshot(path, forge_fn(blob))
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None
    assert (rep.first_error["check"], rep.first_error["offset"]) == ("vindex", at)
    assert message in rep.first_error["message"]
    with capsule.open(path) as cap:
        got = [[(h.id, h.score) for h in cap.search(vector=x[i], k=5, mode="vector")] for i in (0, 150, 299)]
        doubt = cap.index_info()["doubt"]
    assert doubt and message in doubt and "rebuilt" in doubt
    assert got == want


@pytest.fixture(scope="module")
def graph_sized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], np.ndarray]:
    """Big enough that ``capsule search`` walks the graph instead of scanning (vindex.EXACT_WORK)."""
    dim = 2048
    n = _vindex.EXACT_WORK // dim + 50
    path = tmp_path_factory.mktemp("graph") / "graph.capsule"
    ids, x = snapshotted(path, n=n, dim=dim, seed=11)
    return path, ids, x


def test_f4_cli_search_survives_and_verify_names_the_blob(graph_sized: tuple[Path, list[str], np.ndarray],
                                                          tmp_path: Path) -> None:
    """The audit's reproduction, through the real console script: it used to die by SIGSEGV."""
    src, ids, x = graph_sized
    path = tmp_path / "f4.capsule"
    path.write_bytes(src.read_bytes())
    blob = stored_snapshot(path)
    lay = forge.layout(blob)
    target = int(np.flatnonzero(lay.levels == 0)[0])
    at = write_snapshot(path, level1_names_level0(blob))
    np.save(tmp_path / "q.npy", x[target])  # the query leads the greedy descent into the forged edge

    r = run_capsule("search", path, "--vector", tmp_path / "q.npy", "--mode", "vector", "-k", "3", "--json")
    assert r.returncode == 0, (r.returncode, r.stderr)
    hits = json.loads(r.stdout)
    assert [h["id"] for h in hits][0] == ids[target] and hits[0]["score"] == pytest.approx(1.0)
    assert "warning" in r.stderr and "rebuilt" in r.stderr and "no list on that level" in r.stderr

    v = run_capsule("verify", path)
    line = assert_one_line(v, "vindex", f"offset {at}", "no list on that level")
    assert "Traceback" not in line


def test_a_snapshot_with_ef_construction_below_m_loads(tmp_path: Path) -> None:
    """A legal configuration (hnswlib raises ef_construction to M when it builds the graph)
    used to make every load of its snapshot raise RuntimeError out of hnswlib."""
    path = tmp_path / "efc.capsule"
    ids, x = snapshotted(path, n=300, dim=8, M=16, ef_construction=8)
    blob = stored_snapshot(path)
    assert len(VectorIndex.decode(blob)) == 300
    with capsule.open(path) as cap:
        assert [h.id for h in cap.search(vector=x[42], k=1, mode="vector")] == [ids[42]]
        assert cap.index_info()["doubt"] is None


# --- F14: the INDEX blob entry ----------------------------------------------------------------


def entry(parts: int, size: int, at: int = C.HEADER_SIZE) -> list[object]:
    return [[_vindex.BLOB_TYPE, at, parts, size, b"\1" * 32]]


def test_index_blob_entries_are_bounded_by_the_file() -> None:
    """9.2: parts follow from the size, and the parts fit between the first frame and the INDEX."""
    index_at = C.HEADER_SIZE + 4000
    for parts, size, message in [
        (1 << 20, (1 << 20) * C.BLOB_PART, "larger than the file"),  # the audit's 32 TiB
        (3, 100, "out of range"),  # 3.4: 100 bytes make one part
        (1, 5000, "larger than the file"),
        (1, 4000 - 66 + 1, "larger than the file"),  # one byte more than fits
    ]:
        with pytest.raises(CorruptError, match=message):
            _blob.parse_blob_refs(entry(parts, size), index_at)
    assert _blob.parse_blob_refs(entry(1, 4000 - 66), index_at)[_vindex.BLOB_TYPE].size == 4000 - 66
    big = C.BLOB_PART + 1  # two parts, exactly filling the room before the INDEX
    assert _blob.parse_blob_refs(entry(2, big), C.HEADER_SIZE + big + 2 * 66)[_vindex.BLOB_TYPE].parts == 2


def test_read_blob_refuses_a_size_past_the_file_before_allocating() -> None:
    class NoReads:
        def pread(self, *a: object) -> bytes:
            raise AssertionError("read before the size was checked")

    ref = _blob.BlobRef(_vindex.BLOB_TYPE, C.HEADER_SIZE, 1 << 20, (1 << 20) * C.BLOB_PART, b"\1" * 32)
    with pytest.raises(CorruptError, match="larger than the file"):
        _blob.read_blob(NoReads(), ref, 1 << 30, 10**6)


@pytest.mark.parametrize(("parts", "size"), [(1 << 20, (1 << 20) * C.BLOB_PART), (128, 4 << 30)],
                         ids=["2^20 parts, 32 TiB", "128 parts, 4 GiB"])
def test_f14_a_huge_blob_entry_is_a_one_line_error_in_bounded_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: int, size: int) -> None:
    path = tmp_path / "f14.capsule"
    ids, x = snapshotted(path, n=40, dim=8)
    real = _blob.BlobRef
    monkeypatch.setattr(_writer, "BlobRef", lambda t, first, _p, _s, bid: real(t, first, parts, size, bid))
    write_snapshot(path, stored_snapshot(path))
    monkeypatch.undo()
    rep = capsule.verify(path)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "index"
    np.save(tmp_path / "q.npy", x[0])
    limit = 1536 << 20  # far less than the entry asks for, far more than the command needs
    assert_one_line(run_capsule("verify", path, max_memory=limit), "blob entry")
    assert_one_line(run_capsule("search", path, "--vector", tmp_path / "q.npy", "--mode", "vector",
                                max_memory=limit), "capsule: error:", "blob entry")
