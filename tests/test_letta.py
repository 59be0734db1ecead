"""Letta agent files (.af): import into a capsule, export back (capsule.integrations.letta).

The real files are Letta's own published agents in ../shared/data/letta-af/ (never copied
into the repository); each one round-trips to the same document, and to the same bytes.
The v1 schema and the odd corners (unknown fields, text that is not NFC, -0.0, integers
beyond 64 bits, a JSON string holding the JSON) use files written here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.integrations import letta
from capsule.integrations.letta import AgentFileError

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "letta-af"
REAL = sorted(DATA.glob("*.af")) if DATA.is_dir() else []
real_files = pytest.mark.parametrize(
    "src", REAL or [pytest.param(None, marks=pytest.mark.skip(reason=f"no Letta agent files in {DATA}"))],
    ids=[p.name for p in REAL] or ["absent"])
CAPSULE_BIN = Path(sys.executable).with_name("capsule")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _write(path: Path, doc: object, *, twice: bool = False) -> Path:
    text = json.dumps(doc, indent=2, ensure_ascii=False)
    path.write_text(json.dumps(text) if twice else text, encoding="utf-8")
    return path


def _exact(v: object) -> str:
    """The JSON of ``v`` with its key order: equal only when nothing changed at all."""
    return json.dumps(v, ensure_ascii=False)


def _block_memories(cap: capsule.Capsule) -> list[Any]:
    return [cap.get(d["id"]) for tier in cap.state().memories.values() for d in tier
            if "letta:block" in d.get("tags", [])]


# --- a v2 and a v1 file written here --------------------------------------------------------


def v2_doc() -> dict[str, Any]:
    msg = {"type": "message", "role": "user", "id": "message-1", "agent_id": "agent-0",
           "content": [{"type": "text", "text": "I sail on weekends", "signature": None}],
           "tool_calls": None, "created_at": "2025-10-21T16:55:56.456634+00:00", "x_future": {"b": 1, "a": [2]}}
    call = {"type": "message", "role": "assistant", "id": "message-2", "content": [],
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "send_message", "arguments": "{\"message\": \"Ahoy\"}"}}],
            "created_at": "2025-10-21T16:55:57Z"}
    return {
        "agents": [{"name": "sailor", "id": "agent-0", "block_ids": ["block-0", "block-1"], "tool_ids": ["tool-0"],
                    "system": "You are a sailing coach.", "llm_config": {"model": "gpt-4o-mini", "temperature": 0.7,
                                                                          "context_window": 32000},
                    "embedding_config": {"embedding_model": "text-embedding-3-small", "embedding_dim": 2000},
                    "messages": [msg, call], "zz_unknown_agent_field": [1, {"z": None, "a": True}]}],
        "groups": [], "blocks": [
            {"value": "Name: Chad\nLikes: sailing, Formula 1", "limit": 5000, "label": "human", "id": "block-0",
             "metadata": {"z": 1, "a": 2}, "x_block": "kept"},
            {"value": "I am Sam, a patient coach.", "limit": 5000, "label": "persona", "id": "block-1"}],
        "tools": [{"id": "tool-0", "name": "send_message", "json_schema": {"type": "object", "properties": {}},
                   "source_code": None, "x_tool": 1.5}],
        "metadata": {"revision_id": "abc"}, "created_at": "2025-10-21T16:55:55+00:00", "x_top": "kept"}


def v1_doc() -> dict[str, Any]:
    return {
        "agent_type": "memgpt_agent", "name": "old_agent", "description": None, "system": "You are MemGPT.",
        "created_at": "2025-03-01T10:00:00", "updated_at": "2025-03-02T10:00:00", "version": "0.6.45",
        "core_memory": [
            {"created_at": "2025-03-01T10:00:00", "description": None, "is_template": False, "label": "human",
             "limit": 5000, "metadata_": {}, "template_name": None, "updated_at": "2025-03-01T10:00:00",
             "value": "The user is called Ada and studies glaciers."},
            {"created_at": "2025-03-01T10:00:00", "description": None, "is_template": False, "label": "persona",
             "limit": 5000, "metadata_": {}, "template_name": None, "updated_at": "2025-03-01T10:00:00",
             "value": "I am a friendly assistant."}],
        "embedding_config": {"embedding_model": "letta-free", "embedding_dim": 1024},
        "llm_config": {"model": "letta-free", "context_window": 8192},
        "message_buffer_autoclear": False, "in_context_message_indices": [0, 1],
        "messages": [
            {"created_at": "2025-03-01T10:00:01", "group_id": None, "model": "letta-free", "name": None,
             "role": "system", "content": [{"type": "text", "text": "You are MemGPT."}], "tool_call_id": None,
             "tool_calls": [], "tool_returns": [], "updated_at": "2025-03-01T10:00:01"},
            {"created_at": "2025-03-01T10:00:05", "group_id": None, "model": None, "name": None, "role": "user",
             "content": [{"type": "text", "text": "tell me about moraines"}], "tool_call_id": None,
             "tool_calls": [], "tool_returns": [], "updated_at": "2025-03-01T10:00:05"}],
        "metadata_": None, "multi_agent_group": None, "tags": [{"tag": "demo"}],
        "tool_exec_environment_variables": [], "tool_rules": [],
        "tools": [{"args_json_schema": None, "created_at": "2025-03-01T10:00:00", "description": "Send a message",
                   "json_schema": {"name": "send_message", "description": "Send", "parameters": {
                       "type": "object", "properties": {}, "required": []}},
                   "name": "send_message", "return_char_limit": 1000000, "source_code": None,
                   "source_type": "python", "tags": ["letta_core"], "tool_type": "letta_core",
                   "updated_at": "2025-03-01T10:00:00", "metadata_": {}}],
        "x_v1_unknown": {"kept": True}}


def _round_trip(tmp_path: Path, src: Path) -> tuple[letta.AgentFile, letta.AgentFile, Path]:
    cap = tmp_path / "agent.capsule"
    letta.import_af(src, cap)
    report = capsule.verify(cap)
    assert report.ok, report.first_error
    out = tmp_path / "back.af"
    letta.export_af(cap, out)
    return letta.read_af(src), letta.read_af(out), cap


# --- the real files ---------------------------------------------------------------------------


@real_files
def test_real_file_round_trips(tmp_path: Path, src: Path) -> None:
    before, after, cap = _round_trip(tmp_path, src)
    assert after.document == before.document  # blocks, messages, tools, config, unknown fields
    assert (after.schema, after.encoded_twice) == (before.schema, before.encoded_twice)
    # Letta's own layout (key order, indent, encoded twice or not) comes back byte for byte
    assert (tmp_path / "back.af").read_bytes() == src.read_bytes()
    with capsule.open(cap) as c:
        blocks = _block_memories(c)
        assert sorted(m.text for m in blocks) == sorted(b["value"] for b in before.document["blocks"])
        n_msgs = sum(len(a["messages"]) for a in before.document["agents"])
        assert len(list(c.records(kind="letta.message"))) == n_msgs
        assert len(list(c.records(kind="letta.tool"))) == len(before.document["tools"])
        first = before.document["agents"][0]
        ident = c.state().identity
        assert ident is not None
        assert (ident["agent_id"], ident["name"]) == (first["id"], first["name"])
        assert ident["config"]["system"] == first["system"]


@real_files
def test_real_file_import_is_deterministic(tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    letta.import_af(src, tmp_path / "a" / "one.capsule")  # wall clock, random file id
    letta.import_af(src, tmp_path / "b" / "two.capsule")
    ids = [sorted(r.id for r in capsule.open(tmp_path / d / n).records()) for d, n in (("a", "one.capsule"),
                                                                                          ("b", "two.capsule"))]
    assert ids[0] == ids[1]  # record times come from the file, so the records are the same
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # the library's reproducible mode
    letta.import_af(src, tmp_path / "a" / "r.capsule")
    letta.import_af(src, tmp_path / "b" / "other-name.capsule")
    assert (tmp_path / "a" / "r.capsule").read_bytes() == (tmp_path / "b" / "other-name.capsule").read_bytes()


def test_cli_in_a_fresh_process(tmp_path: Path) -> None:
    """import-af, then state / search / verify / export-af, each a new process of the real command."""
    src = REAL[0] if REAL else _write(tmp_path / "sailor.af", v2_doc())
    doc = letta.read_af(src).document
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"} | {"COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(CAPSULE_BIN), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    r = run("import-af", str(src), "-o", "agent.capsule", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["blocks"] == len(doc["blocks"]) and rep["schema"] == "v2"
    r = run("state", "agent.capsule", "--json")
    assert r.returncode == 0, r.stderr
    shown = [m["text"] for tier in json.loads(r.stdout)["memories"].values() for m in tier]
    assert sorted(shown) == sorted(unicodedata.normalize("NFC", b["value"]) for b in doc["blocks"])
    r = run("state", "agent.capsule")  # the human table: every block is a working memory
    assert r.returncode == 0, r.stderr
    assert re.search(rf"^working\s+{len(doc['blocks'])} memories$", r.stdout, re.M), r.stdout
    assert f"{doc['agents'][0]['id']} {doc['agents'][0]['name']}" in r.stdout  # the identity line
    # a word of a block and a word of a message are both found
    block = max(doc["blocks"], key=lambda b: len(b["value"]))
    word = max(block["value"].split(), key=len)
    r = run("search", "agent.capsule", word, "--mode", "lexical", "-k", "50", "--json")
    assert r.returncode == 0, r.stderr
    assert block["value"] in [h["text"] for h in json.loads(r.stdout)]
    msg_text = letta_message_words(doc)
    r = run("search", "agent.capsule", msg_text, "--mode", "lexical", "-k", "50", "--json")
    assert any(h["kind"] == "note" for h in json.loads(r.stdout)), r.stdout
    assert run("verify", "agent.capsule").returncode == 0
    r = run("export-af", "agent.capsule", "-o", "back.af")
    assert r.returncode == 0, r.stderr
    assert letta.read_af(tmp_path / "back.af").document == doc
    r = run("export-af", "agent.capsule", "-o", "back.af")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists (use --force to replace it)" in r.stderr
    assert run("export-af", "agent.capsule", "-o", "back.af", "--force").returncode == 0


def letta_message_words(doc: dict[str, Any]) -> str:
    """Some words of the first message with text."""
    for agent in doc["agents"]:
        for m in agent["messages"]:
            for part in m.get("content") or []:
                if part.get("text", "").split():
                    return " ".join(part["text"].split()[:6])
    raise AssertionError("no message with text")


# --- schemas, unknown fields, exactness -------------------------------------------------------


@pytest.mark.parametrize("twice", [False, True], ids=["plain", "encoded-twice"])
def test_v2_written_here_round_trips_with_unknown_fields(tmp_path: Path, twice: bool) -> None:
    src = _write(tmp_path / "sailor.af", v2_doc(), twice=twice)
    before, after, cap = _round_trip(tmp_path, src)
    assert _exact(after.document) == _exact(v2_doc())  # key order too, nested maps included
    assert after.encoded_twice is twice
    with capsule.open(cap) as c:
        notes = sorted(r.text for r in c.records(kind="note"))
        assert notes == ['assistant: send_message({"message": "Ahoy"})', "user: I sail on weekends"]
        assert [n.time for n in c.records(kind="note")] == [1761065756456634000, 1761065757000000000]
        m = next(m for m in _block_memories(c) if "letta:label:human" in m.tags)
        assert m.meta["letta_block"]["x_block"] == "kept"


def test_v1_schema_round_trips(tmp_path: Path) -> None:
    src = _write(tmp_path / "old.af", v1_doc())
    before, after, cap = _round_trip(tmp_path, src)
    assert before.schema == after.schema == "v1"
    assert _exact(after.document) == _exact(v1_doc())
    with capsule.open(cap) as c:
        assert sorted(m.text for m in _block_memories(c)) == ["I am a friendly assistant.",
                                                              "The user is called Ada and studies glaciers."]
        ident = c.state().identity
        assert ident is not None and (ident["agent_id"], ident["model"]) == ("old_agent", "letta-free")
        hits = c.search("moraines", mode="lexical")
        assert [h.text for h in hits] == ["user: tell me about moraines"]


def test_values_a_canonical_map_cannot_say_survive(tmp_path: Path) -> None:
    doc = v2_doc()
    decomposed = "Zoe\u0301"  # NFD: the capsule's text is NFC, the file's bytes are not
    doc["blocks"][0]["value"] = decomposed
    doc["blocks"][1]["metadata"] = {"e\u0301": -0.0}
    doc["agents"][0]["messages"][0]["x_big"] = 2**70
    doc["tools"][0]["x_tool"] = -0.0
    src = _write(tmp_path / "odd.af", doc)
    _, after, cap = _round_trip(tmp_path, src)
    assert _exact(after.document) == _exact(doc)
    with capsule.open(cap) as c:
        texts = [m.text for m in _block_memories(c)]
        assert unicodedata.normalize("NFC", decomposed) in texts


def test_identical_messages_and_empty_lists(tmp_path: Path) -> None:
    doc = v2_doc()
    msgs = doc["agents"][0]["messages"]
    msgs.append(copy.deepcopy(msgs[0]))  # same text, same time: one note, two messages
    doc["blocks"].append({"value": "", "label": "scratch", "id": "block-2"})
    doc["tools"] = []
    src = _write(tmp_path / "dup.af", doc)
    _, after, _ = _round_trip(tmp_path, src)
    assert _exact(after.document) == _exact(doc)


# --- the capsule is the live state ------------------------------------------------------------


def test_export_follows_the_capsule(tmp_path: Path) -> None:
    src = _write(tmp_path / "sailor.af", v2_doc())
    cap_path = tmp_path / "agent.capsule"
    letta.import_af(src, cap_path)
    with capsule.open(cap_path, "a") as cap:
        human = next(m for m in _block_memories(cap) if "letta:label:human" in m.tags)
        persona = next(m for m in _block_memories(cap) if "letta:label:persona" in m.tags)
        current = cap.state().identity
        assert current is not None
        ident = cap.get(current["id"])
        with cap.commit() as tx:
            tx.supersede(human.id, "Name: Chad\nLikes: sailing, chess")
            tx.forget(persona.id, reason="retired persona")
            tx.set_identity(ident.agent_id, name=ident.name, model=ident.model,
                            config={**ident.config, "system": "You are a chess coach."})
    out = tmp_path / "now.af"
    letta.export_af(cap_path, out)
    doc = letta.read_af(out).document
    assert [b["value"] for b in doc["blocks"]] == ["Name: Chad\nLikes: sailing, chess"]
    assert doc["blocks"][0]["x_block"] == "kept" and doc["blocks"][0]["id"] == "block-0"
    assert doc["agents"][0]["block_ids"] == ["block-0"]
    assert doc["agents"][0]["system"] == "You are a chess coach."
    assert doc["agents"][0]["llm_config"] == v2_doc()["agents"][0]["llm_config"]


def test_export_as_of_a_checkpoint_and_after_compaction(tmp_path: Path) -> None:
    src = _write(tmp_path / "sailor.af", v2_doc())
    cap_path = tmp_path / "agent.capsule"
    letta.import_af(src, cap_path)
    with capsule.open(cap_path, "a") as cap:
        with cap.commit() as tx:
            tx.checkpoint("imported", key=capsule.generate_key())
        human = next(m for m in _block_memories(cap) if "letta:label:human" in m.tags)
        with cap.commit() as tx:
            tx.supersede(human.id, "Name: Chad")
    then = letta.export_agent(cap_path, at="imported")
    assert _exact(then.document) == _exact(v2_doc())
    small = tmp_path / "small.capsule"
    capsule.compact(cap_path, small, keep="live")  # the letta.* records are kept (12.3)
    now = letta.export_agent(small).document
    assert [b["value"] for b in now["blocks"]] == ["Name: Chad", "I am Sam, a patient coach."]
    assert now["tools"] == v2_doc()["tools"] and now["agents"][0]["messages"] == v2_doc()["agents"][0]["messages"]


def test_export_reads_only_and_writes_whole_files(tmp_path: Path) -> None:
    src = _write(tmp_path / "sailor.af", v2_doc())
    cap_path = tmp_path / "agent.capsule"
    letta.import_af(src, cap_path)
    before = cap_path.read_bytes()
    out = tmp_path / "out.af"
    out.write_bytes(b"precious")
    with pytest.raises(capsule.AlreadyExists):
        letta.export_af(cap_path, out)
    assert out.read_bytes() == b"precious"
    letta.export_af(cap_path, out, overwrite=True)
    assert cap_path.read_bytes() == before  # opened read-only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.capsule", "out.af", "sailor.af"]  # no temp left
    plain = tmp_path / "plain.capsule"
    capsule.create(plain).close()
    with pytest.raises(AgentFileError, match="holds no Letta agent file"):
        letta.export_af(plain, tmp_path / "x.af")
    assert not (tmp_path / "x.af").exists()


def test_import_refuses_an_existing_capsule(tmp_path: Path) -> None:
    src = _write(tmp_path / "sailor.af", v2_doc())
    dst = tmp_path / "agent.capsule"
    capsule.create(dst).close()
    before = dst.read_bytes()
    with pytest.raises(capsule.AlreadyExists):
        letta.import_af(src, dst)
    assert dst.read_bytes() == before


# --- bad input --------------------------------------------------------------------------------


def _bad(mutate: Any) -> bytes:
    doc = v2_doc()
    mutate(doc)
    return json.dumps(doc).encode()


BAD: list[tuple[str, bytes, str]] = [
    ("not-json", b"{\"agents\": [", "$: not JSON: Expecting value at line 1 column 13"),
    ("not-utf8", b"\xff\xfe{}", "$: not UTF-8 text (byte 0)"),
    ("array", b"[1, 2]", "$: expected an object (a Letta agent file), got an array"),
    ("string-not-json", json.dumps("hello").encode(), "$: a JSON string that does not hold JSON: Expecting value"),
    ("no-schema", b'{"name": "x"}', "$: not a Letta agent file: no `agents` (schema v2) and no `core_memory`"),
    ("agents-object", b'{"agents": {}}', "agents: expected an array, got an object"),
    ("created-at-number", _bad(lambda d: d["agents"][0]["messages"][1].update(created_at=5)),
     "agents[0].messages[1].created_at: expected a string, got a number"),
    ("created-at-text", _bad(lambda d: d["agents"][0]["messages"][0].update(created_at="yesterday")),
     "agents[0].messages[0].created_at: not an ISO-8601 time: 'yesterday'"),
    ("role-missing", _bad(lambda d: d["agents"][0]["messages"][0].pop("role")),
     "agents[0].messages[0].role: expected a string, got null"),
    ("content-part", _bad(lambda d: d["agents"][0]["messages"][0].update(content=[{"text": 3}])),
     "agents[0].messages[0].content[0].text: expected a string or null, got a number"),
    ("block-value", _bad(lambda d: d["blocks"][1].update(value=None)), "blocks[1].value: expected a string, got null"),
    ("tool-name", _bad(lambda d: d["tools"][0].update(name=["x"])), "tools[0].name: expected a string or null"),
    ("llm-config", _bad(lambda d: d["agents"][0].update(llm_config="gpt")),
     "agents[0].llm_config: expected an object or null, got a string"),
    ("v1-block", json.dumps({**v1_doc(), "core_memory": [{"label": "human"}]}).encode(),
     "core_memory[0].value: expected a string, got null"),
    ("twice-bad-shape", json.dumps(json.dumps({"agents": [5]})).encode(), "agents[0]: expected an object, got a number"),
]


@pytest.mark.parametrize(("data", "message"), [(d, m) for _, d, m in BAD], ids=[n for n, _, _ in BAD])
def test_invalid_files_name_the_json_path(tmp_path: Path, data: bytes, message: str) -> None:
    src = tmp_path / "bad.af"
    src.write_bytes(data)
    dst = tmp_path / "agent.capsule"
    with pytest.raises(AgentFileError) as e:
        letta.import_af(src, dst)
    assert str(e.value).startswith(f"{src}: {message}")
    assert isinstance(e.value, capsule.DataError)
    assert not dst.exists()
    r = runner.invoke(app, ["import-af", str(src), "-o", str(dst)])
    assert r.exit_code == 1
    assert r.stderr.startswith(f"capsule: error: {src}: {message}") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.output and not dst.exists()


def test_cli_usage_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["import-af", str(tmp_path / "missing.af"), "-o", str(tmp_path / "a.capsule")])
    assert r.exit_code == 2 and "no such file" in r.stderr and not (tmp_path / "a.capsule").exists()
    r = runner.invoke(app, ["export-af", str(tmp_path / "missing.capsule"), "-o", str(tmp_path / "a.af")])
    assert r.exit_code != 0 and r.stderr.startswith("capsule: error:") and not (tmp_path / "a.af").exists()
    for cmd in ("import-af", "export-af"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Examples:" in r.output


def test_record_too_large_is_named_before_anything_is_written(tmp_path: Path) -> None:
    doc = v2_doc()
    doc["agents"][0]["messages"][0]["content"][0]["text"] = "x" * (17 * 1024 * 1024)
    src = _write(tmp_path / "huge.af", doc)
    dst = tmp_path / "agent.capsule"
    with pytest.raises(AgentFileError, match=r"agents\[0\]\.messages\[0\]: too large for one record"):
        letta.import_af(src, dst)
    assert not dst.exists()
