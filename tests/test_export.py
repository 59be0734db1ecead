"""``capsule export``: JSONL that ``put --jsonl`` reads back to the same state root, Parquet
rows queried with DuckDB (a fleet of 100 capsules in one hive-partitioned dataset), time
travel, history, and bad input that writes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import capsule
from capsule.integrations.export import COLUMNS, export, rows

CLI = [str(Path(sys.executable).with_name("capsule"))]
T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
KEY = capsule.PrivateKey.from_seed(bytes(range(32)))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        self.now += 10**9
        return self.now


def cli(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def rich(path: Path) -> dict[str, str]:
    """Every kind `put --jsonl` takes, every memory field, and lifecycle events; ids by name."""
    ids: dict[str, str] = {}
    with capsule.create(path, clock=Clock()) as cap:
        with cap.commit() as tx:
            ids["m1"] = tx.remember("alice owns billing", tags=["people", "ops"],
                                    meta={"team": "payments", "n": 3, "f": 0.1, "deep": {"a": [1, None, True]}},
                                    embedding=[0.1, 0.7, 0.2], tier="validated", ttl=10**15, source="runbook",
                                    valid_from="2026-01-01T00:00:00Z", valid_to="2026-06-01T00:00:00Z")
            ids["m2"] = tx.remember("p95 budget is 300 ms", tags=["slo"], embedding=[-0.0, 1e-30, 3.4e38],
                                    tier="scratch")
            ids["m3"] = tx.remember("ünïcode ✓ text\twith tab", source="", time=5)
            ids["d"] = tx.decide("page alice", rationale="she owns it", evidence=[ids["m1"]],
                                 inputs={"x": 1}, alternatives=["page bob"])
            ids["n"] = tx.note("step 1 done")
            ids["c"] = tx.constrain("no deploys on Fridays", scope="ops", rule={"action": "deploy.*"})
            ids["i"] = tx.set_identity("agent-7", name="Seven", model="m", config={"k": "v"},
                                       keys=[KEY.public_key])
            ids["a"] = tx.approve(ids["d"], KEY)
        cap.checkpoint("day-1", key=KEY)
        with cap.commit() as tx:
            ids["old"] = tx.remember("rota is in the wiki", tags=["ops"])
            ids["gone"] = tx.note("a note to forget")
        with cap.commit() as tx:
            ids["new"] = tx.supersede(ids["old"], "rota is in PagerDuty", reason="moved")
            ids["up"] = tx.promote(ids["m2"], "working")
            tx.forget(ids["gone"])
    return ids


def root(path: Path) -> str:
    with capsule.open(path) as cap:
        return cap.state_root


# --- JSONL: re-import to the same state root ---------------------------------------


def test_jsonl_reimports_to_the_same_state_root(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    ids = rich(src)
    before = digest(src)
    res = json.loads(cli("export", src, "-o", tmp_path / "a.jsonl", "--json").stdout)
    assert digest(src) == before  # reading never writes
    assert res["reimportable"] and res["state_root"] == root(src) and res["agent_id"] == "agent-7"
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert res["rows"] == len(lines) == 9  # 12 records; superseded, forgotten and promoted away: 3 dead
    assert "id" not in lines[0] and all("kind" in x and "time" in x for x in lines)
    cli("init", tmp_path / "b.capsule")
    cli("put", tmp_path / "b.capsule", "--jsonl", tmp_path / "a.jsonl")
    assert root(tmp_path / "b.capsule") == root(src)
    with capsule.open(tmp_path / "b.capsule") as b:
        got = {r.id for r in b.records()}
        m2 = b.get(ids["up"])
        assert m2.embedding.tobytes() == np.array([0.0, 1e-30, 3.4e38], dtype="<f4").tobytes()
        assert b.get(ids["m1"]).valid_to == 1_780_272_000 * 10**9
    assert ids["old"] not in got and ids["gone"] not in got and {ids["new"], ids["a"], ids["i"]} <= got


def test_at_exports_a_past_view(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    ids = rich(src)
    with capsule.open(src, at="day-1") as then:
        then_root = then.state_root
    res = export(src, tmp_path / "d1.jsonl", at="day-1")
    assert res.state_root == then_root != root(src)
    text = (tmp_path / "d1.jsonl").read_text()
    assert "rota" not in text and "p95 budget" in text  # m2 in its scratch tier, before the promote
    with capsule.create(tmp_path / "b.capsule") as b:
        with b.commit() as tx:
            tx.put_many([line.encode() for line in text.splitlines()])
        assert b.state_root == then_root and ids["m2"] in b


def test_history_and_kind_filter(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    ids = rich(src)
    every = list(rows(src, history=True))
    with capsule.open(src) as cap:
        assert [r["id"] for r in every] == [r.id for r in cap.records()]  # commit order, every record
        seqs = [c.seq for c in cap.log()]
    dead = {r["id"] for r in every if not r["live"]}
    assert dead == {ids["old"], ids["gone"], ids["m2"]} | {r["id"] for r in every if r["kind"] == "revert"}
    assert all(r["seq"] in seqs for r in every) and sorted(r["seq"] for r in every) == [r["seq"] for r in every]
    mems = list(rows(src, kinds=["memory"]))
    assert {r["id"] for r in mems} == {ids["m1"], ids["m3"], ids["new"], ids["up"]}
    m1 = next(r for r in mems if r["id"] == ids["m1"])
    assert m1["meta"] == {"deep": {"a": [1, None, True]}, "f": 0.1, "n": 3, "team": "payments"}
    assert m1["fields"] == {"source": "runbook", "ttl": 10**15} and m1["tier"] == "validated"
    assert m1["tags"] == ["ops", "people"] and m1["valid_from"] == T0
    res = export(src, tmp_path / "h.jsonl", history=True, kinds=["revert", "note"])
    assert res.by_kind == {"note": 2, "revert": 3} and not res.reimportable and res.not_importable == {"revert": 3}


# --- Parquet ------------------------------------------------------------------------


def test_parquet_columns_types_and_row_groups(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    ids = rich(src)
    before = digest(src)
    res = export(src, tmp_path / "a.parquet", format="parquet", history=True, batch=4)
    assert digest(src) == before
    f = pq.ParquetFile(tmp_path / "a.parquet")
    assert f.metadata.num_rows == res.rows == 15 and f.metadata.num_row_groups == 4  # streamed, 4 rows a group
    t = f.read()
    assert t.schema.names == [n for n, _ in COLUMNS]
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), 3)
    assert t.schema.field("time").type == pa.timestamp("ns", tz="UTC")
    by_id = {r["id"]: r for r in t.drop_columns(["time", "commit_time", "valid_from", "valid_to"]).to_pylist()}
    with capsule.open(src) as cap:
        for rid in (ids["m1"], ids["up"]):
            want = cap.get(rid).embedding
            got = t.column("embedding").combine_chunks().flatten().to_numpy()
            assert want.tobytes() in got.astype("<f4").tobytes()
        assert by_id[ids["m3"]]["embedding"] is None and by_id[ids["d"]]["text"] == "page alice"
        assert json.loads(by_id[ids["d"]]["fields"])["evidence"] == [ids["m1"]]
    q = duckdb.sql(f"SELECT epoch_ns(time), live FROM '{tmp_path / 'a.parquet'}' WHERE id = '{ids['m3']}'")
    assert q.fetchall() == [(5, True)]


def test_parquet_without_embeddings_and_a_wrong_dim(tmp_path: Path) -> None:
    src = tmp_path / "t.capsule"
    with capsule.create(src) as cap, cap.commit() as tx:
        tx.remember("no vector here")
    export(src, tmp_path / "t.parquet", format="parquet")
    assert pq.read_schema(tmp_path / "t.parquet").field("embedding").type == pa.list_(pa.float32())
    export(src, tmp_path / "t4.parquet", format="parquet", dim=4)  # a fleet's common schema
    assert pq.read_schema(tmp_path / "t4.parquet").field("embedding").type == pa.list_(pa.float32(), 4)
    vec = tmp_path / "v.capsule"
    rich(vec)
    p = cli("export", vec, "-f", "parquet", "--dim", "4", "-o", tmp_path / "v.parquet", check=False)
    # a usage error (exit 2) naming both: the capsule is sound
    assert p.returncode == 2 and "dim 4 was asked for" in p.stderr and "have 3" in p.stderr
    assert len(p.stderr.splitlines()) == 1
    assert not (tmp_path / "v.parquet").exists() and not list(tmp_path.glob(".v.parquet*"))


def test_fleet_of_100_capsules_queried_with_duckdb(tmp_path: Path) -> None:
    rnd = random.Random(13)
    words = ["disk", "latency", "billing", "deploy", "backup", "cache", "queue", "token"]
    tag_pool = ["ops", "slo", "people", "security", "infra", "cost"]
    kinds: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    disk: set[tuple[str, str]] = set()
    ds = tmp_path / "ds"
    for i in range(100):
        agent = f"agent-{i:03d}"
        path = tmp_path / f"{i}.capsule"
        with capsule.create(path, clock=Clock()) as cap:
            live: list[tuple[str, str, tuple[str, ...]]] = []
            with cap.commit() as tx:
                tx.set_identity(agent)
                kinds["identity"] += 1
                for _ in range(rnd.randint(1, 6)):
                    text = " ".join(rnd.choice(words) for _ in range(3)) + f" #{rnd.randint(0, 99)}"
                    tg = tuple(sorted(set(rnd.sample(tag_pool, rnd.randint(0, 3)))))
                    live.append((tx.remember(text, tags=list(tg)), text, tg))
                if rnd.random() < 0.5:
                    summary = f"act on {rnd.choice(words)}"
                    did = tx.decide(summary, evidence=[live[0][0]])
                    kinds["decision"] += 1
                    if "disk" in summary:  # a decision's summary is its text column
                        disk.add((agent, did))
                tx.note(f"run {i} done")
                kinds["note"] += 1
            if len(live) > 1:  # a forgotten memory is not in the live export
                with cap.commit() as tx:
                    tx.forget(live.pop()[0])
        for rid, text, tg in live:
            kinds["memory"] += 1
            tags.update(tg)
            if "disk" in text.lower():
                disk.add((agent, rid))
        export(path, ds, format="parquet", partition="agent")
    assert len(list(ds.glob("agent=*/part-*.parquet"))) == 100
    src = f"read_parquet('{ds}/*/*.parquet', hive_partitioning = true)"
    by_kind = duckdb.sql(f"SELECT kind, count(*) FROM {src} GROUP BY kind ORDER BY kind").fetchall()
    assert by_kind == sorted(kinds.items())
    hits = duckdb.sql(f"SELECT agent, id FROM {src} WHERE text ILIKE '%DISK%'").fetchall()
    assert set(hits) == disk and len(hits) == len(disk) > 0
    assert duckdb.sql(f"SELECT count(*) FROM {src} WHERE agent <> agent_id").fetchall() == [(0,)]
    top = duckdb.sql(f"SELECT tag, count(*) AS n FROM (SELECT UNNEST(tags) AS tag FROM {src}) "
                     "GROUP BY tag ORDER BY n DESC, tag LIMIT 3").fetchall()
    assert top == sorted(tags.items(), key=lambda kv: (-kv[1], kv[0]))[:3]


# --- redaction, lossy values, kinds put --jsonl refuses ------------------------------


def test_redacted_records_never_export_their_payload(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    with capsule.create(src) as cap:
        with cap.commit() as tx:
            leak = tx.remember("the wifi password is hunter2")
            tx.remember("safe fact")
        cap.checkpoint("before", key=KEY)
        with cap.commit() as tx:
            tx.redact(leak, reason="credential")
    assert export(src, tmp_path / "now.jsonl").rows == 1
    res = export(src, tmp_path / "then.jsonl", at="before")
    assert res.skipped_redacted == 1 and res.rows == 1 and not res.reimportable
    export(src, tmp_path / "h.parquet", format="parquet", history=True)
    for f in ("now.jsonl", "then.jsonl", "h.parquet"):
        assert b"hunter2" not in (tmp_path / f).read_bytes()
    t = pq.read_table(tmp_path / "h.parquet")
    row = next(r for r in t.drop_columns(["time", "commit_time"]).to_pylist() if r["id"] == leak)
    assert row["redacted"] and row["text"] is None and row["tags"] is None and row["fields"] is None
    assert t.column("time").to_numpy()[t.column("id").to_pylist().index(leak)] is None or \
        t.column("time").is_null().to_pylist()[t.column("id").to_pylist().index(leak)]


def test_what_cannot_round_trip_is_said(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    with capsule.create(src) as cap:
        with cap.commit() as tx:
            tx.remember("binary meta", meta={"blob": b"\x00\x01"})
        cap.run_once("email:1", lambda: {"id": "m-1"})
        cap.tasks.add("fetch")
    p = cli("export", src, "-o", tmp_path / "a.jsonl")
    assert "1 record(s) hold binary values" in p.stderr and "action" in p.stderr and "task" in p.stderr
    res = export(src, tmp_path / "b.jsonl", kinds=["memory"])
    assert res.lossy == 1 and res.not_importable == {} and not res.reimportable
    cli("init", tmp_path / "b.capsule")
    put = cli("put", tmp_path / "b.capsule", "--jsonl", tmp_path / "a.jsonl", check=False)
    assert put.returncode == 1 and "unknown record kind 'action'" in put.stderr


# --- bad input: one line, non-zero exit, nothing written -----------------------------


def test_bad_input_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    rich(src)
    out = tmp_path / "o.jsonl"
    cases: list[tuple[list[Any], int, str]] = [
        (["--kind", "memroy"], 2, "unknown kind 'memroy'"),
        (["-f", "csv"], 2, "--format must be one of jsonl, parquet"),
        (["--at", "no-such-label"], 2, ""),
        (["--dim", "3"], 2, "--dim goes with --format parquet"),
    ]
    for extra, code, msg in cases:
        p = cli("export", src, "-o", out, *extra, check=False)
        assert p.returncode == code and msg in p.stderr and len(p.stderr.splitlines()) == 1, (extra, p.stderr)
        assert not out.exists()
    out.write_text("keep me")
    p = cli("export", src, "-o", out, check=False)
    assert p.returncode == 2 and "exists (use --force" in p.stderr and out.read_text() == "keep me"
    cli("export", src, "-o", out, "--force")
    assert out.read_text().count("\n") == 9
    p = cli("export", src, "-o", src, "--force", check=False)
    assert p.returncode == 2 and "is the capsule being exported" in p.stderr
    # damage inside a committed frame: a reader refuses it, and nothing is written
    bad = tmp_path / "bad.capsule"
    data = bytearray(src.read_bytes())
    data[200] ^= 0xFF
    bad.write_bytes(bytes(data))
    for fmt in ("jsonl", "parquet"):
        p = cli("export", bad, "-f", fmt, "-o", tmp_path / f"bad.{fmt}", check=False)
        assert p.returncode == 1 and len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr
        assert not (tmp_path / f"bad.{fmt}").exists()
    (tmp_path / "junk.capsule").write_bytes(b"not a capsule at all" * 10)
    p = cli("export", tmp_path / "junk.capsule", "-o", tmp_path / "j.jsonl", check=False)
    assert p.returncode == 1 and not (tmp_path / "j.jsonl").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.capsule", "bad.capsule", "junk.capsule", "o.jsonl"]


def test_without_pyarrow_the_error_names_the_extra(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    capsule.create(src).close()
    code = ("import sys; sys.modules['pyarrow'] = None; sys.argv = ['capsule'] + sys.argv[1:]; "
            "from capsule_cli.main import main; main()")
    p = subprocess.run([sys.executable, "-c", code, "export", str(src), "-f", "parquet", "-o",
                        str(tmp_path / "a.parquet")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip() == (
        "capsule: error: Parquet export needs pyarrow: pip install 'agent-capsule[parquet]'")
    assert not (tmp_path / "a.parquet").exists()


def test_a_capsule_being_written_exports_its_last_commit(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    with capsule.create(src) as cap, cap.commit() as tx:
        tx.remember("committed")
    with capsule.open(src, "a") as writer:  # holds the writer lock; readers take none
        with writer.commit() as tx:
            tx.remember("also committed")
        p = cli("export", src, "-o", tmp_path / "a.jsonl", "--json")
        assert json.loads(p.stdout)["rows"] == 2 and json.loads(p.stdout)["state_root"] == writer.state_root


def test_an_interrupted_export_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    with capsule.create(src) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"fact {i}", "time": i} for i in range(10_000)])
    seen: list[tuple[int, int]] = []

    def stop(done: int, total: int) -> None:
        seen.append((done, total))
        raise KeyboardInterrupt

    for fmt in ("jsonl", "parquet"):
        with pytest.raises(KeyboardInterrupt):
            export(src, tmp_path / f"a.{fmt}", format=fmt, progress=stop)  # type: ignore[arg-type]
    assert seen and all(t == 10_000 for _, t in seen)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.capsule"]
    done: list[int] = []
    res = export(src, tmp_path / "ok.jsonl", progress=lambda d, t: done.append(d))
    assert res.rows == 10_000 and done[-1] == 10_000 and done == sorted(done)


def test_every_column_is_documented() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text()
    for name, _ in COLUMNS:
        assert f"| `{name}` |" in doc, name
    if os.environ.get("CAPSULE_EXPORT_DEBUG"):
        print(doc)


def test_partition_values_are_percent_encoded(tmp_path: Path) -> None:
    src = tmp_path / "w.capsule"
    with capsule.create(src) as cap, cap.commit() as tx:
        tx.set_identity("team a/bot=1 ü")
        tx.remember("x")
    res = export(src, tmp_path / "ds", format="parquet", partition="agent")
    assert Path(res.out).parent.name == "agent=team%20a%2Fbot%3D1%20%C3%BC"
    got = duckdb.sql(f"SELECT DISTINCT agent, agent_id FROM read_parquet('{tmp_path}/ds/*/*.parquet', "
                     "hive_partitioning = true)").fetchall()
    assert got == [("team a/bot=1 ü", "team a/bot=1 ü")]
    with pytest.raises(capsule.AlreadyExists):
        export(src, tmp_path / "ds", format="parquet", partition="agent")


def test_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    import pty

    src = tmp_path / "a.capsule"
    with capsule.create(src) as cap, cap.commit() as tx:
        tx.put_many([{"text": f"fact {i}", "time": i} for i in range(10_000)])
    master, slave = pty.openpty()
    proc = subprocess.Popen([*CLI, "export", str(src), "-o", str(tmp_path / "a.jsonl")], stderr=slave,
                            stdout=subprocess.PIPE, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(timeout=60) == 0 and proc.stdout is not None
    with proc.stdout:
        assert proc.stdout.read().startswith(b"wrote ")
    assert b"exporting" in seen and b"/10000" in seen
    piped = cli("export", src, "-o", tmp_path / "b.jsonl")  # stderr is a pipe: no bar
    assert piped.stderr == ""
