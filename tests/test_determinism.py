"""Reproducibility (2.5, 8.1): the same operations give the same bytes.

With SOURCE_DATE_EPOCH set, the file id and every timestamp are fixed, so one
sequence of CLI and library operations must produce byte-identical files
wherever it runs: another directory, another file name, another hash seed,
time zone or locale. Without it the file id and commit times differ, but the
state root (over record ids only) is still equal when every record carries an
explicit time. And the state root of a file never depends on where the file
lives or which process opens it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import capsule
from capsule.core import constants as C

EPOCH = 1_700_000_000

# Library operations run in a child process. Sets of strings iterate in an
# order that depends on PYTHONHASHSEED, so the tags and meta maps below are
# built in a different insertion order under each seed: canonical encoding
# must make that invisible.
LIB_OPS = r'''
import json
import sys

import numpy as np

import capsule

path, explicit = sys.argv[1], sys.argv[2] == "explicit"
keys = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}
t = (lambda i: 1_600_000_000_000_000_000 + i) if explicit else (lambda i: None)
with capsule.open(path, "a") as cap:
    with cap.commit() as tx:
        for i in range(40):
            tx.remember(f"library record {i}", tags=list(keys), meta=dict.fromkeys(keys, i),
                        embedding=np.linspace(-1, 1, 8, dtype=np.float64) * i if i % 2 else None,
                        time=t(i))
        tx.put_value({"text": "from put_value", "meta": {k: [k, {"n": len(k)}] for k in keys},
                      "tier": "validated", **({"time": 1_600_000_000_000_000_999} if explicit else {})})
    with cap.commit() as tx:
        tx.remember("library record 0", tags=list(keys), meta=dict.fromkeys(keys, 0), time=t(0))  # duplicate
        tx.remember("second commit", source="unit-test", ttl=3_600_000_000_000, time=t(100))
    print(json.dumps({"records": len(cap), "state_root": cap.state_root, "root": cap.root}))
'''


def jsonl_lines(explicit_time: bool) -> str:
    """A batch exercising normalisation: NFD text, unsorted and repeated tags,
    nested meta, float-typed integers, ISO times with and without a zone."""
    rows: list[dict[str, Any]] = [
        {"text": "cafe\u0301 NFD", "tags": ["z", "a", "a"], "meta": {"b": 1, "a": {"y": [1, 2], "x": "s"}},
         "time": "2025-03-01T00:00:00Z"},
        {"text": "embedded", "embedding": [0.25, -0.0, 3.5, 1e-3, 0.0, 1.0, -1.0, 2.0]},
        {"text": "validated", "tier": "validated", "ttl": 1000, "source": "jsonl"},
        {"text": "local-looking time", "time": "2026-01-05T09:30:00"},  # no zone: UTC, not $TZ
        {"text": "zoned time", "time": "2026-01-05T15:00:00+05:30"},
        {"text": "float time", "time": 1.7e18},
        # The first row again, spelled differently: the same record.
        {"text": "caf\u00e9 NFD", "tags": ["a", "z"], "meta": {"a": {"x": "s", "y": [1, 2]}, "b": 1},
         "time": 1_740_787_200_000_000_000},
    ]
    rows += [{"text": f"bulk {i}", "tags": [f"t{i % 7}"], "meta": {"i": i}} for i in range(600)]
    if explicit_time:
        for i, r in enumerate(rows):
            r.setdefault("time", 1_650_000_000_000_000_000 + i)
    return "".join(json.dumps(r) + "\n" for r in rows)


def clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOURCE_DATE_EPOCH", "PYTHONHASHSEED", "TZ", "LANG", "LANGUAGE")
           and not k.startswith("LC_")}
    env.update(overrides)
    return env


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{args} exited {r.returncode}: {r.stderr}"
    return r.stdout


def cli(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    return run([sys.executable, "-m", "capsule_cli.main", *args], cwd, env)


def run_ops(workdir: Path, name: str, env: dict[str, str], *, explicit_time: bool = False) -> dict[str, Any]:
    """One fixed sequence of CLI and library operations; returns what they produced."""
    workdir.mkdir(parents=True)
    (workdir / "batch.jsonl").write_text(jsonl_lines(explicit_time), encoding="utf-8")
    (workdir / "lib_ops.py").write_text(LIB_OPS)
    cli(["init", name], workdir, env)
    text = ["put", name, "--text", "caf\u00e9 \u2615 deploys freeze on Fridays", "--tag", "ops",
            "--tag", "infra", "--meta", "team=infra", "--meta", "zone=eu"]
    if not explicit_time:  # --text has no way to give a time
        cli(text, workdir, env)
    put = json.loads(cli(["put", name, "--jsonl", "batch.jsonl", "--json"], workdir, env))
    assert put["count"] == 607 and put["new"] == 606  # the last special row repeats the first
    if not explicit_time:
        cli(text, workdir, env)  # the same memory again (same fixed time): nothing written
    lib = json.loads(run([sys.executable, "lib_ops.py", name, "explicit" if explicit_time else "-"], workdir, env))
    summary = json.loads(cli(["open", name, "--json"], workdir, env))
    summary.pop("file")  # the only thing allowed to differ: where the file is
    data = (workdir / name).read_bytes()
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "summary": summary,
        "log": json.loads(cli(["log", name, "--json"], workdir, env)),
        "verify": json.loads(cli(["verify", name, "--json"], workdir, env)),
        "lib": lib,
    }


def test_source_date_epoch_gives_byte_identical_files(tmp_path: Path) -> None:
    a = run_ops(tmp_path / "a", "agent.capsule",
                clean_env(SOURCE_DATE_EPOCH=str(EPOCH), PYTHONHASHSEED="0", TZ="UTC", LC_ALL="C", LANG="C"))
    b = run_ops(tmp_path / "b" / "deeper dir", "other name.capsule",
                clean_env(SOURCE_DATE_EPOCH=str(EPOCH), PYTHONHASHSEED="987654", TZ="IST-5:30",
                          LC_ALL="C.UTF-8", LANG="C.UTF-8"))
    assert a["verify"]["ok"] and a["verify"]["torn_tail_bytes"] == 0
    assert a["summary"]["records"] == 1 + 606 + 41 + 1
    assert a["sha256"] == b["sha256"], "same operations, different bytes"
    assert a["size"] == b["size"]
    assert a["summary"] == b["summary"] and a["log"] == b["log"] and a["verify"] == b["verify"]
    assert a["summary"]["state_root"] == b["summary"]["state_root"] == a["lib"]["state_root"]
    # 2.5: the reproducible file id is derived from the epoch alone, and every
    # commit carries the fixed time.
    expect_id = hashlib.sha256(C.FILE_ID_TAG + str(EPOCH).encode()).digest()[:16].hex()
    assert a["summary"]["file_id"] == expect_id
    assert {row["time"] for row in a["log"]} == {"2023-11-14T22:13:20Z"}
    # The close after 600+ records wrote an INDEX, so that path is covered too.
    assert a["summary"]["records"] >= C.INDEX_ON_CLOSE_RECORDS


def test_a_different_epoch_gives_a_different_file(tmp_path: Path) -> None:
    # Guards the test above against passing for a trivial reason (e.g. the
    # environment variable being ignored and the clock being constant anyway).
    out = []
    for epoch in (EPOCH, EPOCH + 1):
        d = tmp_path / str(epoch)
        d.mkdir()
        env = clean_env(SOURCE_DATE_EPOCH=str(epoch), PYTHONHASHSEED="0", TZ="UTC", LC_ALL="C.UTF-8")
        cli(["init", "x.capsule"], d, env)
        cli(["put", "x.capsule", "--text", "same text"], d, env)
        out.append((hashlib.sha256((d / "x.capsule").read_bytes()).hexdigest(),
                    json.loads(cli(["open", "x.capsule", "--json"], d, env))))
    (sha_a, a), (sha_b, b) = out
    assert sha_a != sha_b
    assert a["file_id"] != b["file_id"]
    # A record without an explicit time takes the epoch, so its id changes too.
    assert a["state_root"] != b["state_root"]


def test_without_source_date_epoch_ids_differ_but_state_roots_match(tmp_path: Path) -> None:
    a = run_ops(tmp_path / "a", "agent.capsule", clean_env(PYTHONHASHSEED="1", TZ="UTC", LC_ALL="C"),
                explicit_time=True)
    b = run_ops(tmp_path / "b", "renamed.capsule",
                clean_env(PYTHONHASHSEED="2024", TZ="NZST-12", LC_ALL="C.UTF-8"), explicit_time=True)
    # Random file ids and wall-clock commit times: different files ...
    assert a["summary"]["file_id"] != b["summary"]["file_id"]
    assert a["sha256"] != b["sha256"]
    # ... holding the same records, so the same state root (8.1 covers record
    # ids only, and every record here carries its own time).
    assert a["summary"]["records"] == b["summary"]["records"] == 606 + 41 + 1
    assert a["summary"]["state_root"] == b["summary"]["state_root"]
    assert a["lib"]["state_root"] == b["lib"]["state_root"] and a["lib"]["records"] == b["lib"]["records"]
    assert a["verify"]["ok"] and b["verify"]["ok"]


PROBE = r'''
import hashlib
import json
import sys

import capsule

with capsule.open(sys.argv[1]) as cap:
    ids = [r.id for r in cap.records()]
    print(json.dumps({"state_root": cap.state_root, "root": cap.root, "records": len(cap),
                      "ids": hashlib.sha256("".join(ids).encode()).hexdigest(), "file_id": cap.file_id,
                      "commits": cap.commit_count, "log": [r.to_dict() for r in cap.log()]}))
'''


def test_state_root_survives_copy_rename_and_fresh_process(tmp_path: Path) -> None:
    src = tmp_path / "one" / "agent.capsule"
    src.parent.mkdir()
    with capsule.create(src) as cap:
        for c in range(5):
            with cap.commit() as tx:
                for i in range(150):  # 750 records: close() writes an INDEX + TABLE
                    tx.remember(f"c{c} r{i}", tags=[f"t{i % 5}", "all"], meta={"c": c, "i": i},
                                embedding=[float(i), float(c)] if i % 3 == 0 else None)
        before_close = cap.state_root
    with capsule.open(src) as cap:  # after close(), which added an INDEX commit
        here = {"state_root": cap.state_root, "root": cap.root, "records": len(cap)}
    assert here["state_root"] == before_close  # an INDEX commit changes no record
    dst = tmp_path / "elsewhere" / "nested" / "a different name.bin"
    dst.parent.mkdir(parents=True)
    shutil.copyfile(src, dst)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    outs = []
    for path, seed, tz in ((src, "1", "UTC"), (dst, "31337", "HST10"), (dst, "random", "IST-5:30")):
        outs.append(json.loads(run([sys.executable, str(probe), str(path)], tmp_path,
                                   clean_env(PYTHONHASHSEED=seed, TZ=tz, LC_ALL="C.UTF-8"))))
    assert outs[0] == outs[1] == outs[2]
    assert {k: outs[0][k] for k in here} == here
    # Independent recomputation of 8.1 from the ids: tag, u64 count, sorted ids.
    with capsule.open(dst) as cap:
        ids = sorted(bytes.fromhex(r.id) for r in cap.records())
    from tests.spec_ref import state_root

    assert state_root(ids) == here["state_root"]
    assert capsule.verify(dst).ok
