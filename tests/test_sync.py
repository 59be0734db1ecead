"""Push and pull through fsspec (spec 19), against real stores.

S3 is moto's server mode (a real HTTP server on 127.0.0.1 and a free port, spoken to by
s3fs through botocore); credentials and the endpoint reach s3fs through the environment
only, as in production. ``file://`` and ``memory://`` are fsspec's own stores. Nothing
here mocks the thing under test: races are real threads and processes, tampering flips
real bytes of real objects, and the CLI runs as a subprocess of its entry point.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import capsule
import capsule.sync as sync

REPO = Path(__file__).resolve().parent.parent
#: a secret that must never appear in any output or file (test_secrets_never_leak)
SECRET = "sEcReT-d0-n0t-l3ak-7f3a9c"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@pytest.fixture(scope="session")
def s3_env() -> Iterator[dict[str, str]]:
    """moto's S3 server on loopback; yields the environment a client needs (no real AWS)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    srv = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    env = {"AWS_ACCESS_KEY_ID": "AKIATESTSYNC000", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import boto3

    boto3.client("s3").create_bucket(Bucket="fleet")
    try:
        yield env
    finally:
        srv.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def make(path: Path, n: int = 3, text: str = "fact", size: int = 0) -> Path:
    """A capsule with ``n`` commits of one memory each (``size`` pads each text)."""
    with capsule.create(path) as cap:
        add(cap, n, text, size)
    return path


def add(cap: capsule.Capsule, n: int, text: str, size: int = 0) -> None:
    for i in range(n):
        with cap.commit() as tx:
            tx.remember(f"{text} {i} " + "x" * size)


def extend(path: Path, n: int = 1, text: str = "more", size: int = 0) -> None:
    with capsule.open(path, "a") as cap:
        add(cap, n, text, size)


def state_root(path: Path) -> str:
    with capsule.open(path) as cap:
        return str(cap.state_root)


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the real CLI entry point in a fresh process."""
    code = "import sys\nfrom capsule_cli.main import main\nsys.argv[0] = 'capsule'\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)



@pytest.fixture(params=["s3", "file", "memory"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh remote capsule URL on each store."""
    name = uuid.uuid4().hex[:12]
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        return f"s3://fleet/agents/{name}"
    if request.param == "file":
        return f"file://{tmp_path}/remote/{name}"
    return f"memory://sync-tests/{name}"


def store_of(url: str) -> sync.Remote:
    return sync.Remote(url)


# --- round trips and O(tail) ---------------------------------------------------------------


def test_round_trip_and_incremental(url: str, tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 4)
    r1 = sync.push(a, url)
    assert (r1.status, r1.generation, r1.merged_bytes) == ("pushed", 1, 0)
    assert r1.tail_bytes == a.stat().st_size
    assert sync.push(a, url).status == "up-to-date"
    b = tmp_path / "b.capsule"
    p1 = sync.pull(url, b)
    assert p1.status == "created" and p1.bytes == a.stat().st_size
    assert b.read_bytes() == a.read_bytes()
    assert capsule.verify(b).ok and state_root(b) == state_root(a)

    before = a.stat().st_size
    extend(a, 1)
    tail = a.stat().st_size - before
    r2 = sync.push(a, url)
    assert r2.status == "pushed" and r2.generation == 2 and r2.tail_bytes == tail
    manifest = store_of(url).read("manifests/00000000000000000002.json")
    assert r2.bytes == tail + r2.merged_bytes + len(manifest)  # O(tail): nothing else was written
    p2 = sync.pull(url, b)
    assert p2.status == "pulled" and p2.bytes == tail  # O(tail) down too
    assert b.read_bytes() == a.read_bytes() and capsule.verify(b).ok
    assert sync.pull(url, b).status == "up-to-date"
    extend(b, 1)
    assert sync.pull(url, b).status == "ahead"


