"""Regressions from an attack on this stop's own changes (carried labels, rollback, diff, output
safety, ISO times, the lock sidecar). Each test names the defect it pins; CLI ones run `capsule`
in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule.format.records import parse_iso_time

K1 = capsule.PrivateKey.from_seed(bytes([1]) * 32)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(Path(sys.executable).with_name("capsule")), *map(str, args)], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    return r


# --- closing a writer opened through a link deleted <the link's new target>.lock --------------------


def test_close_removes_only_its_own_lock_file_even_if_the_link_moved(tmp_path: Path) -> None:
    real = tmp_path / "real.capsule"
    capsule.create(real).close()
    link = tmp_path / "l.capsule"
    link.symlink_to("real.capsule")
    (tmp_path / "victim").mkdir()
    victim = tmp_path / "victim" / "important.lock"
    victim.write_text("precious\n")
    cap = capsule.open(link, "a")
    with cap.commit() as tx:
        tx.remember("x")
    assert (tmp_path / "real.capsule.lock").exists()
    link.unlink()
    link.symlink_to("victim/important")  # retargeted while the writer is open
    cap.close()
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "real.capsule.lock").exists()


def test_close_leaves_a_lock_file_another_writer_rewrote(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    cap = capsule.create(f)
    lock = tmp_path / "a.capsule.lock"
    lock.write_text("4242 elsewhere\n")  # not what this writer wrote
    cap.close()
    assert lock.read_text() == "4242 elsewhere\n"


# --- a second compaction dropped the carried checkpoints without a word --------------------------------


def test_a_compaction_says_which_signed_states_it_does_not_carry(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("m1")
        cap.checkpoint("day-1", key=K1)
        with cap.commit() as tx:
            tx.remember("m2")
    first = json.loads(cli("compact", f, "--json").stdout)
    assert first["carried"] == 1 and first["not_carried"] == []
    r = cli("compact", f)
    assert r.returncode == 0 and "1 signed checkpoint(s) not carried" in r.stderr and "'day-1'" in r.stderr
    assert "--key signs the compacted state" in r.stderr
    assert json.loads(cli("checkpoints", f, "--json").stdout) == []
    assert "carried it from its own parent" in r.stderr and "redacted" not in r.stderr


def test_a_checkpoint_lost_to_a_redaction_is_named_with_that_reason(tmp_path: Path) -> None:
    """The warning gave the two reasons of --keep live and of a second compaction, neither of
    which applied: the state of 'day-1' held a record redacted later, whose payload compaction purges."""
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            secret = tx.remember("the password is hunter2")
            tx.remember("kept")
        cap.checkpoint("day-1", key=K1)
        with cap.commit() as tx:
            tx.redact(secret, reason="leak")
        cap.checkpoint("day-2", key=K1)
    out = tmp_path / "b.capsule"
    r = cli("compact", f, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "'day-1' (its state held a redacted record" in r.stderr and "'day-2'" not in r.stderr
    rep = json.loads(cli("compact", f, "-o", tmp_path / "c.capsule", "--json").stdout)
    assert rep["not_carried"] == ["day-1"] and "redacted" in rep["not_carried_why"][0]["why"]
    live = json.loads(cli("compact", f, "-o", tmp_path / "d.capsule", "--keep", "live", "--json").stdout)
    assert [w["label"] for w in live["not_carried_why"]] == ["day-1"]
    assert "redacted" in live["not_carried_why"][0]["why"]  # the precise reason, under live too


# --- "09:30.5" (a fraction of a minute) became 09:30:00.5; "00.5.7" was accepted ----------------------


@pytest.mark.parametrize("text", ["2026-01-05T09:30.5Z", "2026-01-05T09.5Z", "2026-01-05T09:30:00.5.7Z",
                                  "2026-01-05T0930.5Z"])
def test_a_fraction_anywhere_but_after_the_seconds_is_refused(text: str) -> None:
    with pytest.raises(capsule.InvalidRecordError, match="not an ISO-8601 time .*hh:mm:ss"):
        parse_iso_time(text)


@pytest.mark.parametrize("text", ["2026-01-05T09:30:00.5+01:00:30.5", "2026-01-05T09:30:00+00:00:00.5",
                                  "2026-01-05T09:30+00:00:00.5", "2026-01-05T09:30:00+01:00.5",
                                  "2026-01-05T09:30.0000001", "2026-01-05T09.0000001"])
def test_an_offset_with_seconds_or_a_tiny_fraction_of_a_minute_is_refused(text: str) -> None:
    """ISO 8601 offsets are +-hh[:mm]; datetime read "+00:00:00.5" and "+01:00.5" as offsets with
    seconds, and the fraction of the offset as the time's, and dropped fractions under 1 us."""
    with pytest.raises(capsule.InvalidRecordError, match="not an ISO-8601 time"):
        parse_iso_time(text)


def test_offsets_and_fractions_that_are_iso_parse_exactly() -> None:
    base = parse_iso_time("2026-01-05T09:30:00Z")
    assert parse_iso_time("2026-01-05T09:30:00.25-0130") == base + 5400 * 10**9 + 250_000_000
    assert parse_iso_time("2026-01-05T10:30:00.000000001+01:00") == base + 1
    assert parse_iso_time("2026-01-05T09:30") == parse_iso_time("2026-01-05T0930Z") == base


