"""Real crashes: SIGKILL a writer process at random moments.

A writer subprocess loops committing batches. Inside each ``with
cap.commit()`` block it prints ``TRY <ids>`` (before anything is written), and
after the block exits (the commit's fsync returned) it prints ``ACK <ids>``,
flushing both. The parent kills it with SIGKILL after a random delay, then
checks the file the way the next process would see it:

* every id in a complete ``ACK`` line is readable (acknowledged = durable);
* every record present was announced by a complete ``TRY`` line (nothing
  appears that no commit attempted) and none appears twice;
* ``capsule.verify`` is ok; a torn tail is allowed, since no writer has
  recovered it yet.

The next round starts a new writer on the same file, which must recover the
torn tail left by the kill. Kill -9 loses no written bytes (they are in the page
cache), so this tests the crash-consistency of the write order, not the
durability of fsync itself; test_faults.py covers failing fsyncs.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import capsule

WRITER = r'''
import gc
import random
import sys

import capsule

path, tag, seed, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
if chunk:
    # pwrite may legally write less than asked; the writer loops until the
    # commit is complete. Small chunks with a pause make each append span many
    # syscalls, so a kill often lands mid-append and leaves a real torn tail
    # (a single small pwrite is never cut short by SIGKILL).
    import os
    import time

    import capsule.format.file

    def slow_pwrite(fd, data, offset):
        time.sleep(0.001)
        return os.pwrite(fd, data[:chunk], offset)

    capsule.format.file._pwrite = slow_pwrite
cap = capsule.open(path, "a")  # its first commit recovers the torn tail the last kill left
# capsule imports numpy on first use; import it before READY so the kill window that
# follows READY is spent committing, not loading modules (start-up kills are drawn above).
import numpy  # noqa: E402,F401
print("READY", flush=True)
i = 0
while True:
    n = rng.choice([1, 1, 1, 2, 3, 8, 40])
    with cap.commit() as tx:
        ids = []
        for j in range(n):
            emb = [rng.random() for _ in range(16)] if j % 4 == 0 else None
            ids.append(tx.remember(f"{tag} commit {i} record {j}", tags=[tag], meta={"i": i, "j": j},
                                   embedding=emb))
        print("TRY", *ids, flush=True)
    print("ACK", *ids, flush=True)
    i += 1
    if rng.random() < 0.02:
        # Closing writes an INDEX (+ TABLE) commit when enough has accumulated,
        # so some kills land in that path and in the fresh open after it.
        cap.close()
        cap = capsule.open(path, "a")
'''


@dataclass
class History:
    """What the writers of one file claimed (and some counters for the run)."""

    tried: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    rounds_with_acks: int = 0
    torn_seen: int = 0


def run_round(script: Path, path: Path, tag: str, rng: random.Random, hist: History) -> None:
    """Start a writer, kill it at a random moment, and record what it claimed."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), tag, str(rng.randrange(1 << 30)),
         str(rng.choice([0, 256, 256, 1024]))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    chunks: list[bytes] = []
    ready = threading.Event()

    def pump() -> None:
        # Read continuously so the writer never blocks on a full pipe.
        assert proc.stdout is not None
        head = b""
        while True:
            b = proc.stdout.read1(1 << 16)
            if not b:
                ready.set()  # EOF: the writer died; the exit-status check says why
                return
            chunks.append(b)
            if not ready.is_set():
                head += b
                if b"\n" in head:  # READY is the first line
                    ready.set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    if rng.random() < 0.25:
        # Some kills land during start-up: import, open, the first commit's torn-tail recovery.
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        if not ready.wait(60):
            proc.kill()
            pytest.fail("writer printed nothing for 60 s")
        time.sleep(rng.uniform(0.0, 0.15))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    t.join(30)
    err = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    # It must have died of our SIGKILL, not of an error of its own.
    assert proc.returncode == -signal.SIGKILL, f"writer exited {proc.returncode}: {err[-2000:]}"
    out = b"".join(chunks)
    # Only complete lines count: a line cut by the kill proves nothing.
    lines = out.split(b"\n")[:-1]
    acks = 0
    for line in lines:
        word, *ids = line.decode().split(" ")
        if word == "TRY":
            hist.tried.update(ids)
        elif word == "ACK":
            assert set(ids) <= hist.tried
            hist.acked.update(ids)
            acks += 1
    hist.rounds_with_acks += acks > 0


def check_after_kill(path: Path, hist: History) -> None:
    rep = capsule.verify(path)
    assert rep.ok, rep.first_error
    hist.torn_seen += rep.torn_tail > 0
    with capsule.open(path) as cap:  # a reader: takes no lock, ignores a torn tail
        present = [r.id for r in cap.records()]
        assert len(present) == len(set(present)) == len(cap) == rep.records
        got = set(present)
        lost = hist.acked - got
        assert not lost, f"{len(lost)} acknowledged records lost, e.g. {sorted(lost)[0]}"
        unexplained = got - hist.tried
        assert not unexplained, f"{len(unexplained)} records no commit attempted"
        for rid in sorted(hist.acked)[:: max(1, len(hist.acked) // 50)]:
            assert cap.get(rid).id == rid


def recover_and_check(path: Path, hist: History) -> None:
    """After the last kill, the next writer's first commit drops any torn tail."""
    with capsule.open(path, "a") as cap:
        assert hist.acked <= {r.id for r in cap.records()}
        with cap.commit() as tx:
            tx.remember("after the last kill")
        n = len(cap)
    rep = capsule.verify(path)
    assert rep.ok and rep.torn_tail == 0 and rep.records == n, rep


def kill_rounds(tmp_path: Path, rounds: int, seed: int, fresh_every: int) -> tuple[int, int, int]:
    """Returns (rounds with at least one ACK, acknowledged records, kills that left a torn tail)."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(seed)
    files: list[tuple[Path, History]] = []
    for r in range(rounds):
        if r % fresh_every == 0:
            # A fresh file now and then keeps each round's checks cheap.
            if files:
                recover_and_check(*files[-1])
            path = tmp_path / f"agent-{r}.capsule"
            capsule.create(path).close()
            files.append((path, History()))
        path, hist = files[-1]
        run_round(script, path, f"round{r}", rng, hist)
        check_after_kill(path, hist)
    recover_and_check(*files[-1])
    return (sum(h.rounds_with_acks for _, h in files), sum(len(h.acked) for _, h in files),
            sum(h.torn_seen for _, h in files))


def test_sigkill_writer_rounds(tmp_path: Path) -> None:
    with_acks, acked, _ = kill_rounds(tmp_path, rounds=8, seed=20240607, fresh_every=8)
    # Guard against a vacuous run (e.g. a writer that never got to commit).
    assert with_acks >= 3
    assert acked > 50


@pytest.mark.slow
def test_sigkill_writer_soak(tmp_path: Path) -> None:
    with_acks, _, torn = kill_rounds(tmp_path, rounds=200, seed=7, fresh_every=25)
    assert with_acks >= 120
    # With this many kills mid-append, some must have left a torn tail;
    # otherwise the test is not exercising recovery at all.
    assert torn >= 10
