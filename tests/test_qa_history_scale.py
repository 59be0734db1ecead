"""Findings of a review at scale (1M records, a history mostly forgotten), each a regression
test: the task queue read every record of the file, the dead-document mask compared ids as
strings, ``put --jsonl`` from an endless stream had no bound, and JSON errors lost their column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule.core.errors import InvalidRecordError
from capsule.ingest.jsonl import JsonLines


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "capsule_cli.main", *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_the_task_queue_reads_no_memory_frames(tmp_path: Path) -> None:
    # `capsule tasks` on a 1M-record file with one task read all 1.48 GB (store.records scans every
    # frame); the queue now walks by the INDEX kind counts (9.2)
    p = tmp_path / "t.capsule"
    with capsule.create(p) as cap:
        cap.tasks.add("only", name="one task")
        for c in range(40):
            with cap.commit() as tx:
                tx.put_many([{"text": f"memory {c}-{i} " + "words " * 30} for i in range(500)])
    size = p.stat().st_size
    with capsule.open(p) as cap:
        h = cap._store.h
        read = [0]
        pread = h.pread

        def counting(off: int, n: int) -> bytes:
            read[0] += n
            return pread(off, n)

        h.pread = counting  # type: ignore[method-assign]
        q = cap.tasks.queue()
        assert list(q.tasks) == ["only"]
    assert read[0] < size // 20, (read[0], size)


def test_listing_leaves_out_exactly_the_dead_documents(tmp_path: Path) -> None:
    # the dead mask compares raw 32-byte ids now (S32 compares and sorts strings, and NumPy's S32
    # drops trailing NUL bytes: an id ending in 0x00 must still match itself)
    p = tmp_path / "d.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            got = tx.put_many([{"text": f"fact number {i}"} for i in range(3000)])
        ids = list(got)
        gone = set(ids[::2])
        with cap.commit() as tx:
            tx.lifecycle("forget", drop=sorted(gone))
    assert any(i.endswith("00") for i in ids)  # 3000 ids: some end in a NUL byte
    with capsule.open(p) as cap:
        hits = {h.id for h in cap.search(None, k=5000)}
        found = {h.id for h in cap.search("fact number", k=5000, mode="lexical")}
    assert hits == found == set(ids) - gone


def test_one_commit_of_jsonl_is_bounded_and_batch_commits_in_parts(tmp_path: Path) -> None:
    lines = JsonLines(iter_bytes(b'{"text": "x"}\n' * 6), "stdin ", max_lines=5)
    with pytest.raises(InvalidRecordError, match="line 6: more than 5 records, too many for one commit"):
        list(lines)
    p = tmp_path / "b.capsule"
    assert _cli("init", str(p)).returncode == 0
    body = "".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(25))
    r = _cli("put", str(p), "--jsonl", "-", "--batch", "10", "--json", stdin=body)
    assert r.returncode == 0, r.stderr
    log = json.loads(_cli("log", str(p), "--json").stdout)
    assert [c["records"] for c in log][-3:] == [10, 10, 5]
    # a bad line stops at its batch: the batches before it stand, and the error names the line
    r = _cli("put", str(p), "--jsonl", "-", "--batch", "1", stdin='{"text": "a"}\n{"text": "b"}\n{"text": "c\n')
    assert r.returncode == 1 and "stdin line 3: invalid JSON: " in r.stderr and "at column" in r.stderr
    assert json.loads(_cli("open", str(p), "--json").stdout)["records"] == 27
    assert _cli("put", str(p), "--text", "x", "--batch", "2").returncode == 2  # --batch goes with --jsonl


def iter_bytes(data: bytes) -> object:
    import io

    return io.BytesIO(data)


@pytest.mark.parametrize("bad, message", [('{"text": "abc\n', "Invalid control character at column 14"),
                                          ('{"text": "abc', "Unterminated string at column 10"),
                                          ("nope\n", "Expecting value at column 1")])
def test_a_json_error_says_where_on_the_line(tmp_path: Path, bad: str, message: str) -> None:
    p = tmp_path / "j.capsule"
    capsule.create(p).close()
    r = _cli("put", str(p), "--jsonl", "-", stdin=bad)
    assert r.returncode == 1 and r.stderr.strip().endswith(message), r.stderr


def _history(path: Path, seed: int, **kw: object) -> None:
    """A random history: memories (some with embeddings, meta, tiers), decisions, constraints,
    identities, notes; forgets, supersedes, promotes, redactions, checkpoints and rollbacks."""
    import random

    rng = random.Random(seed)
    key = capsule.generate_key()
    with capsule.create(path, **kw) as cap:  # type: ignore[arg-type]
        live: list[str] = []
        labels: list[str] = []
        for c in range(rng.randint(20, 60)):
            with cap.commit() as tx:
                for _ in range(rng.randint(1, 40)):
                    r = rng.random()
                    if r < 0.7:
                        extra: dict[str, object] = {"tier": rng.choice(["scratch", "working", "validated"])}
                        if rng.random() < 0.2:
                            extra["embedding"] = [rng.random() for _ in range(4)]
                        if rng.random() < 0.3:
                            extra["meta"] = {"n": rng.randint(0, 9), "f": 0.5} if rng.random() < 0.5 else {"s": "x"}
                        live.append(tx.remember(f"memory {c} {rng.random()}", **extra))  # type: ignore[arg-type]
                    elif r < 0.8:
                        tx.decide(f"decision {c}", evidence=rng.sample(live, min(2, len(live))))
                    elif r < 0.9:
                        tx.constrain(f"rule {rng.randint(0, 5)}", status=rng.choice(["active", "revoked"]))
                    else:
                        tx.set_identity("agent", model=f"m{c}")
            if live and rng.random() < 0.8:
                with cap.commit() as tx:
                    for rid in rng.sample(live, min(len(live), rng.randint(1, 30))):
                        op = rng.random()
                        try:
                            if op < 0.6:
                                tx.forget(rid)
                            elif op < 0.75:
                                tx.supersede(rid, f"revised {rng.random()}")
                            elif op < 0.85:
                                tx.redact(rid)
                            else:
                                tx.promote(rid, "validated")
                        except capsule.UsageError:
                            pass  # already gone, or already validated
                        live.remove(rid)
            if rng.random() < 0.15:
                labels.append(f"c{c}")
                cap.checkpoint(labels[-1], key=key)
            elif labels and rng.random() < 0.08:
                cap.rollback(rng.choice(labels), key=key)


@pytest.mark.parametrize("seed", range(6))
def test_the_fold_of_the_live_records_alone_is_the_fold_of_every_frame(tmp_path: Path, seed: int,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # `state` of a history mostly forgotten read every frame (21x at 1M records); it now reads the
    # live records alone when most are dead: the state must be the same, byte for byte
    from capsule.state import liveframes

    p = tmp_path / "h.capsule"
    _history(p, seed)
    docs = []
    for share in (2.0, 0.0):  # never, then always, read by the plan
        monkeypatch.setattr(liveframes, "DEAD_SHARE", share)
        with capsule.open(p) as cap:
            assert (liveframes.live_frames(cap._store) is not None) == (share == 0.0 and "revert" in cap._store.snap.kinds)
            st = cap.state()
            docs.append((json.dumps(st.to_dict(), sort_keys=True), st.state_root if hasattr(st, "state_root") else None,
                         cap.state_root, cap.beliefs().to_dict()))
    assert docs[0] == docs[1]


def test_the_live_records_plan_refuses_a_damaged_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.state import liveframes

    monkeypatch.setattr(liveframes, "DEAD_SHARE", 0.0)
    p = tmp_path / "x.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            keep = tx.remember("the one that stays " * 20)
            doomed = [tx.remember(f"doomed {i}") for i in range(50)]
        with cap.commit() as tx:
            tx.lifecycle("forget", drop=doomed)
        for i in range(20):  # commits enough for an INDEX, so the records are in a table
            with cap.commit() as tx:
                tx.remember(f"later {i}")
            with cap.commit() as tx:
                tx.lifecycle("forget", drop=[tx.remember(f"gone {i}")])
    with capsule.open(p) as cap:
        assert liveframes.live_frames(cap._store) is not None
        off, _ = cap._store.locate(bytes.fromhex(keep))
    raw = bytearray(p.read_bytes())
    at = raw.find(b"the one that stays", off)
    raw[at if at > 0 else off + 40] ^= 0x01  # inside the frame that holds it
    p.write_bytes(bytes(raw))
    with capsule.open(p) as cap, pytest.raises(capsule.CorruptError):
        cap.state()


def test_the_live_records_plan_reads_an_encrypted_capsule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.state import liveframes

    monkeypatch.setenv("CAPSULE_SCRYPT_LOG_N", "10")
    me = capsule.generate_key()
    p = tmp_path / "e.capsule"
    _history(p, 11, recipients=[me.public_key])
    docs = []
    for share in (2.0, 0.0):
        monkeypatch.setattr(liveframes, "DEAD_SHARE", share)
        with capsule.open(p, identity=me) as cap:
            docs.append((json.dumps(cap.state().to_dict(), sort_keys=True), cap.state_root))
    assert docs[0] == docs[1]
