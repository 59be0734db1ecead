"""Packing again is not duplicating (issue 10): ``pack --append`` keeps a capsule in sync with a folder.

Promised (capsule/ingest/resync.py, capsule/ingest/pack.py, cli/search.py): each chunk's
``meta.sha256`` is its file's; re-packing a file whose bytes are unchanged writes
nothing (not a byte); a changed file's new chunks supersede its old ones in the same
commit (a ``supersede`` revert, reason naming the path, ``by`` the new chunks); a pack
cut short by kill -9 is completed by ``--append`` to the same live state as a clean
pack; a path no longer in the folder is left alone unless ``prune`` forgets it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from capsule_cli.main import app
from typer.testing import CliRunner

import capsule
from capsule.ingest.pack import chunk_text
from capsule.search.embed import get_embedder

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
runner = CliRunner()
EPOCH = "1700000000"


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    return root


def docs(n: int = 6) -> dict[str, str]:
    """Files of one to three chunks each (paragraphs of ~500 characters, 1200 a chunk)."""
    out = {}
    for i in range(n):
        paras = [f"file {i} paragraph {j} uniq{i}x{j} " + "words to fill the paragraph " * 17 for j in range(1 + i % 5)]
        out[f"sub{i % 2}/doc{i}.md"] = "\n\n".join(paras)
    return out


def live(cap: capsule.Capsule) -> dict[str, list[tuple[int, str]]]:
    """The live chunks by path: (number, text), in number order."""
    by: dict[str, list[tuple[int, str]]] = {}
    for tier in cap.state().memories.values():
        for m in tier:
            by.setdefault(m["meta"]["path"], []).append((m["meta"]["chunk"], m["text"]))
    return {p: sorted(v) for p, v in sorted(by.items())}


def events(cap: capsule.Capsule) -> list[Any]:
    return [r for r in cap.records("revert") if r.op is not None]


def test_repacking_an_unchanged_folder_writes_nothing(tmp_path: Path) -> None:
    """Before: every chunk was added again (new times, new ids), 12,892 records became 15,892."""
    src = write(tmp_path / "docs", docs())
    out = tmp_path / "d.capsule"
    first = capsule.pack(src, out)
    before = out.read_bytes()
    with capsule.open(out) as cap:
        state = live(cap)
        n = len(cap)
    rep = capsule.pack(src, out, append=True)
    assert out.read_bytes() == before, "not a byte written"
    assert (rep.records, rep.new, rep.vectors) == (0, 0, 0)
    assert rep.sync.unchanged.to_dict() == {"files": first.files, "chunks": first.records}
    assert rep.sync.added.files == rep.sync.changed.files == rep.sync.superseded.chunks == 0
    with capsule.open(out) as cap:
        assert live(cap) == state and len(cap) == n
        assert all(m.meta["sha256"] == hashlib.sha256((src / m.meta["path"]).read_bytes()).hexdigest()
                   for m in cap.records("memory"))


def test_a_changed_file_supersedes_its_old_chunks_by_path(tmp_path: Path) -> None:
    files = docs()
    src = write(tmp_path / "docs", files)
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    with capsule.open(out) as cap:
        old = {m.id for m in cap.records("memory") if m.meta["path"] == "sub0/doc4.md"}
        others = {p: v for p, v in live(cap).items() if p != "sub0/doc4.md"}
    assert len(old) == len(chunk_text(files["sub0/doc4.md"])) == 3
    changed = files["sub0/doc4.md"].replace("uniq4x3", "rewritten uniqnew")
    write(src, {"sub0/doc4.md": changed, "sub1/new.md": "a new file uniqfresh"})
    rep = capsule.pack(src, out, append=True)
    assert rep.sync.changed.to_dict() == {"files": 1, "chunks": 3}
    assert rep.sync.superseded.to_dict() == {"files": 1, "chunks": 3}
    assert rep.sync.added.to_dict() == {"files": 1, "chunks": 1}
    assert rep.sync.unchanged.files == len(files) - 1
    assert rep.records == rep.new == 4
    with capsule.open(out) as cap:
        now = live(cap)
        assert {p: v for p, v in now.items() if p not in ("sub0/doc4.md", "sub1/new.md")} == others
        assert [t for _, t in now["sub0/doc4.md"]] == chunk_text(changed)
        assert [n for n, _ in now["sub0/doc4.md"]] == list(range(3))
        (ev,) = events(cap)
        assert ev.op == "supersede" and ev.reason == "pack: sub0/doc4.md changed"
        assert {x.hex() for x in ev.drop} == old
        new = {m["id"] for t in cap.state().memories.values() for m in t if m["meta"]["path"] == "sub0/doc4.md"}
        assert {x.hex() for x in ev.by} == new and not new & old
        assert all(cap.get(i).meta["path"] == "sub0/doc4.md" for i in old), "history keeps the old chunks"
        assert [h.meta["path"] for h in cap.search("uniqnew rewritten", mode="lexical", k=1)] == ["sub0/doc4.md"]
        assert not cap.search("uniq4x3", mode="lexical"), "the old text is not live"
    assert capsule.verify(out).ok
    again = out.read_bytes()
    assert capsule.pack(src, out, append=True).sync.unchanged.files == len(files) + 1
    assert out.read_bytes() == again


def test_a_changed_file_reembeds_only_the_text_that_changed(tmp_path: Path) -> None:
    """Its new chunks are all new records, but one whose text an old chunk holds takes
    that chunk's stored vector: the same the embedder gives, without running it."""
    files = docs()
    src = write(tmp_path / "docs", files)
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    text = files["sub0/doc4.md"].replace("uniq4x4", "uniqlast")  # only the last paragraph: the 3rd chunk
    write(src, {"sub0/doc4.md": text})
    rep = capsule.pack(src, out, append=True)
    assert rep.sync.changed.to_dict() == {"files": 1, "chunks": 3} and rep.sync.reused == 2
    assert rep.to_dict()["reused_embeddings"] == 2 and rep.vectors == 3
    hasher = get_embedder("hash")
    with capsule.open(out) as cap:
        new = sorted((m.meta["chunk"], m) for m in cap.records("memory")
                     if m.meta["path"] == "sub0/doc4.md" and m.meta["sha256"] == hashlib.sha256(text.encode()).hexdigest())
        assert [m.text for _, m in new] == chunk_text(text)
        for _, m in new:
            assert m.embedding.tobytes() == np.asarray(hasher.embed([m.text])[0], dtype="<f4").tobytes()
        assert [h.meta["path"] for h in cap.search("uniqlast", mode="vector", k=1)] == ["sub0/doc4.md"]
    assert capsule.verify(out).ok
    # no embedder, no vectors to take: nothing reused
    bare = tmp_path / "bare.capsule"
    write(src, {"sub0/doc4.md": files["sub0/doc4.md"]})
    capsule.pack(src, bare, embedder=None)
    write(src, {"sub0/doc4.md": text})
    assert capsule.pack(src, bare, append=True, embedder=None).sync.reused == 0


