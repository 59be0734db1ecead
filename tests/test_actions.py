"""Idempotent actions (spec 7.8): ``run_once``, ``action()``, ``resolve_action`` and ``capsule actions``.

What is promised (capsule/_actions.py, spec 7.8):

* the intent is committed before the effect starts and the result after it, so
  whatever moment a process dies at, the effect of a key happens at most once:
  a worker SIGKILLed over and over while it sends 200 messages into an outbox
  leaves exactly 200 rows, one per key, and a journal that says all are done;
* a key whose intent has no result is *in doubt* and is never silently re-run:
  ``reconcile`` decides (its value, or ``NOT_DONE`` to run the effect again),
  without it :class:`capsule.InDoubt` is raised; ``retry-safe`` re-runs, and
  ``ask`` leaves it to a human (``capsule actions --resolve``);
* a stored result (value or error) is replayed without calling the function,
  after reopening, in a copy of the file elsewhere, and in a fresh process with
  another hash seed;
* wrong uses fail with a clear error and write nothing half-done; CLI errors are
  one line on stderr with exit 2 (usage) or 1 (bad data).

In-doubt keys are made the way production makes them: a subprocess commits the
intent and dies inside ``fn`` (``os._exit`` or SIGKILL), never by writing
journal records by hand. Those crashes are done once per module (a template
capsule) and each test works on its own copy of the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from capsule_cli.main import app
from typer.testing import CliRunner, Result

import capsule
from capsule.format import canonical as canon

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # SOURCE_DATE_EPOCH fixes clocks and file ids; colour forcing changes CLI output bytes.
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE", "PYTHONHASHSEED")}
    env.update(extra)
    return env


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Spy:
    """A callable that records its calls and answers with ``answer(*args)``."""

    def __init__(self, answer: Callable[..., Any]) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._answer = answer

    def __call__(self, *args: Any) -> Any:
        self.calls.append(args)
        return self._answer(*args)


def journal(cap: capsule.Capsule, key: str) -> list[tuple[str, int, bool, str]]:
    """The key's journal records as (phase, attempt, ok, by), in commit order."""
    return [(r.phase, r.attempt, r.ok, r.by) for r in cap.records(kind="action") if r.key == key]


def state(cap: capsule.Capsule, key: str) -> capsule.ActionState:
    found = [a for a in cap.actions() if a.key == key]
    assert len(found) == 1, f"{key!r} not in the journal: {[a.key for a in cap.actions()]}"
    return found[0]


# =====================================================================================
# 1. kill -9 at random moments: the outbox gets every message exactly once
# =====================================================================================

# The worker sends message i into a SQLite outbox as the side effect of action
# "effect:i". The table has no unique constraint, so a message sent twice is a
# second row the test sees. It prints a marker at each step so the parent can
# aim kills: SEND (intent durable, effect not started), SENT (effect committed,
# result not yet written), RECON (reconcile looked the key up, its answer not yet
# recorded), DONE (run_once returned). ``pause`` = "WORD:n" makes it print
# PAUSED and sleep at the n-th WORD of this run, so a kill lands exactly in that
# window; the parent also kills at random delays after a marker or after spawn.
# With ``chunk`` > 0 every capsule append goes out in small pwrites with a pause
# between them (the writer loops over short writes), each followed by a CHUNK
# marker, so kills also land in the middle of an intent or result commit and
# leave a torn tail for the next process to recover.
WORKER = r'''
import os
import sqlite3
import sys
import time

import capsule
import capsule.format.file

path, db, n, pause, gap, chunk = (sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4],
                                  float(sys.argv[5]), int(sys.argv[6]))
pause_word, _, pause_nth = pause.partition(":")
counts = {}


def say(*words):
    print(*words, flush=True)


def mark(word, i):
    say(word, i)
    counts[word] = counts.get(word, 0) + 1
    if word == pause_word and counts[word] == int(pause_nth):
        say("PAUSED")
        time.sleep(120)  # the parent SIGKILLs us in this window


if chunk:
    def slow_pwrite(fd, data, offset):
        written = os.pwrite(fd, bytes(data[:chunk]), offset)
        mark("CHUNK", offset)
        time.sleep(0.0002)
        return written

    capsule.format.file._pwrite = slow_pwrite

con = sqlite3.connect(db, isolation_level=None)  # autocommit: transactions are explicit below


def lookup(key):
    rows = con.execute("SELECT body FROM outbox WHERE key = ?", (key,)).fetchall()
    mark("RECON", key.split(":")[1])
    return rows[0][0] if rows else capsule.NOT_DONE


def sender(i):
    key, body = f"effect:{i}", f"body-{i}"

    def send():
        mark("SEND", i)
        time.sleep(gap)  # widen the window between the intent and the effect
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO outbox (key, body) VALUES (?, ?)", (key, body))
        con.execute("COMMIT")
        mark("SENT", i)
        time.sleep(gap)  # ... and between the effect and its result
        return body

    return send


cap = capsule.open(path, "a")  # recovers whatever torn tail the last kill left
mark("READY", -1)
for i in range(n):
    got = cap.run_once(f"effect:{i}", sender(i), reconcile=lookup, what="outbox insert", inputs={"i": i})
    if got != f"body-{i}":
        say("WRONG", i, repr(got))
        sys.exit(3)
    say("DONE", i)
cap.close()
say("ALL")
'''


