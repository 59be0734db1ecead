"""``capsule.pack`` and ``capsule pack``: folders and JSONL into a capsule that opens to search.

Promised (capsule/ingest/pack.py, cli/search.py): files in sorted relative-path order,
chunked by paragraphs, each chunk a memory with ``source`` and ``meta`` {path,
chunk, sha256 (of the file)}; files that are not UTF-8 (or hold NUL bytes) are skipped with a warning
and everything else is packed; the vector index is built and snapshotted so the
packed capsule opens straight to search; a failed pack leaves no capsule; with
``SOURCE_DATE_EPOCH`` the output is byte-identical (2.5).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from capsule_cli.main import app
from typer.testing import CliRunner, Result

import capsule

CAPSULE_BIN = Path(sys.executable).with_name("capsule")
runner = CliRunner()

LONG_PARAS = [f"paragraph {i} token{i:03d} " + "filler words here " * 20 for i in range(12)]
FILES: dict[str, bytes] = {
    "a.md": b"# Alpha\n\nThe deploy key lives in vault. uniqalpha\n\nSecond paragraph uniqsecond\n",
    "b.txt": "Lunch is at noon, café au lait. uniqbeta\r\n".encode(),
    "sub/c.markdown": b"Prefer metric units. uniqgamma\n",
    "sub/deeper/long.rst": "\n\n".join(LONG_PARAS).encode(),
    "bom.txt": b"\xef\xbb\xbfbyte order mark first uniqbom\n",
    "latin1.txt": "Caf\xe9 cr\xe8me uniqlatin".encode("latin-1"),
    "nul.md": b"binary\x00content uniqnul\n",
    "ignored.py": b"print('not a text suffix') uniqpy\n",
    "UPPER.MD": b"Upper case suffix uniqupper\n",
}
PACKED = {"a.md", "b.txt", "sub/c.markdown", "sub/deeper/long.rst", "bom.txt", "UPPER.MD"}
SKIPPED = {"latin1.txt", "nul.md"}


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE"):
        monkeypatch.delenv(var, raising=False)


def make_folder(root: Path, files: dict[str, bytes] = FILES) -> Path:
    for rel, data in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return root


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def run_capsule(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("SOURCE_DATE_EPOCH", "FORCE_COLOR", "TTY_COMPATIBLE")}
    env["COLUMNS"] = "200"
    return subprocess.run([str(CAPSULE_BIN), *map(str, args)], cwd=cwd, input=b"", capture_output=True, env=env,
                          timeout=120, check=False)


def assert_one_line_error(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error:"), stderr


def test_pack_folder_skips_non_utf8_with_a_warning_and_packs_the_rest(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    out = tmp_path / "docs.capsule"
    warnings: list[str] = []
    rep = capsule.pack(src, out, warn=warnings.append)
    assert rep.files == len(PACKED)
    assert {p for p, _ in rep.skipped} == SKIPPED
    # one warning per skipped file, and one for the files of types pack does not read (ignored.py)
    assert warnings[0] == "ignored 1 file of other types (.py); in a folder pack reads .txt, .md, .markdown, .rst, .text"
    assert len(warnings) == 1 + len(SKIPPED) and all(any(s in w for s in SKIPPED) for w in warnings[1:])
    assert rep.embedder == "hash" and rep.vectors == rep.records == rep.new
    assert rep.bytes == out.stat().st_size
    assert capsule.verify(out).ok
    with capsule.open(out) as cap:
        mems = list(cap.records("memory"))
        assert len(mems) == rep.records
        assert {m.meta["path"] for m in mems} == PACKED
        assert all(m.source == f"src/{m.meta['path']}" and m.meta["root"] == "src" for m in mems)
        # chunk numbers run 0.. within each file, in file order
        by_path: dict[str, list[int]] = {}
        for m in mems:
            by_path.setdefault(m.meta["path"], []).append(m.meta["chunk"])
        assert all(v == list(range(len(v))) for v in by_path.values())
        assert len(by_path["sub/deeper/long.rst"]) > 1, "a long file is chunked"
        assert [m.meta["path"] for m in mems] == sorted(m.meta["path"] for m in mems), "sorted path order"
        # opens straight to search: the snapshot holds every vector
        info = cap.index_info()
        assert info["vectors"]["embedder"] == "hash" and info["vectors"]["dim"] == 384
        assert info["snapshot"] is not None and info["snapshot"]["vectors"] == rep.vectors
        for token, path in (("uniqalpha", "a.md"), ("uniqbeta", "b.txt"), ("uniqgamma", "sub/c.markdown"),
                            ("uniqbom", "bom.txt"), ("uniqupper", "UPPER.MD"), ("token007", "sub/deeper/long.rst")):
            for mode in ("lexical", "auto", "hybrid", "vector"):
                hits = cap.search(token, mode=mode, k=3)
                assert hits and hits[0].meta["path"] == path, (token, mode)
        for token in ("uniqlatin", "uniqnul", "uniqpy"):
            assert cap.search(token, mode="lexical") == []
        assert not any(m.text.startswith("\ufeff") for m in mems), "the BOM is not text"
        hits = cap.search("filler words", mode="lexical", meta={"path": "sub/deeper/long.rst", "chunk": 1}, k=5)
        digest = hashlib.sha256(FILES["sub/deeper/long.rst"]).hexdigest()  # the file's, in each chunk
        assert len(hits) == 1 and hits[0].meta == {"chunk": 1, "path": "sub/deeper/long.rst", "root": "src",
                                                   "sha256": digest}


def test_pack_is_reproducible_with_source_date_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_folder(tmp_path / "src")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    capsule.pack(src, tmp_path / "one.capsule")
    capsule.pack(src, tmp_path / "two.capsule", batch=2)  # other commit grouping, same records
    capsule.pack(src, tmp_path / "three.capsule")
    assert (tmp_path / "three.capsule").read_bytes() == (tmp_path / "one.capsule").read_bytes()
    with capsule.open(tmp_path / "one.capsule") as a, capsule.open(tmp_path / "two.capsule") as b:
        assert a.state_root == b.state_root
        assert [h.id for h in a.search("deploy vault", k=5)] == [h.id for h in b.search("deploy vault", k=5)]


def test_pack_jsonl_with_own_embeddings(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 8))
    lines = [{"text": f"record {i}", "embedding": x[i].tolist(), "tags": ["even" if i % 2 == 0 else "odd"]}
             for i in range(20)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(o) + "\n" for o in lines) + "\n")
    out = tmp_path / "j.capsule"
    rep = capsule.pack(src, out)
    assert rep.embedder is None and rep.vectors == 20 and rep.records == 20
    with capsule.open(out) as cap:
        assert cap.vector_config().dim == 8  # type: ignore[union-attr]
        for i in (0, 7, 19):
            hits = cap.search(vector=x[i], mode="vector", k=1)
            assert hits[0].text == f"record {i}" and hits[0].score == pytest.approx(1.0, abs=1e-6)
        assert all(h.tags == ("odd",) for h in cap.search(vector=x[0], mode="vector", tags="odd", k=20))
        assert cap.search("record", mode="auto", k=3), "no embedder name: auto is lexical"


@pytest.mark.parametrize("bad", [b'{"text": "ok"}\nnot json\n', b'{"text": "ok"}\n[1, 2]\n',
                                 b'{"text": "a", "embedding": [1, 2]}\n{"text": "b", "embedding": [1, 2, 3]}\n',
                                 b'{"text": "\xff"}\n'],
                         ids=["invalid-json", "not-an-object", "dimension-mismatch", "not-utf8"])
def test_pack_jsonl_errors_leave_no_capsule(tmp_path: Path, bad: bytes) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_bytes(bad)
    out = tmp_path / "out.capsule"
    with pytest.raises(capsule.InvalidRecordError, match="line 2|line 1"):
        capsule.pack(src, out)
    assert not out.exists()
    assert not list(tmp_path.glob("out.capsule*")), "no lock file or half-made capsule left behind"


def test_pack_refuses_to_overwrite_and_appends_on_request(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", {"a.md": b"first file uniqone\n"})
    out = tmp_path / "o.capsule"
    capsule.pack(src, out)
    before = out.read_bytes()
    with pytest.raises(capsule.AlreadyExists):
        capsule.pack(src, out)
    assert out.read_bytes() == before
    more = make_folder(tmp_path / "more", {"b.md": b"second file uniqtwo\n"})
    rep = capsule.pack(more, out, append=True)
    assert rep.new == 1
    with capsule.open(out) as cap:
        assert [h.text for h in cap.search("uniqtwo", k=1)] == ["second file uniqtwo"]
        assert [h.text for h in cap.search("uniqone", k=1)] == ["first file uniqone"]
        # one vector more is caught up on load, not written as a new whole snapshot (16.3)
        assert cap.index_info()["snapshot"]["vectors"] == 1
        assert [h.text for h in cap.search("uniqtwo", k=1, mode="vector")] == ["second file uniqtwo"]
        assert cap.index_info()["indexed"] == 2
    assert capsule.verify(out).ok


def test_pack_folder_with_nothing_usable_is_a_usage_error(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", {"x.txt": b"\xff\xfe bad", "y.py": b"print(1)"})
    with pytest.raises(capsule.UsageError):
        capsule.pack(src, tmp_path / "o.capsule", warn=lambda m: None)
    assert not (tmp_path / "o.capsule").exists()
    with pytest.raises(capsule.CapsuleNotFound):
        capsule.pack(tmp_path / "absent", tmp_path / "o.capsule")


def test_cli_pack_then_verify_then_search(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    out = tmp_path / "docs.capsule"
    proc = run_capsule("pack", src, "-o", out, "--json", cwd=tmp_path)
    stderr = proc.stderr.decode()
    assert proc.returncode == 0, stderr
    rep = json.loads(proc.stdout)
    assert {s["path"] for s in rep["skipped"]} == SKIPPED and rep["files"] == len(PACKED)
    warn_lines = [ln for ln in stderr.splitlines() if ln]
    assert len(warn_lines) == 1 + len(SKIPPED) and all(ln.startswith("capsule: warning:") for ln in warn_lines)
    assert "Traceback" not in stderr
    proc = run_capsule("verify", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    proc = run_capsule("search", out, "deploy key vault", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    hits = json.loads(proc.stdout)
    assert hits and hits[0]["meta"]["path"] == "a.md"
    assert proc.stderr == b"", "a packed capsule opens to search with no warning"


def test_cli_pack_human_output_and_no_embedder(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src")
    r = invoke("pack", src, "-o", tmp_path / "h.capsule")
    assert r.exit_code == 0, r.output
    assert "packed 6 files" in r.stdout and "2 skipped" in r.stdout
    assert invoke("verify", tmp_path / "h.capsule").exit_code == 0
    r = invoke("pack", src, "-o", tmp_path / "n.capsule", "--embedder", "none", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["vectors"] == 0
    with capsule.open(tmp_path / "n.capsule") as cap:
        assert cap.vector_config() is None
        assert [h.meta["path"] for h in cap.search("uniqgamma")] == ["sub/c.markdown"]
    assert invoke("verify", tmp_path / "n.capsule").exit_code == 0


@pytest.mark.parametrize("argv", [["pack", "{absent}", "-o", "{out}"], ["pack", "{src}", "-o", "{existing}"],
                                  ["pack", "{src}", "-o", "{out}", "--embedder", "nope"],
                                  ["pack", "{src}", "-o", "{nodir}"]],
                         ids=["missing-src", "existing-output", "unknown-embedder", "missing-directory"])
def test_cli_pack_errors_are_one_line(tmp_path: Path, argv: list[str]) -> None:
    src = make_folder(tmp_path / "src", {"a.md": b"hello\n"})
    existing = tmp_path / "existing.capsule"
    existing.write_bytes(b"not mine")
    names = {"absent": tmp_path / "absent", "out": tmp_path / "out.capsule", "src": src, "existing": existing,
             "nodir": tmp_path / "no" / "such" / "dir.capsule"}
    r = invoke(*[a.format(**names) for a in argv])
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, r.output
    assert_one_line_error(r.stderr)
    assert existing.read_bytes() == b"not mine"
    assert not (tmp_path / "out.capsule").exists()


def test_appending_keeps_one_embedder_per_capsule(tmp_path: Path) -> None:
    """16.1: a capsule's vectors come from one embedder. Appending with ``auto``
    reuses the capsule's; naming another one is refused before anything is written."""
    first, more = tmp_path / "first", tmp_path / "more"
    make_folder(first, {"a.md": b"deploys freeze on Fridays\n"})
    make_folder(more, {"b.md": b"lunch is at noon\n"})
    out = tmp_path / "notes.capsule"
    capsule.pack(first, out, embedder="hash-64")
    before = out.read_bytes()
    with pytest.raises(capsule.UsageError, match="hash-64"):
        capsule.pack(more, out, embedder="hash", append=True)  # same dimension family, other embedder
    assert out.read_bytes() == before
    rep = capsule.pack(more, out, append=True)  # auto: the capsule's own
    assert rep.embedder == "hash-64" and rep.vectors == 1
    with capsule.open(out) as cap:
        assert cap.vector_config().embedder == "hash-64"  # type: ignore[union-attr]
        assert cap.search("lunch noon", mode="vector", k=1)[0].text == "lunch is at noon"
    r = invoke("pack", more, "-o", out, "--append", "--embedder", "hash")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output