def test_a_deleted_file_is_left_alone_unless_pruned(tmp_path: Path) -> None:
    files = docs()
    src = write(tmp_path / "docs", files)
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    with capsule.open(out) as cap:
        gone = {m.id for m in cap.records("memory") if m.meta["path"] == "sub1/doc3.md"}
    (src / "sub1/doc3.md").unlink()
    before = out.read_bytes()
    rep = capsule.pack(src, out, append=True)
    assert out.read_bytes() == before and rep.sync.pruned.files == 0
    with pytest.raises(capsule.UsageError, match="--prune needs --append"):
        capsule.pack(src, out, prune=True)
    with pytest.raises(capsule.UsageError, match="a folder"):
        capsule.pack(src / "sub0/doc0.md", out, append=True, prune=True)
    assert out.read_bytes() == before
    rep = capsule.pack(src, out, append=True, prune=True)
    assert rep.sync.pruned.to_dict() == {"files": 1, "chunks": len(gone)} and rep.records == 0
    with capsule.open(out) as cap:
        assert "sub1/doc3.md" not in live(cap) and len(live(cap)) == len(files) - 1
        (ev,) = events(cap)
        assert ev.op == "forget" and {x.hex() for x in ev.drop} == gone and not ev.by
        assert ev.reason == "pack --prune: sub1/doc3.md is no longer there"
    assert capsule.verify(out).ok