def test_push_reads_only_committed_bytes_and_never_writes(tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 2)
    committed = a.read_bytes()
    with a.open("ab") as f:
        f.write(b"\x00" * 100)  # a torn tail: never shipped
    a.chmod(0o444)  # opened read-only: a write would fail
    url = f"memory://sync-tests/{uuid.uuid4().hex}"
    r = sync.push(a, url)
    assert r.tail_bytes == len(committed)
    assert a.read_bytes() == committed + b"\x00" * 100
    b = tmp_path / "b.capsule"
    sync.pull(url, b)
    assert b.read_bytes() == committed


def test_segments_merge_and_stay_few(tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 1)
    url = f"file://{tmp_path}/remote/a"
    sync.push(a, url)
    for _ in range(12):
        extend(a, 1)
        sync.push(a, url)
    head = sync.pull(url, tmp_path / "b.capsule")
    assert head.generation == 13
    m = json.loads(store_of(url).read("manifests/00000000000000000013.json"))
    assert len(m["segments"]) <= 6  # 13 pushes, merged by tier (19.5)
    assert (tmp_path / "b.capsule").read_bytes() == a.read_bytes()


def test_large_capsule_one_commit_tail_moves_o_tail(tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 40, size=50_000)  # ~2 MB
    url = f"file://{tmp_path}/remote/big"
    sync.push(a, url)
    before = a.stat().st_size
    extend(a, 1, size=10)
    r = sync.push(a, url)
    assert r.tail_bytes == a.stat().st_size - before < 2_000
    assert r.bytes < r.tail_bytes + 4_000  # the tail, the manifest, no re-sent base
    b = tmp_path / "b.capsule"
    sync.pull(url, b)


# --- divergence -------------------------------------------------------------------------------


def test_diverged_refused_with_names_and_as(url: str, tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 2)
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    sync.pull(url, b)
    extend(a, 1, "local a")
    extend(b, 2, "local b")
    sync.push(a, url)
    with pytest.raises(sync.Diverged) as e:
        sync.push(b, url)
    msg = str(e.value)
    with capsule.open(b) as cap:
        rows = cap.log()
    common = rows[-3]  # b's last two commits are its own
    assert e.value.common == {"commits": common.commits, "seq": common.seq, "root": common.root}
    assert common.root[:16] in msg and e.value.local["root"][:16] in msg and e.value.remote["root"][:16] in msg
    assert "--as" in msg
    with pytest.raises(sync.Diverged):
        sync.pull(url, b)
    assert capsule.verify(b).ok  # untouched
    r = sync.push(b, url, as_name="b-copy")
    assert r.status == "pushed" and r.url.endswith("/b-copy")
    c = tmp_path / "c.capsule"
    sync.pull(r.url, c)
    assert c.read_bytes() == b.read_bytes()
    d = tmp_path / "d.capsule"
    sync.pull(url, d)
    assert d.read_bytes() == a.read_bytes()  # the original remote kept a's history


def test_another_capsule_is_refused(tmp_path: Path) -> None:
    url = f"memory://sync-tests/{uuid.uuid4().hex}"
    sync.push(make(tmp_path / "a.capsule", 1), url)
    other = make(tmp_path / "o.capsule", 1)
    with pytest.raises(sync.Diverged, match="another capsule"):
        sync.push(other, url)
    with pytest.raises(sync.Diverged, match="another capsule"):
        sync.pull(url, other)


def test_remote_ahead_push_says_pull_first(tmp_path: Path) -> None:
    url = f"memory://sync-tests/{uuid.uuid4().hex}"
    a = make(tmp_path / "a.capsule", 1)
    b = tmp_path / "b.capsule"
    sync.push(a, url)
    sync.pull(url, b)
    extend(a, 1)
    sync.push(a, url)
    with pytest.raises(sync.SyncError, match="pull first"):
        sync.push(b, url)


# --- racing pushers ---------------------------------------------------------------------------


def _two_forks(tmp_path: Path, url: str) -> tuple[Path, Path]:
    a = make(tmp_path / "a.capsule", 1)
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    sync.pull(url, b)
    extend(a, 1, "side a")
    extend(b, 1, "side b")
    return a, b


