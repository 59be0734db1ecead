"""CapsuleStore (issue 13): LangGraph's BaseStore on a capsule, driven through langgraph's own API
and compared, where the semantics are the same, with langgraph's own InMemoryStore."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Sequence
from operator import add
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest

pytest.importorskip("langgraph.store.base")

from langgraph.graph import END, START, StateGraph  # noqa: E402
from langgraph.runtime import Runtime  # noqa: E402
from langgraph.store.base import (  # noqa: E402
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
    TTLConfig,
)
from langgraph.store.memory import InMemoryStore  # noqa: E402

import capsule  # noqa: E402
from capsule.integrations.langgraph import CapsuleStore  # noqa: E402

from .clocks import T0, Clock  # noqa: E402

MIN = 60 * 10**9
CLI = [str(Path(sys.executable).with_name("capsule"))]  # the installed console script


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def _as_dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [i.dict() for i in items]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "graph.capsule"


# -- direct BaseStore calls ----------------------------------------------------------------------


def test_put_get_delete_and_record_times(path: Path) -> None:
    clock = Clock()
    with CapsuleStore(path, clock=clock) as store:
        store.put(("users", "alice"), "prefs", {"theme": "dark", "units": "metric"})
        first = store.get(("users", "alice"), "prefs")
        assert isinstance(first, Item)
        assert first.value == {"theme": "dark", "units": "metric"}
        assert first.namespace == ("users", "alice") and first.key == "prefs"
        assert first.created_at == first.updated_at
        store.put(("users", "alice"), "prefs", {"theme": "light"})
        second = store.get(("users", "alice"), "prefs")
        assert second is not None and second.value == {"theme": "light"}
        assert second.created_at == first.created_at and second.updated_at > first.updated_at
        assert store.get(("users", "alice"), "missing") is None
        assert store.get(("users", "bob"), "prefs") is None
        store.delete(("users", "alice"), "prefs")
        assert store.get(("users", "alice"), "prefs") is None
        store.delete(("users", "alice"), "never-there")  # deleting nothing is no error
        cap = store.capsule
        mems = {m.meta["value"].get("theme"): m for m in cap.records(kind="memory")}
        # the item's times are its records' times
        assert first.created_at.timestamp() == pytest.approx(mems["dark"].time / 1e9)
        assert second.updated_at.timestamp() == pytest.approx(mems["light"].time / 1e9)
        ops = [e.op for e in cap.records(kind="revert")]
        assert ops == ["supersede", "forget"]


def test_async_forms(path: Path) -> None:
    async def run() -> None:
        with CapsuleStore(path, clock=Clock()) as store:
            await store.aput(("docs",), "a", {"text": "python tutorial", "n": 1})
            await store.aput(("docs", "deep"), "b", {"text": "typescript guide", "n": 2})
            got = await store.aget(("docs",), "a")
            assert got is not None and got.value["n"] == 1
            hits = await store.asearch(("docs",), query="python tutorial")
            assert [h.key for h in hits][0] == "a" and hits[0].score is not None
            assert await store.alist_namespaces(prefix=("docs",)) == [("docs",), ("docs", "deep")]
            await store.adelete(("docs",), "a")
            assert await store.aget(("docs",), "a") is None
            res = await store.abatch([GetOp(("docs", "deep"), "b"), SearchOp(("docs",), filter={"n": 2})])
            assert isinstance(res[0], Item) and isinstance(res[1], list)
            assert [i.key for i in res[1] if isinstance(i, Item)] == ["b"]

    asyncio.run(run())


def test_async_embed_function(path: Path) -> None:
    """An async-only embed function (IndexConfig allows one) works through abatch."""

    async def aembed(texts: Sequence[str]) -> list[list[float]]:
        return [[float(t.count("a")), float(t.count("b")), 1.0] for t in texts]

    async def run() -> None:
        index: IndexConfig = {"dims": 3, "embed": aembed, "fields": ["text"]}
        with CapsuleStore(path, index=index) as store:
            await store.aput(("n",), "as", {"text": "aaaa"})
            await store.aput(("n",), "bs", {"text": "bbbb"})
            hits = await store.asearch(("n",), query="bbbbbbbb")
            assert [h.key for h in hits] == ["bs", "as"]

    asyncio.run(run())


FILTER_ITEMS = {
    "a": {"color": "red", "n": 1, "tags": ["x", "y"], "meta": {"level": 1, "ok": True}},
    "b": {"color": "blue", "n": 5, "tags": ["x"], "meta": {"level": 2, "ok": False}},
    "c": {"color": "red", "n": 10, "meta": {"level": 2, "ok": True}},
    "d": {"color": "green", "n": 7.5},
}
FILTERS: list[dict[str, Any]] = [
    {"color": "red"},
    {"color": {"$eq": "blue"}},
    {"color": {"$ne": "red"}},
    {"n": {"$gt": 5}},
    {"n": {"$gte": 5}},
    {"n": {"$lt": 5}},
    {"n": {"$lte": 7.5, "$gt": 1}},
    {"tags": ["x", "y"]},
    {"meta": {"level": 2}},
    {"meta": {"level": 2, "ok": True}},
    {"color": "red", "n": {"$gt": 1}},
    {"missing": "nothing"},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[json.dumps(f) for f in FILTERS])
def test_filters_match_in_memory_store(path: Path, flt: dict[str, Any]) -> None:
    ref = InMemoryStore()
    with CapsuleStore(path, index=False) as store:
        for k, v in FILTER_ITEMS.items():
            for s in (store, ref):
                s.put(("f",), k, v)
        got = {i.key for i in store.search(("f",), filter=flt, limit=100)}
        want = {i.key for i in ref.search(("f",), filter=flt, limit=100)}
        assert got == want


def test_differential_against_in_memory_store(path: Path) -> None:
    """Random puts and deletes, then every read compared with InMemoryStore's (as sets where
    InMemoryStore's order is its dict's insertion order, which is not part of the contract)."""
    rng = random.Random(13)
    ref = InMemoryStore()
    namespaces = [("a",), ("a", "x"), ("a", "y", "z"), ("b",), ("b", "x"), ("c", "x", "y")]
    with CapsuleStore(path, index=False, clock=Clock()) as store:
        for _ in range(120):
            ns, key = rng.choice(namespaces), f"k{rng.randrange(8)}"
            if rng.random() < 0.2:
                store.delete(ns, key)
                ref.delete(ns, key)
            else:
                v = {"n": rng.randrange(10), "s": rng.choice("pqr")}
                store.put(ns, key, v)
                ref.put(ns, key, v)
        for ns in namespaces:
            for key in (f"k{i}" for i in range(8)):
                a, b = store.get(ns, key), ref.get(ns, key)
                assert (a is None) == (b is None) and (a is None or b is None or a.value == b.value)
        for prefix in [(), ("a",), ("a", "y"), ("b",), ("nope",)]:
            for flt in [None, {"s": "p"}, {"n": {"$gte": 5}}]:
                got = store.search(prefix, filter=flt, limit=1000)
                want = ref.search(prefix, filter=flt, limit=1000)
                assert {(i.namespace, i.key, json.dumps(i.value)) for i in got} == \
                       {(i.namespace, i.key, json.dumps(i.value)) for i in want}
        kws: list[dict[str, Any]] = [{}, {"prefix": ("a",)}, {"suffix": ("x",)}, {"prefix": ("*", "x")}, {"max_depth": 1},
                   {"max_depth": 2, "prefix": ("a",)}, {"limit": 2, "offset": 1}, {"suffix": ("*",)},
               {"prefix": ("a",), "suffix": ("z",)}]
        for kw in kws:
            assert store.list_namespaces(**kw) == ref.list_namespaces(**kw), kw


def test_pagination_is_deterministic_and_complete(path: Path) -> None:
    with CapsuleStore(path, clock=Clock()) as store:
        for i in range(23):
            store.put(("p", f"g{i % 3}"), f"k{i:02d}", {"text": f"note number {i} about rivers", "i": i})
        full = store.search(("p",), limit=100)
        assert len(full) == 23
        # no query: newest first (updated_at), then namespace and key
        assert [i.value["i"] for i in full] == list(range(22, -1, -1))
        pages = [store.search(("p",), limit=5, offset=o) for o in range(0, 25, 5)]
        assert [i.key for p in pages for i in p] == [i.key for i in full]
        ranked = store.search(("p",), query="number 7 rivers", limit=100)
        paged = [i for o in range(0, 30, 4) for i in store.search(("p",), query="number 7 rivers", limit=4, offset=o)]
        assert [(i.key, i.score) for i in paged] == [(i.key, i.score) for i in ranked]
        assert ranked[0].key == "k07"
        scores = [i.score for i in ranked]
        assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_vector_search_fields_and_unindexed_items(path: Path) -> None:
    index: IndexConfig = {"dims": 384, "embed": "hash", "fields": ["memory"]}
    with CapsuleStore(path, index=index, clock=Clock()) as store:
        store.put(("m",), "db", {"memory": "the staging database is db-stg-2", "owner": "rivers"})
        store.put(("m",), "lunch", {"memory": "lunch is at noon on the terrace"})
        store.put(("m",), "owner", {"memory": "nothing relevant here", "owner": "staging database"},
                  index=["owner"])  # a put's own fields override the store's
        store.put(("m",), "raw", {"memory": "staging database notes"}, index=False)  # never embedded
        hits = store.search(("m",), query="staging database", limit=10)
        keys = [h.key for h in hits]
        assert keys[:2] in (["owner", "db"], ["db", "owner"])
        assert keys[-1] == "raw" and hits[-1].score is None  # unindexed items come after, unscored
        assert all(h.score is not None for h in hits[:-1])
        # filters apply to vector results too
        assert [h.key for h in store.search(("m",), query="staging database", filter={"owner": "rivers"})] == ["db"]
        mem = store.capsule.get(store.capsule.search(tags=["langgraph:m"], meta={"key": "db"}, k=1)[0].id)
        assert mem.text == "the staging database is db-stg-2" and mem.embedding is not None


def test_lang_chain_style_embed_callable(path: Path) -> None:
    def embed(texts: Sequence[str]) -> list[list[float]]:
        return [[float(len(t)), 1.0] for t in texts]

    index: IndexConfig = {"dims": 2, "embed": embed, "fields": ["t"]}
    with CapsuleStore(path, index=index) as store:
        store.put(("e",), "short", {"t": "ab"})
        store.put(("e",), "long", {"t": "a" * 40})
        assert store.search(("e",), query="x" * 60)[0].key == "long"
    with pytest.raises(capsule.UsageError, match="vectors are 2-d"):
        CapsuleStore(path)  # the default hash embedder (384-d) cannot share those vectors


def test_ttl_expiry_refresh_and_sweep(path: Path) -> None:
    clock = Clock(step=1)
    ttl_cfg: TTLConfig = {"default_ttl": 10.0, "refresh_on_read": True}
    with CapsuleStore(path, index=False, ttl=ttl_cfg, clock=clock) as store:
        store.put(("t",), "default", {"v": 1})  # default_ttl: 10 minutes
        store.put(("t",), "short", {"v": 2}, ttl=1)
        store.put(("t",), "forever", {"v": 3}, ttl=None)
        store.put(("u",), "gone", {"v": 4}, ttl=2)
        mem = store.capsule.get(store.capsule.search(meta={"key": "short"}, k=1)[0].id)
        assert mem.ttl == MIN  # the memory's own ttl field
        clock.t += 90 * 10**9
        assert store.get(("t",), "short") is None  # expired after one minute
        assert {i.key for i in store.search(("t",))} == {"default", "forever"}
        clock.t += 8 * MIN  # 9.5 min after the put: reading refreshes "default"
        refreshed = store.get(("t",), "default")
        assert refreshed is not None
        assert store.list_namespaces() == [("t",)]  # ("u",) holds only an expired item
        clock.t += 5 * MIN  # past the first 10 minutes, within the refreshed ones
        assert store.get(("t",), "default", refresh_ttl=False) is not None
        assert store.sweep_ttl() == 2  # short and gone
        assert store.sweep_ttl() == 0
        clock.t += 6 * MIN
        assert store.get(("t",), "default") is None
        assert store.get(("t",), "forever") is not None
    with CapsuleStore(path, index=False, read_only=True, clock=lambda: clock.t) as store:
        assert {i.key for i in store.search(("t",))} == {"forever"}  # reopened: the same expiry
    reverts = [(r.op, r.reason) for r in capsule.open(path).records(kind="revert")]
    assert reverts.count(("forget", "ttl expired")) == 2 and ("supersede", "ttl refresh") in reverts


def test_no_refresh_without_ttl_config(path: Path) -> None:
    clock = Clock(step=1)
    with CapsuleStore(path, index=False, clock=clock) as store:
        store.put(("t",), "x", {"v": 1}, ttl=1)
        before = store.capsule.commit_count
        assert store.get(("t",), "x") is not None
        assert store.capsule.commit_count == before  # a read writes nothing (as SqliteStore)
        clock.t += 2 * MIN
        assert store.get(("t",), "x") is None


# -- persistence, history and the capsule's own tools ----------------------------------------------


def _snapshot(store: CapsuleStore) -> dict[str, Any]:
    return {
        "get": [store.get(ns, k) for ns, k in [(("a", "b"), "k1"), (("a",), "k2"), (("c",), "k3")]],
        "search": _as_dicts(store.search(("a",), limit=50)),
        "query": _as_dicts(store.search((), query="graph memory", limit=50)),
        "filter": _as_dicts(store.search((), filter={"n": {"$gt": 1}}, limit=50)),
        "ns": store.list_namespaces(),
        "depth": store.list_namespaces(max_depth=1),
    }


def test_reopen_gives_the_same_answers(path: Path) -> None:
    with CapsuleStore(path, clock=Clock()) as store:
        store.put(("a", "b"), "k1", {"text": "graph memory one", "n": 1})
        store.put(("a",), "k2", {"text": "graph memory two", "n": 2})
        store.put(("c",), "k3", {"text": "unrelated", "n": 3})
        store.put(("a", "b"), "k1", {"text": "graph memory one, revised", "n": 4})
        store.put(("c",), "k4", {"text": "to be deleted", "n": 5})
        store.delete(("c",), "k4")
        before = _snapshot(store)
    with CapsuleStore(path, read_only=True) as store:
        assert _snapshot(store) == before
    with CapsuleStore(path) as store:  # and as the writer
        assert _snapshot(store) == before
        assert len(store) == 3
    report = capsule.verify(path)
    assert report.ok, report.first_error
    proc = _cli("verify", str(path))
    assert proc.returncode == 0, proc.stderr
    # the graph's memories are the capsule's: the CLI finds them by tag and shows the chain
    proc = _cli("search", str(path), "graph memory", "--tag", "langgraph:a.b", "--json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)
    assert [h["meta"]["value"]["n"] for h in hits] == [4]
    with capsule.open(path) as cap:
        ops = sorted(r.op for r in cap.records(kind="revert"))
        assert ops == ["forget", "supersede"]
        assert len(list(cap.records(kind="memory"))) == 5  # history keeps all five


def test_reads_do_not_walk_history(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with CapsuleStore(path, index=False, clock=Clock()) as store:
        for i in range(30):
            store.put(("r", str(i % 4)), f"k{i}", {"i": i})

        def boom(*a: Any, **k: Any) -> Any:
            raise AssertionError("a read walked the history")

        monkeypatch.setattr(capsule.Capsule, "records", boom)
        assert store.get(("r", "1"), "k5") is not None
        assert len(store.search(("r",), limit=100)) == 30
        assert len(store.list_namespaces()) == 4
        store.put(("r", "1"), "k5", {"i": -1})
        assert store.get(("r", "1"), "k5").value == {"i": -1}  # type: ignore[union-attr]


def test_batch_is_one_commit_and_atomic(path: Path) -> None:
    with CapsuleStore(path, index=False, clock=Clock()) as store:
        before = store.capsule.commit_count
        res = store.batch([
            PutOp(("b",), "x", {"v": 1}),
            PutOp(("b",), "y", {"v": 2}),
            GetOp(("b",), "x"),  # reads see the store before the batch's puts
            PutOp(("b",), "x", {"v": 3}),  # the last put of a key wins
            ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("b",)),)),
        ])
        assert res == [None, None, None, None, []]
        assert store.capsule.commit_count == before + 1
        assert store.get(("b",), "x").value == {"v": 3}  # type: ignore[union-attr]
        root = store.capsule.state_root
        with pytest.raises(capsule.CapsuleError):
            store.batch([PutOp(("b",), "z", {"v": 4}), PutOp(("b",), "w", {"bad": {1, 2}})])
        assert store.capsule.state_root == root and store.get(("b",), "z") is None


def test_bad_input_errors(path: Path) -> None:
    with CapsuleStore(path, index=False) as store:
        with pytest.raises(InvalidNamespaceError):
            store.put(("bad.label",), "k", {"v": 1})
        with pytest.raises(InvalidNamespaceError):
            store.batch([PutOp(("a.b",), "k", {"v": 1})])
        with pytest.raises(InvalidNamespaceError):
            store.put(("langgraph",), "k", {"v": 1})
        with pytest.raises(ValueError, match="Unsupported operator"):
            store.put(("ok",), "k", {"v": 1})
            store.search(("ok",), filter={"v": {"$regex": "x"}})
        with pytest.raises(capsule.Locked):
            CapsuleStore(path, index=False)  # one writer at a time
    with CapsuleStore(path, index=False, read_only=True) as ro, pytest.raises(capsule.UsageError, match="read-only"):
        ro.put(("ok",), "k2", {"v": 2})
    before = path.read_bytes()
    with CapsuleStore(path, index=False, read_only=True) as ro:
        ro.search(("ok",))
    assert path.read_bytes() == before  # a file opened for reading is never written
    not_capsule = path.with_name("junk.capsule")
    not_capsule.write_bytes(b"not a capsule at all" * 10)
    with pytest.raises(capsule.DataError):
        CapsuleStore(not_capsule)


# -- a real graph ------------------------------------------------------------------------------------


class _State(TypedDict):
    user: str
    said: str
    recalled: Annotated[list[str], add]


def _remember(state: _State, runtime: Runtime[None]) -> dict[str, Any]:
    assert runtime.store is not None
    ns = ("memories", state["user"])
    n = len(runtime.store.search(ns, limit=1000))
    runtime.store.put(ns, f"m{n}", {"text": state["said"]})
    return {}


def _recall(state: _State, runtime: Runtime[None]) -> dict[str, Any]:
    assert runtime.store is not None
    hits = runtime.store.search(("memories", state["user"]), query=state["said"], limit=1)
    return {"recalled": [h.value["text"] for h in hits]}


def test_state_graph_writes_and_searches_memories(path: Path) -> None:
    builder = StateGraph(_State)
    builder.add_node("remember", _remember)
    builder.add_node("recall", _recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    with CapsuleStore(path) as store:
        graph = builder.compile(store=store)
        for said in ["alice prefers metric units", "alice is allergic to peanuts", "alice lives in Lisbon"]:
            out = graph.invoke({"user": "alice", "said": said, "recalled": []})
            assert out["recalled"] == [said]
        graph.invoke({"user": "bob", "said": "bob likes jazz", "recalled": []})
        assert store.list_namespaces(prefix=("memories",)) == [("memories", "alice"), ("memories", "bob")]

        async def arun() -> dict[str, Any]:
            return await graph.ainvoke({"user": "bob", "said": "bob plays the bass", "recalled": []})

        assert asyncio.run(arun())["recalled"] == ["bob plays the bass"]
    with CapsuleStore(path, read_only=True) as store:
        hits = store.search(("memories", "alice"), query="peanut allergy", limit=1)
        assert hits[0].value == {"text": "alice is allergic to peanuts"}
    state = capsule.open(path).state().to_dict()
    texts = [m["meta"]["value"]["text"] for m in state["memories"]["working"]]
    assert len(texts) == 5 and "bob likes jazz" in texts
    assert capsule.verify(path).ok


def test_capsule_memories_from_elsewhere_are_left_alone(path: Path) -> None:
    with capsule.create(path, clock=Clock(T0)) as cap, cap.commit() as tx:
        tx.remember("a plain memory")
        tx.remember("tagged by hand", tags=["langgraph"])
    with CapsuleStore(path, index=False) as store:
        assert store.list_namespaces() == [] and len(store) == 0
        store.put(("x",), "k", {"v": 1})
        assert [i.key for i in store.search(())] == ["k"]


def test_shared_handle_and_reader_refresh(path: Path) -> None:
    with capsule.create(path, clock=Clock()) as cap:
        with cap.commit() as tx:
            tx.remember("the agent's own memory")
        with CapsuleStore(cap, index=False) as store:  # a handle the caller owns
            store.put(("s",), "k", {"v": 1})
        assert not cap.closed  # the store leaves it open
        reader = CapsuleStore(path, index=False, read_only=True)
        try:
            with CapsuleStore(cap, index=False) as store:
                store.put(("s",), "k2", {"v": 2})
            assert reader.get(("s",), "k2") is None  # a reader's snapshot
            assert reader.refresh() is True and reader.get(("s",), "k2") is not None
            assert reader.refresh() is False
        finally:
            reader.close()
        assert len(list(cap.search("own memory", mode="lexical"))) == 1


# -- cases from langgraph's own store tests (libs/checkpoint/tests/test_store.py), run on a capsule --


UPSTREAM_NAMESPACES = [("a", "b", "c"), ("a", "b", "d", "e"), ("a", "b", "d", "i"), ("a", "b", "f"), ("a", "c", "f"),
                       ("b", "a", "f"), ("users", "123"), ("users", "456", "settings"), ("admin", "users", "789")]


def test_upstream_list_namespaces_basic(path: Path) -> None:
    with CapsuleStore(path, index=False) as store:
        for i, ns in enumerate(UPSTREAM_NAMESPACES):
            store.put(namespace=ns, key=f"id_{i}", value={"data": f"value_{i:02d}"})
        assert store.list_namespaces(prefix=("a", "b")) == [("a", "b", "c"), ("a", "b", "d", "e"),
                                                            ("a", "b", "d", "i"), ("a", "b", "f")]
        assert store.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
        assert store.list_namespaces(prefix=("a",), suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
        assert store.list_namespaces(prefix=("a", "b"), max_depth=3) == [("a", "b", "c"), ("a", "b", "d"),
                                                                         ("a", "b", "f")]
        assert store.list_namespaces(prefix=("a", "b"), limit=2) == [("a", "b", "c"), ("a", "b", "d", "e")]
        assert store.list_namespaces(prefix=("a", "b"), offset=2) == [("a", "b", "d", "i"), ("a", "b", "f")]
        assert store.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
        assert store.list_namespaces(suffix=("*", "f")) == [("a", "b", "f"), ("a", "c", "f"), ("b", "a", "f")]
        assert store.list_namespaces(prefix=("nonexistent",)) == []
        assert store.list_namespaces(prefix=("users", "123")) == [("users", "123")]
        assert store.list_namespaces(prefix=("*", "users"), suffix=("*", "settings")) == []
        assert store.list_namespaces(max_depth=2) == [("a", "b"), ("a", "c"), ("admin", "users"), ("b", "a"),
                                                      ("users", "123"), ("users", "456")]


def test_upstream_namespace_rules(path: Path) -> None:
    doc = {"foo": "bar"}

    async def run(store: CapsuleStore) -> None:
        for bad in [(), ("the", "thing.about"), ("some", "fun", ""), ("langgraph", "foo")]:
            with pytest.raises(InvalidNamespaceError):
                store.put(bad, "foo", doc)
            with pytest.raises(InvalidNamespaceError):
                await store.aput(bad, "foo", doc)
        ns = ("foo", "langgraph", "foo")
        await store.aput(ns, "bar", doc)
        assert (await store.aget(ns, "bar")).value == doc  # type: ignore[union-attr]
        assert (await store.asearch(ns))[0].value == doc
        await store.adelete(ns, "bar")
        assert await store.aget(ns, "bar") is None
        # past the public put API, as upstream: a "langgraph" root label is the caller's business
        store.batch([PutOp(("langgraph", "foo"), "bar", doc)])
        assert store.get(("langgraph", "foo"), "bar").value == doc  # type: ignore[union-attr]
        store.delete(("langgraph", "foo"), "bar")
        assert store.get(("langgraph", "foo"), "bar") is None

    with CapsuleStore(path) as store:
        asyncio.run(run(store))


def test_upstream_vector_update_filters_and_edge_cases(path: Path) -> None:
    with CapsuleStore(path, index={"fields": ["text"]}) as store:
        store.put(("test",), "doc1", {"text": "zany zebra Xerxes"})
        store.put(("test",), "doc2", {"text": "something about dogs"})
        store.put(("test",), "doc3", {"text": "text about birds"})
        initial = store.search(("test",), query="Zany Xerxes")
        assert initial[0].key == "doc1"
        store.put(("test",), "doc1", {"text": "new text about dogs"})  # the vector follows the value
        after = next(r.score for r in store.search(("test",), query="Zany Xerxes") if r.key == "doc1")
        assert after is not None and initial[0].score is not None and after < initial[0].score
        assert store.search(("test",), query="new text about dogs")[0].key == "doc1"
        store.put(("test",), "doc4", {"text": "new text about dogs"}, index=False)
        assert not any(r.key == "doc4" for r in store.search(("test",), query="new text about dogs", limit=3))
        for q in ["", None, "test " * 100, "test!@#$%^&*()"]:
            assert len(store.search(("test",), query=q)) == 4
    path2 = path.with_name("filters.capsule")
    with CapsuleStore(path2, index={"fields": ["text"]}) as store:
        for key, value in [("doc1", {"text": "red apple", "color": "red", "score": 4.5}),
                           ("doc2", {"text": "red car", "color": "red", "score": 3.0}),
                           ("doc3", {"text": "green apple", "color": "green", "score": 4.0}),
                           ("doc4", {"text": "blue car", "color": "blue", "score": 3.5})]:
            store.put(("test",), key, value)
        res = store.search(("test",), query="apple", filter={"color": "red"})
        assert [r.key for r in res][0] == "doc1" and len(res) == 2
        res = store.search(("test",), query="car", filter={"color": "red"})
        assert [r.key for r in res][0] == "doc2" and len(res) == 2
        res = store.search(("test",), query="blue", filter={"score": {"$gt": 3.2}})
        assert len(res) == 3 and res[0].key == "doc4"
        res = store.search(("test",), query="apple", filter={"score": {"$gte": 4.0}, "color": "green"})
        assert [r.key for r in res] == ["doc3"]


def test_upstream_concurrent_async_ops_apply_in_order(path: Path) -> None:
    colors, things = ["red", "blue", "green", "yellow", "purple"], ["apple", "car", "house", "book", "phone"]
    docs = [(f"doc{i}", {"text": f"{colors[i % 5]} {things[i % 5]}", "color": colors[i % 5], "index": i})
            for i in range(30)]

    async def run(store: CapsuleStore) -> list[list[Any]]:
        await asyncio.gather(*[store.aput(("test",), k, v) for k, v in docs],
                             *[store.adelete(("test",), k) for k, _ in docs],
                             *[store.aput(("test",), k, v) for k, v in docs])
        return list(await asyncio.gather(store.asearch(("test",), query="apple", filter={"color": "red"}),
                                         store.asearch(("test",), query="house", filter={"index": {"$gt": 15}})))

    with CapsuleStore(path, index={"fields": ["text"]}) as store:
        red, late = asyncio.run(run(store))
        assert len(store) == 30  # put, delete, put: every item is there at the end
        # and the capsule's history holds the ops in the order they were awaited
        key_of: dict[str, str] = {}
        seen: list[tuple[str, str]] = []
        for rec in store.capsule.records():
            if rec.kind == "memory":
                key_of[rec.id] = rec.meta["key"]
                seen.append(("put", rec.meta["key"]))
            elif rec.kind == "revert" and rec.op == "forget":
                seen.append(("delete", key_of[rec.drop[0].hex()]))
        keys = [k for k, _ in docs]
        assert seen == [("put", k) for k in keys] + [("delete", k) for k in keys] + [("put", k) for k in keys]
        assert red and all(r.value["color"] == "red" for r in red)
        assert late and all(r.value["index"] > 15 for r in late)


def test_one_capsule_for_checkpointer_and_store(path: Path) -> None:
    """A graph's checkpoints (CapsuleSaver) and its long-term memory (CapsuleStore) in one file:
    the store shares the saver's open handle."""
    saver_mod = pytest.importorskip("capsule.integrations.langgraph.saver")
    builder = StateGraph(_State)
    builder.add_node("remember", _remember)
    builder.add_node("recall", _recall)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    with saver_mod.CapsuleSaver(path) as saver:
        store = CapsuleStore(saver.capsule)
        graph = builder.compile(checkpointer=saver, store=store)
        cfg: Any = {"configurable": {"thread_id": "t1"}}
        out = graph.invoke({"user": "carol", "said": "carol runs the payments team", "recalled": []}, cfg)
        assert out["recalled"] == ["carol runs the payments team"]
        store.close()  # leaves the saver's handle open
        assert saver.get_tuple(cfg) is not None
    with CapsuleStore(path, read_only=True) as store:
        assert [i.value["text"] for i in store.search(("memories", "carol"))] == ["carol runs the payments team"]
    assert capsule.verify(path).ok


def test_len_counts_live_items_and_negative_offsets_are_refused(path: Path) -> None:
    """From a fresh-context review: len() counted items whose ttl had run out (which nothing
    returns), and search(offset=-1) returned everything."""
    clock = Clock(step=1)
    with CapsuleStore(path, index=False, clock=clock) as store:
        store.put(("a",), "short", {"v": 1}, ttl=2)  # minutes
        store.put(("a",), "long", {"v": 2}, ttl=10**6)
        store.put(("a",), "plain", {"v": 3})
        assert len(store) == 3
        clock.t += 3 * MIN
        assert len(store) == 2 and len(store.search(("a",))) == 2
        for bad in ({"offset": -1}, {"limit": -1}):
            with pytest.raises(capsule.UsageError, match="offset and limit are integers >= 0"):
                store.search(("a",), **bad)
            with pytest.raises(capsule.UsageError, match="offset and limit are integers >= 0"):
                store.list_namespaces(**bad)
