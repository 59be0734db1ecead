"""Compaction and bytes after the last commit (a review's finding 2; spec 8.2, 8.3).

Damage in the newest commit reads as a torn tail (8.2): a writer drops those bytes and records
them in a RECOVERY frame (8.3). ``capsule compact F`` in place replaced the file without them and
left no trace of the dropped commit, or of the damage. In place it now refuses, naming the bytes;
to a new file (-o) it compacts, says the old file keeps them, and reports ``torn_tail_bytes``.
"""

from __future__ import annotations

import json
from pathlib import Path

import capsule

from .clirun import capsule_cli


def _damaged(tmp_path: Path) -> tuple[Path, int]:
    p = tmp_path / "a.capsule"
    with capsule.create(p) as cap:
        with cap.commit() as tx:
            tx.remember("first")
        with cap.commit() as tx:
            tx.remember("IMPORTANT LAST COMMIT")
        last = cap._snap.commit
        assert last is not None and last.prev is not None
    raw = bytearray(p.read_bytes())
    raw[last.offset - 40] ^= 0xFF  # inside the newest commit's RECORDS frame
    p.write_bytes(bytes(raw))
    rep = capsule.verify(p)
    assert rep.ok and rep.torn_tail  # 8.2: it reads as a torn tail
    return p, rep.torn_tail


def test_in_place_it_refuses_and_leaves_the_file(tmp_path: Path) -> None:
    p, torn = _damaged(tmp_path)
    before = p.read_bytes()
    r = capsule_cli("compact", str(p), ok=False)
    assert r.returncode == 2 and f"{torn} bytes after its last commit" in r.stderr, r.stderr
    assert p.read_bytes() == before and sorted(x.name for x in tmp_path.iterdir()) == ["a.capsule"]


def test_to_a_new_file_it_says_the_old_one_keeps_them(tmp_path: Path) -> None:
    p, torn = _damaged(tmp_path)
    before = p.read_bytes()
    r = capsule_cli("compact", str(p), "-o", str(tmp_path / "b.capsule"))
    assert f"has {torn} bytes after its last commit" in r.stderr and "keeps them" in r.stderr, r.stderr
    assert p.read_bytes() == before
    doc = json.loads(capsule_cli("compact", str(p), "-o", str(tmp_path / "c.capsule"), "--json").stdout)
    assert doc["torn_tail_bytes"] == torn
    assert capsule.verify(tmp_path / "c.capsule", parent=p).ok


def test_verify_parent_of_a_compaction_says_compaction(tmp_path: Path) -> None:
    """It said 'WRONG is not the parent this fork names' of a compacted file."""
    a, other = tmp_path / "a.capsule", tmp_path / "other.capsule"
    for f in (a, other):
        with capsule.create(f) as cap, cap.commit() as tx:
            tx.remember(f"in {f.name}")
    capsule.compact(a, out=tmp_path / "c.capsule")
    rep = capsule.verify(tmp_path / "c.capsule", parent=other)
    assert not rep.ok and rep.first_error is not None
    assert "is not the parent this compaction names" in rep.first_error["message"], rep.first_error