def test_prune_leaves_unreadable_files_and_other_memories_alone(tmp_path: Path) -> None:
    src = write(tmp_path / "docs", {"a.md": "alpha", "b.md": "beta", "c.md": "gamma"})
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    with capsule.open(out, "a") as cap, cap.commit() as tx:  # the agent's own memories, one naming a path
        tx.remember("an agent note", meta={"path": "gone.md", "chunk": 0})
        tx.remember("another", source="gone.md")
    (src / "b.md").write_bytes(b"\xff\xfe not UTF-8 any more")  # read, and no longer text: stale chunks
    (src / "c.md").unlink()
    os.mkfifo(src / "c.md")  # there, but not read (not a regular file): its chunks may be current
    rep = capsule.pack(src, out, append=True, prune=True, warn=lambda _m: None)
    assert rep.sync.pruned.files == 1 and sorted(rep.skipped) == [("b.md", "not UTF-8 text (byte 0)"),
                                                                  ("c.md", "not a regular file")]
    with capsule.open(out) as cap:
        assert sorted(m["text"] for m in cap.state().memories["working"]) == ["alpha", "an agent note", "another",
                                                                              "gamma"]


def _partial(cap: capsule.Capsule, path: str, text: str, numbers: list[int], limit: int) -> None:
    """Chunks of ``path`` as a pack with chunk limit ``limit`` cut short would have left them."""
    sha = hashlib.sha256(text.encode()).hexdigest()
    chunks = chunk_text(text, limit)
    with cap.commit() as tx:
        tx.put_many([{"text": chunks[i], "source": f"docs/{path}",
                      "meta": {"chunk": i, "path": path, "root": "docs", "sha256": sha}} for i in numbers])


def test_a_cut_short_file_is_completed_and_another_chunking_replaced(tmp_path: Path) -> None:
    text = "\n\n".join(f"paragraph {j} " + "x" * 480 for j in range(6))  # 3 chunks of 1200, 6 of 600
    src = write(tmp_path / "docs", {"a.md": text})
    out = tmp_path / "d.capsule"
    with capsule.create(out) as cap:
        _partial(cap, "a.md", text, [0, 1], 1200)
        kept = {m.id for m in cap.records("memory")}
    rep = capsule.pack(src, out, append=True, embedder=None)
    assert rep.sync.resumed.to_dict() == {"files": 1, "chunks": 1} and rep.records == 1
    with capsule.open(out) as cap:
        assert [t for _, t in live(cap)["a.md"]] == chunk_text(text)
        assert kept <= {m["id"] for m in cap.state().memories["working"]} and not events(cap)
    # the same two chunks, but the file is now packed 600 characters a chunk: a mix would be wrong
    other = tmp_path / "o.capsule"
    with capsule.create(other) as cap:
        _partial(cap, "a.md", text, [0, 1], 1200)
    rep = capsule.pack(src, other, append=True, embedder=None, chunk_chars=600)
    assert rep.sync.changed.to_dict() == {"files": 1, "chunks": 6}
    assert rep.sync.superseded.chunks == 2 and rep.sync.resumed.files == 0
    with capsule.open(other) as cap:
        assert [t for _, t in live(cap)["a.md"]] == chunk_text(text, 600)
        assert [e.op for e in events(cap)] == ["supersede"]
    assert capsule.verify(other).ok