# --- diff: dropped and restored in between (or the reverse) is no change -------------------------------


def test_diff_of_two_points_with_one_state_after_two_rollbacks_is_empty(tmp_path: Path) -> None:
    f = tmp_path / "d.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("base")
        cap.checkpoint("e", key=K1)
        with cap.commit() as tx:
            tx.remember("x")
        cap.checkpoint("F", key=K1)
        cap.rollback("e")
        cap.rollback("F")
        cap.checkpoint("T", key=K1)  # F's state again
        d = cap.diff("F", "T").to_dict()
        assert (d["restored"]["count"], d["removed"]["count"], d["transient"]["count"]) == (0, 0, 0)
        cap.rollback("e")
        cap.checkpoint("F2", key=K1)
        with cap.commit() as tx:
            tx.remember("y")
        cap.rollback("F")  # x back, y dropped
        cap.rollback("e")  # x dropped again
        cap.checkpoint("T2", key=K1)
        d = cap.diff("F2", "T2").to_dict()
        assert (d["restored"]["count"], d["removed"]["count"]) == (0, 0), d
        assert d["transient"]["count"] == 1  # y came and went


# --- an output through a link to a device, with --force -----------------------------------------------


def test_force_never_replaces_a_link_to_a_device(tmp_path: Path) -> None:
    a = tmp_path / "a.capsule"
    capsule.create(a).close()
    link = tmp_path / "devlink"
    link.symlink_to("/dev/null")
    for verb in ("report", "export"):
        r = cli(verb, a, "-o", link, "--force")
        assert r.returncode == 2 and "not a regular file" in r.stderr, (verb, r.stderr)
        assert link.is_symlink()


# --- "--at ²" crashed; a label with white space around it could not be named ---------------------------


def test_a_superscript_digit_is_not_a_seq_and_labels_are_trimmed_or_refused(tmp_path: Path) -> None:
    f = tmp_path / "a.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("m")
        cap.checkpoint("²", key=K1)  # not a number a seq could spell: allowed
        with pytest.raises(capsule.UsageError, match="white space"):
            cap.checkpoint(" day-x ", key=K1)
    r = cli("state", f, "--at", "²", "--json")
    assert r.returncode == 0, r.stderr
    r = cli("state", f, "--at", "³")
    assert r.returncode == 2 and "is not a checkpoint label" in r.stderr


# --- rollback --key was impossible for a label of 1013-1024 bytes ---------------------------------------


def test_rollback_with_a_key_to_a_long_label(tmp_path: Path) -> None:
    f = tmp_path / "r.capsule"
    label = "é" * 510 + "xy"  # 1022 bytes
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            tx.remember("a")
        cap.checkpoint(label, key=K1)
        with cap.commit() as tx:
            tx.remember("b")
        assert cap.rollback(label, key=K1) is not None
        ck = cap.checkpoints()[-1]
        assert ck.label.startswith("rollback-to-é") and len(ck.label.encode()) <= 1024
        assert ck.state_root == cap.checkpoints()[0].state_root
    assert capsule.verify(f, trust=K1.public_key).ok


# --- a 255-byte output name failed on its temporary name ---------------------------------------------


def test_a_long_output_name_is_written(tmp_path: Path) -> None:
    a = tmp_path / "a.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("m")
    for verb, ext in (("report", ".html"), ("export", ".jsonl")):
        out = tmp_path / ("r" * (255 - len(ext)) + ext)
        r = cli(verb, a, "-o", out)
        assert r.returncode == 0 and out.stat().st_size > 0, (verb, r.stderr)


def test_packing_one_file_whose_name_is_not_utf8_says_so(tmp_path: Path) -> None:
    try:
        p = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"s\xfe.md")))
        p.write_text("text\n")
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    r = cli("pack", p, "-o", tmp_path / "x.capsule")
    assert r.returncode == 2 and "its name is not UTF-8 (rename it)" in r.stderr
    assert not (tmp_path / "x.capsule").exists()


# --- a rollback of ~500k records failed: its one revert passed the 16 MiB record limit --------------


def test_a_rollback_too_large_for_one_record_is_several_reverts_of_one_commit(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from capsule.handle import rollback

    monkeypatch.setattr(rollback, "REVERT_IDS", 3)  # as 2^18 ids are to the record limit
    f = tmp_path / "r.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            keep = [tx.remember(f"kept {i}") for i in range(4)]
        cap.checkpoint("c0", key=K1)
        with cap.commit() as tx:
            for i in range(4):
                tx.forget(keep[i]) if i % 2 else None
            for i in range(7):
                tx.remember(f"later {i}")
        commits = cap.commit_count
        rid = cap.rollback("c0", key=K1)
        assert rid is not None and cap.commit_count == commits + 2  # the reverts, then the checkpoint
        assert cap.state_root == cap.checkpoints()[0].state_root
        reverts = [r for r in cap.records("revert") if r.to is not None]
        assert len(reverts) == 3 and reverts[0].id == rid  # 7 drops and 2 restores, 3 a revert
        assert all(r.to == cap.checkpoints()[0].hash for r in reverts)
        assert cap.rollback("c0") is None
    assert capsule.verify(f, trust=K1.public_key).ok
