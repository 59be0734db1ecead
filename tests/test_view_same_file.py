"""Index tables are mapped from the file by its path (a descriptor of the handle's own would
keep the writer's lock alive in every mapping): the path must still name the handle's file.
Once it does not (moved, another file in its place), tables are read from the handle's own
descriptor, never mapped from the file now at that path."""

from __future__ import annotations

import os
from pathlib import Path

import capsule


def test_a_writer_whose_path_names_another_file_keeps_its_own_tables(tmp_path: Path) -> None:
    p, moved = tmp_path / "a.capsule", tmp_path / "b.capsule"
    cap = capsule.create(p)
    with cap.commit() as tx:  # over 4,096 records: the commit writes an INDEX and a table
        first = tx.put_many([{"text": f"m{i}"} for i in range(30_000)])
    os.rename(p, moved)  # the file is moved while the writer holds it
    p.write_bytes(b"not a capsule at all" * 2_000_000)  # and a bigger file takes its name
    with cap.commit() as tx:
        second = tx.put_many([{"text": f"n{i}"} for i in range(30_000)])
    assert cap.get(first[5]).text == "m5" and cap.get(second[7]).text == "n7" and len(cap) == 60_000
    cap.close()
    assert capsule.verify(moved).ok
    assert p.read_bytes()[:20] == b"not a capsule at all"
