"""Push and pull against a hostile remote and a hostile caller (spec 19): regressions.

Each test models one attack on real stores (``file://`` folders whose objects the test
forges byte by byte, moto's S3 server for the store's own error text) and asserts what
19.2-19.8 promise: a forged remote is refused naming the object, nothing unverified lands
in a local file, a push never claims a generation no reader takes, and no credential
reaches a message or ``--json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
import capsule.sync as sync
from capsule.sync.head import read_head
from capsule.sync.manifest import MAX_GENERATION, manifest_name, parse_manifest
from capsule.sync.remote import Remote
from tests.test_sync import add, make, s3_env  # noqa: F401  (s3_env is a fixture)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real CLI entry point in a fresh process (as tests/test_sync.py runs it)."""
    code = "import sys\nfrom capsule_cli.main import main\nsys.argv[0] = 'capsule'\nmain()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd or Path(__file__).resolve().parent.parent)


def one_line_error(p: subprocess.CompletedProcess[str], code: int) -> None:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("capsule: error: "), p.stderr
    assert "Traceback" not in p.stderr


def grow(path: Path, n: int = 1, text: str = "later") -> None:
    with capsule.open(path, mode="a") as cap:
        add(cap, n, text)


def pushed(tmp_path: Path, n: int = 3) -> tuple[Path, Path, str]:
    a = make(tmp_path / "a.capsule", n)
    root = tmp_path / "remote" / "agent"
    url = root.as_uri()
    assert sync.push(a, url).status == "pushed"
    return a, root, url