class Worker:
    """One worker process; a thread pumps its stdout lines into a queue."""

    def __init__(self, tmp: Path, path: Path, db: Path, n: int, pause: str, gap: float, chunk: int) -> None:
        self.err_path = tmp / "worker.err"
        self._err = self.err_path.open("w")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(path), str(db), str(n), pause, str(gap), str(chunk)],
            stdout=subprocess.PIPE, stderr=self._err, text=True, cwd=tmp, env=child_env())
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.ready_at: float | None = None
        self._finished = False
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, want: Callable[[str], bool], timeout: float, *, must: bool = True) -> str | None:
        """The first line ``want`` accepts; "EOF" at end of output; None when ``timeout`` passes
        (an error when ``must``)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if must:
                    raise AssertionError(f"worker silent for {timeout}s; last lines {self.seen[-5:]}\n"
                                         f"{self.err_path.read_text()}")
                return None
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                return "EOF"
            self.seen.append(line)
            if line.startswith("READY") and self.ready_at is None:
                self.ready_at = time.monotonic()
            if want(line):
                return line

    def kill(self) -> bool:
        """SIGKILL it (if it still runs); True when it died of the signal."""
        self.proc.send_signal(signal.SIGKILL)  # a no-op once it has exited and been polled
        return self.finish(timeout=30) == -signal.SIGKILL

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        if self._finished:
            return rc
        self._finished = True
        self._pump.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._err.close()
        while True:  # drain what it printed before it died
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.seen.append(line)
        return rc

    def stop(self) -> None:
        """Whatever happened: no process, pipe or file left behind."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish(timeout=30)


def nth(word: str, k: int) -> Callable[[str], bool]:
    """A line predicate true at the k-th line starting with ``word``."""
    seen = 0

    def want(line: str) -> bool:
        nonlocal seen
        seen += line.startswith(word + " ")
        return seen >= k

    return want


def check_consistent(path: Path, db: Path, *, final: bool) -> dict[str, capsule.ActionState]:
    """What any moment between two processes must look like."""
    rep = capsule.verify(path)
    assert rep.ok, rep.first_error
    if final:
        assert rep.torn_tail == 0
    with capsule.open(path) as cap:
        states = {a.key: a for a in cap.actions()}
    with closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT key, body FROM outbox").fetchall()
    sent = Counter(k for k, _ in rows)
    dups = {k: c for k, c in sent.items() if c > 1}
    assert not dups, f"effects ran more than once: {dups}"
    for key in sent:
        # the intent is durable before the effect starts
        assert key in states and states[key].status != "new", f"{key} sent without a committed intent"
    for key, st in states.items():
        assert st.status in ("in-doubt", "done", "not-done"), (key, st)
        if st.status == "done":
            assert sent[key] == 1 and st.value == "body-" + key.split(":")[1], (key, st)
        elif st.status == "not-done":
            assert sent[key] == 0, f"{key} judged not done but its row exists"
    return states


@dataclass
class Campaign:
    kills: int = 0
    plans: Counter[str] = field(default_factory=Counter)
    torn_tails: int = 0
    cycles: int = 0


