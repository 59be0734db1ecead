"""``capsule serve FILE --mcp``: the MCP server, driven by the official client (issue 13).

Every session spawns the real server (the installed ``capsule`` console script) through
``mcp.client.stdio.stdio_client`` and talks to it with ``ClientSession``; answers are
compared with what the CLI prints with ``--json`` for the same question. One test talks
raw JSON-RPC over the pipes instead, because it has to close them mid-call (a client
that disconnects) and then watch the server's exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from capsule_cli.main import app
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.shared.exceptions import McpError
from typer.testing import CliRunner

import capsule

BIN = Path(sys.executable).with_name("capsule")
SERVE = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "capsule_cli.main"]
WRITE_TOOLS = {"remember", "decide", "checkpoint"}
READ_TOOLS = {"search", "get", "beliefs", "why", "timeline"}
runner = CliRunner()


def cli_json(*args: str) -> Any:
    r = runner.invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture
def cap_path(tmp_path: Path) -> Path:
    p = tmp_path / "agent.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        fact = tx.remember("deploys are frozen on Fridays", tags=["policy"], meta={"source": "runbook"})
        tx.remember("alice owns the billing service", tags=["people"])
        tx.decide("ship on Thursday", rationale="the Friday freeze", evidence=[fact])
    return p


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    k = tmp_path / "agent.key"
    capsule.save_private_key(k, capsule.generate_key(), passphrase=None)
    return k


@asynccontextmanager
async def session(path: Path, *args: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(command=SERVE[0], args=[*SERVE[1:], "serve", str(path), "--mcp", *args],
                                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    with open(os.devnull, "w") as devnull:
        async with stdio_client(params, errlog=devnull) as (r, w), ClientSession(r, w) as s:
            await s.initialize()
            yield s


def run(fn: Callable[[], Awaitable[None]]) -> None:
    anyio.run(fn)


async def ok(s: ClientSession, name: str, args: dict[str, Any]) -> dict[str, Any]:
    res = await s.call_tool(name, args)
    assert not res.isError, (name, args, res.content)
    assert res.structuredContent is not None
    assert json.loads(res.content[0].text) == res.structuredContent  # type: ignore[union-attr]
    return res.structuredContent


async def refused(s: ClientSession, name: str, args: dict[str, Any]) -> str:
    res = await s.call_tool(name, args)
    assert res.isError, (name, args, res.structuredContent)
    text = res.content[0].text  # type: ignore[union-attr]
    assert "\n" not in text and "Traceback" not in text
    return text


def test_lists_tools_with_described_schemas_and_resources(cap_path: Path) -> None:
    async def go() -> None:
        async with session(cap_path) as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
            assert set(tools) == WRITE_TOOLS | READ_TOOLS
            for t in tools.values():
                assert t.description and len(t.description) > 40
                schema = t.inputSchema
                assert schema["type"] == "object" and schema["additionalProperties"] is False
                for prop, sub in schema["properties"].items():
                    assert sub.get("description"), f"{t.name}.{prop} has no description"
                assert t.annotations is not None and t.annotations.readOnlyHint == (t.name in READ_TOOLS)
            assert all(t.outputSchema and t.outputSchema["type"] == "object" for t in tools.values())
            assert set(tools["remember"].outputSchema["required"]) == {"id", "ids", "count", "new"}  # type: ignore[index]
            assert tools["remember"].inputSchema["required"] == ["text"]
            assert tools["checkpoint"].inputSchema["required"] == ["label"]
            res = {str(r.uri): r for r in (await s.list_resources()).resources}
            assert set(res) == {"capsule://summary", "capsule://state"}
            assert all(r.mimeType == "application/json" for r in res.values())
    run(go)


def test_every_tool_answers_as_the_cli_does(cap_path: Path, key_path: Path) -> None:
    async def go() -> None:
        async with session(cap_path, "--key", str(key_path)) as s:
            m = await ok(s, "remember", {"text": "the p95 budget is 300 ms", "tags": ["slo"], "meta": {"ms": 300},
                                         "tier": "validated", "source": "sre", "valid_from": "2026-01-01T00:00:00Z"})
            assert m["count"] == 1 and m["new"] == 1 and m["ids"] == [m["id"]] and len(m["id"]) == 64
            d = await ok(s, "decide", {"summary": "page alice for billing", "rationale": "she owns it",
                                       "evidence": [m["id"][:8]], "alternatives": ["page bob"]})
            ck = await ok(s, "checkpoint", {"label": "day-1"})
            assert ck["label"] == "day-1"

            hits = await ok(s, "search", {"query": "p95 budget", "k": 3})
            assert hits["hits"][0]["id"] == m["id"]
            assert hits["hits"] == cli_json("search", str(cap_path), "p95 budget", "-k", "3")
            assert hits["ranking"]["mode"] == hits["hits"][0]["mode"] and hits["ranking"]["why"]
            listing = await ok(s, "search", {"tags": ["policy"]})
            assert [h["text"] for h in listing["hits"]] == ["deploys are frozen on Fridays"]
            got = await ok(s, "get", {"id": d["id"][:10]})
            assert got == cli_json("get", str(cap_path), d["id"])
            assert got["evidence"] == [m["id"]]
            assert await ok(s, "beliefs", {"limit": 3}) == cli_json("beliefs", str(cap_path), "--limit", "3")
            why = await ok(s, "why", {"id": d["id"]})
            assert why == cli_json("why", str(cap_path), d["id"])
            assert why["root"]["evidence"][0]["id"] == m["id"]
            assert why["checkpoint"]["label"] == "day-1"
            tl = await ok(s, "timeline", {"kinds": ["checkpoint", "commit"], "limit": 50})
            assert tl == cli_json("timeline", str(cap_path), "--kind", "checkpoint", "--kind", "commit",
                                  "--limit", "50")
            assert any(e["kind"] == "checkpoint" for e in tl["events"])
            then = await ok(s, "get", {"id": got["id"], "at": "day-1"})
            assert then == got

            summary = json.loads((await s.read_resource("capsule://summary")).contents[0].text)  # type: ignore[union-attr]
            cli_summary = cli_json("open", str(cap_path))
            assert {k: v for k, v in summary.items() if k != "file"} == {k: v for k, v in cli_summary.items()
                                                                        if k != "file"}
            state = json.loads((await s.read_resource("capsule://state")).contents[0].text)  # type: ignore[union-attr]
            assert state == cli_json("state", str(cap_path))
            assert state["state_root"] == summary["state_root"]
            with pytest.raises(McpError):
                await s.read_resource("capsule://nothing")
    run(go)
    assert capsule.verify(cap_path).ok
    with capsule.open(cap_path) as cap:
        assert [c.label for c in cap.checkpoints()] == ["day-1"]


BAD_CALLS: list[tuple[str, dict[str, Any], str]] = [
    ("remember", {}, "validation"),  # text is required
    ("remember", {"text": 5}, "validation"),
    ("remember", {"text": "x", "colour": "red"}, "validation"),  # a misspelt argument is not ignored
    ("remember", {"text": "x", "tier": "gold"}, "validation"),
    ("remember", {"text": "x", "meta": {"deep": {"er": 1}}}, "validation"),
    ("remember", {"text": "x", "valid_from": "2026-02-01T00:00:00Z", "valid_to": "2026-01-01T00:00:00Z"}, ""),
    ("remember", {"text": "x", "valid_from": "not a time"}, ""),
    ("decide", {"summary": "x", "evidence": ["ffffffff"]}, "not found"),
    ("decide", {"summary": "x", "evidence": ["zz"]}, "validation"),
    ("get", {"id": "0000000000"}, "not found"),
    ("get", {"id": "not hex"}, "validation"),
    ("why", {"id": "ffffffffff"}, "not found"),
    ("search", {"k": 0}, "validation"),
    ("search", {"mode": "psychic"}, "validation"),
    ("search", {"query": "x", "at": "no-such-label"}, ""),
    ("timeline", {"since": "yesterday"}, ""),
    ("checkpoint", {"label": "day-1"}, "no signing key"),
    ("delete_everything", {}, "unknown tool"),
]


def test_bad_arguments_are_error_results_and_leave_the_capsule_unchanged(cap_path: Path) -> None:
    before = cap_path.read_bytes()

    async def go() -> None:
        async with session(cap_path) as s:
            for name, args, expect in BAD_CALLS:
                text = await refused(s, name, args)
                assert expect.lower() in text.lower(), (name, args, text)
            assert cap_path.read_bytes() == before
            res = await ok(s, "remember", {"text": "still serving after the refusals"})  # the server lives on
            assert res["new"] == 1
    run(go)
    assert capsule.verify(cap_path).ok


def test_read_only_offers_no_writes_and_never_writes(cap_path: Path) -> None:
    before, mtime = cap_path.read_bytes(), cap_path.stat().st_mtime_ns

    async def go() -> None:
        async with session(cap_path, "--read-only") as s:
            assert {t.name for t in (await s.list_tools()).tools} == READ_TOOLS
            for name in WRITE_TOOLS:
                assert (await refused(s, name, {"text": "x", "summary": "x", "label": "x"})).startswith("read-only: ")
            hits = (await ok(s, "search", {"query": "billing"}))["hits"]
            for name, args in (("get", {"id": hits[0]["id"]}), ("beliefs", {}), ("why", {"id": hits[0]["id"]}),
                               ("timeline", {})):
                await ok(s, name, args)
            for uri in ("capsule://summary", "capsule://state"):
                await s.read_resource(uri)
            assert cap_path.read_bytes() == before and cap_path.stat().st_mtime_ns == mtime
            # a writer elsewhere: the read-only server sees its commit on the next read
            with capsule.open(cap_path, "a") as w, w.commit() as tx:
                rid = tx.remember("written by another process")
            after = cap_path.read_bytes()
            assert (await ok(s, "get", {"id": rid}))["text"] == "written by another process"
            assert cap_path.read_bytes() == after
    run(go)
    assert cap_path.read_bytes()[: len(before)] == before and cap_path.stat().st_mtime_ns > mtime
    r = runner.invoke(app, ["serve", str(cap_path), "--mcp", "--read-only", "--key", str(cap_path)])
    assert r.exit_code == 2 and "--read-only" in r.stderr


def test_two_clients_on_one_file_both_write(cap_path: Path) -> None:
    async def go() -> None:
        async with session(cap_path) as a, session(cap_path) as b:
            ids: list[str] = []

            async def writer(s: ClientSession, who: str) -> None:
                for i in range(6):
                    ids.append((await ok(s, "remember", {"text": f"{who} note {i}"}))["id"])

            async with anyio.create_task_group() as tg:
                tg.start_soon(writer, a, "a")
                tg.start_soon(writer, b, "b")
            assert len(set(ids)) == 12
            seen = await ok(b, "search", {"query": "note", "k": 50, "mode": "lexical"})
            assert {h["id"] for h in seen["hits"]} >= set(ids)  # b reads what a wrote
            # compacted in place (a new file renamed over the path): both servers follow it
            capsule.compact(cap_path)
            new = await ok(a, "remember", {"text": "after the compaction"})
            assert (await ok(b, "get", {"id": new["id"]}))["text"] == "after the compaction"
            summary = json.loads((await b.read_resource("capsule://summary")).contents[0].text)  # type: ignore[union-attr]
            assert summary["records"] == cli_json("open", str(cap_path))["records"]
    run(go)
    assert capsule.verify(cap_path).ok
    with capsule.open(cap_path) as cap:
        assert sum(1 for r in cap.records("memory") if " note " in r.text) == 12
        assert [r.text for r in cap.records("memory")][-1] == "after the compaction"


def test_a_held_lock_is_a_locked_error_result_then_the_write_goes_through(cap_path: Path) -> None:
    async def go() -> None:
        async with session(cap_path, "--wait", "0.3") as s:
            with capsule.open(cap_path, "a"):  # another writer holds the capsule
                before = cap_path.read_bytes()
                t0 = time.monotonic()
                text = await refused(s, "remember", {"text": "blocked"})
                assert text.startswith("locked:") and str(os.getpid()) in text, text
                assert time.monotonic() - t0 >= 0.3
                assert cap_path.read_bytes() == before
                assert (await ok(s, "search", {"query": "billing"}))["hits"]  # reads never wait
            assert (await ok(s, "remember", {"text": "after the lock"}))["new"] == 1
    run(go)


def _raw_server(path: Path, *args: str) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([*SERVE, "serve", str(path), "--mcp", *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None

    def send(msg: dict[str, Any]) -> None:
        p.stdin.write((json.dumps(msg) + "\n").encode())  # type: ignore[union-attr]
        p.stdin.flush()  # type: ignore[union-attr]

    send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": types.LATEST_PROTOCOL_VERSION, "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}})
    assert json.loads(p.stdout.readline())["id"] == 1
    send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    p.send = send  # type: ignore[attr-defined]
    return p


def test_a_client_that_disconnects_mid_call(cap_path: Path) -> None:
    holder = capsule.open(cap_path, "a")  # the call waits for this lock: it is in flight when the client goes
    p = _raw_server(cap_path, "--wait", "5")
    p.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",  # type: ignore[attr-defined]
            "params": {"name": "remember", "arguments": {"text": "sent just before the client left"}}})
    time.sleep(0.5)
    p.stdin.close()  # type: ignore[union-attr]
    p.stdout.close()  # type: ignore[union-attr]
    holder.close()
    assert p.wait(10) == 0
    assert p.stderr.read() == b""  # type: ignore[union-attr]
    p.stderr.close()  # type: ignore[union-attr]
    assert capsule.verify(cap_path).ok
    with capsule.open(cap_path, "a", timeout=0) as w:  # the lock was released
        assert [r.text for r in w.records("memory")][-1] == "sent just before the client left"


def test_sigterm_ends_the_server_with_one_line(cap_path: Path) -> None:
    p = _raw_server(cap_path)
    p.send_signal(signal.SIGTERM)
    assert p.wait(10) == 128 + signal.SIGTERM
    assert p.stderr.read().decode() == "capsule: interrupted\n"  # type: ignore[union-attr]
    for f in (p.stdin, p.stdout, p.stderr):
        f.close()  # type: ignore[union-attr]
    with capsule.open(cap_path, "a", timeout=0):
        pass


@pytest.mark.parametrize("case", ["missing", "corrupt", "no-mcp", "bad-key"])
def test_a_server_that_cannot_start_says_so_in_one_line(tmp_path: Path, cap_path: Path, case: str) -> None:
    path, extra, code = cap_path, [], 2
    if case == "missing":
        path = tmp_path / "none.capsule"
    elif case == "corrupt":
        data = bytearray(cap_path.read_bytes())
        data[200] ^= 0xFF  # inside the first commit's frames
        path = tmp_path / "corrupt.capsule"
        path.write_bytes(bytes(data))
        code = 1
    elif case == "bad-key":
        (tmp_path / "bad.key").write_text("not a key")
        os.chmod(tmp_path / "bad.key", 0o600)
        extra = ["--key", str(tmp_path / "bad.key")]
    args = [*SERVE, "serve", str(path), *([] if case == "no-mcp" else ["--mcp"]), *extra]
    r = subprocess.run(args, input=b"", capture_output=True, timeout=30)
    err = r.stderr.decode()
    assert r.returncode != 0 and r.stdout == b"", (r.returncode, err)
    assert err.count("\n") == 1 and err.startswith("capsule: error: ") and "Traceback" not in err, err
    if case != "bad-key":
        assert r.returncode == code, err


def test_import_capsule_and_version_do_not_load_mcp() -> None:
    probe = textwrap.dedent("""
        import sys
        import capsule
        from capsule_cli.main import main
        sys.argv = ["capsule", "--version"]
        try:
            main()
        except SystemExit:
            pass
        sys.stderr.write("MCP " + str(sorted(m for m in sys.modules if m == "mcp" or m.startswith("mcp."))))
    """)
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.stdout.startswith("capsule "), r.stdout
    assert r.stderr.strip().endswith("MCP []"), r.stderr