def forge(root: Path, gen: int, edit: dict[str, object]) -> None:
    """Write manifest ``gen``: generation 1's, with ``edit`` applied (a hostile bucket)."""
    d = json.loads((root / manifest_name(1)).read_bytes())
    d.update(edit, generation=gen)
    (root / manifest_name(gen)).write_text(json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n")


# --- found: generations past 2**63 - 1 --------------------------------------------------------

def test_a_junk_manifest_with_the_largest_name_does_not_swallow_pushes(tmp_path: Path) -> None:
    # Was: top = 99999999999999999999, so push "pushed" generation 10**20 (21 digits), a name
    # no reader parses: the push was reported but never visible.
    a, root, url = pushed(tmp_path)
    (root / "manifests" / ("9" * 20 + ".json")).write_text("junk")
    grow(a)
    res = sync.push(a, url)
    assert res.status == "pushed" and res.generation == 2
    head = read_head(Remote(url)).manifest
    assert head is not None and head.generation == 2 and head.commits == res.commits
    assert sync.pull(url, tmp_path / "b.capsule").commits == res.commits


def test_no_generation_left_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    a, root, url = pushed(tmp_path)
    forge(root, MAX_GENERATION, {})  # a valid manifest at the last generation a reader takes
    assert read_head(Remote(url)).manifest.generation == MAX_GENERATION  # type: ignore[union-attr]
    grow(a)
    segs = sorted(os.listdir(root / "segments"))
    with pytest.raises(sync.RemoteCorrupt, match="no generation to publish"):
        sync.push(a, url)
    assert sorted(os.listdir(root / "segments")) == segs
    assert len(os.listdir(root / "manifests")) == 2


# --- found: manifests two parsers would read differently ------------------------------------

GOOD = {"format": "capsule-remote/1", "generation": 1, "prev": None, "file_id": "ab" * 16, "size": 200,
        "commits": 1, "seq": 1, "commit_offset": 100, "chain": "cd" * 32, "root": "ef" * 32,
        "segments": [{"name": f"segments/{0:020d}-{'cd' * 32}.seg", "offset": 0, "sha256": "01" * 32,
                      "size": 200}]}


def enc(d: object) -> bytes:
    return (json.dumps(d, sort_keys=True, separators=(",", ":")) + "\n").encode()


@pytest.mark.parametrize(("why", "data"), [
    ("duplicate key", enc(GOOD).replace(b'"size":200}]', b'"size":200}],"size":300', 1)),
    ("NaN", enc(GOOD).replace(b'"seq":1', b'"seq":NaN')),
    ("Infinity", enc(GOOD).replace(b'"seq":1', b'"seq":Infinity')),
    ("newline in hex", enc({**GOOD, "root": "ef" * 32 + "\n"})),
    ("non-ASCII digits in a segment name", enc({**GOOD, "segments": [
        {**GOOD["segments"][0], "name": f"segments/{'٠' * 20}-{'cd' * 32}.seg"}]})),  # type: ignore[index]
    ("huge int", enc(GOOD).replace(b'"seq":1', b'"seq":' + b"9" * 5000)),
    ("generation 2**63", enc({**GOOD, "generation": 1 << 63})),
])
def test_ambiguous_manifests_are_refused(why: str, data: bytes) -> None:
    assert parse_manifest(enc(GOOD), manifest_name(1)).size == 200  # the table's base is valid
    with pytest.raises(sync.RemoteCorrupt):
        parse_manifest(data, manifest_name(1 << 63 if "2**63" in why else 1))


# --- found: credentials in a store's own words ----------------------------------------------

@pytest.mark.usefixtures("s3_env")
def test_url_userinfo_never_leaks_through_the_stores_error(tmp_path: Path) -> None:
    # Was: botocore said `Invalid bucket name "AKIA:hunter2-pw@fleet"`, which scrub() missed.
    a = make(tmp_path / "a.capsule", 1)
    for url in ("s3://AKIAXX:hunter2-pw@fleet/x", "s3://me:l3ak@y-pw@fleet/x"):
        p = cli("push", str(a), url, "--json")
        one_line_error(p, 1)
        assert "hunter2" not in p.stderr + p.stdout and "l3ak" not in p.stderr and "y-pw" not in p.stderr
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in p.stderr


def test_a_password_with_an_at_sign_is_scrubbed_whole(tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 1)
    # fsspec takes `user:p@ss@/...` as a relative path: run in tmp_path to keep it there
    p = cli("push", str(a), "file://user:p4ss@w0rd-xyz@" + str(tmp_path / "r"), "--json", cwd=tmp_path)
    assert "w0rd-xyz" not in p.stdout + p.stderr and "p4ss" not in p.stdout + p.stderr


# --- found: `--as` names that are not one plain path component ---------------------------------

@pytest.mark.parametrize("name", ["", ".", "..", "/", "a/b", "..\\x", " a", "a\nb", "a\x01b", "x?y", "x#y",
                                  "*", "~", ".hidden", "a:b", "x" * 201])
def test_hostile_as_names_are_usage_errors_and_create_nothing(tmp_path: Path, name: str) -> None:
    a, root, url = pushed(tmp_path)
    before = sorted(os.listdir(root.parent))
    p = cli("push", str(a), url, "--as", name)
    one_line_error(p, 2)
    assert sorted(os.listdir(root.parent)) == before


def test_a_unicode_as_name_works(tmp_path: Path) -> None:
    a, root, url = pushed(tmp_path)
    assert sync.push(a, url, as_name="agent-ünï.7").status == "pushed"
    assert sync.pull(f"file://{root.parent / 'agent-ünï.7'}", tmp_path / "b.capsule").status == "created"


@pytest.mark.usefixtures("s3_env")
def test_as_beside_a_whole_bucket_would_be_another_bucket(tmp_path: Path) -> None:
    a = make(tmp_path / "a.capsule", 1)
    with pytest.raises(capsule.UsageError, match="whole bucket"):
        sync.push(a, "s3://fleet", as_name="other")


# --- held: forged remotes are refused and the local file is left as it was ---------------------

def seg_edit(root: Path, fn: object) -> dict[str, object]:
    d = json.loads((root / manifest_name(1)).read_bytes())
    segs = d["segments"]
    fn(segs)  # type: ignore[operator]
    return {"segments": segs}


@pytest.mark.parametrize("how", ["size-lie", "gap", "overlap", "dotdot", "absolute", "chain-lie", "truncated",
                                 "huge-size"])
def test_forged_manifests_and_segments_are_refused(tmp_path: Path, how: str) -> None:
    a, root, url = pushed(tmp_path)
    seg = json.loads((root / manifest_name(1)).read_bytes())["segments"][0]
    edits: dict[str, dict[str, object]] = {
        "size-lie": {"size": seg["size"] + 10},
        "gap": seg_edit(root, lambda s: s[0].update(offset=5)),
        "overlap": seg_edit(root, lambda s: s.append(dict(s[0]))),
        "dotdot": seg_edit(root, lambda s: s[0].update(name="segments/../../../a.capsule")),
        "absolute": seg_edit(root, lambda s: s[0].update(name=str(a))),
        "chain-lie": {"chain": "00" * 32},
        "huge-size": {"size": 1 << 62},
        "truncated": {},
    }
    if how == "truncated":
        segfile = root / seg["name"]
        segfile.write_bytes(segfile.read_bytes()[:-7])
    else:
        forge(root, 2, edits[how])
    b = tmp_path / "b.capsule"
    res = None
    try:
        res = sync.pull(url, b)
    except sync.RemoteCorrupt as e:
        assert "segments/" in str(e) or how == "truncated" or "manifest" in str(e)
    if how == "truncated":
        assert res is None and not b.exists()
    else:  # the forged generation 2 is skipped and reported; generation 1 is used, whole
        assert res is not None and res.generation == 1 and len(res.skipped) == 1
        assert b.read_bytes() == a.read_bytes()


def test_a_fork_segment_with_a_recomputed_manifest_is_refused(tmp_path: Path) -> None:
    # Same file id, other bytes: the attacker rewrites the manifest's sha256 and size to match.
    a, root, url = pushed(tmp_path)
    fork = tmp_path / "fork.capsule"
    fork.write_bytes(a.read_bytes())
    grow(a, 1, "honest")
    grow(fork, 1, "injected")
    local = tmp_path / "b.capsule"
    local.write_bytes(a.read_bytes())
    before = local.read_bytes()
    sync.push(a, url)  # generation 2: honest
    m2 = json.loads((root / manifest_name(2)).read_bytes())
    seg = m2["segments"][-1]
    forged = fork.read_bytes()[seg["offset"]:]
    (root / seg["name"]).write_bytes(forged)
    seg.update(sha256=hashlib.sha256(forged).hexdigest(), size=len(forged))
    m2["size"] = seg["offset"] + len(forged)
    forge(root, 3, {k: v for k, v in m2.items() if k != "generation"})
    with pytest.raises(sync.RemoteCorrupt):
        sync.pull(url, tmp_path / "new.capsule")
    assert not (tmp_path / "new.capsule").exists()
    with pytest.raises((sync.RemoteCorrupt, sync.Diverged)):
        sync.pull(url, local)
    assert local.read_bytes() == before


def test_a_manifest_of_one_gigabyte_is_refused_without_reading_it(tmp_path: Path) -> None:
    a, root, url = pushed(tmp_path)
    with open(root / manifest_name(2), "wb") as f:  # sparse: no gigabyte on the test's disk
        f.write(b'{"format":')
        f.truncate(1 << 30)
    res = sync.pull(url, tmp_path / "b.capsule")
    assert res.generation == 1 and "over the" in res.skipped[0]


@pytest.mark.parametrize("content", [b"", b"hello\n" * 10, b"CAPSULE"])
def test_pull_never_writes_a_file_that_is_not_a_capsule(tmp_path: Path, content: bytes) -> None:
    _, _, url = pushed(tmp_path)
    t = tmp_path / "notes.txt"
    t.write_bytes(content)
    p = cli("pull", url, str(t))
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr
    assert t.read_bytes() == content


def test_pull_onto_a_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    _, _, url = pushed(tmp_path)
    link = tmp_path / "link.capsule"
    link.symlink_to(tmp_path / "target.capsule")
    p = cli("pull", url, str(link))
    one_line_error(p, 2)
    assert not (tmp_path / "target.capsule").exists() and link.is_symlink()


def test_a_torn_local_tail_is_never_pushed(tmp_path: Path) -> None:
    a, root, url = pushed(tmp_path)
    grow(a)
    committed = a.read_bytes()
    with open(a, "ab") as f:
        f.write(b"\x00torn-tail-bytes" * 8)
    assert sync.push(a, url).status == "pushed"
    assert sync.pull(url, tmp_path / "b.capsule").status == "created"
    assert (tmp_path / "b.capsule").read_bytes() == committed
