"""Regression tests from a hostile review of the Letta agent-file integration and `capsule export`.

Each test is a defect found by attacking docs/letta.md and docs/export.md as a demanding user
(malformed .af files, forged capsules, redactions, outputs that name the capsule), or a promise
that held and is worth keeping (no traceback, nothing written on error, secrets never leak).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.format import canonical as canon
from capsule.format.records import GenericRecord
from capsule.integrations import letta
from capsule.integrations.export import export
from capsule.integrations.letta import AgentFileError

runner = CliRunner()
SECRET = "hunter2-SECRET-7f3a"


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def _doc(**top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "agents": [{"id": "agent-0", "name": "a", "block_ids": ["b0", "b1"], "messages": [
            {"role": "user", "created_at": "2025-01-01T00:00:00Z",
             "content": [{"type": "text", "text": f"my password is {SECRET}"}]}]}],
        "blocks": [{"id": "b0", "label": "human", "value": f"Chad {SECRET}"},
                   {"id": "b1", "label": "persona", "value": "a bot"}],
        "tools": []}
    doc.update(top)
    return doc


def _af(tmp_path: Path, text: str | bytes, name: str = "in.af") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    return p


def _cli_fails(args: list[str], code: int) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == code, (res.exit_code, res.output)
    assert "Traceback" not in res.output and "internal error" not in res.output, res.output
    return res.output


# --- import: hostile .af files ------------------------------------------------------------------


@pytest.mark.parametrize(("text", "path", "reason"), [
    # an integer of more than 4300 digits: Python's int parser refuses it with a plain ValueError
    ('{"agents": [], "big": ' + "9" * 5000 + "}", "$", "not JSON"),
    # a duplicate key: json keeps the last value, so the first one would be dropped silently
    ('{"agents": [{"name": "a", "name": "b"}], "blocks": [], "tools": []}', "agents[0]", "duplicate key 'name'"),
    ('{"agents": [], "x": 1, "x": 2}', "$", "duplicate key 'x'"),
    # text no record can hold (a lone surrogate): named by its JSON path, not by a record field
    ('{"agents": [{"id": "a", "messages": [{"role": "user", "content": "x\\ud800y"}]}]}',
     "agents[0].messages[0]", "Unicode"),
    ('{"agents": [{"id": "x\\ud800", "name": "a"}]}', "agents[0]", "Unicode"),
    ('{"core_memory": [], "name": "\\udfff"}', "$", "Unicode"),
    # a time past what int64 nanoseconds hold is out of range, not "not ISO-8601"
    ('{"agents": [{"messages": [{"role": "user", "created_at": "9999-12-31T23:59:59Z"}]}]}',
     "agents[0].messages[0].created_at", "range"),
    # three times encoded: a JSON string of a JSON string
    (json.dumps(json.dumps(json.dumps({"agents": []}))), "$", "expected an object"),
])
def test_hostile_af_is_an_agent_file_error_and_writes_nothing(tmp_path: Path, text: str, path: str,
                                                              reason: str) -> None:
    src, dst = _af(tmp_path, text), tmp_path / "out.capsule"
    with pytest.raises(AgentFileError) as info:
        letta.import_af(src, dst)
    assert info.value.path == path, str(info.value)
    assert reason in info.value.reason, str(info.value)
    assert str(src) in str(info.value)
    assert not dst.exists()
    out = _cli_fails(["import-af", str(src), "-o", str(dst)], 1)
    assert out.startswith(f"capsule: error: {src}: {path}: "), out
    assert not dst.exists()


def test_import_of_a_folder_or_a_fifo_says_what_it_is(tmp_path: Path) -> None:
    out = _cli_fails(["import-af", str(tmp_path), "-o", str(tmp_path / "x.capsule")], 2)
    assert "is a directory" in out, out
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in _cli_fails(["import-af", str(fifo), "-o", str(tmp_path / "x.capsule")], 2)
    assert not (tmp_path / "x.capsule").exists()


@pytest.mark.parametrize("extra", [
    {"neg_zero": -0.0, "nan": float("nan"), "inf": float("-inf"), "big": 2**70, "small": -(2**64)},
    {"nfd": "Cafe\u0301", "keys": {"\u00e9": 1, "e\u0301": 2}, "nul": "a\u0000b"},
    {"deep": json.loads("[" * 800 + "]" * 800)},
])
def test_odd_unknown_fields_round_trip_byte_exact(tmp_path: Path, extra: dict[str, Any]) -> None:
    doc = _doc(**extra)
    doc["tools"] = [{"id": "t0", "name": "f", "source_code": "def f():\n    return '\u0000'\n", **extra}]
    doc["blocks"][0] |= extra
    src = _af(tmp_path, json.dumps(doc, indent=2, ensure_ascii=False))
    letta.import_af(src, tmp_path / "a.capsule")
    letta.export_af(tmp_path / "a.capsule", tmp_path / "back.af")
    assert (tmp_path / "back.af").read_bytes() == src.read_bytes()


# --- export-af: the capsule is only read ---------------------------------------------------------


def _imported(tmp_path: Path, doc: dict[str, Any] | None = None) -> Path:
    src = _af(tmp_path, json.dumps(doc or _doc(), indent=2))
    cap = tmp_path / "agent.capsule"
    letta.import_af(src, cap)
    return cap


def test_export_af_never_overwrites_the_capsule(tmp_path: Path) -> None:
    cap = _imported(tmp_path)
    before = cap.read_bytes()
    with pytest.raises(capsule.UsageError, match="the capsule"):
        letta.export_af(cap, cap, overwrite=True)
    link = tmp_path / "link.af"
    link.symlink_to(cap)
    with pytest.raises(capsule.UsageError, match="the capsule"):
        letta.export_af(cap, link, overwrite=True)
    assert "the capsule" in _cli_fails(["export-af", str(cap), "-o", str(cap), "--force"], 2)
    assert cap.read_bytes() == before
    assert capsule.verify(cap).ok


def test_export_af_file_is_readable_like_any_export(tmp_path: Path) -> None:
    cap = _imported(tmp_path)
    out = tmp_path / "back.af"
    letta.export_af(cap, out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def _redact(cap: Path, kinds: tuple[str, ...]) -> int:
    """Redact the records holding SECRET of ``kinds``; returns the seq before the redaction."""
    with capsule.open(cap, mode="a") as c:
        seq = c.log(1)[-1].seq
        ids = [r.id for k in kinds for r in c.records(kind=k)
               if SECRET in json.dumps(getattr(r, "value", None) or getattr(r, "text", ""))]
        assert len(ids) == len(kinds)
        with c.commit() as tx:
            for rid in ids:
                tx.redact(rid, reason="a password")
    return seq


def test_export_af_leaves_out_redacted_messages_and_blocks(tmp_path: Path) -> None:
    cap = _imported(tmp_path)
    before = _redact(cap, ("memory", "note", "letta.message"))
    for at in (None, before):  # a view before the redaction still withholds the payload (7.7.1)
        out = tmp_path / f"back-{at}.af"
        rep = letta.export_af(cap, out, at=at)
        data = out.read_bytes()
        assert SECRET.encode() not in data
        doc = json.loads(data)
        assert doc["agents"][0]["messages"] == []
        assert [b["id"] for b in doc["blocks"]] == ["b1"]
        assert doc["agents"][0]["block_ids"] == ["b1"]
        assert (rep.messages, rep.blocks) == (0, 1)


def test_export_af_names_a_redacted_agent_record(tmp_path: Path) -> None:
    cap = _imported(tmp_path)
    with capsule.open(cap, mode="a") as c:
        rid = next(iter(c.records(kind="letta.agent"))).id
        with c.commit() as tx:
            tx.redact(rid)
    with pytest.raises(AgentFileError, match="redacted"):
        letta.export_af(cap, tmp_path / "x.af")
    assert "redacted" in _cli_fails(["export-af", str(cap), "-o", str(tmp_path / "x.af")], 1)
    assert not (tmp_path / "x.af").exists()


# --- export-af: capsules written by another tool -------------------------------------------------


def _forged(tmp_path: Path, recs: list[dict[str, Any]]) -> Path:
    p = tmp_path / "forged.capsule"
    with capsule.create(p) as c, c.commit() as tx:
        for r in recs:
            if r["kind"].startswith("letta."):
                tx.put(GenericRecord(r["kind"], canon.normalize(r)))
            else:
                tx.put_value(r)
    return p


def _d(**kw: Any) -> dict[str, Any]:
    return {"kind": "letta.document", "time": 0, "schema": "v2", "document": {}, **kw}


def _a(i: int = 0, **kw: Any) -> dict[str, Any]:
    return {"kind": "letta.agent", "time": 0, "index": i, "agent": {"id": "x"}, **kw}


def _m(a: int = 0, j: int = 0, role: str = "user") -> dict[str, Any]:
    return {"kind": "letta.message", "time": 0, "agent": a, "index": j, "message": {"role": role}}


@pytest.mark.parametrize(("recs", "reason"), [
    ([_d(counts={"agents": 10**15, "messages": []}), _a()], "agents"),  # was a MemoryError
    ([_d(counts={"agents": 1, "messages": [10**15]}), _a(), _m()], "messages"),  # was an endless loop
    ([_d(schema="v1")], "one agent"),  # was an IndexError
    ([_d(), _a(agent=None, agent_json=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")], "agent"),  # recursion
    ([_d(), _a(), {"kind": "memory", "time": 0, "text": "t",
                   "meta": {"letta_block": {}, "letta_value": b"\xff\xfe"}}], "letta_value"),  # UnicodeDecodeError
    ([_d(), _a(), _a(0, agent={"id": "y"})], "two"),  # two records at one position: one was dropped
    ([_d(counts={"agents": 1, "messages": [1]}), _a(), _m(), _m(role="assistant")], "two"),
])
def test_forged_capsule_is_a_clean_error(tmp_path: Path, recs: list[dict[str, Any]], reason: str) -> None:
    cap = _forged(tmp_path, recs)
    out = tmp_path / "x.af"
    with pytest.raises(AgentFileError) as info:
        letta.export_af(cap, out)
    assert reason in str(info.value)
    _cli_fails(["export-af", str(cap), "-o", str(out)], 1)
    assert not out.exists()


# --- capsule export: secrets, outputs, the JSONL of an imported agent -----------------------------


def _raw_parquet_text(path: Path) -> str:
    """Every string value of every column, read back through pyarrow (pages decompressed)."""
    pq = pytest.importorskip("pyarrow.parquet")
    t = pq.read_table(path)
    return json.dumps({n: t.column(n).cast("string").to_pylist() if n != "tags" else t.column(n).to_pylist()
                       for n in t.column_names if n != "embedding"}, ensure_ascii=False)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("history", [False, True])
def test_redacted_text_never_reaches_an_export(tmp_path: Path, fmt: str, history: bool) -> None:
    cap = _imported(tmp_path)
    before = _redact(cap, ("memory", "note", "letta.message"))
    for at in (None, before):
        out = tmp_path / f"x-{at}.{fmt}"
        res = export(cap, out, format=fmt, at=at, history=history)  # type: ignore[arg-type]
        assert SECRET.encode() not in out.read_bytes()
        if fmt == "parquet":
            assert SECRET not in _raw_parquet_text(out)
        else:
            assert res.skipped_redacted == (3 if history or at is not None else 0)


def test_jsonl_of_an_imported_agent_says_why_it_does_not_re_import(tmp_path: Path) -> None:
    cap = _imported(tmp_path)
    res = runner.invoke(app, ["export", str(cap), "-o", str(tmp_path / "a.jsonl")])
    assert res.exit_code == 0, res.output
    assert "letta.message" in res.output and "application" in res.output, res.output
    assert "written by the capsule itself" not in res.output, res.output
    # the projections alone (memories, notes, identity) do re-import to the same records
    res = runner.invoke(app, ["export", str(cap), "-o", str(tmp_path / "p.jsonl"), "--kind", "memory",
                              "--kind", "note", "--kind", "identity", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["reimportable"] is True
    copy = tmp_path / "copy.capsule"
    capsule.create(copy).close()
    res = runner.invoke(app, ["put", str(copy), "--jsonl", str(tmp_path / "p.jsonl")])
    assert res.exit_code == 0, res.output
    with capsule.open(cap) as a, capsule.open(copy) as b:
        want = sorted(r.id for k in ("memory", "note", "identity") for r in a.records(kind=k))
        assert sorted(r.id for r in b.records()) == want


def test_export_output_symlinks_never_write_through(tmp_path: Path) -> None:
    cap = _imported(tmp_path)
    victim = tmp_path / "passwd"
    victim.write_text("root:x:0:0\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(victim)
    assert "exists" in _cli_fails(["export", str(cap), "-o", str(link)], 2)
    res = runner.invoke(app, ["export", str(cap), "-o", str(link), "--force"])
    assert res.exit_code == 0, res.output
    assert victim.read_text() == "root:x:0:0\n"  # the link is replaced, its target never written
    to_cap = tmp_path / "cap-link.jsonl"
    to_cap.symlink_to(cap)
    before = cap.read_bytes()
    assert "the capsule" in _cli_fails(["export", str(cap), "-o", str(to_cap), "--force"], 2)
    assert cap.read_bytes() == before


@pytest.mark.parametrize("agent", ["../../etc", "a/b", "..", "agent=1"])
def test_by_agent_paths_stay_inside_the_dataset(tmp_path: Path, agent: str) -> None:
    pytest.importorskip("pyarrow")
    cap = tmp_path / "a.capsule"
    with capsule.create(cap) as c, c.commit() as tx:
        tx.set_identity(agent)
        tx.remember("m")
    ds = tmp_path / "ds"
    res = export(cap, ds, format="parquet", partition="agent")
    out = Path(res.out).resolve()
    assert out.parent.parent == ds.resolve()
    assert out.parent.name.startswith("agent=") and "/" not in out.parent.name[6:]


def test_export_af_leaves_out_forgotten_messages_and_tools(tmp_path: Path) -> None:
    doc = _doc(tools=[{"id": "t0", "name": "f"}, {"id": "t1", "name": "g"}])
    doc["agents"][0]["tool_ids"] = ["t0", "t1"]
    doc["agents"][0]["messages"].append({"role": "assistant", "created_at": "2025-01-01T00:00:01Z", "content": "ok"})
    cap = _imported(tmp_path, doc)
    with capsule.open(cap, mode="a") as c:
        tool = next(r.id for r in c.records(kind="letta.tool") if r.value["index"] == 0)
        msg = next(r.id for r in c.records(kind="letta.message") if r.value["index"] == 0)
        with c.commit() as tx:
            tx.forget(tool)
            tx.forget(msg)
    letta.export_af(cap, tmp_path / "b.af")
    back = json.loads((tmp_path / "b.af").read_text())
    assert [t["id"] for t in back["tools"]] == ["t1"]
    assert back["agents"][0]["tool_ids"] == ["t1"]
    assert [m["role"] for m in back["agents"][0]["messages"]] == ["assistant"]
    # the view before the forget still has them
    whole = letta.export_agent(cap, at=1).document
    assert whole == json.loads((tmp_path / "in.af").read_text())


def test_by_agent_with_an_agent_id_too_long_for_a_folder_makes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    cap = tmp_path / "a.capsule"
    with capsule.create(cap) as c, c.commit() as tx:
        tx.set_identity("x" * 300)
    ds = tmp_path / "ds"
    out = _cli_fails(["export", str(cap), "-f", "parquet", "--by-agent", "-o", str(ds)], 2)
    assert "too long" in out and len(out) < 200, out
    assert not ds.exists()


def test_import_never_writes_through_a_symlink_and_leaves_no_temporary(tmp_path: Path) -> None:
    src = _af(tmp_path, json.dumps(_doc(), indent=2))
    elsewhere = tmp_path / "elsewhere.capsule"
    link = tmp_path / "agent.capsule"
    link.symlink_to(elsewhere)  # dangling: `exists()` is false, but the name is taken
    with pytest.raises(capsule.AlreadyExists):
        letta.import_af(src, link)
    assert not elsewhere.exists() and link.is_symlink()
    letta.import_af(src, tmp_path / "ok.capsule")
    with pytest.raises(AgentFileError):
        letta.import_af(_af(tmp_path, '{"agents": [], "x": 1, "x": 2}', "bad.af"), tmp_path / "bad.capsule")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.capsule", "bad.af", "in.af", "ok.capsule"]
    assert capsule.verify(tmp_path / "ok.capsule").ok


# --- a fresh-context review (2026-12-05) -----------------------------------------------------------


def test_export_af_keeps_block_ids_that_name_no_block(tmp_path: Path) -> None:
    """Only the id of a block forgotten in the capsule leaves block_ids; an entry naming no block
    of the file (or not a string) round-trips as imported, as a dangling tool id does."""
    doc = _doc()
    doc["agents"][0]["block_ids"] = ["b0", "block-nope", 7, "b1"]
    src = _af(tmp_path, json.dumps(doc))
    cap = tmp_path / "x.capsule"
    letta.import_af(src, cap)
    out = tmp_path / "back.af"
    letta.export_af(cap, out)
    assert json.loads(out.read_bytes())["agents"][0]["block_ids"] == ["b0", "block-nope", 7, "b1"]
    with capsule.open(cap, mode="a") as c:
        b0 = next(e["id"] for es in c.state().to_dict()["memories"].values() for e in es
                  if e["text"].startswith("Chad"))
        with c.commit() as tx:
            tx.forget(b0)
    letta.export_af(cap, out, overwrite=True)
    assert json.loads(out.read_bytes())["agents"][0]["block_ids"] == ["block-nope", 7, "b1"]


def test_export_af_refuses_an_identity_config_import_af_would_refuse(tmp_path: Path) -> None:
    cap = tmp_path / "x.capsule"
    letta.import_af(_af(tmp_path, json.dumps(_doc())), cap)
    with capsule.open(cap, mode="a") as c, c.commit() as tx:
        tx.set_identity(agent_id="agent-0", name="a", config={"system": 5})
    out = tmp_path / "back.af"
    with pytest.raises(AgentFileError, match=r"config\.system: expected a string or null, got a number"):
        letta.export_af(cap, out)
    assert not out.exists()
    res = runner.invoke(app, ["export-af", str(cap), "-o", str(out)])
    assert res.exit_code != 0 and "config.system" in res.output and not out.exists()


def test_parquet_dim_other_than_the_capsules_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    cap = tmp_path / "v.capsule"
    with capsule.create(cap) as c, c.commit() as tx:
        tx.remember("a vector", embedding=[0.1] * 8)
    out = tmp_path / "v.parquet"
    res = runner.invoke(app, ["export", str(cap), "-f", "parquet", "-o", str(out), "--dim", "3"])
    assert res.exit_code == 2, res.output
    assert "dim 3 was asked for, but this capsule's vectors have 8" in res.output and not out.exists()


def test_dash_output_is_standard_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o -` made a file named '-'; it now writes JSONL (and an agent file) to standard output,
    and is refused where it cannot (parquet, --json), never creating '-'."""
    monkeypatch.chdir(tmp_path)
    cap = tmp_path / "x.capsule"
    letta.import_af(_af(tmp_path, json.dumps(_doc())), cap)
    res = runner.invoke(app, ["export", str(cap), "-o", "-", "--kind", "memory"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert sorted(x["text"] for x in lines) == ["Chad " + SECRET, "a bot"]
    af = runner.invoke(app, ["export-af", str(cap), "-o", "-"])
    assert af.exit_code == 0 and json.loads(af.stdout)["blocks"][1]["id"] == "b1"
    _cli_fails(["export", str(cap), "-o", "-", "-f", "parquet"], 2)
    _cli_fails(["export", str(cap), "-o", "-", "--json"], 2)
    assert not (tmp_path / "-").exists()


def test_import_into_a_missing_folder_names_it(tmp_path: Path) -> None:
    out = _cli_fails(["import-af", str(_af(tmp_path, json.dumps(_doc()))), "-o", str(tmp_path / "no" / "x.capsule")], 2)
    assert "no such folder" in out and ".importing" not in out
