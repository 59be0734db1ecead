"""`capsule merge` in a fresh process: output, --dry-run --json, errors, kill -9 mid-merge."""

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
from capsule.verifier.merge import verify_merge

CAPSULE = Path(sys.executable).parent / "capsule"
# Until `merge` is registered in cli/main.py, the command runs in an app of its own, through
# the same run_app (exit codes, one-line errors) as the real one.
SHIM = ("import typer; from capsule_cli._errors import run_app; from capsule_cli.merge import merge_cmd; "
        "app = typer.Typer(); app.command('merge')(merge_cmd); app.command('noop', hidden=True)(lambda: None); "
        "run_app(app)")


def _registered() -> bool:
    r = subprocess.run([str(CAPSULE), "merge", "--help"], capture_output=True, text=True, timeout=60)
    return r.returncode == 0


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(CAPSULE), *args] if _REAL else [sys.executable, "-c", SHIM, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


_REAL = _registered()


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        m = tx.remember("the printer is on floor 2")
    capsule.fork(a, b).close()
    for p, tag in ((a, "a"), (b, "b")):
        with capsule.open(p, "a") as cap:
            with cap.commit() as tx:
                tx.supersede(m, f"floor 3, says {tag}")
            cap.run_once("email", lambda tag=tag: f"sent by {tag}")  # type: ignore[misc]
    return a, b


def test_merge_prints_and_writes(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    r = run("merge", str(a), str(b), "-o", str(tmp_path / "c.capsule"))
    assert r.returncode == 0, r.stderr
    assert "merged" in r.stdout and "2 conflicts" in r.stdout and "action-twice email" in r.stdout
    assert verify_merge(tmp_path / "c.capsule", [a, b]).ok


def test_dry_run_json_shows_conflicts_and_writes_nothing(pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = pair
    r = run("merge", str(b), str(a), "-o", str(tmp_path / "c.capsule"), "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True and doc["bytes"] is None and doc["relation"] == "fork"
    assert sorted(c["kind"] for c in doc["conflicts"]) == ["action-twice", "supersede"]
    assert not list(tmp_path.glob("*c.capsule*"))


@pytest.mark.parametrize(("args", "code", "words"), [
    (["{a}", "{other}", "-o", "{out}"], 1, "no common ancestor"),
    (["{a}", "{a}", "-o", "{out}"], 2, "same file"),
    (["{a}", "{b}", "-o", "{a}"], 2, "one of the parents"),
    (["{a}", "{missing}", "-o", "{out}"], 2, "missing"),
    (["{a}", "{bad}", "-o", "{out}"], 1, "bad.capsule"),
    (["{a}", "{b}", "-o", "{exists}"], 2, "already exists"),
])
def test_bad_inputs_are_one_line_errors(pair: tuple[Path, Path], tmp_path: Path, args: list[str], code: int,
                                        words: str) -> None:
    a, b = pair
    other = tmp_path / "other.capsule"
    with capsule.create(other) as cap, cap.commit() as tx:
        tx.remember("a stranger")
    bad = tmp_path / "bad.capsule"
    data = bytearray(b.read_bytes())
    data[len(data) // 3] ^= 0x40
    bad.write_bytes(bytes(data))
    (tmp_path / "exists.capsule").write_bytes(b"")
    names = {"a": a, "b": b, "other": other, "bad": bad, "out": tmp_path / "out.capsule",
             "missing": tmp_path / "missing.capsule", "exists": tmp_path / "exists.capsule"}
    r = run("merge", *(x.format(**names) for x in args))
    assert r.returncode == code, (r.stdout, r.stderr)
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out.capsule").exists()


def _big(path: Path, tag: str, n: int) -> None:
    with capsule.open(path, "a") as cap, cap.commit() as tx:
        tx.put_many({"kind": "memory", "text": f"{tag} fact {i} " + "x" * 200} for i in range(n))


def test_kill_9_during_merge_leaves_no_output_or_a_verifiable_one(tmp_path: Path) -> None:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("common")
    capsule.fork(a, b).close()
    _big(a, "a", 20_000)
    _big(b, "b", 20_000)
    out = tmp_path / "c.capsule"
    t0 = time.perf_counter()
    assert run("merge", str(a), str(b), "-o", str(out)).returncode == 0
    full = time.perf_counter() - t0
    out.unlink()
    outcomes = set()
    for frac in (0.2, 0.45, 0.7, 0.9):
        cmd = [str(CAPSULE), "merge"] if _REAL else [sys.executable, "-c", SHIM, "merge"]
        p = subprocess.Popen([*cmd, str(a), str(b), "-o", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(full * frac)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():
            outcomes.add("complete")
            assert verify_merge(out, [a, b]).ok
            out.unlink()
        else:
            outcomes.add("none")
        for stray in tmp_path.glob(".c.capsule.merge-*"):
            stray.unlink()  # a killed run's temporary file: never the output name
    assert outcomes  # each round ended in one of the two allowed states


@pytest.mark.parametrize("verb", ["merge", "checkpoint", "compact"])
def test_a_public_key_given_as_key_is_a_usage_error(tmp_path: Path, verb: str) -> None:
    # fleet review: a missing --key exited 2, a .pub given as --key exited 1 ("data")
    capsule.save_private_key(tmp_path / "k", capsule.generate_key(), passphrase=None)
    pub = tmp_path / "k.pub"  # written beside it
    a = tmp_path / "a.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("x")
    args = {"merge": ["merge", a, a, "-o", tmp_path / "m.capsule"], "checkpoint": ["checkpoint", a, "c1"],
            "compact": ["compact", a, "-o", tmp_path / "c.capsule"]}[verb]
    before = a.read_bytes()
    r = subprocess.run([str(Path(sys.executable).with_name("capsule")), *map(str, args), "--key", str(pub)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith(f"capsule: error: --key {pub}: ") and "public key" in r.stderr
    assert a.read_bytes() == before