def test_chunks_packed_before_sha256_and_duplicated_are_replaced_once(tmp_path: Path) -> None:
    """The reported capsule: a resumed append had packed every chunk twice, without ``meta.sha256``."""
    src = write(tmp_path / "docs", docs(3))
    out = tmp_path / "d.capsule"
    with capsule.create(out) as cap:
        for t in (1, 2):  # two packs, other times: other ids
            with cap.commit() as tx:
                for rel in sorted(docs(3)):
                    for i, chunk in enumerate(chunk_text((src / rel).read_text())):
                        tx.remember(chunk, source=rel, meta={"chunk": i, "path": rel}, time=t)
        legacy = len(cap)
    rep = capsule.pack(src, out, append=True, embedder=None, root="")  # packed before roots were kept
    assert rep.sync.changed.files == 3 and rep.sync.superseded.chunks == legacy == 2 * rep.records
    with capsule.open(out) as cap:
        assert sum(len(v) for v in live(cap).values()) == rep.records
        assert all([n for n, _ in v] == list(range(len(v))) for v in live(cap).values())
    assert capsule.verify(out).ok


def test_a_file_changed_and_changed_back_is_live_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With fixed times the old version's chunks come back by their own ids (a restore)."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src = write(tmp_path / "docs", {"a.md": "version one uniqone", "b.md": "stays"})
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    with capsule.open(out) as cap:
        root = cap.state_root
    write(src, {"a.md": "version two uniqtwo"})
    capsule.pack(src, out, append=True)
    write(src, {"a.md": "version one uniqone"})
    rep = capsule.pack(src, out, append=True)
    assert rep.sync.changed.files == 1 and rep.sync.superseded.chunks == 1
    with capsule.open(out) as cap:
        assert cap.state_root == root
        assert [h.text for h in cap.search("uniqone", mode="lexical")] == ["version one uniqone"]
        assert not cap.search("uniqtwo", mode="lexical")
    assert capsule.verify(out).ok