def kill_campaign(tmp_path: Path, *, n: int, kills_wanted: int, seed: int, gap: float = 0.002) -> Campaign:
    """Kill a worker ``kills_wanted`` times at random moments, then let one finish."""
    path, db = tmp_path / "agent.capsule", tmp_path / "outbox.db"
    capsule.create(path).close()
    with closing(sqlite3.connect(db)) as con:
        con.execute("CREATE TABLE outbox (key TEXT, body TEXT)")  # no UNIQUE: duplicates must show
        con.commit()
    rng = random.Random(seed)
    done: set[int] = set()
    camp = Campaign()
    ready_latency = 0.5
    # The first kills land in each window for certain: intent without effect,
    # effect without result, a reconcile answer not yet recorded, and the middle
    # of an append (retried until one really leaves a torn tail).
    # SENT from the 2nd on: the next run's first effect is the key SEND left in doubt
    # (reconcile: NOT_DONE, so fn runs it as attempt 2), and it must be allowed to finish
    # by fn; killing at its own SENT would leave it to reconcile, and whether any key then
    # showed "attempt 2 by fn" was up to the random kills that followed (a CI flake).
    forced = [f"SEND:{rng.randint(1, 4)}", f"SENT:{rng.randint(2, 4)}", "RECON:1"]
    torn_tries = 5
    while True:
        camp.cycles += 1
        assert camp.cycles < 4 * kills_wanted + 50, f"no progress: {camp}"
        left, remaining = kills_wanted - camp.kills, n - len(done)
        chunk = rng.choice([0, 64])
        if left <= 0:
            plan, pause = "finish", "-:0"
        elif forced:
            plan, pause = "pause", forced.pop(0)
        elif camp.torn_tails == 0 and torn_tries > 0 and len(done) < n - 10:
            torn_tries -= 1
            plan, pause, chunk = "pause", f"CHUNK:{rng.randint(2, 30)}", 64
        elif remaining <= 1 or rng.random() > remaining / left or rng.random() < 0.1:
            # Not enough effects left for the kills still wanted (or just for
            # variety): die during start-up, open and torn-tail recovery.
            plan, pause = "startup", "READY:1"
        elif rng.random() < 0.15:
            plan, pause = "pause", f"{rng.choice(['SEND', 'SENT', 'RECON'])}:1"
        else:
            plan, pause = "marker", "-:0"
        camp.plans[plan] += 1
        w = Worker(tmp_path, path, db, n, pause, gap, chunk)
        try:
            if plan == "finish":
                assert w.wait_for(lambda s: False, 120) == "EOF"
                rc = w.finish(timeout=30)
                assert rc == 0 and w.seen[-1:] == ["ALL"], f"rc={rc} {w.seen[-3:]}\n{w.err_path.read_text()}"
                break
            if plan == "startup":
                w.wait_for(lambda s: s == "PAUSED", rng.uniform(0, ready_latency), must=False)
            elif plan == "pause":
                # SEND and SENT come with every effect, but a RECON window exists only
                # when a key is in doubt: without one, kill at the first SENT instead.
                fallback = nth("SENT", 1) if pause.startswith("RECON") else (lambda s: False)
                got = w.wait_for(lambda s, fb=fallback: s == "PAUSED" or fb(s), 60)
                camp.plans["pause-hit" if got == "PAUSED" else "pause-missed"] += 1
            else:
                k = rng.randint(1, max(1, min(remaining - 1, 2 * remaining // left - 1)))
                w.wait_for(nth("SENT", k), 60)
                time.sleep(rng.choice([0.0, 0.0, rng.uniform(0, 0.001), rng.uniform(0, 0.004),
                                       rng.uniform(0, 0.015)]))
            killed = w.kill()
        finally:
            w.stop()
        if w.ready_at is not None and plan != "startup":
            ready_latency = w.ready_at - w.started
        bad = [s for s in w.seen if s.startswith("WRONG")]
        assert not bad, bad
        if not killed:
            # it finished on its own before the kill: fine, but no kill to count
            assert w.proc.returncode == 0, f"worker failed: {w.err_path.read_text()}"
        camp.kills += killed
        done.update(int(s.split()[1]) for s in w.seen if s.startswith("DONE "))
        camp.torn_tails += capsule.verify(path).torn_tail > 0
        check_consistent(path, db, final=False)

    states = check_consistent(path, db, final=True)
    with closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT key, body FROM outbox").fetchall()
    assert len(rows) == n, f"{len(rows)} rows for {n} effects"
    assert sorted(rows) == sorted((f"effect:{i}", f"body-{i}") for i in range(n))
    assert sorted(states) == sorted(f"effect:{i}" for i in range(n))
    for i in range(n):
        st = states[f"effect:{i}"]
        assert (st.status, st.value, st.error) == ("done", f"body-{i}", ""), st
        assert st.by in ("fn", "reconcile")
    assert camp.kills >= kills_wanted, camp
    # the forced kills made both in-doubt outcomes happen: the effect had run
    # (reconcile found it) and it had not (NOT_DONE, run again as attempt 2)
    assert any(st.by == "reconcile" for st in states.values()), camp
    assert any(st.attempt >= 2 and st.by == "fn" for st in states.values()), camp
    assert camp.torn_tails >= 1, camp  # some kill cut an append: recovery ran under the journal
    return camp


def test_sigkill_at_random_moments_sends_every_message_exactly_once(tmp_path: Path) -> None:
    camp = kill_campaign(tmp_path, n=200, kills_wanted=30, seed=20240605)
    assert camp.plans["pause-hit"] >= 3, camp


@pytest.mark.slow
def test_sigkill_soak_500_kills(tmp_path: Path) -> None:
    kill_campaign(tmp_path, n=1000, kills_wanted=500, seed=7)


# =====================================================================================
# 2. in doubt: reconcile, policies, the CLI
# =====================================================================================

# Dies inside fn, after the intent is durable: with the effect done first
# ("sent") or not ("unsent"), by os._exit or by SIGKILL. The "external system"
# is a directory with one file per sent message.
CRASHER = r'''
import os
import signal
import sys
from pathlib import Path

import capsule

path, key, outbox, effect, how = sys.argv[1:6]
cap = capsule.open(path, "a")


def fn():
    if effect == "sent":
        (Path(outbox) / key.replace(":", "_")).write_text("sent " + key)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)


cap.run_once(key, fn, what="send", inputs={"to": key})
os._exit(9)  # not reached: fn never returns
'''


class Outbox:
    """The external system: a directory, one file per message sent."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def file(self, key: str) -> Path:
        return self.root / key.replace(":", "_")

    def sender(self, key: str) -> Spy:
        def send() -> str:
            self.file(key).write_text("sent " + key)
            return "sent " + key

        return Spy(send)

    def lookup(self, key: str) -> Any:
        f = self.file(key)
        return f.read_text() if f.exists() else capsule.NOT_DONE


def crash_in_fn(path: Path, key: str, outbox: Path, *, effect: str, how: str) -> None:
    r = subprocess.run([sys.executable, "-c", CRASHER, str(path), key, str(outbox), effect, how],
                       capture_output=True, env=child_env(), timeout=60, check=False)
    want = -signal.SIGKILL if how == "kill" else 0
    assert r.returncode == want, r.stderr.decode()


@dataclass
class World:
    path: Path
    outbox: Outbox


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> World:
    """A capsule with a done key, a failed key and two in-doubt keys (one whose effect happened)."""
    root = tmp_path_factory.mktemp("template")
    path, box = root / "agent.capsule", root / "outbox"
    box.mkdir()
    with capsule.create(path) as cap:
        assert cap.run_once("pre:done", lambda: {"id": "m-0"}) == {"id": "m-0"}

        def boom() -> None:
            raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            cap.run_once("pre:failed", boom)
    crash_in_fn(path, "doubt:sent", box, effect="sent", how="exit")
    crash_in_fn(path, "doubt:unsent", box, effect="unsent", how="kill")
    return World(path, Outbox(box))


@pytest.fixture
def world(template: World, tmp_path: Path) -> World:
    path, box = tmp_path / "agent.capsule", tmp_path / "outbox"
    shutil.copyfile(template.path, path)
    shutil.copytree(template.outbox.root, box)
    return World(path, Outbox(box))


def test_a_crash_inside_fn_leaves_the_key_in_doubt(world: World) -> None:
    rep = capsule.verify(world.path)
    assert rep.ok and rep.torn_tail == 0
    with capsule.open(world.path) as cap:
        got = {a.key: (a.status, a.attempt, a.what) for a in cap.actions()}
        assert got == {"pre:done": ("done", 1, ""), "pre:failed": ("failed", 1, ""),
                       "doubt:sent": ("in-doubt", 1, "send"), "doubt:unsent": ("in-doubt", 1, "send")}
        # the intent carries what and inputs, and nothing but the intent was written
        assert journal(cap, "doubt:sent") == [("intent", 1, True, "")]
        intent = next(r for r in cap.records(kind="action") if r.key == "doubt:unsent")
        assert dict(intent.inputs) == {"to": "doubt:unsent"}
    assert world.outbox.file("doubt:sent").exists() and not world.outbox.file("doubt:unsent").exists()


@pytest.mark.parametrize("key", ["doubt:sent", "doubt:unsent"])
def test_in_doubt_without_reconcile_raises_and_runs_nothing(world: World, key: str) -> None:
    with capsule.open(world.path, "a") as cap:
        size, fn = cap.size, world.outbox.sender(key)
        for _ in range(2):  # and keeps raising: asking changes nothing
            with pytest.raises(capsule.InDoubt) as ei:
                cap.run_once(key, fn)
            assert ei.value.key == key and isinstance(ei.value, capsule.UsageError)
            assert "in doubt" in str(ei.value) and key in str(ei.value)
        assert fn.calls == [] and cap.size == size
        assert state(cap, key).status == "in-doubt"
        # the context-manager form refuses the same way, before its block runs
        with pytest.raises(capsule.InDoubt):
            cap.action(key)
    with capsule.open(world.path) as cap:
        assert state(cap, key).status == "in-doubt"


def test_reconcile_finding_the_effect_records_it_without_running_fn(world: World) -> None:
    key = "doubt:sent"
    fn, lookup = world.outbox.sender(key), Spy(world.outbox.lookup)
    with capsule.open(world.path, "a") as cap:
        assert cap.run_once(key, fn, reconcile=lookup) == "sent " + key
        assert fn.calls == [] and lookup.calls == [(key,)]
        st = state(cap, key)
        assert (st.status, st.value, st.by, st.attempt) == ("done", "sent " + key, "reconcile", 1)
        assert journal(cap, key) == [("intent", 1, True, ""), ("resolve", 1, True, "reconcile")]
        size = cap.size
        # settled now: neither reconcile nor fn is asked again, nothing is written
        assert cap.run_once(key, fn, reconcile=lookup) == "sent " + key
        assert cap.size == size and len(lookup.calls) == 1
    with capsule.open(world.path, "a") as cap:
        assert cap.run_once(key, fn) == "sent " + key
    assert fn.calls == []


def test_reconcile_not_done_runs_fn_once_as_attempt_2(world: World) -> None:
    key = "doubt:unsent"
    fn, lookup = world.outbox.sender(key), Spy(world.outbox.lookup)
    with capsule.open(world.path, "a") as cap:
        assert cap.run_once(key, fn, reconcile=lookup) == "sent " + key
        assert len(fn.calls) == 1 and lookup.calls == [(key,)]
        st = state(cap, key)
        assert (st.status, st.value, st.by, st.attempt) == ("done", "sent " + key, "fn", 2)
        assert journal(cap, key) == [("intent", 1, True, ""), ("resolve", 1, False, "reconcile"),
                                     ("intent", 2, True, ""), ("result", 2, True, "")]
        assert cap.run_once(key, fn, reconcile=lookup) == "sent " + key
    assert len(fn.calls) == 1 and len(lookup.calls) == 1
    assert capsule.verify(world.path).ok


def test_reconcile_that_raises_leaves_the_key_in_doubt(world: World) -> None:
    def down(key: str) -> Any:
        raise ConnectionError("outbox unreachable")

    with capsule.open(world.path, "a") as cap:
        size, fn = cap.size, world.outbox.sender("doubt:sent")
        with pytest.raises(ConnectionError):
            cap.run_once("doubt:sent", fn, reconcile=down)
        assert fn.calls == [] and cap.size == size
        assert state(cap, "doubt:sent").status == "in-doubt"
        # a later reconcile that works settles it
        assert cap.run_once("doubt:sent", fn, reconcile=world.outbox.lookup) == "sent doubt:sent"
    assert fn.calls == []


@pytest.mark.parametrize("key", ["doubt:sent", "doubt:unsent"])
def test_retry_safe_reruns_an_in_doubt_key(world: World, key: str) -> None:
    fn, lookup = world.outbox.sender(key), Spy(world.outbox.lookup)
    with capsule.open(world.path, "a") as cap:
        assert cap.run_once(key, fn, reconcile=lookup, policy="retry-safe") == "sent " + key
        st = state(cap, key)
        assert (st.status, st.attempt, st.by) == ("done", 2, "fn")
        assert len(fn.calls) == 1 and lookup.calls == []  # retry-safe re-runs instead of asking
        assert cap.run_once(key, fn, policy="retry-safe") == "sent " + key
    assert len(fn.calls) == 1


def test_failed_key_replays_its_error_and_retry_safe_reruns_it(world: World) -> None:
    fn, lookup = Spy(lambda: "second try"), Spy(lambda k: "never asked")
    with capsule.open(world.path, "a") as cap:
        size = cap.size
        for policy in ("at-most-once", "ask"):
            with pytest.raises(capsule.ActionFailed) as ei:
                cap.run_once("pre:failed", fn, reconcile=lookup, policy=policy)
            assert ei.value.key == "pre:failed" and ei.value.error == "ValueError: boom"
            assert "ValueError: boom" in str(ei.value)
        assert fn.calls == [] and lookup.calls == [] and cap.size == size
        assert cap.run_once("pre:failed", fn, policy="retry-safe") == "second try"
        st = state(cap, "pre:failed")
        assert (st.status, st.attempt, st.value, st.error) == ("done", 2, "second try", "")
    with capsule.open(world.path, "a") as cap:
        assert cap.run_once("pre:failed", fn) == "second try"
    assert len(fn.calls) == 1


def test_ask_policy_raises_in_doubt_even_with_reconcile(world: World) -> None:
    lookup = Spy(world.outbox.lookup)
    with capsule.open(world.path, "a") as cap:
        size, fn = cap.size, world.outbox.sender("doubt:sent")
        with pytest.raises(capsule.InDoubt) as ei:
            cap.run_once("doubt:sent", fn, reconcile=lookup, policy="ask")
        assert ei.value.key == "doubt:sent" and "--resolve" in str(ei.value)
        assert fn.calls == [] and lookup.calls == [] and cap.size == size
        # a new key is not in doubt: ask runs it like any other policy
        assert cap.run_once("fresh", Spy(lambda: 5), policy="ask") == 5
        # and a done key replays
        assert cap.run_once("pre:done", fn, policy="ask") == {"id": "m-0"}


# --- CLI ------------------------------------------------------------------------------


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def ok(*args: str | Path) -> Result:
    r = invoke(*args)
    assert r.exit_code == 0, f"capsule {' '.join(map(str, args))} -> {r.exit_code}\n{r.output}"
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return r


def one_line_error(r: Result, code: int) -> str:
    assert r.exit_code == code, f"expected exit {code}, got {r.exit_code}\n{r.output}"
    assert r.exception is None or isinstance(r.exception, SystemExit), f"uncaught {r.exception!r}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error:"), r.stderr
    assert r.stdout == ""
    return lines[0]


def test_cli_lists_the_journal_and_the_in_doubt_keys(world: World) -> None:
    rows = json.loads(ok("actions", world.path, "--json").stdout)
    assert [(r["key"], r["status"], r["attempt"]) for r in rows] == [
        ("doubt:sent", "in-doubt", 1), ("doubt:unsent", "in-doubt", 1),
        ("pre:done", "done", 1), ("pre:failed", "failed", 1)]
    by_key = {r["key"]: r for r in rows}
    assert by_key["pre:done"]["value"] == {"id": "m-0"} and by_key["pre:done"]["by"] == "fn"
    assert by_key["pre:failed"]["error"] == "ValueError: boom"
    assert by_key["doubt:sent"]["what"] == "send" and by_key["doubt:sent"]["finished"] is None
    assert by_key["doubt:sent"]["started"].endswith("Z")
    doubt = json.loads(ok("actions", world.path, "--in-doubt", "--json").stdout)
    assert doubt == [by_key["doubt:sent"], by_key["doubt:unsent"]]
    table = ok("actions", world.path).stdout
    assert "doubt:sent" in table and "in-doubt" in table and "ValueError: boom" in table


def test_cli_resolve_done_makes_run_once_return_that_value(world: World) -> None:
    before = digest(world.path)
    r = ok("actions", world.path, "--resolve", "doubt:unsent", "--done", "--value", '{"id": "m-1", "n": [1, 2.5]}',
           "--json")
    [row] = json.loads(r.stdout)
    assert (row["key"], row["status"], row["by"], row["value"]) == ("doubt:unsent", "done", "human",
                                                                     {"id": "m-1", "n": [1, 2.5]})
    assert digest(world.path) != before and capsule.verify(world.path).ok
    assert [r["key"] for r in json.loads(ok("actions", world.path, "--in-doubt", "--json").stdout)] == ["doubt:sent"]
    fn = world.outbox.sender("doubt:unsent")
    with capsule.open(world.path, "a") as cap:
        for policy in ("ask", "at-most-once"):
            assert cap.run_once("doubt:unsent", fn, policy=policy) == {"id": "m-1", "n": [1, 2.5]}
        assert journal(cap, "doubt:unsent") == [("intent", 1, True, ""), ("resolve", 1, True, "human")]
    assert fn.calls == []


def test_cli_resolve_done_without_value_records_none(world: World) -> None:
    ok("actions", world.path, "--resolve", "doubt:sent", "--done")
    fn = world.outbox.sender("doubt:sent")
    with capsule.open(world.path, "a") as cap:
        assert cap.run_once("doubt:sent", fn, policy="ask") is None
        assert state(cap, "doubt:sent").status == "done"
    assert fn.calls == []


def test_cli_resolve_not_done_makes_the_next_run_once_call_fn(world: World) -> None:
    [row] = json.loads(ok("actions", world.path, "--resolve", "doubt:unsent", "--not-done", "--json").stdout)
    assert (row["status"], row["by"], row["value"]) == ("not-done", "human", None)
    fn = world.outbox.sender("doubt:unsent")
    with capsule.open(world.path, "a") as cap:
        assert cap.run_once("doubt:unsent", fn, policy="ask") == "sent doubt:unsent"
        assert cap.run_once("doubt:unsent", fn, policy="ask") == "sent doubt:unsent"
        st = state(cap, "doubt:unsent")
        assert (st.status, st.attempt, st.by) == ("done", 2, "fn")
    assert len(fn.calls) == 1


def test_resolve_action_api(world: World) -> None:
    with capsule.open(world.path, "a") as cap:
        st = cap.resolve_action("doubt:sent", done=True, value=["a", 1])
        assert (st.status, st.by, st.value, st.attempt) == ("done", "human", ["a", 1], 1)
        st = cap.resolve_action("doubt:unsent", done=False)
        assert (st.status, st.by) == ("not-done", "human")
        size = cap.size
        for key in ("doubt:sent", "doubt:unsent", "pre:done", "pre:failed", "never-seen"):
            with pytest.raises(capsule.UsageError, match="not in doubt"):
                cap.resolve_action(key, done=True)
        assert cap.size == size
    with capsule.open(world.path) as cap, pytest.raises(capsule.ReadOnlyError):
        cap.resolve_action("doubt:sent", done=True)


def test_resolve_with_a_non_canonical_value_writes_nothing(world: World) -> None:
    with capsule.open(world.path, "a") as cap:
        size = cap.size
        with pytest.raises(capsule.InvalidRecordError, match="value"):
            cap.resolve_action("doubt:sent", done=True, value={1, 2})
        assert cap.size == size and state(cap, "doubt:sent").status == "in-doubt"


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["--resolve", "pre:done", "--done"], 2, "not in doubt"),
    (["--resolve", "pre:failed", "--not-done"], 2, "not in doubt"),
    (["--resolve", "never-seen", "--done"], 2, "not in doubt"),
    (["--value", "1"], 2, "--resolve"),
    (["--done"], 2, "--resolve"),
    (["--resolve", "doubt:sent"], 2, "--done or --not-done"),
    (["--resolve", "doubt:sent", "--not-done", "--value", "1"], 2, "--value goes with --done"),
    (["--resolve", "doubt:sent", "--done", "--value", "{not json"], 1, "invalid JSON"),
    (["--resolve", "doubt:sent", "--done", "--value", "18446744073709551616"], 1, "64-bit"),
])
def test_cli_errors_are_one_line_and_change_nothing(world: World, args: list[str], code: int,
                                                    fragment: str) -> None:
    before = digest(world.path)
    msg = one_line_error(invoke("actions", world.path, *args), code)
    assert fragment in msg
    assert digest(world.path) == before


def test_cli_missing_file_and_locked_capsule_are_usage_errors(world: World, tmp_path: Path) -> None:
    one_line_error(invoke("actions", tmp_path / "nope.capsule"), 2)
    one_line_error(invoke("actions", tmp_path / "nope.capsule", "--resolve", "k", "--done"), 2)
    before = digest(world.path)
    with capsule.open(world.path, "a"):
        assert "locked" in one_line_error(invoke("actions", world.path, "--resolve", "doubt:sent", "--done"), 2)
    assert digest(world.path) == before


def test_console_script_lists_in_doubt_keys(world: World) -> None:
    # the real entry point, as an operator runs it after a crash
    r = subprocess.run([str(CAPSULE_BIN), "actions", str(world.path), "--in-doubt", "--json"],
                       capture_output=True, env=child_env(COLUMNS="200"), timeout=60, check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert [(x["key"], x["status"]) for x in json.loads(r.stdout)] == [("doubt:sent", "in-doubt"),
                                                                        ("doubt:unsent", "in-doubt")]


# =====================================================================================
# 3. stored results replay everywhere; the context-manager form; wrong uses
# =====================================================================================

VALUES: dict[str, Any] = {
    "email:1": {"id": "m-1", "to": ["a@example.com", "b@example.com"], "meta": {"z": 1, "a": None}},
    "charge:2": {"amount": -2**63, "ratio": 0.1, "ok": True, "raw": b"\x00\xff"},
    "note:3": "caf\u00e9 \u2603",
    "none:4": None,
    "list:5": [1, [2, [3, {"k": "v"}]]],
}

REPLAY = r'''
import json
import sys

import capsule
from capsule.format import canonical as canon

path, keys = sys.argv[1], json.loads(sys.argv[2])
called = []
with capsule.open(path, "a") as cap:
    got = {k: canon.encode(cap.run_once(k, lambda k=k: called.append(k) or "ran again")).hex() for k in keys}
print(json.dumps({"got": got, "called": called}))
'''


def test_results_replay_after_reopen_copy_and_in_a_process_with_another_hash_seed(tmp_path: Path) -> None:
    path = tmp_path / "agent.capsule"
    with capsule.create(path) as cap:
        for key, value in VALUES.items():
            assert cap.run_once(key, Spy(lambda v=value: v)) == value
    again = Spy(lambda: "ran again")
    with capsule.open(path, "a") as cap:  # reopen: replayed, not re-run
        assert {k: cap.run_once(k, again) for k in VALUES} == VALUES
    assert again.calls == []

    elsewhere = tmp_path / "other" / "host"
    elsewhere.mkdir(parents=True)
    copy = elsewhere / "moved.capsule"
    shutil.copyfile(path, copy)
    want = {k: canon.encode(v).hex() for k, v in VALUES.items()}
    before = digest(copy)
    for seed in ("1", "4242"):
        r = subprocess.run([sys.executable, "-c", REPLAY, str(copy), json.dumps(list(VALUES))],
                           capture_output=True, env=child_env(PYTHONHASHSEED=seed), cwd=elsewhere,
                           timeout=60, check=False)
        assert r.returncode == 0, r.stderr.decode()
        out = json.loads(r.stdout)
        assert out == {"got": want, "called": []}, seed
    assert digest(copy) == before  # replaying wrote nothing
    with capsule.open(copy) as cap:
        assert {a.key: a.value for a in cap.actions()} == VALUES


def test_action_failed_replays_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.capsule"

    def refuse() -> None:
        raise PermissionError("card declined")

    with capsule.create(path) as cap:
        with pytest.raises(PermissionError):
            cap.run_once("charge:1", refuse)
        st = state(cap, "charge:1")
        assert (st.status, st.error, st.value) == ("failed", "PermissionError: card declined", None)
    fn = Spy(lambda: "charged")
    with capsule.open(path, "a") as cap:
        with pytest.raises(capsule.ActionFailed) as ei:
            cap.run_once("charge:1", fn, reconcile=lambda k: "never asked")
        assert (ei.value.key, ei.value.error) == ("charge:1", "PermissionError: card declined")
        assert not isinstance(ei.value, capsule.UsageError)
        with pytest.raises(capsule.ActionFailed), cap.action("charge:1"):
            pass  # not reached: the failure is raised when the action begins
    assert fn.calls == []


def test_reading_the_journal_read_only_and_refusing_writes(tmp_path: Path) -> None:
    path = tmp_path / "agent.capsule"
    with capsule.create(path) as cap:
        cap.run_once("a", lambda: 1)
    with capsule.open(path) as cap:
        assert [(a.key, a.status, a.value) for a in cap.actions()] == [("a", "done", 1)]
        with pytest.raises(capsule.ReadOnlyError):
            cap.run_once("a", lambda: 2)
        with pytest.raises(capsule.ReadOnlyError):
            cap.action("b")


# --- the context-manager form ---------------------------------------------------------


def test_action_context_manager_completes_once(tmp_path: Path) -> None:
    path = tmp_path / "agent.capsule"
    body = Spy(lambda: {"id": "m-9"})
    with capsule.create(path) as cap:
        for _ in range(3):
            with cap.action("email:9", what="send mail", inputs={"to": "x@y"}) as a:
                if not a.done:
                    a.complete(body())
            assert a.done and a.value == {"id": "m-9"}
        st = state(cap, "email:9")
        assert (st.status, st.by, st.attempt, st.what) == ("done", "fn", 1, "send mail")
        # the same journal as run_once
        assert cap.run_once("email:9", Spy(lambda: "other")) == {"id": "m-9"}
    assert len(body.calls) == 1
    with capsule.open(path, "a") as cap, cap.action("email:9") as a:
        assert a.done and a.value == {"id": "m-9"}


def test_action_context_manager_records_an_exception_as_a_failure(tmp_path: Path) -> None:
    path = tmp_path / "agent.capsule"
    with capsule.create(path) as cap:
        with pytest.raises(RuntimeError, match="smtp down"), cap.action("email:1") as a:
            assert not a.done
            raise RuntimeError("smtp down")
        assert state(cap, "email:1").status == "failed"
        with pytest.raises(capsule.ActionFailed, match="RuntimeError: smtp down"):
            cap.run_once("email:1", lambda: "x")
        assert cap.run_once("email:1", lambda: "x", policy="retry-safe") == "x"


def test_action_context_manager_without_complete_and_double_complete(tmp_path: Path) -> None:
    path = tmp_path / "agent.capsule"
    with capsule.create(path) as cap:
        with cap.action("ping") as a:
            pass  # a clean exit without complete(): done, with no value
        assert (state(cap, "ping").status, state(cap, "ping").value) == ("done", None)
        with cap.action("pong") as a:
            a.complete(1)
            size = cap.size
            with pytest.raises(capsule.UsageError, match="already done"):
                a.complete(2)
            assert cap.size == size
        assert state(cap, "pong").value == 1


def test_action_context_manager_settles_in_doubt_with_reconcile(world: World) -> None:
    with capsule.open(world.path, "a") as cap:
        with cap.action("doubt:sent", reconcile=world.outbox.lookup) as a:
            assert a.done and a.value == "sent doubt:sent"
        with cap.action("doubt:unsent", reconcile=world.outbox.lookup) as a:
            assert not a.done
            a.complete("sent by hand")
        st = state(cap, "doubt:unsent")
        assert (st.status, st.attempt, st.value) == ("done", 2, "sent by hand")


# --- wrong uses ------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"key": ""}, "non-empty string"),
    ({"key": 42}, "non-empty string"),
    ({"key": None}, "non-empty string"),
    ({"key": b"bytes"}, "non-empty string"),
    ({"key": "k", "policy": "at-least-once"}, "at-most-once, retry-safe, ask"),
    ({"key": "k", "policy": ""}, "policy"),
])
def test_bad_key_or_policy_is_a_usage_error_and_writes_nothing(tmp_path: Path, kwargs: dict[str, Any],
                                                                match: str) -> None:
    with capsule.create(tmp_path / "agent.capsule") as cap:
        size, commits, fn = cap.size, cap.commit_count, Spy(lambda: 1)
        key = kwargs.pop("key")
        with pytest.raises(capsule.UsageError, match=match):
            cap.run_once(key, fn, **kwargs)
        with pytest.raises(capsule.UsageError, match=match):
            cap.action(key, **kwargs)
        assert fn.calls == [] and (cap.size, cap.commit_count) == (size, commits)
        assert cap.actions() == []


@pytest.mark.parametrize(("value", "match"), [
    ({1, 2}, "set"),
    (object(), "object"),
    (float("nan"), "NaN"),
    (2**64, "64-bit"),
    ({1: "int key"}, "map key"),
    (capsule.NOT_DONE, "_NotDone"),
])
def test_non_canonical_return_value_is_recorded_as_done_without_a_value(tmp_path: Path, value: Any, match: str) -> None:
    path = tmp_path / "agent.capsule"
    with capsule.create(path) as cap:
        commits, fn = cap.commit_count, Spy(lambda: value)
        with pytest.raises(capsule.InvalidRecordError, match=match) as ei:
            cap.run_once("k", fn)
        assert "value" in str(ei.value) and isinstance(ei.value, capsule.DataError)
        # The effect ran, so the journal must not call it failed, nor leave it in
        # doubt for ever: it is done, with no value and the reason recorded.
        assert len(fn.calls) == 1 and cap.commit_count == commits + 2
        assert [j[:3] for j in journal(cap, "k")] == [("intent", 1, True), ("result", 1, True)]
        st = state(cap, "k")
        assert st.status == "done" and st.value is None and "not recordable" in st.error
        # a replay does not run the effect again, and does not pass off the missing value as None
        with pytest.raises(capsule.InvalidRecordError, match="ran once .*could not be stored"):
            cap.run_once("k", fn)
        assert len(fn.calls) == 1 and "ran (recorded as done)" in str(ei.value)
    rep = capsule.verify(path)
    assert rep.ok and rep.torn_tail == 0


def test_non_canonical_inputs_or_what_fail_before_the_effect(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "agent.capsule") as cap:
        size, fn = cap.size, Spy(lambda: 1)
        with pytest.raises(capsule.InvalidRecordError, match="set"):
            cap.run_once("k", fn, inputs={"a": {1}})
        with pytest.raises(capsule.InvalidRecordError, match="what"):
            cap.run_once("k", fn, what=3)  # type: ignore[arg-type]
        assert fn.calls == [] and cap.size == size and cap.actions() == []


def test_run_once_inside_an_open_commit_is_refused(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "agent.capsule") as cap:
        fn = Spy(lambda: 1)
        with cap.commit() as tx:
            tx.note("step 1")
            with pytest.raises(capsule.UsageError, match="commit is open"):
                cap.run_once("k", fn)
        assert fn.calls == [] and cap.actions() == []


def test_users_cannot_put_action_records(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "agent.capsule") as cap:
        size = cap.size
        with pytest.raises(capsule.InvalidRecordError, match="unknown record kind"), cap.commit() as tx:
            tx.put_value({"kind": "action", "key": "k", "phase": "result", "attempt": 1, "value": 1})
        assert cap.size == size and cap.actions() == []


def test_fn_error_text_is_kept_as_written(tmp_path: Path) -> None:
    with capsule.create(tmp_path / "agent.capsule") as cap:
        def fail() -> None:
            raise KeyError("k\u00e9y")

        with pytest.raises(KeyError):
            cap.run_once("k", fail)
        assert state(cap, "k").error == "KeyError: 'k\u00e9y'"


# --- bugs: each test below fails until the library is fixed ------------------------------


def test_bug_a_non_nfc_key_is_the_same_action_as_its_nfc_form(tmp_path: Path) -> None:
    # BUG: the journal stores keys in NFC but looks them up as given. With an
    # NFD key the handle gets a fresh "new" state (attempt 0), fn runs, and the
    # result write fails with "attempt must be a positive integer"; every later
    # call writes a new intent and runs fn AGAIN: at-most-once is broken.
    nfd, nfc = "cafe\u0301:order", "caf\u00e9:order"
    sent = Spy(lambda: "sent")
    with capsule.create(tmp_path / "agent.capsule") as cap:
        assert cap.run_once(nfd, sent) == "sent"
        assert cap.run_once(nfd, sent) == "sent"
        assert cap.run_once(nfc, sent) == "sent"
        assert [a.key for a in cap.actions()] == [nfc]
    assert len(sent.calls) == 1


def test_bug_the_first_call_returns_what_replays_return(tmp_path: Path) -> None:
    # BUG: the first call returns fn's raw value, replays the stored canonical
    # one, so the same key answers ("a", 1) once and ["a", 1] ever after (and an
    # NFD string once, NFC later). Callers must see one value per key.
    with capsule.create(tmp_path / "agent.capsule") as cap:
        first = cap.run_once("t", lambda: ("a", "cafe\u0301"))
        replay = cap.run_once("t", lambda: None)
        assert type(first) is type(replay) and first == replay


def test_bug_an_undecodable_error_message_still_records_the_failure(tmp_path: Path) -> None:
    # BUG: an exception whose text has a lone surrogate (undecodable bytes, e.g.
    # from os.fsdecode) cannot be stored as the error: the caller gets
    # InvalidRecordError instead of its own exception and the key stays in doubt.
    with capsule.create(tmp_path / "agent.capsule") as cap:
        def fail() -> None:
            raise ValueError("bad name " + os.fsdecode(b"\xff"))

        with pytest.raises(ValueError, match="bad name") as ei:
            cap.run_once("k", fail)
        assert type(ei.value) is ValueError
        st = state(cap, "k")
        assert st.status == "failed" and st.error.startswith("ValueError: bad name")


def test_bug_bad_inputs_error_names_the_inputs_argument(tmp_path: Path) -> None:
    # BUG: the message says "meta: type set has ..." for run_once(inputs=...),
    # naming an argument the caller never passed.
    with capsule.create(tmp_path / "agent.capsule") as cap, \
            pytest.raises(capsule.InvalidRecordError, match="inputs"):
        cap.run_once("k", lambda: 1, inputs={"a": {1}})

