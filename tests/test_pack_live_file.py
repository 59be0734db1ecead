"""A file that changes while a folder is packed is skipped, not the end of the pack (a review's finding).

One file an agent keeps appending to (a journal, a log) made ``capsule pack DIR`` fail with
"changed while it was being packed" and write nothing: on a first pack the 2,000 other files
were thrown away, and ``--append`` added none of the new ones. The changing file is now skipped
with a warning (its chunks as they were, not pruned) and the rest goes in; a single file that
changes still fails, since nothing else would be packed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import capsule
from capsule.ingest import pack as pack_mod


def _changing(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    """Append to ``victim`` just before its second read (the write pass), as a live writer would."""
    real = pack_mod._read_text
    reads: dict[str, int] = {}

    def read(rel: str, path: Path, nofollow: bool) -> Any:
        if Path(path).name == victim.name:
            reads[rel] = reads.get(rel, 0) + 1
            if reads[rel] == 2:
                with open(victim, "a") as f:
                    f.write("one more line\n")
        return real(rel, path, nofollow)

    monkeypatch.setattr(pack_mod, "_read_text", read)


def test_the_other_files_go_in_and_the_changing_one_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(30):
        (src / f"n{i}.md").write_text(f"document number {i}\n")
    journal = src / "journal.md"
    journal.write_text("first line\n")
    out = tmp_path / "a.capsule"
    capsule.pack(src, out, embedder=None)
    for i in range(30, 40):
        (src / f"n{i}.md").write_text(f"new document number {i}\n")
    journal.write_text("first line\nsecond line\n")
    _changing(monkeypatch, journal)
    said: list[str] = []
    rep = capsule.pack(src, out, embedder=None, append=True, prune=True, warn=said.append)
    assert [r for r, _ in rep.skipped] == ["journal.md"] and "changed while it was being packed" in rep.skipped[0][1]
    assert any("journal.md" in w for w in said)
    with capsule.open(out) as cap:
        texts = {m.text for m in cap.records(kind="memory")}
        live = {m["text"] for m in cap.state().memories["working"]}
    assert {f"new document number {i}" for i in range(30, 40)} <= live
    assert "first line" in live and "first line\n\nsecond line" not in texts  # as it was, kept
    assert capsule.verify(out).ok


def test_a_single_file_that_changes_still_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "journal.md"
    f.write_text("first line\n")
    _changing(monkeypatch, f)
    with pytest.raises(capsule.CapsuleError, match="changed while it was being packed"):
        capsule.pack(f, tmp_path / "a.capsule", embedder=None)


def test_a_symlinked_folder_is_named_not_dropped_in_silence(tmp_path: Path) -> None:
    """A symlinked file leaving the folder was named; a symlinked folder (never followed) was not."""
    src, other = tmp_path / "src", tmp_path / "other"
    (src / "real").mkdir(parents=True)
    other.mkdir()
    (src / "real" / "a.md").write_text("hello\n")
    (other / "b.md").write_text("outside\n")
    (src / "linked").symlink_to(other)
    (src / "inner").symlink_to("real")
    said: list[str] = []
    rep = capsule.pack(src, tmp_path / "a.capsule", embedder=None, warn=said.append)
    assert rep.files == 1
    assert sorted(rel for rel, why in rep.skipped if "symlink to a folder" in why) == ["inner/", "linked/"]
    assert any("linked/" in w for w in said)


def test_a_new_pack_whose_every_file_changed_makes_no_empty_capsule(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """An attack found it exiting 0 with an empty capsule, saying 'its chunks are as they were'."""
    src = tmp_path / "src"
    src.mkdir()
    only = src / "only.md"
    only.write_text("first line\n")
    _changing(monkeypatch, only)
    out = tmp_path / "n.capsule"
    with pytest.raises(capsule.UsageError, match="nothing was packed"):
        capsule.pack(src, out, embedder=None)
    assert not out.exists()