def test_cli_reports_what_happened_to_each_file(tmp_path: Path) -> None:
    src = write(tmp_path / "docs", {"a.md": "alpha", "b.md": "beta", "c.md": "gamma"})
    out = tmp_path / "d.capsule"
    assert runner.invoke(app, ["pack", str(src), "-o", str(out)]).exit_code == 0
    write(src, {"b.md": "beta, changed"})
    (src / "c.md").unlink()
    r = runner.invoke(app, ["pack", str(src), "-o", str(out), "--append", "--prune", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {k: doc[k] for k in ("added", "changed", "resumed", "unchanged", "superseded", "pruned")} == {
        "added": {"files": 0, "chunks": 0}, "changed": {"files": 1, "chunks": 1},
        "resumed": {"files": 0, "chunks": 0}, "unchanged": {"files": 1, "chunks": 1},
        "superseded": {"files": 1, "chunks": 1}, "pruned": {"files": 1, "chunks": 1}}
    assert doc["records"] == doc["new"] == 1
    r = runner.invoke(app, ["pack", str(src), "-o", str(out), "--append"])
    assert r.exit_code == 0 and "2 unchanged" in r.stdout and "into 0 records" in r.stdout, r.output
    r = runner.invoke(app, ["pack", str(src / "a.md"), "-o", str(out), "--append", "--prune"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr.strip().splitlines() == [
        "capsule: error: --prune needs --append and a folder: it forgets the chunks of files no longer in it"]


def _pack_proc(src: Path, out: Path) -> tuple[subprocess.Popen[bytes], float]:
    """``capsule pack`` (a commit every 3 chunks) started, and the moment its capsule appears."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    proc = subprocess.Popen([str(CAPSULE_BIN), "pack", str(src), "-o", str(out), "--batch", "3", "--json"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not out.exists() and proc.poll() is None:
        time.sleep(0.002)
    return proc, time.monotonic()


@pytest.mark.slow
def test_a_pack_killed_at_random_points_resumes_to_the_clean_state(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """kill -9 of ``capsule pack`` at random points once its file exists (between and inside
    commits, while indexing), then ``--append``: the same live set, so the same state root,
    as a clean pack (times fixed by SOURCE_DATE_EPOCH), and nothing superseded."""
    src = write(tmp_path / "docs", docs(60))
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    clean = tmp_path / "clean.capsule"
    proc, t0 = _pack_proc(src, clean)
    assert proc.wait() == 0
    span = time.monotonic() - t0
    with capsule.open(clean) as cap:
        root = cap.state_root
    rng = random.Random(10)
    sizes = []
    for k in range(10):
        out = tmp_path / f"killed{k}.capsule"
        proc, _ = _pack_proc(src, out)
        time.sleep(rng.uniform(0.0, span))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sizes.append(out.stat().st_size)
        if sizes[-1] == 0:  # killed between creating the file and writing its header: no capsule yet
            out.unlink()
            capsule.pack(src, out)
        else:
            capsule.pack(src, out, append=True)  # the resumed pack
        with capsule.open(out) as cap:
            assert cap.state_root == root, (k, sizes[-1])
            assert not events(cap), "a resumed pack supersedes nothing"
        assert capsule.verify(out).ok
    assert len(set(sizes)) > 3, f"the kills should land at different points: {sizes}"


@pytest.mark.parametrize("fixed_times", [True, False], ids=["SOURCE_DATE_EPOCH", "wall-clock"])
def test_a_pack_killed_mid_way_resumes_to_the_clean_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          fixed_times: bool) -> None:
    """One kill -9 after half the chunks are committed, then ``--append``: the live chunks
    (path, number, text) of a clean pack, and with fixed times its very state root."""
    src = write(tmp_path / "docs", docs(12))
    if fixed_times:
        monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    clean = tmp_path / "clean.capsule"
    capsule.pack(src, clean, batch=3)
    with capsule.open(clean) as cap:
        root, chunks = cap.state_root, live(cap)
        total = len(list(cap.records("memory")))
    out = tmp_path / "cut.capsule"
    code = ("import capsule, os, signal, sys\n"
            "def cut(done, total):\n"
            f"    if done >= {total // 2}: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"capsule.pack({str(src)!r}, {str(out)!r}, batch=3, progress=cut)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ}, capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with capsule.open(out) as cap:
        half = len(list(cap.records("memory")))
    assert 0 < half < total
    rep = capsule.pack(src, out, append=True)
    assert rep.records == total - half and rep.sync.resumed.files + rep.sync.added.files >= 1
    with capsule.open(out) as cap:
        assert live(cap) == chunks and not events(cap)
        assert (cap.state_root == root) is fixed_times
    assert capsule.verify(out).ok


def test_a_redacted_file_is_not_packed_again(tmp_path: Path) -> None:
    """7.7.1 (found by the hostile review): redacting a chunk left its file with no live chunk,
    so the next `pack --append` of the unchanged folder stored the same text again under a new
    id, live and searchable. The file is now skipped and says why; other files are untouched."""
    files = docs()
    files["sub0/secret.md"] = "the wifi password is hunter2 " * 5
    src = write(tmp_path / "docs", files)
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    with capsule.open(out, "a") as cap:
        leak = next(m.id for m in cap.records("memory") if "hunter2" in m.text)
        with cap.commit() as tx:
            tx.redact(leak, reason="credential")
        before = live(cap)
    rep = capsule.pack(src, out, append=True)
    assert ("sub0/secret.md", "its content was redacted (7.7.1): not packed again") in rep.skipped
    assert rep.records == 0
    with capsule.open(out) as cap:
        assert live(cap) == before and "sub0/secret.md" not in before
        assert not cap.search("hunter2", k=5, mode="lexical")
    # a changed file at that path is new content: packed as any other
    (src / "sub0/secret.md").write_text("the wifi password was rotated; ask IT")
    rep = capsule.pack(src, out, append=True)
    assert rep.sync.added.files == 1


# --- roots: folders packed into one capsule stay apart (the docs-folder review) ------------------


def by_root(cap: capsule.Capsule) -> dict[tuple[str, str], str]:
    """(root, path) -> the text of each live chunk 0."""
    return {(m["meta"].get("root", ""), m["meta"]["path"]): m["text"]
            for tier in cap.state().memories.values() for m in tier if m["meta"].get("chunk") == 0}


def test_two_folders_with_one_relative_path_stay_apart(tmp_path: Path) -> None:
    # The review packed fa/ then fb/ with --append: fb/README.md superseded fa/README.md (one
    # path, no root), and `--append --prune` of fa then forgot everything fb had added.
    fa = write(tmp_path / "fa", {"README.md": "alpha: deploy with ansible", "only-a.md": "apples"})
    fb = write(tmp_path / "fb", {"README.md": "beta: deploy with terraform"})
    out = tmp_path / "two.capsule"
    capsule.pack(fa, out, embedder=None)
    rep = capsule.pack(fb, out, append=True, embedder=None)
    assert rep.sync.added.files == 1 and rep.sync.changed.files == rep.sync.superseded.chunks == 0
    rep = capsule.pack(fa, out, append=True, embedder=None, prune=True)
    assert rep.sync.unchanged.files == 2 and rep.sync.pruned.files == 0 and rep.records == 0
    (fa / "README.md").write_text("alpha: deploy with ansible 9")
    (fa / "only-a.md").unlink()
    rep = capsule.pack(fa, out, append=True, embedder=None, prune=True)
    assert (rep.sync.changed.files, rep.sync.pruned.files) == (1, 1)
    with capsule.open(out) as cap:
        assert by_root(cap) == {("fa", "README.md"): "alpha: deploy with ansible 9",
                                ("fb", "README.md"): "beta: deploy with terraform"}
        assert {h.record.source for h in cap.search("deploy", mode="lexical")} == {"fa/README.md", "fb/README.md"}
    assert capsule.verify(out).ok


def test_a_subfolder_packed_by_mistake_prunes_nothing_of_its_parent(tmp_path: Path) -> None:
    src = write(tmp_path / "p1", {"a.md": "top level", "sub/b.md": "below"})
    out = tmp_path / "p.capsule"
    capsule.pack(src, out, embedder=None)
    rep = capsule.pack(src / "sub", out, append=True, embedder=None, prune=True)
    assert rep.sync.pruned.files == 0 and rep.sync.added.files == 1
    with capsule.open(out) as cap:
        assert set(by_root(cap)) == {("p1", "a.md"), ("p1", "sub/b.md"), ("sub", "b.md")}


def test_root_names_where_a_renamed_or_moved_folder_is_filed(tmp_path: Path) -> None:
    src = write(tmp_path / "docs", {"a.md": "alpha"})
    out = tmp_path / "d.capsule"
    capsule.pack(src, out, embedder=None)
    moved = src.rename(tmp_path / "docs-2026")
    rep = capsule.pack(moved, out, append=True, embedder=None, root="docs", prune=True)
    assert rep.sync.unchanged.files == 1 and rep.records == 0
    one = capsule.pack(moved / "a.md", out, append=True, embedder=None, root="docs")  # a file, filed the same
    assert one.sync.unchanged.files == 1
    for bad in ("a/b", "..", "."):
        with pytest.raises(capsule.UsageError, match="a plain name"):
            capsule.pack(moved, out, append=True, embedder=None, root=bad)
    (tmp_path / "r.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(capsule.UsageError, match="JSONL records are not filed"):
        capsule.pack(tmp_path / "r.jsonl", out, append=True, embedder=None, root="docs")


def test_a_sync_may_prune_the_last_file_and_a_file_no_longer_text(tmp_path: Path) -> None:
    # the review: a folder emptied of text could not be synced (exit 2, stale chunks kept), and a
    # file that became non-UTF-8 kept its old chunks through --prune
    src = write(tmp_path / "e", {"a.txt": "gamma", "b.txt": "delta"})
    out = tmp_path / "e.capsule"
    capsule.pack(src, out, embedder=None)
    (src / "b.txt").write_bytes(b"delta caf\xe9")
    rep = capsule.pack(src, out, append=True, embedder=None, prune=True)
    assert rep.sync.pruned.files == 1 and ("b.txt", "not UTF-8 text (byte 9)") in rep.skipped
    (src / "a.txt").unlink()
    with pytest.raises(capsule.UsageError, match="no UTF-8 text"):  # without --prune there is nothing to do
        capsule.pack(src, out, append=True, embedder=None)
    rep = capsule.pack(src, out, append=True, embedder=None, prune=True)
    assert rep.sync.pruned.files == 1 and rep.records == 0
    with capsule.open(out) as cap:
        assert by_root(cap) == {} and not cap.search("gamma", mode="lexical")
    assert capsule.verify(out).ok


def test_a_redacted_file_stays_out_under_any_root(tmp_path: Path) -> None:
    # the attack on roots: a copy of the folder under another name packed the redacted text again
    src = write(tmp_path / "p1" / "docs", {"README.md": "alpha secret hunter2", "b.md": "beta"})
    out = tmp_path / "r.capsule"
    capsule.pack(src, out, embedder=None)
    with capsule.open(out, "a") as cap, cap.commit() as tx:
        tx.redact(next(m.id for m in cap.records("memory") if "hunter2" in m.text))
    copy = write(tmp_path / "p3" / "docs2", {"README.md": "alpha secret hunter2", "b.md": "beta"})
    for rep in (capsule.pack(copy, out, append=True, embedder=None),
                capsule.pack(src, out, append=True, embedder=None, root="other")):
        assert ("README.md", "its content was redacted (7.7.1): not packed again") in rep.skipped
    with capsule.open(out) as cap:
        assert not cap.search("hunter2", mode="lexical")


def test_packing_with_a_root_warns_of_chunks_packed_without_one(tmp_path: Path) -> None:
    src = write(tmp_path / "docs", {"a.md": "alpha"})
    out = tmp_path / "old.capsule"
    capsule.pack(src, out, embedder=None, root="")  # as packs were before roots
    said: list[str] = []
    rep = capsule.pack(src, out, append=True, embedder=None, warn=said.append)
    assert rep.sync.added.files == 1 and any("--root ''" in w for w in said)
    said.clear()
    rep = capsule.pack(src, out, append=True, embedder=None, root="", warn=said.append)
    assert rep.sync.unchanged.files == 1 and said == []
    with capsule.open(out, "a") as cap:  # once the old chunks are gone, nothing to warn of
        old = [m.id for m in cap.records("memory") if "root" not in m.meta]
        with cap.commit() as tx:
            for rid in old:
                tx.forget(rid)
    capsule.pack(src, out, append=True, embedder=None, warn=said.append)
    assert said == []


def test_a_small_sync_does_not_copy_the_vector_index_again(tmp_path: Path) -> None:
    # The docs-folder review: every `pack --append` that changed a file wrote a whole new vector
    # snapshot (+80 MB a day at 43k chunks). A small sync now leaves it to the close policy (16.3).
    src = write(tmp_path / "docs", {f"d{i:03}.md": f"note {i} about topic{i % 7} and more words" for i in range(300)})
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    with capsule.open(out) as cap:
        snap = cap.index_info()["snapshot"]
    size = out.stat().st_size
    (src / "d007.md").write_text("note 7 now says the deploy window moved to tuesday")
    rep = capsule.pack(src, out, append=True)
    assert rep.sync.changed.files == 1 and rep.vectors == 1
    assert out.stat().st_size - size < snap["bytes"] / 4, (out.stat().st_size - size, snap)
    with capsule.open(out) as cap:
        assert cap.index_info()["snapshot"]["sha256"] == snap["sha256"]  # the same snapshot, caught up on load
        for mode in ("vector", "lexical"):
            assert cap.search("deploy window tuesday", mode=mode, k=1)[0].text.startswith("note 7 now"), mode
    many = {f"d{i:03}.md": f"rewritten {i} entirely" for i in range(300)}
    write(src, many)
    capsule.pack(src, out, append=True)  # as many new vectors as the close policy wants: a snapshot
    with capsule.open(out) as cap:
        assert cap.index_info()["snapshot"]["sha256"] != snap["sha256"]
    assert capsule.verify(out).ok


def test_an_oversized_file_is_skipped_in_a_folder_and_empty_files_are_unchanged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docs-folder review: one text file over the limit (a growing log) stopped every sync of its
    # folder, and empty files were reported "added" on every unchanged append
    from capsule.core import constants as C

    monkeypatch.setattr(C, "MAX_PACK_TEXT", 1000)
    src = write(tmp_path / "docs", {"a.md": "alpha", "big.txt": "x " * 600, "empty.md": ""})
    out = tmp_path / "d.capsule"
    rep = capsule.pack(src, out, embedder=None)
    assert rep.records == 1 and [p for p, _ in rep.skipped] == ["big.txt"]
    assert "larger than" in rep.skipped[0][1] and "big.txt:" not in rep.skipped[0][1]
    again = capsule.pack(src, out, append=True, embedder=None)
    assert again.sync.unchanged.files == 2 and again.sync.added.files == 0 and again.records == 0
    with pytest.raises(capsule.InvalidRecordError, match="big.txt: larger than"):
        capsule.pack(src / "big.txt", tmp_path / "one.capsule", embedder=None)  # the file asked for: an error


def test_a_folder_whose_files_were_all_emptied_syncs(tmp_path: Path) -> None:
    # second attack: emptying every file left the old text live (the append refused: nothing to pack)
    src = write(tmp_path / "d", {"a.txt": "keepme", "b.txt": "andme"})
    out = tmp_path / "e.capsule"
    capsule.pack(src, out, embedder=None)
    for f in ("a.txt", "b.txt"):
        (src / f).write_text("")
    rep = capsule.pack(src, out, append=True, embedder=None)
    assert rep.sync.changed.files == 2 and rep.sync.superseded.chunks == 2 and rep.records == 0
    with capsule.open(out) as cap:
        assert not cap.search("keepme", mode="lexical") and by_root(cap) == {}
    for f in ("a.txt", "b.txt"):
        (src / f).unlink()
    with pytest.raises(capsule.UsageError, match="no UTF-8 text"):  # no file at all and no --prune
        capsule.pack(src, out, append=True, embedder=None)


def test_a_renamed_file_takes_its_old_chunks_embeddings(tmp_path: Path) -> None:
    # docs-folder review: a renamed 1,205-chunk file was embedded again from scratch
    # (reused_embeddings 0); the same text's stored embedding is the one the embedder gives
    src = write(tmp_path / "docs", docs(4))
    out = tmp_path / "d.capsule"
    capsule.pack(src, out)
    (src / "sub1/doc3.md").rename(src / "moved.md")
    n = len(chunk_text((src / "moved.md").read_text()))
    rep = capsule.pack(src, out, append=True, prune=True)
    assert rep.sync.added.files == 1 and rep.sync.pruned.files == 1 and rep.sync.reused == n == rep.vectors
    emb = get_embedder("hash")
    with capsule.open(out) as cap:
        for m in cap.records("memory"):
            if m.meta.get("path") == "moved.md":
                assert np.array_equal(np.frombuffer(m.embedding.data, "<f4"), np.asarray(emb.embed([m.text])[0], "<f4"))
    assert capsule.verify(out).ok
