"""A manifest's commit count is checked against the bytes, as its seq and root are (a review's finding 8).

A manifest saying ``commits: 999999`` over a 4-commit file was taken, and pull reported
``commit 999999`` (text and JSON); every later message quoting the remote's commit repeated it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import capsule
import capsule.sync


def test_a_manifest_that_lies_about_its_commit_count_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "a.capsule"
    with capsule.create(src) as cap:
        for i in range(3):
            with cap.commit() as tx:
                tx.remember(f"m{i}")
    url = f"file://{tmp_path}/rem"
    capsule.sync.push(src, url)
    [man] = (tmp_path / "rem" / "manifests").iterdir()
    doc = json.loads(man.read_bytes())
    real = doc["commits"]
    doc["commits"] = 999999
    man.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    with pytest.raises(capsule.CapsuleError, match="commit 999999"):
        capsule.sync.pull(url, tmp_path / "b.capsule")
    assert not (tmp_path / "b.capsule").exists()
    # onto a copy: the tail check says the same
    doc["commits"] = real
    man.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    capsule.sync.pull(url, tmp_path / "c.capsule")
    with capsule.open(src, "a") as cap, cap.commit() as tx:
        tx.remember("m3")
    capsule.sync.push(src, url)
    newest = sorted((tmp_path / "rem" / "manifests").iterdir())[-1]
    doc = json.loads(newest.read_bytes())
    doc["commits"] = real + 7
    newest.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")))
    before = (tmp_path / "c.capsule").read_bytes()
    with pytest.raises(capsule.CapsuleError, match=f"commit {real + 7}"):
        capsule.sync.pull(url, tmp_path / "c.capsule")
    assert (tmp_path / "c.capsule").read_bytes() == before