def test_jsonl_fields_pass_through_untouched(tmp_path: Path) -> None:
    """pack keeps no bookkeeping inside the records it reads: a field the record
    kind does not know is refused, named by its line, whatever it is called."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "odd", "_line": 7}\n')
    with pytest.raises(capsule.InvalidRecordError, match="in.jsonl line 2"):
        capsule.pack(src, tmp_path / "out.capsule", embedder=None)
    assert not (tmp_path / "out.capsule").exists()


def test_pack_a_single_text_file(tmp_path: Path) -> None:
    """One .md/.txt file packs like a folder holding just it (path = its name);
    anything else is read as JSONL."""
    src = tmp_path / "notes.md"
    src.write_bytes(FILES["a.md"])
    out = tmp_path / "one.capsule"
    rep = capsule.pack(src, out)
    assert rep.files == 1 and rep.records == 1
    with capsule.open(out) as cap:
        (hit,) = cap.search("uniqsecond", mode="lexical")
        assert hit.meta == {"chunk": 0, "path": "notes.md", "sha256": hashlib.sha256(FILES["a.md"]).hexdigest(),
                            "root": tmp_path.name}  # a single file is filed under its folder's name
    bad = tmp_path / "latin.txt"
    bad.write_bytes(FILES["latin1.txt"])
    with pytest.raises(capsule.UsageError, match="no UTF-8 text"):
        capsule.pack(bad, tmp_path / "none.capsule")
    assert not (tmp_path / "none.capsule").exists()
