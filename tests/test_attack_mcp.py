"""``capsule serve --mcp`` under attack: regression tests for what a hostile review found (issue 13).

Each test drives the real server (the installed ``capsule`` script) over raw JSON-RPC lines,
because the official client cannot send malformed frames, or the real ``Service`` with a
compaction injected at the worst moment. Each one failed before its fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import types

import capsule
from capsule.integrations import _mcp_service
from capsule.integrations._mcp_service import Service
from capsule.integrations._mcp_stdio import MAX_LINE

BIN = Path(sys.executable).with_name("capsule")
SERVE = [str(BIN)] if BIN.exists() else [sys.executable, "-m", "capsule_cli.main"]
INIT: list[dict[str, Any]] = [{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": types.LATEST_PROTOCOL_VERSION, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"}]


@pytest.fixture
def cap_path(tmp_path: Path) -> Path:
    p = tmp_path / "agent.capsule"
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("deploys are frozen on Fridays", tags=["policy"])
    return p


def line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode() + b"\n"


def call(i: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": name, "arguments": args}}


def raw_call(i: int, arguments: bytes, name: bytes = b"remember") -> bytes:
    """A tools/call line whose arguments are given as raw (possibly not quite JSON) bytes."""
    return (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"%s","arguments":%s}}\n'
            % (i, name, arguments))


def serve(path: Path, stdin: bytes | Path, *args: str) -> Iterator[dict[str, Any]]:
    """Run a server over ``stdin`` (bytes through a pipe, or a regular file) to its end; its answers."""
    cmd = [*SERVE, "serve", str(path), "--mcp", *args]
    if isinstance(stdin, Path):
        with stdin.open("rb") as f:
            r = subprocess.run(cmd, stdin=f, capture_output=True, timeout=120)
    else:
        r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert b"Traceback" not in r.stderr, r.stderr[-2000:]
    return (json.loads(x) for x in r.stdout.splitlines())


def by_id(answers: Iterator[dict[str, Any]]) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for a in answers:
        if "id" in a:
            out.setdefault(a["id"], []).append(a)
    return out


def head() -> bytes:
    return b"".join(line(m) for m in INIT)


# --- F1: a request the server cannot parse still gets an answer -----------------------------------
UNPARSEABLE = [
    (7, raw_call(7, b'{"text":"\\ud800 a lone surrogate"}')),  # valid to Python's json, not to pydantic's
    (8, raw_call(8, b'{"text":"deep","meta":' + b'{"a":' * 10_000 + b"1" + b"}" * 10_000 + b"}")),
    (9, raw_call(9, b'{"text":"\xff\xfe not UTF-8"}')),
    (10, b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"remember","arguments":{"text":"cut\n'),
    ("s", b'{"jsonrpc":"2.0","id":"s","method":"ping","params":{' + b"[" * 5000 + b"\n"),
]


def test_a_request_that_is_not_valid_json_rpc_is_answered_with_an_error_for_its_id(cap_path: Path) -> None:
    before = cap_path.read_bytes()
    stdin = head() + b"".join(raw for _, raw in UNPARSEABLE) + line({"jsonrpc": "2.0", "id": 99, "method": "ping"})
    answers = by_id(serve(cap_path, stdin))
    for rid, _ in UNPARSEABLE:
        assert len(answers.get(rid, [])) == 1, (rid, answers.get(rid))
        err = answers[rid][0]["error"]
        assert err["code"] in (types.PARSE_ERROR, types.INVALID_REQUEST) and "\n" not in err["message"], err
    assert answers[99][0]["result"] == {}  # the server lives on
    assert cap_path.read_bytes() == before


def test_an_over_long_line_is_answered_and_not_split_when_stdin_is_a_file(cap_path: Path, tmp_path: Path) -> None:
    # Read from a regular file, a line longer than MAX_LINE used to come back in pieces (each a
    # parse error, neither answered); through a pipe it was dropped without an answer.
    big = raw_call(5, b'{"text":"' + b"a" * (MAX_LINE + 10) + b'"}')
    req = tmp_path / "requests.jsonl"
    req.write_bytes(head() + big + line({"jsonrpc": "2.0", "id": 6, "method": "ping"}))
    for stdin in (req, req.read_bytes()):
        answers = by_id(serve(cap_path, stdin))
        assert set(answers) == {0, 5, 6}, sorted(map(str, answers))
        assert answers[5][0]["error"]["code"] == types.INVALID_REQUEST and len(answers[5]) == 1
        assert str(MAX_LINE) in answers[5][0]["error"]["message"]
        assert answers[6][0]["result"] == {}
    # the same line last, with no newline: the end of input in the middle of the skipped rest
    answers = by_id(serve(cap_path, head() + line({"jsonrpc": "2.0", "id": 6, "method": "ping"}) + big[:-1]))
    assert set(answers) == {0, 5, 6} and answers[5][0]["error"]["code"] == types.INVALID_REQUEST
    with capsule.open(cap_path) as cap:
        assert [r.text for r in cap.records("memory")] == ["deploys are frozen on Fridays"]


# --- F2: NaN, Infinity and 1e400 became null on their way through the SDK ---------------------------
@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"NaN", b"Infinity", b"-Infinity"])
def test_a_non_finite_number_is_refused_not_stored_as_null(cap_path: Path, number: bytes) -> None:
    before = cap_path.read_bytes()
    stdin = head() + raw_call(3, b'{"text":"x","meta":{"n":%s}}' % number) \
        + raw_call(4, b'{"summary":"x","inputs":{"n":[%s]}}' % number, b"decide")
    answers = by_id(serve(cap_path, stdin))
    for rid in (3, 4):
        a = answers[rid][0]
        assert "error" in a or a["result"].get("isError"), a
        text = json.dumps(a)
        assert "finite" in text, a
    assert cap_path.read_bytes() == before


# --- F3: closing stdin lost the answers to calls still in flight (their writes landed) -----------------
def test_every_request_is_answered_before_the_server_exits_on_end_of_input(cap_path: Path, tmp_path: Path) -> None:
    reqs = [call(i, "remember", {"text": f"pipelined {i}"}) if i % 2 else call(i, "search", {"query": "pipelined"})
            for i in range(1, 41)]
    stdin = head() + b"".join(line(r) for r in reqs)
    req = tmp_path / "requests.jsonl"
    req.write_bytes(stdin)
    for source in (stdin, req):  # `printf ... | capsule serve` and `capsule serve < requests.jsonl`
        answers = by_id(serve(cap_path, source))
        assert set(answers) == {0, *range(1, 41)}, sorted(set(range(41)) - set(answers))
        assert all(len(v) == 1 and not v[0]["result"].get("isError") for v in answers.values())
    with capsule.open(cap_path) as cap:
        assert sum(1 for r in cap.records("memory") if r.text.startswith("pipelined")) == 2 * 20  # two runs
    assert capsule.verify(cap_path).ok


# --- F4: a compaction between reopening the reader and noting the file's identity -------------------
def test_a_reader_reopened_while_the_file_is_compacted_again_still_sees_new_commits(
        cap_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = _mcp_service.open_capsule  # type: ignore[attr-defined]
    compact_after: list[bool] = []

    def open_then_compact(path: Any, *args: Any, **kw: Any) -> Any:
        cap = real_open(path, *args, **kw)
        if compact_after and not args and not kw:  # a reader: another process compacts right now
            compact_after.clear()
            capsule.compact(path)
        return cap

    monkeypatch.setattr(_mcp_service, "open_capsule", open_then_compact)
    svc = Service(cap_path, read_only=True)
    try:
        capsule.compact(cap_path)  # the server's reader must move to the new file ...
        compact_after.append(True)  # ... and while it does, the path is replaced once more
        assert svc.search({"query": "Fridays"})["hits"]
        with capsule.open(cap_path, "a") as w, w.commit() as tx:
            rid = tx.remember("written after both compactions")
        assert svc.get({"id": rid})["text"] == "written after both compactions"
    finally:
        svc.close()


# --- F5: with stdin closed (`<&-`) the capsule took fd 0 and was read as JSON-RPC requests ----------
def test_a_closed_stdin_is_an_empty_input_not_the_capsule(cap_path: Path) -> None:
    before = cap_path.read_bytes()
    cmd = [*SERVE, "serve", str(cap_path), "--mcp"]
    r = subprocess.run(["sh", "-c", 'exec "$@" <&-', "sh", *cmd], capture_output=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert cap_path.read_bytes() == before


# --- F6: notifications/cancelled for a call in flight crashed the server ----------------------------
def test_a_cancelled_call_neither_crashes_the_server_nor_writes_after_the_fact(cap_path: Path) -> None:
    # The SDK answers "Request cancelled" at once; the tool, run in a thread that was not
    # abandoned, then answered again: AssertionError, the server died (exit 70). And the
    # remember that was waiting for the lock went on to write once the lock was free.
    holder = capsule.open(cap_path, "a")
    before = cap_path.read_bytes()
    p = subprocess.Popen([*SERVE, "serve", str(cap_path), "--mcp", "--wait", "5"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    try:
        p.stdin.write(head() + line(call(5, "remember", {"text": "cancel me"})))
        p.stdin.flush()
        assert json.loads(p.stdout.readline())["id"] == 0
        time.sleep(0.5)  # the remember waits for the lock
        p.stdin.write(line({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}))
        p.stdin.flush()
        assert json.loads(p.stdout.readline())["id"] == 5  # "Request cancelled"
        time.sleep(0.3)
        holder.close()
        p.stdin.write(line(call(6, "search", {"query": "Fridays"})) + line(call(7, "remember", {"text": "kept"})))
        p.stdin.flush()
        answers = {a["id"]: a for a in (json.loads(p.stdout.readline()) for _ in range(2))}
        assert answers[6]["result"]["structuredContent"]["hits"] and not answers[7]["result"]["isError"]
        p.stdin.close()
        assert p.wait(30) == 0, p.stderr.read()
        assert p.stderr.read() == b""
    finally:
        holder.close()
        if p.poll() is None:
            p.kill()
        for f in (p.stdin, p.stdout, p.stderr):
            f.close()
    assert capsule.verify(cap_path).ok
    with capsule.open(cap_path) as cap:
        assert [r.text for r in cap.records("memory")] == ["deploys are frozen on Fridays", "kept"]
    assert cap_path.read_bytes()[: len(before)] == before


# --- F7: a file cut short in place (same inode) left the reader stale and failing until a restart ----
def test_a_reader_follows_a_file_truncated_in_place_and_written_again(cap_path: Path) -> None:
    with capsule.open(cap_path, "a") as w:
        for j in range(3):
            with w.commit() as tx:
                tx.remember(f"fact {j}", embedding=[1.0, float(j), 0.5])
    svc = Service(cap_path, read_only=True)
    try:
        assert len(svc.search({"query": "fact"})["hits"]) == 3
        size = cap_path.stat().st_size
        with cap_path.open("r+b") as f:  # another tool cuts the last commits off
            f.truncate(size * 2 // 3)
        with capsule.open(cap_path, "a") as w, w.commit() as tx:  # a writer drops the torn tail, appends
            rid = tx.remember("after the truncation")
        assert cap_path.stat().st_size < size
        assert svc.get({"id": rid})["text"] == "after the truncation"
        texts = {h["text"] for h in svc.search({"query": "fact truncation", "k": 10})["hits"]}
        assert "after the truncation" in texts and len(texts) < 4
        assert svc.summary()["records"] == cli_records(cap_path)
    finally:
        svc.close()


def cli_records(path: Path) -> int:
    r = subprocess.run([*SERVE, "open", str(path), "--json"], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return int(json.loads(r.stdout)["records"])
