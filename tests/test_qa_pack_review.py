"""`capsule pack` of real folders, as a fresh-context review found it.

- A redacted chunk came back when its file was renamed or copied inside the folder: withheld
  content was keyed on (path, sha256) and withheld texts on the path.
- A subfolder the walk could not list (permissions, a path past PATH_MAX) was skipped without a
  word, and `--prune` then forgot the chunks of its files as if they had been deleted.
- `pack --append` exited 1 when the search snapshot written after its commit failed (a full
  disk), though the records were committed.
- SIGHUP (a closed terminal) left a half-made new capsule; SIGINT and SIGTERM did not.
- `pack docs -o docs` said "already exists (pass append=True / --append ...)".
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import capsule

from .clirun import CAPSULE_BIN, capsule_cli

run = capsule_cli


def hits(f: Path, query: str) -> int:
    return len(json.loads(run("search", f, query, "--json", "--mode", "lexical").stdout))


@pytest.mark.parametrize("how", ["rename", "copy"])
def test_a_redacted_chunk_stays_out_when_its_file_moves(tmp_path: Path, how: str) -> None:
    docs, f = tmp_path / "docs", tmp_path / "r.capsule"
    docs.mkdir()
    (docs / "a.md").write_text("# Notes\n\nthe wifi password is hunter2\n\n# Other\n\nsomething harmless\n")
    (docs / "b.md").write_text("unrelated wombat\n")
    run("pack", docs, "-o", f, "--embedder", "none")
    with capsule.open(f) as cap:
        secret = next(h.id for h in cap.search("hunter2", mode="lexical"))
    run("redact", f, secret, "--reason", "credential")
    if how == "rename":
        (docs / "a.md").rename(docs / "notes.md")
    else:
        (docs / "copy.md").write_bytes((docs / "a.md").read_bytes())
    run("pack", docs, "-o", f, "--append", "--prune")
    assert hits(f, "hunter2") == 0
    assert hits(f, "wombat") == 1


def test_a_folder_the_walk_cannot_list_is_said_and_prune_keeps_its_chunks(tmp_path: Path) -> None:
    """A path past PATH_MAX (no root needed); a folder without permission fails the same way (onerror)."""
    docs, f = tmp_path / "docs", tmp_path / "p.capsule"
    (docs / "deep").mkdir(parents=True)
    (docs / "a.md").write_text("shallow kumquat\n")
    (docs / "deep" / "c.md").write_text("deep wombat\n")
    run("pack", docs, "-o", f, "--embedder", "none")
    assert hits(f, "wombat") == 1
    # now make deep/ unlistable: its name is still there, but its path is too long to open
    long = docs / "deep"
    here = os.getcwd()
    os.chdir(long)
    try:
        for _ in range(20):
            os.mkdir("d" * 250)
            os.chdir("d" * 250)
        Path("deeper.md").write_text("deeper aardvark\n")
    finally:
        os.chdir(here)
    before = f.read_bytes()
    p = run("pack", docs, "-o", f, "--append", "--prune", "--json", "--embedder", "none")
    doc = json.loads(p.stdout)
    unread = [s for s in doc["skipped"] if s["reason"].startswith("a folder it could not list")]
    assert len(unread) == 1 and unread[0]["path"].endswith("/"), doc["skipped"]
    assert "a folder it could not list" in p.stderr
    assert doc["pruned"] == {"chunks": 0, "files": 0}
    assert hits(f, "wombat") == 1 and hits(f, "kumquat") == 1
    assert f.read_bytes() == before  # nothing changed, nothing pruned


def test_prune_keeps_everything_when_the_folder_itself_cannot_be_listed(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    docs, f = tmp_path / "docs", tmp_path / "p.capsule"
    docs.mkdir()
    (docs / "a.md").write_text("kumquat\n")
    capsule.pack(docs, f, embedder=None)
    real = os.walk

    def walk(top: Any, *a: Any, onerror: Any = None, **k: Any) -> Any:
        onerror(PermissionError(errno.EACCES, "Permission denied", str(top)))
        return iter(())

    monkeypatch.setattr(os, "walk", walk)
    said: list[str] = []
    rep = capsule.pack(docs, f, embedder=None, append=True, prune=True, warn=said.append)
    monkeypatch.setattr(os, "walk", real)
    assert rep.sync.pruned.files == 0 and any("could not list" in w for w in said)
    assert hits(f, "kumquat") == 1


def test_an_append_whose_snapshot_fails_after_its_commit_succeeds_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs, f = tmp_path / "docs", tmp_path / "p.capsule"
    docs.mkdir()
    for i in range(40):
        (docs / f"{i}.md").write_text(f"file {i} about topic{i}\n")
    capsule.pack(docs, f)  # hash vectors
    for i in range(40):
        (docs / f"{i}.md").write_text(f"file {i} about topic{i}, changed MODMARK\n")
    from capsule.handle.capsule import Capsule

    def full(self: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Capsule, "save_index", full)
    monkeypatch.setattr("capsule.ingest.pack._snapshot_now", lambda *a: True)
    said: list[str] = []
    rep = capsule.pack(docs, f, append=True, warn=said.append)
    assert rep.sync.changed.files == 40
    assert any("records are committed" in w and "No space left" in w for w in said), said
    monkeypatch.undo()
    assert capsule.verify(f).ok and hits(f, "modmark") == 10  # search's -k default


def test_a_new_pack_hung_up_leaves_no_half_made_capsule(tmp_path: Path) -> None:
    docs, f = tmp_path / "docs", tmp_path / "h.capsule"
    docs.mkdir()
    for i in range(3000):
        (docs / f"{i:04d}.md").write_text(f"# File {i}\n\n" + f"paragraph {i} " * 200 + "\n")
    proc = subprocess.Popen([str(CAPSULE_BIN), "pack", str(docs), "-o", str(f)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not f.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the pack finished before it could be hung up: give it more files"
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGHUP, (proc.returncode, err)
    assert err.strip() == "capsule: interrupted", err
    assert not f.exists() and not (tmp_path / "h.capsule.lock").exists()


def test_packing_onto_a_folder_or_a_device_names_what_is_wrong(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("x\n")
    p = run("pack", docs, "-o", docs, ok=False)
    assert p.returncode == 2 and "is a folder" in p.stderr and "append=True" not in p.stderr, p.stderr
    p = run("pack", docs, "-o", "/dev/null", ok=False)
    assert p.returncode == 2 and "not a regular file" in p.stderr, p.stderr
    run("pack", docs, "-o", tmp_path / "x.capsule")
    p = run("pack", docs, "-o", tmp_path / "x.capsule", ok=False)
    assert p.returncode == 2 and p.stderr.strip().endswith("already exists (--append adds to it)"), p.stderr


def test_auto_keeps_a_capsule_packed_without_vectors_without_them(tmp_path: Path) -> None:
    """An unchanged re-sync of a folder packed --embedder none wrote a vindex (the capsule became a
    hash-vector one) and later chunks got vectors the older ones lack."""
    docs, f = tmp_path / "docs", tmp_path / "x.capsule"
    docs.mkdir()
    for i in range(3):
        (docs / f"n{i}.md").write_text(f"note {i} about pelicans\n")
    run("pack", docs, "-o", f, "--embedder", "none")
    before = f.read_bytes()
    run("pack", docs, "-o", f, "--append")
    assert f.read_bytes() == before
    (docs / "n1.md").write_text("note 1 about pelicans, changed\n")
    doc = json.loads(run("pack", docs, "-o", f, "--append", "--json").stdout)
    assert doc["embedder"] is None and doc["vectors"] == 0
    with capsule.open(f) as cap:
        assert cap.vector_config() is None
    e = tmp_path / "e.capsule"  # an empty capsule still gets the default
    capsule.create(e).close()
    assert json.loads(run("pack", docs, "-o", e, "--append", "--json").stdout)["embedder"] == "hash"


def test_a_resumed_jsonl_pack_keeps_repeated_lines_as_a_clean_pack_does(tmp_path: Path) -> None:
    """Lines are counted against live records: three `ok` lines against one committed `ok` (a pack
    killed after its first batch) add two, not none."""
    src = tmp_path / "chat.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("ok", "hello", "ok", "ok")))
    killed = tmp_path / "killed.capsule"
    with capsule.create(killed) as cap, cap.commit() as tx:
        tx.remember("ok")  # what the killed pack's first batch committed
    run("pack", src, "-o", killed, "--append", "--embedder", "none")
    with capsule.open(killed) as cap:
        assert sorted(m.text for m in cap.records(kind="memory")) == ["hello", "ok", "ok", "ok"]
    before = killed.read_bytes()
    doc = json.loads(run("pack", src, "-o", killed, "--append", "--embedder", "none", "--json").stdout)
    assert doc["new"] == 0 and killed.read_bytes() == before  # and then it is in sync: nothing more


def test_two_names_one_in_nfc_settle(tmp_path: Path) -> None:
    """`café.md` in NFC and in NFD are two files on Linux but one path once normalized (5.1): each
    --append superseded one by the other, forever. The second is skipped, named."""
    import unicodedata

    docs, f = tmp_path / "docs", tmp_path / "n.capsule"
    docs.mkdir()
    nfc_name, nfd_name = unicodedata.normalize("NFC", "café.md"), unicodedata.normalize("NFD", "café.md")
    (docs / nfc_name).write_text("first version\n")
    (docs / nfd_name).write_text("second version\n")
    doc = json.loads(run("pack", docs, "-o", f, "--embedder", "none", "--json").stdout)
    assert [s["reason"] for s in doc["skipped"]] == [
        "another file's name in another Unicode form (the same in NFC): rename one"]
    before = f.read_bytes()
    for _ in range(2):
        run("pack", docs, "-o", f, "--append", "--prune", "--embedder", "none")
        assert f.read_bytes() == before


def test_an_empty_file_a_killed_create_left_is_made_again(tmp_path: Path) -> None:
    """kill -9 between making the file and writing its header left 0 bytes that neither `pack`
    ("already exists") nor `pack --append` ("no header") would take. An empty file nobody holds
    and nobody touched for 2 s is now made again; a fresh or locked one is still refused."""
    import fcntl

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("hello\n")
    old = time.time() - 10
    for name, args in (("pack", ("pack", docs, "-o")), ("init", ("init",))):
        f = tmp_path / f"{name}.capsule"
        f.write_bytes(b"")
        os.utime(f, (old, old))
        run(*args, f)
        assert capsule.verify(f).ok
    fresh = tmp_path / "fresh.capsule"
    fresh.write_bytes(b"")
    p = run("pack", docs, "-o", fresh, ok=False)
    assert p.returncode == 2 and "already exists" in p.stderr and fresh.read_bytes() == b""
    held = tmp_path / "held.capsule"
    held.write_bytes(b"")
    os.utime(held, (old, old))
    fd = os.open(held, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = run("init", held, ok=False)
        assert p.returncode == 2 and "already exists" in p.stderr and held.read_bytes() == b""
    finally:
        os.close(fd)
    (tmp_path / "notempty.capsule").write_bytes(b"x")
    os.utime(tmp_path / "notempty.capsule", (old, old))
    assert run("init", tmp_path / "notempty.capsule", ok=False).returncode == 2


SECRET_PARA = "The wifi password is hunter2. " + "It opens the office network for guests. " * 22
PUBLIC_PARA = "The deploy windows are Tuesday and Thursday. " + "Ask the release manager first. " * 28


def _two_chunk_file(docs: Path, f: Path) -> str:
    """a.md: a secret paragraph and a public one, two chunks; packed, the secret one redacted."""
    docs.mkdir()
    (docs / "a.md").write_text(SECRET_PARA + "\n\n" + PUBLIC_PARA + "\n")
    (docs / "b.md").write_text("unrelated wombat\n")
    run("pack", docs, "-o", f, "--embedder", "none")
    with capsule.open(f) as cap:
        chunks = [h.id for h in cap.search("hunter2", mode="lexical")]
        assert len(chunks) == 1 and not any("deploy" in cap.get(c).text for c in chunks)
    run("redact", f, chunks[0], "--reason", "credential")
    return chunks[0]


def test_a_renamed_file_keeps_its_public_chunks_while_the_redacted_one_stays_out(tmp_path: Path) -> None:
    """Attack on the rename fix: withholding the whole renamed file (same SHA-256) lost its public
    chunk once --prune forgot the old path."""
    docs, f = tmp_path / "docs", tmp_path / "c.capsule"
    _two_chunk_file(docs, f)
    (docs / "a.md").rename(docs / "moved.md")
    run("pack", docs, "-o", f, "--append", "--prune", "--embedder", "none")
    assert hits(f, "hunter2") == 0
    got = json.loads(run("search", f, "deploy windows", "--json", "--mode", "lexical").stdout)
    assert [h["meta"]["path"] for h in got] == ["moved.md"], got


def test_an_edited_file_that_held_redacted_text_is_packed_again_with_a_warning(tmp_path: Path) -> None:
    """Only a chunk whose text is exactly a redacted one's is known to be the secret: matching parts of
    chunks (substrings, then paragraphs) lost public text (a shared licence paragraph withheld every
    file's chunk) and still let whitespace edits through (attacks three and four). So an edited file
    that held redacted text is packed again, and the user is told to take the secret out of it."""
    docs, f = tmp_path / "docs", tmp_path / "c.capsule"
    _two_chunk_file(docs, f)
    (docs / "a.md").write_text("# Title\n\n" + SECRET_PARA + "\n\n" + PUBLIC_PARA + "\n")
    p = run("pack", docs, "-o", f, "--append", "--prune", "--embedder", "none")
    assert "a.md held redacted text and changed, so it was packed again" in p.stderr, p.stderr
    assert hits(f, "deploy") == 1
    (docs / "a.md").write_text("# Title\n\n" + PUBLIC_PARA + "\n")  # the user takes it out
    run("pack", docs, "-o", f, "--append", "--prune", "--embedder", "none")
    with capsule.open(f) as cap:
        for h in cap.search("hunter2", mode="lexical"):
            run("redact", f, h.id)
    assert hits(f, "hunter2") == 0 and hits(f, "deploy") == 1


def test_a_licence_paragraph_shared_with_a_redacted_chunk_withholds_nothing_else(tmp_path: Path) -> None:
    docs, f = tmp_path / "docs", tmp_path / "c.capsule"
    docs.mkdir()
    lic = "Copyright (c) 2026 Example Corp. Licensed under the Apache License, Version 2.0."
    for i in range(4):
        (docs / f"doc{i}.md").write_text(lic + "\n\n" + f"public document {i} about kumquats\n")
    (docs / "secret.md").write_text(lic + "\n\ntoken: SECRET-123\n")
    run("pack", docs, "-o", f, "--embedder", "none")
    with capsule.open(f) as cap:
        (rid,) = [h.id for h in cap.search("SECRET-123", mode="lexical")]
    run("redact", f, rid)
    for i in range(4):
        (docs / f"doc{i}.md").write_text(lic + "\n\n" + f"public document {i} about kumquats, edited\n")
    p = run("pack", docs, "-o", f, "--append", "--embedder", "none")
    assert "not written" not in p.stderr, p.stderr
    assert hits(f, "kumquats") == 4 and hits(f, "SECRET-123") == 0


def test_a_redacted_jsonl_line_is_not_packed_again(tmp_path: Path) -> None:
    """Attack: folders withheld redacted text; JSONL put the line back (untimed) or failed the whole
    append (timed: its bytes are a redacted id's)."""
    src, f = tmp_path / "m.jsonl", tmp_path / "m.capsule"
    src.write_text(json.dumps({"text": "the wifi password is hunter2"}) + "\n"
                   + json.dumps({"text": "timed secret hunter3", "time": "2026-01-05T09:30:00Z"}) + "\n"
                   + json.dumps({"text": "public fact"}) + "\n")
    run("pack", src, "-o", f, "--embedder", "none")
    with capsule.open(f) as cap:
        ids = [h.id for q in ("hunter2", "hunter3") for h in cap.search(q, mode="lexical")]
    for rid in ids:
        run("redact", f, rid)
    p = run("pack", src, "-o", f, "--append", "--embedder", "none")
    assert "2 line(s) whose record was redacted not packed again" in p.stderr, p.stderr
    assert hits(f, "hunter2") == 0 and hits(f, "hunter3") == 0 and hits(f, "public") == 1


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/setpriv").exists(), reason="needs root and setpriv")
def test_a_folder_that_lists_but_hides_its_entries_is_skipped_not_fatal() -> None:
    """A folder of mode r-- lists its names, but each entry's stat fails: that failed the whole
    pack (`is_symlink` raised); its files are now skipped, named, and --prune keeps them."""
    import shutil
    import tempfile

    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folder is root's alone
    tmp_path.chmod(0o777)
    try:
        _hidden_entries(tmp_path, nobody)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _hidden_entries(tmp_path: Path, nobody: list[str]) -> None:
    src, f = tmp_path / "src", tmp_path / "c.capsule"
    (src / "locked").mkdir(parents=True)
    (src / "open").mkdir()
    (src / "locked" / "a.md").write_text("locked kumquat\n")
    (src / "open" / "o.md").write_text("open wombat\n")
    subprocess.run(["chmod", "-R", "a+rwX", str(tmp_path)], check=True)
    p = subprocess.run([*nobody, str(CAPSULE_BIN), "pack", str(src), "-o", str(f), "--embedder", "none"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    (src / "locked").chmod(0o444)
    try:
        p = subprocess.run([*nobody, str(CAPSULE_BIN), "pack", str(src), "-o", str(f), "--append", "--prune",
                            "--json", "--embedder", "none"], capture_output=True, text=True, timeout=120,
                           check=False)
    finally:
        (src / "locked").chmod(0o755)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    doc = json.loads(p.stdout)
    assert doc["pruned"]["files"] == 0 and any(s["path"] == "locked/a.md" for s in doc["skipped"]), doc
    assert hits(f, "kumquat") == 1


def test_an_edited_file_holding_a_short_secret_is_named(tmp_path: Path) -> None:
    """A short secret (an API key line) came back, unsaid, once a note was added after it."""
    docs, f = tmp_path / "docs", tmp_path / "d.capsule"
    docs.mkdir()
    (docs / "env.md").write_text("API_KEY=sk-live-51Hx9aQ2\n")
    (docs / "other.md").write_text("unrelated\n")
    run("pack", docs, "-o", f, "--embedder", "none")
    with capsule.open(f) as cap:
        (rid,) = [h.id for h in cap.search("API_KEY", mode="lexical")]
    run("redact", f, rid)
    (docs / "env.md").write_text("API_KEY=sk-live-51Hx9aQ2\n\nremember to rotate quarterly\n")
    p = run("pack", docs, "-o", f, "--append", "--embedder", "none")
    assert "env.md held redacted text and changed" in p.stderr and "other.md" not in p.stderr, p.stderr
    (docs / "copy.md").write_text("API_KEY=sk-live-51Hx9aQ2\n")  # the exact chunk, under another name
    p = run("pack", docs, "-o", f, "--append", "--embedder", "none")
    assert "1 chunk(s) not written: each is a redacted chunk's text (7.7.1), in copy.md" in p.stderr, p.stderr


def test_a_killed_creates_file_is_made_again_with_its_mode_and_by_exist_ok(tmp_path: Path) -> None:
    """Third attack: the re-made file lost the placeholder's mode (a private 0600 file came back
    0644), and create(exist_ok=True), which agents and the LangGraph saver use, still failed on it."""
    old = time.time() - 10
    private = tmp_path / "private.capsule"
    private.write_bytes(b"")
    private.chmod(0o600)
    os.utime(private, (old, old))
    run("init", private)
    assert (private.stat().st_mode & 0o777) == 0o600 and capsule.verify(private).ok
    agent = tmp_path / "agent.capsule"
    agent.write_bytes(b"")
    os.utime(agent, (old, old))
    with capsule.create(agent, exist_ok=True) as cap, cap.commit() as tx:
        tx.remember("restarted")
    with capsule.create(agent, exist_ok=True) as cap:  # and a capsule there now is opened, not made again
        assert len(cap) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a file of another user's")
def test_another_users_empty_file_is_not_made_again(tmp_path: Path) -> None:
    f = tmp_path / "theirs.capsule"
    f.write_bytes(b"")
    os.chown(f, 65534, 65534)
    old = time.time() - 10
    os.utime(f, (old, old))
    p = run("init", f, ok=False)
    assert p.returncode == 2 and "already exists" in p.stderr and f.stat().st_uid == 65534


def test_exist_ok_waits_for_a_file_another_create_is_making_again(tmp_path: Path) -> None:
    """Attack four: two create(exist_ok=True) on a killed create's empty file; the one that found it
    gone while the other derived its keys got CapsuleNotFound instead of opening what was made."""
    import threading

    from capsule.format.crypto import Keys
    from capsule.handle.entry import _open_made

    f = tmp_path / "race.capsule"

    def later() -> None:
        time.sleep(0.3)
        capsule.create(f).close()

    t = threading.Thread(target=later)
    t.start()
    try:
        with _open_made(f, None, 2.0, Keys()) as cap:
            assert cap.summary().commits == 1
    finally:
        t.join()
