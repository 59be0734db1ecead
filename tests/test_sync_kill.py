"""kill -9 during push and pull (spec 19.4, 19.7): the remote always opens, the local file
is never damaged, and rerunning completes the transfer.

Each round starts a real ``push`` or ``pull`` process, kills it with SIGKILL after a
random delay (start-up, listing, upload, publish, download, verify, append: wherever it
happens to be), then checks what a reader sees: a pull of the remote either finds no
capsule yet or a whole one that verifies and is a prefix of the source; the local file
opens and verifies (a torn tail is allowed: it is what an interrupted append leaves).
The default run keeps to a few rounds (make test); ``-m slow`` soaks.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import capsule
import capsule.sync as sync

from .test_sync import REPO, extend, make, s3_env  # noqa: F401  (s3_env: the fixture)

#: the child says "ready" once its imports are done, so the kill lands in the operation itself
PUSH = "import sys, capsule.sync as s, fsspec; print('ready', flush=True); s.push(sys.argv[1], sys.argv[2])"
PULL = "import sys, capsule.sync as s, fsspec; print('ready', flush=True); s.pull(sys.argv[1], sys.argv[2])"


class Killer:
    """Kills at a random point of the operation: uniform over how long the last
    uninterrupted run of the same kind took, so rounds keep landing inside it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.span, self.killed, self.done = rng, 0.3, 0, 0

    def run(self, code: str, *args: str) -> None:
        p = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        delay = self.rng.uniform(0, self.span)
        while p.poll() is None and time.monotonic() - t0 < delay:
            time.sleep(0.002)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            self.killed += 1
        else:
            self.done += 1
            self.span = max(0.02, time.monotonic() - t0)
        p.wait(30)
        p.stdout.close()


def _roots(path: Path) -> set[str]:
    with capsule.open(path) as cap:
        return {row.root for row in cap.log()}


def _remote_is_sound(url: str, source: Path, tmp: Path) -> None:
    """A reader of the remote sees no capsule or a whole one that is a prefix of ``source``."""
    probe = tmp / f"probe-{uuid.uuid4().hex[:6]}.capsule"
    try:
        res = sync.pull(url, probe)
    except sync.RemoteNotFound:
        return
    assert res.status == "created" and capsule.verify(probe).ok
    assert res.root in _roots(source)
    probe.unlink()


def _push_rounds(url: str, tmp: Path, rounds: int, rng: random.Random) -> None:
    tmp.mkdir(exist_ok=True)
    a = make(tmp / "a.capsule", 5, size=20_000)
    kill = Killer(rng)
    for _ in range(rounds):
        extend(a, rng.randint(1, 30), size=rng.choice([10, 5_000, 60_000]))
        kill.run(PUSH, str(a), url)
        _remote_is_sound(url, a, tmp)
    assert kill.killed, "no round was interrupted"
    assert sync.push(a, url).status in ("pushed", "up-to-date")  # the rerun completes it
    b = tmp / "final.capsule"
    sync.pull(url, b)
    assert b.read_bytes() == a.read_bytes() and capsule.verify(b).ok


def _pull_rounds(url: str, tmp: Path, rounds: int, rng: random.Random) -> None:
    tmp.mkdir(exist_ok=True)
    a = make(tmp / "src.capsule", 3)
    kill, fresh_kill = Killer(rng), Killer(rng)
    sync.push(a, url)
    b = tmp / "b.capsule"
    sync.pull(url, b)
    for _ in range(rounds):
        extend(a, rng.randint(20, 120), size=rng.choice([10, 2_000]))  # many commits: many fsyncs
        sync.push(a, url)
        kill.run(PULL, url, str(b))
        rep = capsule.verify(b)  # never damaged: at worst a torn tail after a commit of a's
        assert rep.ok, rep.first_error
        assert _roots(b) <= _roots(a)
        fresh = tmp / f"new-{uuid.uuid4().hex[:6]}.capsule"
        fresh_kill.run(PULL, url, str(fresh))
        assert not fresh.exists() or capsule.verify(fresh).ok
    assert kill.killed and fresh_kill.killed, "no round was interrupted"
    assert sync.pull(url, b).status in ("pulled", "up-to-date")  # the rerun completes it
    assert b.read_bytes() == a.read_bytes()


@pytest.mark.parametrize("store", ["s3", "file"])
def test_kill_push(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = _url(store, tmp_path, request)
    _push_rounds(url, tmp_path, 6, random.Random(f"push-{store}"))


def test_kill_pull(tmp_path: Path) -> None:
    _pull_rounds(f"file://{tmp_path}/remote/p", tmp_path, 6, random.Random("pull"))


@pytest.mark.slow
@pytest.mark.parametrize("store", ["s3", "file"])
def test_kill_soak(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = _url(store, tmp_path, request)
    seed = int(os.environ.get("CAPSULE_SOAK_SEED", "1"))
    _push_rounds(url, tmp_path / "push", 25, random.Random(seed))
    _pull_rounds(url + "-pull", tmp_path / "pull", 25, random.Random(seed + 1))


def _url(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if store == "s3":
        request.getfixturevalue("s3_env")
        return f"s3://fleet/kill/{uuid.uuid4().hex[:8]}"
    return f"file://{tmp_path}/remote/k"