def test_racing_threads_one_wins(url: str, tmp_path: Path) -> None:
    a, b = _two_forks(tmp_path, url)
    barrier = threading.Barrier(2, timeout=20)
    results: dict[str, object] = {}

    def go(name: str, path: Path) -> None:
        def progress(stage: str, done: int, total: int) -> None:
            if stage == "publish":
                barrier.wait()  # both have read generation 1 and uploaded: both try to create 2

        try:
            results[name] = sync.push(path, url, progress=progress)
        except sync.SyncError as e:
            results[name] = e

    threads = [threading.Thread(target=go, args=(n, p)) for n, p in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    won = [n for n, r in results.items() if isinstance(r, sync.PushResult)]
    lost = [r for r in results.values() if isinstance(r, sync.RemoteMoved)]
    assert len(won) == 1 and len(lost) == 1 and "remote moved" in str(lost[0])
    winner, loser = (a, b) if won == ["a"] else (b, a)
    c = tmp_path / "c.capsule"
    sync.pull(url, c)
    assert c.read_bytes() == winner.read_bytes()  # nothing lost: the remote is the winner's,
    assert capsule.verify(loser).ok  # the loser's file is its own, and it can go beside
    assert sync.push(loser, url, as_name="loser").status == "pushed"


RACER = """
import os, sys, time
from pathlib import Path
from typing import Any
import capsule.sync as sync
path, url, me, other = sys.argv[1:5]
def progress(stage, done, total):
    if stage == "publish":
        Path(me).touch()
        t = time.monotonic() + 20
        while not Path(other).exists() and time.monotonic() < t:
            time.sleep(0.005)
try:
    r = sync.push(path, url, progress=progress)
    print("WON", r.generation)
except sync.RemoteMoved as e:
    print("MOVED", e)
"""


def test_racing_processes_one_wins(s3_env: dict[str, str], tmp_path: Path) -> None:
    import subprocess

    url = f"s3://fleet/race/{uuid.uuid4().hex[:8]}"
    a, b = _two_forks(tmp_path, url)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(p), url, str(tmp_path / f"{n}.ready"),
                               str(tmp_path / f"{o}.ready")], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for p, n, o in ((a, "a", "b"), (b, "b", "a"))]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["MOVED", "WON"], outs
    winner = a if outs[0].startswith("WON") else b
    c = tmp_path / "c.capsule"
    sync.pull(url, c)
    assert c.read_bytes() == winner.read_bytes()


# --- tampering --------------------------------------------------------------------------------


def _objects(url: str) -> tuple[sync.Remote, list[str]]:
    r = store_of(url)
    return r, ["segments/" + n for n in r.listdir("segments")]


def test_tampered_segment_is_refused_naming_it(url: str, tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 2)
    sync.push(a, url)
    r, segs = _objects(url)
    data = bytearray(r.read(segs[0]))
    data[200] ^= 0x01
    r.write(segs[0], [bytes(data)])
    with pytest.raises(sync.RemoteCorrupt) as e:
        sync.pull(url, tmp_path / "b.capsule")
    assert segs[0] in str(e.value) and "SHA-256" in str(e.value)
    assert not (tmp_path / "b.capsule").exists()
    assert not list(tmp_path.glob(".b.capsule.pull-*"))


