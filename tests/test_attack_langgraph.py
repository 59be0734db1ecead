"""Regression tests from a hostile review of the LangGraph checkpointer and store (issue 13).

Each test is a defect found by attacking ``CapsuleSaver`` / ``CapsuleStore`` as a hostile or
demanding user would: forged records in a file another tool wrote, text in two Unicode forms,
readers beside a writer that compacts, a killed writer. The files are real capsules and the
frameworks are LangGraph's own; nothing under test is mocked.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
import unicodedata
from pathlib import Path
from typing import Any, TypedDict

import pytest

pytest.importorskip("langgraph.checkpoint.base")

import contextlib

import ormsgpack  # noqa: E402
from langchain_core.runnables import RunnableConfig  # noqa: E402
from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint  # noqa: E402
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer  # noqa: E402

import capsule  # noqa: E402
from capsule.format.records import GenericRecord  # noqa: E402
from capsule.integrations.langgraph import CapsuleSaver, CapsuleStore  # noqa: E402

CLI = Path(sys.executable).parent / "capsule"
NFD = unicodedata.normalize("NFD", "café")
NFC = unicodedata.normalize("NFC", "café")


def _cfg(thread: str, cid: str | None = None) -> RunnableConfig:
    c: dict[str, Any] = {"thread_id": thread, "checkpoint_ns": ""}
    if cid is not None:
        c["checkpoint_id"] = cid
    return {"configurable": c}


def _forge(path: Path, kind: str, value: dict[str, Any]) -> str:
    """A record another tool appended: valid capsule bytes, a saver kind, hostile content."""
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        rid: str = tx.put(GenericRecord(kind, value))
    return rid


def _ckpt_value(checkpoint: tuple[str, bytes], metadata: tuple[str, bytes]) -> dict[str, Any]:
    return {"time": 1, "thread_id": "f", "checkpoint_ns": "", "checkpoint_id": "1",
            "checkpoint_type": checkpoint[0], "checkpoint": checkpoint[1],
            "metadata_type": metadata[0], "metadata": metadata[1]}


def _ext_call(marker: Path) -> bytes:
    """LangGraph msgpack that, decoded by a permissive JsonPlusSerializer, calls
    ``pathlib.Path(marker).touch``-like code: here ``os.mkdir(marker)``."""
    return ormsgpack.packb(ormsgpack.Ext(0, ormsgpack.packb(["os", "mkdir", str(marker)])))


_MD = ("msgpack", ormsgpack.packb({"step": 1, "source": "loop"}))
_EMPTY = ("msgpack", ormsgpack.packb({}))


# --- the saver: a file written by someone else -------------------------------------------------

def test_forged_checkpoint_ext_never_runs_code(tmp_path: Path) -> None:
    """A forged checkpoint whose msgpack names a callable (``os.mkdir``) must not run it on read."""
    p, marker = tmp_path / "a.capsule", tmp_path / "pwned"
    CapsuleSaver(p).close()
    _forge(p, "langgraph.checkpoint", _ckpt_value(("msgpack", _ext_call(marker)), _MD))
    with CapsuleSaver(p, read_only=True) as saver, contextlib.suppress(capsule.CapsuleError):
        saver.get_tuple(_cfg("f"))
    assert not marker.exists()


def test_forged_metadata_ext_never_runs_code_at_open(tmp_path: Path) -> None:
    """Metadata is decoded when the saver opens: a planted callable must not run then either."""
    p, marker = tmp_path / "a.capsule", tmp_path / "pwned"
    CapsuleSaver(p).close()
    _forge(p, "langgraph.checkpoint", _ckpt_value(_EMPTY, ("msgpack", _ext_call(marker))))
    with contextlib.suppress(capsule.CapsuleError):
        CapsuleSaver(p, read_only=True).close()
    assert not marker.exists()


def test_forged_writes_ext_never_runs_code(tmp_path: Path) -> None:
    p, marker = tmp_path / "a.capsule", tmp_path / "pwned"
    CapsuleSaver(p).close()
    _forge(p, "langgraph.checkpoint", _ckpt_value(_EMPTY, _MD))
    _forge(p, "langgraph.writes", {"time": 2, "thread_id": "f", "checkpoint_ns": "", "checkpoint_id": "1",
                                   "task_id": "t", "writes": [[0, "ch", "msgpack", _ext_call(marker)]]})
    with CapsuleSaver(p, read_only=True) as saver, contextlib.suppress(capsule.CapsuleError):
        saver.get_tuple(_cfg("f"))
    assert not marker.exists()


@pytest.mark.parametrize("typed", [
    ("pickle", b"\x80\x04K\x01."),          # a planted pickle
    ("msgpack", b"\xc1\xc1"),               # bytes msgpack refuses
    ("msgpack", ormsgpack.packb(5)),        # decodes, but is no checkpoint
    ("json", b"{not json"),
    ("nonsense", b""),
], ids=["pickle", "bad-msgpack", "not-a-dict", "bad-json", "unknown-type"])
def test_undecodable_checkpoint_is_invalid_record(tmp_path: Path, typed: tuple[str, bytes]) -> None:
    """docs: a live record of a saver kind that is not what the saver writes raises
    InvalidRecordError naming the record (never the serde's own NotImplementedError, ...)."""
    p = tmp_path / "a.capsule"
    CapsuleSaver(p).close()
    rid = _forge(p, "langgraph.checkpoint", _ckpt_value(typed, _MD))
    with CapsuleSaver(p, read_only=True) as saver, pytest.raises(capsule.InvalidRecordError, match=rid):
        saver.get_tuple(_cfg("f"))


def test_undecodable_write_is_invalid_record(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    CapsuleSaver(p).close()
    _forge(p, "langgraph.checkpoint", _ckpt_value(_EMPTY, _MD))
    rid = _forge(p, "langgraph.writes", {"time": 2, "thread_id": "f", "checkpoint_ns": "", "checkpoint_id": "1",
                                         "task_id": "t", "writes": [[0, "ch", "pickle", b"\x80\x04K\x01."]]})
    with CapsuleSaver(p, read_only=True) as saver, pytest.raises(capsule.InvalidRecordError, match=rid):
        saver.get_tuple(_cfg("f"))


def test_forged_file_still_readable_after_forget(tmp_path: Path) -> None:
    """docs: ``capsule forget FILE ID`` on the bad record makes the file readable again."""
    p = tmp_path / "a.capsule"
    with CapsuleSaver(p) as saver:
        saver.put(_cfg("good"), empty_checkpoint(), {"step": 0}, {})
    rid = _forge(p, "langgraph.checkpoint", _ckpt_value(("pickle", b"\x80\x04K\x01."), _MD))
    r = subprocess.run([str(CLI), "forget", str(p), rid], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    with CapsuleSaver(p, read_only=True) as saver:
        assert saver.get_tuple(_cfg("f")) is None
        assert saver.get_tuple(_cfg("good")) is not None


def test_default_serde_keeps_the_usual_types(tmp_path: Path) -> None:
    """The safe default still round-trips what graphs put in state (messages, datetimes, sets)."""
    import datetime

    from langchain_core.messages import AIMessage, HumanMessage

    p = tmp_path / "a.capsule"
    ck = empty_checkpoint()
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    ck["channel_values"] = {"messages": [HumanMessage("hi"), AIMessage("hello")], "when": when, "tags": {1, 2}}
    with CapsuleSaver(p) as saver:
        saver.put(_cfg("t"), ck, {"step": 0}, {})
    with CapsuleSaver(p, read_only=True) as saver:
        tup = saver.get_tuple(_cfg("t"))
        assert tup is not None
        vals = tup.checkpoint["channel_values"]
        assert vals["messages"] == [HumanMessage("hi"), AIMessage("hello")]
        assert vals["when"] == when and vals["tags"] == {1, 2}


# --- the saver: readers, copies, crashes ---------------------------------------------------------

def test_reader_follows_the_file_across_an_in_place_compaction(tmp_path: Path) -> None:
    """docs: a read-only saver follows the file to its newest commit. ``capsule compact``
    replaces the file (a new inode); a reader must not stay on the old one for good."""
    p = tmp_path / "a.capsule"
    with CapsuleSaver(p) as w:
        w.put(_cfg("old"), empty_checkpoint(), {"step": 0}, {})
        w.delete_thread("old")
    reader = CapsuleSaver(p, read_only=True)
    try:
        r = subprocess.run([str(CLI), "compact", str(p), "--keep", "live"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        with CapsuleSaver(p) as w:
            w.put(_cfg("new"), empty_checkpoint(), {"step": 7}, {})
        tup = reader.get_tuple(_cfg("new"))
        assert tup is not None and tup.metadata["step"] == 7
        assert [t.metadata["step"] for t in reader.list(None)] == [7]
    finally:
        reader.close()


def test_copy_thread_onto_itself_adds_nothing(tmp_path: Path) -> None:
    p = tmp_path / "a.capsule"
    with CapsuleSaver(p) as saver:
        c = saver.put(_cfg("t"), empty_checkpoint(), {"step": 0}, {})
        saver.put_writes(c, [("ch", 1)], "task")
        before = saver.capsule.kinds()
        saver.copy_thread("t", "t")
        assert saver.capsule.kinds() == before
        tup = saver.get_tuple(_cfg("t"))
        assert tup is not None and len(tup.pending_writes or []) == 1


def test_nfd_and_nfc_thread_ids_are_one_thread(tmp_path: Path) -> None:
    """Held up: the saver normalises ids (this guards it)."""
    p = tmp_path / "a.capsule"
    with CapsuleSaver(p) as saver:
        saver.put(_cfg(NFD), empty_checkpoint(), {"step": 0}, {})
        assert saver.get_tuple(_cfg(NFC)) is not None
    with CapsuleSaver(p, read_only=True) as saver:
        assert saver.get_tuple(_cfg(NFD)) is not None


def test_kill_9_mid_put_keeps_the_last_acknowledged_checkpoint(tmp_path: Path) -> None:
    """Held up: a writer killed between commits; the reopened file answers with the last
    checkpoint whose ``put`` returned, and it verifies."""
    p = tmp_path / "k.capsule"
    code = textwrap.dedent(f"""
        from capsule.integrations.langgraph import CapsuleSaver
        from langgraph.checkpoint.base import create_checkpoint, empty_checkpoint
        s = CapsuleSaver({str(p)!r})
        c = {{"configurable": {{"thread_id": "t", "checkpoint_ns": ""}}}}
        i = 0
        while True:
            c = s.put(c, create_checkpoint(empty_checkpoint(), None, i), {{"step": i}}, {{}})
            s.put_writes(c, [("x", "y" * 3000)], "task")
            print(i, flush=True)
            i += 1
    """)
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        acked = -1
        deadline = time.monotonic() + 60
        while acked < 30 and time.monotonic() < deadline:
            acked = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read().split()
        proc.wait()
    acked = int(rest[-1]) if rest else acked
    with CapsuleSaver(p) as saver:  # a writer: truncates any torn tail first
        tup = saver.get_tuple(_cfg("t"))
        assert tup is not None
        # the put after the last ack may have committed before its print: at most one more
        assert tup.metadata["step"] in (acked, acked + 1)
    r = subprocess.run([str(CLI), "verify", str(p)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_checkpoint_over_the_record_cap_writes_nothing(tmp_path: Path) -> None:
    """Held up: spec 11's 16 MiB record cap, refused before anything is written."""
    p = tmp_path / "a.capsule"
    with CapsuleSaver(p) as saver:
        c = saver.put(_cfg("t"), empty_checkpoint(), {"step": 0}, {})
        size = p.stat().st_size
        big = create_checkpoint(empty_checkpoint(), None, 1)
        big["channel_values"] = {"x": "y" * (17 * 2**20)}
        with pytest.raises(capsule.InvalidRecordError):
            saver.put(c, big, {"step": 1}, {})
        with pytest.raises(capsule.InvalidRecordError):
            saver.put_writes(c, [("x", "y" * (17 * 2**20))], "task")
        assert p.stat().st_size == size
        tup = saver.get_tuple(_cfg("t"))
        assert tup is not None and tup.metadata["step"] == 0 and not tup.pending_writes


# --- the store ---------------------------------------------------------------------------------

def test_store_nfd_namespace_and_key_name_one_item(tmp_path: Path) -> None:
    """A namespace or key in NFD is stored in NFC (spec 5.1); reading it back with the same
    NFD text must find it, and a second put must replace it, not add a second live item."""
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store:
        store.put((NFD,), NFD, {"v": 1})
        item = store.get((NFD,), NFD)
        assert item is not None and item.value == {"v": 1}
        assert store.get((NFC,), NFC) is not None
        store.put((NFD,), NFD, {"v": 2})
        assert len(store) == 1
        assert len(list(store.capsule.live("memory"))) == 1
        assert [i.value for i in store.search((NFD,))] == [{"v": 2}]
        store.delete((NFD,), NFD)
        assert store.get((NFC,), NFC) is None
    with CapsuleStore(p, index=False, read_only=True) as store:
        assert store.get((NFC,), NFC) is None and len(store) == 0


def test_store_hand_made_memory_with_odd_meta_is_left_alone(tmp_path: Path) -> None:
    """docs: memories tagged ``langgraph`` whose meta does not have the store's shape are left
    alone; one with a text ``created_at`` must not stop the store from opening."""
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store:
        store.put(("ok",), "k", {"v": 1})
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        tx.remember("x", tags=["langgraph"], meta={"namespace": ["a"], "key": "k", "value": {"v": 1},
                                                   "created_at": "yesterday", "updated_at": [1]})
    with CapsuleStore(p, index=False, read_only=True) as store:
        assert store.get(("ok",), "k") is not None


def test_store_two_live_memories_for_one_key_are_both_deleted(tmp_path: Path) -> None:
    """Two live memories for one item (written by hand or by an older build): a delete must
    not leave the other one to come back after a reopen."""
    p = tmp_path / "s.capsule"
    CapsuleStore(p, index=False).close()
    with capsule.open(p, "a") as cap, cap.commit() as tx:
        for v in (1, 2):
            tx.remember(f"v{v}", tags=["langgraph", "langgraph:b"],
                        meta={"namespace": ["b"], "key": "k", "value": {"v": v}})
    with CapsuleStore(p, index=False) as store:
        item = store.get(("b",), "k")
        assert item is not None and item.value == {"v": 2}
        store.delete(("b",), "k")
    with CapsuleStore(p, index=False) as store:
        assert store.get(("b",), "k") is None
        store.put(("b",), "k", {"v": 3})
    with CapsuleStore(p, index=False) as store:
        item = store.get(("b",), "k")
        assert item is not None and item.value == {"v": 3}
        assert len(list(store.capsule.live("memory"))) == 1


def test_store_read_only_refresh_follows_an_in_place_compaction(tmp_path: Path) -> None:
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as w:
        w.put(("a",), "gone", {"v": 0})
        w.delete(("a",), "gone")
    reader = CapsuleStore(p, index=False, read_only=True)
    try:
        r = subprocess.run([str(CLI), "compact", str(p), "--keep", "live"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        with CapsuleStore(p, index=False) as w:
            w.put(("a",), "new", {"v": 2})
        assert reader.refresh() is True
        item = reader.get(("a",), "new")
        assert item is not None and item.value == {"v": 2}
    finally:
        reader.close()


def test_store_deeply_nested_value_is_invalid_record(tmp_path: Path) -> None:
    """A value nested 100,000 deep: InvalidRecordError naming the item, not a RecursionError."""
    deep: Any = 0
    for _ in range(100_000):
        deep = [deep]
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store:
        size = p.stat().st_size
        with pytest.raises(capsule.InvalidRecordError, match="a/deep"):
            store.put(("a",), "deep", {"v": deep})
        assert p.stat().st_size == size


@pytest.mark.parametrize("value", [{"v": 2**70}, {"v": float("nan")}, {"v": "\ud800"}, {1: "x"}],
                         ids=["int>64bit", "nan", "lone-surrogate", "int-key"])
def test_store_uncanonical_value_names_the_item_and_writes_nothing(tmp_path: Path, value: Any) -> None:
    """docs: a value the capsule cannot store canonically raises InvalidRecordError naming the
    item, and the whole batch is discarded."""
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store:
        store.put(("a",), "ok", {"v": 0})
        size = p.stat().st_size
        with pytest.raises(capsule.InvalidRecordError, match="a/bad"):
            store.put(("a",), "bad", value)
        assert p.stat().st_size == size and store.get(("a",), "bad") is None


# --- the strict default serde and a compiled graph ------------------------------------------

@dataclasses.dataclass
class Ticket:
    """A user type in graph state: not in LangGraph's safe list, allowed by the graph's schema."""

    id: str
    n: int


class _State(TypedDict):
    ticket: Ticket
    seen: list[str]


def _graph(saver: CapsuleSaver) -> Any:
    from langgraph.graph import END, START, StateGraph

    def step(state: _State) -> dict[str, Any]:
        t = state["ticket"]
        return {"ticket": Ticket(t.id, t.n + 1), "seen": [*state["seen"], type(t).__name__]}

    b = StateGraph(_State)
    b.add_node("step", step)
    b.add_edge(START, "step")
    b.add_edge("step", END)
    return b.compile(checkpointer=saver)


def test_graph_state_types_round_trip_under_the_strict_default(tmp_path: Path) -> None:
    """The strict default constructs no type a file names unless allowed: a user dataclass in
    graph state comes back as its fields, and as itself once the saver's serde allows it
    (docs/langgraph-saver.md, "Serialisation")."""
    p = tmp_path / "g.capsule"
    cfg = _cfg("g")
    with CapsuleSaver(p) as saver:
        _graph(saver).invoke({"ticket": Ticket("T-7", 0), "seen": []}, cfg)
    with CapsuleSaver(p, read_only=True) as saver:
        tup = saver.get_tuple(cfg)
        assert tup is not None and tup.checkpoint["channel_values"]["ticket"] == {"id": "T-7", "n": 1}
    allowed = JsonPlusSerializer(allowed_msgpack_modules=[(Ticket.__module__, "Ticket")])
    with CapsuleSaver(p, serde=allowed) as saver:
        snap = _graph(saver).get_state(cfg)
        assert snap.values["ticket"] == Ticket("T-7", 1)
        out = _graph(saver).invoke({"ticket": Ticket("T-7", 5), "seen": []}, cfg)
        assert out["ticket"] == Ticket("T-7", 6)


def test_a_saver_and_its_allowlist_clone_follow_the_file_together(tmp_path: Path) -> None:
    """``with_allowlist`` (LangGraph calls it when it compiles a graph under
    LANGGRAPH_STRICT_MSGPACK) is a shallow copy: the clone and the saver the caller holds must
    share one handle and index, so a reader's clone that moves to a new commit (or reopens a
    compacted file) does not leave the original stale or closed."""
    p = tmp_path / "g.capsule"
    with CapsuleSaver(p) as w:
        w.put(_cfg("a"), empty_checkpoint(), {"step": 0}, {})
        with CapsuleSaver(p, read_only=True) as reader:
            clone = reader.with_allowlist([(Ticket.__module__, "Ticket")])
            assert clone is not reader
            w.put(_cfg("b"), empty_checkpoint(), {"step": 1}, {})
            assert clone.get_tuple(_cfg("b")) is not None
            assert reader.get_tuple(_cfg("b")) is not None
            w.delete_thread("a")
            w.close()
            r = subprocess.run([str(CLI), "compact", str(p), "--keep", "live"], capture_output=True, text=True,
                               timeout=60)
            assert r.returncode == 0, r.stderr
            with CapsuleSaver(p) as w2:
                w2.put(_cfg("c"), empty_checkpoint(), {"step": 2}, {})
            assert clone.get_tuple(_cfg("c")) is not None
            assert reader.get_tuple(_cfg("c")) is not None and reader.get_tuple(_cfg("a")) is None


@pytest.mark.parametrize("cls", ["store", "saver"])
def test_open_races_another_process_creating_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      cls: str) -> None:
    """Processes opening a missing file at once: one saw it missing, then found it created by
    another (1 in 20 runs of 4 store processes here raised AlreadyExists). The window between
    the check and the create is modelled by making this one path look missing."""
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as first:
        first.put(("a",), "k", {"v": 1})
    real = Path.exists
    monkeypatch.setattr(Path, "exists", lambda self: False if self == p else real(self))
    if cls == "store":
        with CapsuleStore(p, index=False, timeout=5) as store:
            item = store.get(("a",), "k")
            assert item is not None and item.value == {"v": 1}
    else:
        with CapsuleSaver(p, timeout=5) as saver:
            assert len(saver.capsule.kinds()) > 0


def test_store_value_with_keys_equal_in_nfc_is_refused(tmp_path: Path) -> None:
    """``{"e\\u0301": 1, "\\u00e9": 2}`` has two keys; stored in NFC they are one, and one value
    was silently lost. Refused, naming the item, nothing written."""
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store:
        size = p.stat().st_size
        with pytest.raises(capsule.InvalidRecordError, match="a/dup"):
            store.put(("a",), "dup", {"n": [{NFD: 1, NFC: 2}]})
        assert p.stat().st_size == size and store.get(("a",), "dup") is None
        store.put(("a",), "one", {NFD: 1})  # one key, in either form: fine
        item = store.get(("a",), "one")
        assert item is not None and item.value == {NFC: 1}


def test_store_error_for_a_huge_key_stays_one_short_line(tmp_path: Path) -> None:
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store, pytest.raises(capsule.InvalidRecordError) as err:
        store.put(("a",), "k" * (17 * 2**20), {"v": 1})
    assert len(str(err.value)) < 1000 and "\n" not in str(err.value)


@pytest.mark.parametrize("ttl", [float("nan"), float("inf"), "10", True], ids=["nan", "inf", "text", "bool"])
def test_store_bad_ttl_is_a_usage_error(tmp_path: Path, ttl: Any) -> None:
    """A ttl that is no finite number of minutes: one clear error, nothing written (a text
    ``"10"`` multiplied into a 120 GB string before; NaN and inf raised ValueError / OverflowError)."""
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store:
        size = p.stat().st_size
        with pytest.raises(capsule.UsageError, match="ttl"):
            store.put(("a",), "k", {"v": 1}, ttl=ttl)
        assert p.stat().st_size == size and store.get(("a",), "k") is None


def test_store_huge_finite_ttl_never_expires(tmp_path: Path) -> None:
    p = tmp_path / "s.capsule"
    with CapsuleStore(p, index=False) as store:
        store.put(("a",), "k", {"v": 1}, ttl=1e300)
        assert store.get(("a",), "k") is not None and store.sweep_ttl() == 0
