"""A real LangGraph graph on a CapsuleSaver, SIGKILLed mid-run and resumed from the capsule.

The graph is ``plan -> tool -> report``. The tool node performs a side effect (a line appended to
a file) through ``saver.capsule.run_once(key, fn)``, then drops a marker file and, in the first
process, waits to be killed. The parent waits for the marker, SIGKILLs the process (so the kill
lands after the effect and before the checkpoint that would follow the tool step), then a second
process resumes the same thread with ``graph.invoke(None, config)``. The run completes, the effect
happened exactly once, and the CLI in a fresh process shows the run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import capsule

pytest.importorskip("langgraph.graph")

ROOT = Path(__file__).resolve().parent.parent
CLI = Path(sys.executable).parent / "capsule"

GRAPH = r'''
import operator, os, sys, time
from pathlib import Path
from typing import Annotated, TypedDict

from langgraph.graph import END, START, StateGraph

from capsule.integrations.langgraph import CapsuleSaver

capsule_path, outbox, marker, phase = sys.argv[1:5]


class State(TypedDict):
    ticket: str
    log: Annotated[list[str], operator.add]


def plan(state: State) -> dict:
    return {"log": [f"plan {state['ticket']}"]}


def tool(state: State) -> dict:
    def send() -> str:
        with open(outbox, "a") as f:
            f.write(f"email about {state['ticket']}\n")
            f.flush()
            os.fsync(f.fileno())
        return "sent"

    result = saver.capsule.run_once(f"email:{state['ticket']}", send, what="send the ticket email")
    Path(marker).write_text(phase)
    if phase == "first":
        time.sleep(120)  # the parent kills us here: after the effect, before the next checkpoint
    return {"log": [f"tool {result}"]}


def report(state: State) -> dict:
    return {"log": ["report"]}


builder = StateGraph(State)
builder.add_node("plan", plan)
builder.add_node("tool", tool)
builder.add_node("report", report)
builder.add_edge(START, "plan")
builder.add_edge("plan", "tool")
builder.add_edge("tool", "report")
builder.add_edge("report", END)

with CapsuleSaver(capsule_path) as saver:
    graph = builder.compile(checkpointer=saver)
    config = {"configurable": {"thread_id": "ticket-7"}}
    if phase == "first":
        graph.invoke({"ticket": "T-7", "log": []}, config, durability="sync")
    else:
        out = graph.invoke(None, config, durability="sync")
        print("FINAL", "|".join(out["log"]))
'''


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT, **kw)  # type: ignore[call-overload, no-any-return]


def test_a_killed_graph_resumes_and_its_effect_happens_once(tmp_path: Path) -> None:
    script = tmp_path / "graph.py"
    script.write_text(GRAPH)
    cap, outbox, marker = tmp_path / "g.capsule", tmp_path / "outbox.txt", tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    proc = subprocess.Popen([sys.executable, str(script), str(cap), str(outbox), str(marker), "first"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():  # the tool node has done its effect and is waiting
            if proc.poll() is not None:
                pytest.fail(f"the graph ended early: {proc.communicate()[1][-2000:]}")
            assert time.monotonic() < deadline, "the tool node never ran"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert outbox.read_text() == "email about T-7\n"

    # a second process resumes the thread from the capsule
    second = _run([sys.executable, str(script), str(cap), str(outbox), str(marker), "second"], env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "FINAL plan T-7|tool sent|report" in second.stdout
    assert outbox.read_text() == "email about T-7\n"  # exactly once: the journal answered the rerun
    assert marker.read_text() == "second"  # the tool node did run again, and run_once did not

    # the CLI, in a fresh process, shows the run
    verify = _run([str(CLI), "verify", str(cap)])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    tl = _run([str(CLI), "timeline", str(cap), "--json"])
    assert tl.returncode == 0, tl.stderr
    events = json.loads(tl.stdout)["events"]
    actions = [e["summary"] for e in events if e["kind"] == "action"]
    assert actions == ["intent email:T-7 #1 send the ticket email", "result email:T-7 #1 ok"], actions
    after = [e for e in events if e["kind"] == "commit" and e["seq"] > max(x["seq"] for x in events
                                                                            if x["kind"] == "action")]
    assert len(after) >= 3  # the resumed run's checkpoints and writes, each a commit
    table = _run([str(CLI), "timeline", str(cap), "--kind", "action"]).stdout
    assert "intent email:T-7 #1" in table and "result email:T-7 #1 ok" in table

    audit = _run([str(CLI), "audit", str(cap), "email:T-7", "--json"])
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["key"] == "email:T-7"

    # the checkpoints are records of an application kind, not memories: the agent's state holds
    # none of them, and `get` / `why` show the thread's last one
    state = json.loads(_run([str(CLI), "state", str(cap), "--json"]).stdout)
    assert state["memories"] == {"scratch": [], "working": [], "validated": []}
    assert state["other_kinds"]["langgraph.checkpoint"] >= 4
    with capsule.open(cap) as c:
        last = list(c.live("langgraph.checkpoint"))[-1]
        assert last.value["thread_id"] == "ticket-7" and not list(c.records("memory"))
    got = _run([str(CLI), "get", str(cap), last.id, "--json"])
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["thread_id"] == "ticket-7"
    why = _run([str(CLI), "why", str(cap), last.id])
    assert why.returncode == 0, why.stderr
    assert "langgraph.checkpoint" in why.stdout