def test_tampered_tail_is_refused_by_chain(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/remote/t"
    a = make(tmp_path / "a.capsule", 2)
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    sync.pull(url, b)
    extend(a, 2, size=200)
    sync.push(a, url)
    r = store_of(url)
    m = json.loads(r.read("manifests/00000000000000000002.json"))
    last = m["segments"][-1]
    data = bytearray(r.read(last["name"]))
    data[len(data) // 2] ^= 0x40
    r.write(last["name"], [bytes(data)])
    before = b.read_bytes()
    with pytest.raises(sync.RemoteCorrupt) as e:
        sync.pull(url, b)
    assert last["name"] in str(e.value)
    assert b.read_bytes() == before


def test_manifest_that_lies_is_refused_and_a_broken_one_skipped(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/remote/m"
    a = make(tmp_path / "a.capsule", 2)
    sync.push(a, url)
    extend(a, 1)
    sync.push(a, url)
    r = store_of(url)
    name = "manifests/00000000000000000002.json"
    good = r.read(name)
    m = json.loads(good)
    m["root"] = "0" * 64  # parses, names a commit the segments do not make
    r.write(name, [json.dumps(m).encode()])
    with pytest.raises(sync.RemoteCorrupt, match="manifest names"):
        sync.pull(url, tmp_path / "b.capsule")
    r.write(name, [good[:-20]])  # cut short: not a whole manifest, skipped and said
    res = sync.pull(url, tmp_path / "c.capsule")
    assert res.generation == 1 and res.skipped and name in res.skipped[0]


# --- trust ------------------------------------------------------------------------------------


def test_trust_signed_and_unsigned_tails(tmp_path: Path) -> None:
    key = capsule.generate_key()
    pub = capsule.save_private_key(tmp_path / "k.key", key, passphrase=None)
    url = f"memory://sync-tests/{uuid.uuid4().hex}"
    a = make(tmp_path / "a.capsule", 2)
    with capsule.open(a, "a") as cap:
        cap.checkpoint("day-1", key=key)
    sync.push(a, url)
    b = tmp_path / "b.capsule"
    res = sync.pull(url, b, trust=key.public_key)
    assert res.status == "created" and res.signed_prefix is not None
    extend(a, 1, "unsigned injection")
    sync.push(a, url)
    before = b.read_bytes()
    with pytest.raises(sync.RemoteUntrusted, match="not covered"):
        sync.pull(url, b, trust=key.public_key)
    assert b.read_bytes() == before
    with pytest.raises(sync.RemoteUntrusted):
        sync.pull(url, tmp_path / "new.capsule", trust=key.public_key)
    other = capsule.generate_key()
    with pytest.raises(sync.RemoteUntrusted, match="trust-anchor"):
        sync.pull(url, tmp_path / "new2.capsule", trust=other.public_key)
    with capsule.open(a, "a") as cap:
        cap.checkpoint("day-2", key=key)
    sync.push(a, url)
    assert sync.pull(url, b, trust=key.public_key).status == "pulled"
    assert b.read_bytes() == a.read_bytes()
    proc = cli("pull", url.replace("memory", "memory"), str(tmp_path / "x.capsule"), "--trust", str(pub))
    assert proc.returncode == 2  # memory:// is per process: nothing there for a new process


# --- the CLI, secrets, imports -----------------------------------------------------------------


def test_cli_push_pull_json_and_exit_codes(s3_env: dict[str, str], tmp_path: Path) -> None:
    key = capsule.generate_key()
    pub = capsule.save_private_key(tmp_path / "k.key", key, passphrase=None)
    a = make(tmp_path / "a.capsule", 2)
    with capsule.open(a, "a") as cap:
        cap.checkpoint("day-1", key=key)
    url = f"s3://fleet/cli/{uuid.uuid4().hex[:8]}"
    p = cli("push", str(a), url, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "pushed" and out["generation"] == 1 and out["bytes"] > out["tail_bytes"] > 0
    b = tmp_path / "b.capsule"
    p = cli("pull", url, str(b), "--trust", str(pub), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["status"] == "created"
    extend(a, 1, "a")
    extend(b, 1, "b")
    assert cli("push", str(a), url).returncode == 0
    p = cli("push", str(b), url)
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "diverged" in p.stderr and "Traceback" not in p.stderr
    p = cli("pull", f"s3://fleet/cli/never-{uuid.uuid4().hex[:6]}", str(tmp_path / "n.capsule"))
    assert p.returncode == 2 and "no capsule was pushed" in p.stderr
    p = cli("push", str(b), url, "--as", "../evil")
    assert p.returncode == 2 and p.stderr.startswith("capsule: error:")
    p = cli("push", str(a), "s3://no-such-bucket-zz/x")  # the store refuses: exit 1, one line
    assert p.returncode == 1 and "no such bucket" in p.stderr and p.stderr.count("\n") == 1, p.stderr
    p = cli("pull", url, str(tmp_path / "z.capsule"), env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"})  # nothing listens there
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr


def test_secrets_never_leak(s3_env: dict[str, str], tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 2)
    url = f"s3://fleet/secret/{uuid.uuid4().hex[:8]}"
    procs = [cli("push", str(a), url), cli("push", str(a), url, "--json"),
             cli("pull", url, str(tmp_path / "b.capsule"), "--json"),
             cli("pull", "s3://no-such-bucket-zz/x", str(tmp_path / "z.capsule")),
             cli("push", str(a), "s3://no-such-bucket-zz/x"),
             cli("pull", url, str(tmp_path / "c.capsule"), env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_MAX_ATTEMPTS": "1"})]
    assert [p.returncode for p in procs[:3]] == [0, 0, 0] and all(p.returncode for p in procs[3:])
    for p in procs:
        assert SECRET not in p.stdout + p.stderr
    r = store_of(url)
    blobs = [r.read("manifests/" + n) for n in r.listdir("manifests")] + [r.read("segments/" + n)
                                                                         for n in r.listdir("segments")]
    for f in tmp_path.iterdir():
        if f.is_file():
            blobs.append(f.read_bytes())
    assert not [b for b in blobs if SECRET.encode() in b]
    err = sync.remote.scrub(f"failed s3://user:{SECRET}@host/x with {SECRET}")
    assert SECRET not in err


def test_import_capsule_does_not_import_fsspec() -> None:
    import subprocess

    code = ("import sys, capsule, capsule.sync\nimport capsule_cli.sync\n"
            "assert 'fsspec' not in sys.modules and 's3fs' not in sys.modules, 'imported'\n")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_a_store_that_stops_answering_is_waited_for_aloud(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fleet review: pull from an S3 endpoint that accepts and never answers printed
    nothing for minutes (botocore's timeouts times its and s3fs's retries). The CLI now says on
    stderr that it is still waiting, once the last step is STALL_SAY seconds old, then every 30 s."""
    import time

    from capsule_cli import _render
    from capsule_cli import sync as cli_sync

    said: list[str] = []
    monkeypatch.setattr(cli_sync, "STALL_SAY", 0.2)
    monkeypatch.setattr(cli_sync, "warn", said.append)
    monkeypatch.setattr(_render, "warn", said.append)

    def stalled(progress: Any) -> str:
        progress("contacting", 0, 0)
        time.sleep(0.2)
        progress("manifest", 1, 1)  # a step: the wait starts again
        time.sleep(5.6)  # the watcher looks every min(STALL_SAY, 5) s
        return "done"

    assert cli_sync._with_progress(True, stalled) == "done"
    assert len(said) == 1 and said[0].startswith("still working: ") and "Ctrl-C" in said[0]
    said.clear()
    assert cli_sync._with_progress(True, lambda p: [p("x", 0, 0) for _ in range(3)] and "quick") == "quick"
    time.sleep(0.5)
    assert said == []  # a command that finished says nothing, and its watcher has stopped


def test_push_check_from_a_file_behind_the_remote_says_who_can_mend_it(tmp_path: Path) -> None:
    # fleet review: a copy behind the remote got the same "mend it with push --check" advice
    # that it had just followed
    a, old = tmp_path / "a.capsule", tmp_path / "old.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("one")
    old.write_bytes(a.read_bytes())
    url = f"file://{tmp_path / 'r'}"
    sync.push(old, url)
    with capsule.open(a, "a") as cap, cap.commit() as tx:
        tx.remember("two")
    sync.push(a, url)
    first = sorted((tmp_path / "r" / "segments").iterdir())[0]
    first.unlink()
    with pytest.raises(sync.RemoteCorrupt, match="old.capsule is behind the remote .* only a copy holding"):
        sync.push(old, url, check=True)
    assert sync.push(a, url, check=True).repaired == [f"segments/{first.name}"]
