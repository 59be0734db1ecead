"""Encryption, sync and lifecycle together, as a fresh-context review found them.

- A killed pull's temporary copy (`.NAME.pull-*`, the local file plus the tail) survived
  `redact` + `compact`: the purged secret stayed on disk beside the capsule.
- `pull --json` said "up-to-date", 0 bytes, when the pull had finished a killed pull's append.
- `push --check --json` said 0 bytes after sending a damaged segment again.
- `rekey --add-recipient` said nothing of redacted records not yet purged, which the new key
  can decrypt.
- `verify` said the next writer truncates a torn tail that a pull journal continues (it finishes it).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
from capsule import sync
from capsule.format.pending import journal_path

from .clirun import capsule_cli
from .test_qa_sync_review import KILLED_PULL, _remote_with_three_new_commits


def cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return capsule_cli(*args, ok=False, env=env, timeout=120)


def test_an_in_place_compaction_removes_a_killed_pulls_copies(tmp_path: Path) -> None:
    f = tmp_path / "b.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            leak = tx.remember("db password PLAINLEAK4242")
            tx.remember("kept")
        with cap.commit() as tx:
            tx.redact(leak, reason="leak")
    dead = tmp_path / ".b.capsule.pull-0123456789ab"  # what a kill -9 left: nobody holds it
    dead.write_bytes(f.read_bytes())
    live = tmp_path / ".b.capsule.pull-ba9876543210"  # a pull (new file) alive: it holds its flock
    live.write_bytes(b"in progress")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with capsule.open(f, "a") as cap:
            cap.compact()
    finally:
        os.close(fd)
    assert not dead.exists() and live.exists()
    assert [p.name for p in tmp_path.iterdir() if b"PLAINLEAK4242" in p.read_bytes()] == []


def test_pull_json_says_pulled_when_it_finished_a_killed_pulls_append(tmp_path: Path) -> None:
    url, a, b = _remote_with_three_new_commits(tmp_path)
    p = subprocess.run([sys.executable, "-c", KILLED_PULL, url, str(b)], capture_output=True, timeout=120,
                       check=False)
    assert p.returncode == -signal.SIGKILL and journal_path(b).exists()
    torn = b.stat().st_size
    v = cli("verify", b, "--json")
    assert any("the next writer finishes it" in w for w in json.loads(v.stdout)["warnings"]), v.stdout
    r = cli("pull", url, b, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "pulled" and doc["bytes"] == a.stat().st_size - torn, doc
    assert b.read_bytes() == a.read_bytes()
    doc = json.loads(cli("pull", url, b, "--json").stdout)
    assert doc["status"] == "up-to-date" and doc["bytes"] == 0
    assert any("the next writer truncates it" in w
               for w in json.loads(cli("verify", b, "--json").stdout)["warnings"]) is False


def test_push_check_counts_the_bytes_it_sent_again(tmp_path: Path) -> None:
    a = tmp_path / "a.capsule"
    remote = tmp_path / "remote"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("x" * 500)
    sync.push(a, remote.as_uri())
    seg = next((remote / "segments").iterdir())
    size = seg.stat().st_size
    seg.write_bytes(b"\0" * size)
    doc = json.loads(cli("push", a, remote.as_uri(), "--check", "--json").stdout)
    assert doc["status"] == "up-to-date" and doc["repaired_segments"] and doc["bytes"] == size, doc
    assert json.loads(cli("push", a, remote.as_uri(), "--check", "--json").stdout)["bytes"] == 0


def test_adding_a_recipient_warns_of_redacted_bytes_not_yet_purged(tmp_path: Path) -> None:
    f = tmp_path / "e.capsule"
    env = {"PP": "correct horse", "CAPSULE_SCRYPT_LOG_N": "10"}
    assert cli("init", f, "--encrypt", "--passphrase-env", "PP", env=env).returncode == 0
    leak = cli("put", f, "--text", "the key is hunter2", "--passphrase-env", "PP", env=env).stdout.strip()
    assert cli("redact", f, leak, "--passphrase-env", "PP", env=env).returncode == 0
    assert cli("keygen", "-o", tmp_path / "b.key").returncode == 0
    r = cli("rekey", f, "--passphrase-env", "PP", "--add-recipient", tmp_path / "b.key.pub", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["redacted_unpurged"] == 1, r.stdout
    r = cli("rekey", f, "--passphrase-env", "PP", "--add-recipient", tmp_path / "b.key.pub", env=env)
    assert r.returncode == 2  # already a recipient: nothing appended
    assert cli("compact", f, "--capsule-passphrase-env", "PP", env=env).returncode == 0
    assert cli("keygen", "-o", tmp_path / "c.key").returncode == 0
    r = cli("rekey", f, "--passphrase-env", "PP", "--add-recipient", tmp_path / "c.key.pub", env=env)
    assert r.returncode == 0 and "redacted" not in r.stderr, r.stderr


def _encrypted_copy_after_a_killed_pull(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        passphrase: str) -> tuple[str, Path, Path]:
    """A copy b of an encrypted capsule a, pulled key-less, then a key-less pull of a's three newer
    commits killed midway: b holds a torn tail and the journal of it (19.7)."""
    monkeypatch.setenv("CAPSULE_SCRYPT_LOG_N", "10")
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    url = (tmp_path / "remote").as_uri()
    with capsule.create(a, passphrase=passphrase) as cap, cap.commit() as tx:
        tx.remember("first")
    sync.push(a, url)
    sync.pull(url, b)  # key-less: bytes move, structure checked
    with capsule.open(a, "a", passphrase=passphrase) as cap:
        for i in range(3):
            with cap.commit() as tx:
                tx.remember(f"later {i} " + os.urandom(6000).hex())  # incompressible: a tail over pages
    sync.push(a, url)
    p = subprocess.run([sys.executable, "-c", KILLED_PULL, url, str(b)], capture_output=True, timeout=120,
                       check=False)
    assert p.returncode == -signal.SIGKILL and journal_path(b).exists()
    return url, a, b


def test_a_keyed_pull_sets_aside_a_journal_it_did_not_authenticate(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A key-less pull (structure only) killed midway left a journal; a pull given the key finished
    it before checking anything, so a forged tail landed and then failed its AEAD: the copy no
    longer opened. The keyed pull now drops the journal and checks the tail itself."""
    monkeypatch.setenv("PP", "correct horse")
    url, a, b = _encrypted_copy_after_a_killed_pull(tmp_path, monkeypatch, "correct horse")
    r = cli("pull", url, b, "--passphrase-env", "PP", "--json")
    assert r.returncode == 0, r.stderr
    assert "set aside an interrupted pull's journal" in r.stderr
    assert json.loads(r.stdout)["status"] == "pulled" and not journal_path(b).exists()
    assert b.read_bytes() == a.read_bytes()
    assert cli("verify", b, "--passphrase-env", "PP").returncode == 0


def test_a_key_added_since_the_copy_says_how_to_pull_with_it(tmp_path: Path) -> None:
    """`pull -i NEW` onto a copy made before NEW was added: no slot of the copy opens with it. Not
    yet done (the slot is in the remote's tail); the error now says what works."""
    for k in ("a", "b"):
        assert cli("keygen", "-o", tmp_path / f"{k}.key").returncode == 0
    a, b, url = tmp_path / "A.capsule", tmp_path / "B.capsule", (tmp_path / "rem").as_uri()
    assert cli("init", a, "--encrypt", "--recipient", tmp_path / "a.key.pub").returncode == 0
    assert cli("put", a, "--text", "x", "-i", tmp_path / "a.key").returncode == 0
    assert cli("push", a, url).returncode == 0 and cli("pull", url, b).returncode == 0
    assert cli("rekey", a, "-i", tmp_path / "a.key", "--add-recipient", tmp_path / "b.key.pub").returncode == 0
    assert cli("push", a, url).returncode == 0
    before = b.read_bytes()
    r = cli("pull", url, b, "-i", tmp_path / "b.key")
    assert r.returncode == 2 and "pull once without it" in r.stderr, r.stderr
    assert b.read_bytes() == before
    assert cli("pull", url, b).returncode == 0
    assert cli("verify", b, "-i", tmp_path / "b.key").returncode == 0


def test_a_pull_streams_a_huge_segment_instead_of_holding_it(tmp_path: Path) -> None:
    """A manifest naming a 512 MiB segment (zeros, its true size and SHA-256) made the pull hold it
    all before one byte was written: memory grew with the segment. Peak RSS now stays small (the
    zeros are then refused as frames)."""
    import hashlib

    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    url = (tmp_path / "rem").as_uri()
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("x")
    sync.push(a, url)
    sync.pull(url, b)
    with capsule.open(a, "a") as cap, cap.commit() as tx:
        tx.remember("y")
    sync.push(a, url)
    mpath = sorted((tmp_path / "rem" / "manifests").iterdir())[-1]
    doc = json.loads(mpath.read_bytes())
    seg = doc["segments"][-1]
    n = 512 << 20
    with open(tmp_path / "rem" / seg["name"], "r+b") as f:
        f.truncate(n)
    h = hashlib.sha256()
    with open(tmp_path / "rem" / seg["name"], "rb") as f:
        for c in iter(lambda: f.read(1 << 24), b""):
            h.update(c)
    seg.update(size=n, sha256=h.hexdigest())
    doc["size"] = seg["offset"] + n
    mpath.write_text(json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n")
    before = b.read_bytes()
    # anonymous memory, sampled: what the pull holds (file pages a verifier maps are the page cache's)
    probe = ("import sys, threading, time\nfrom capsule_cli.main import main\npeak = [0]\n"
             "def watch():\n    while True:\n        for ln in open('/proc/self/status'):\n"
             "            if ln.startswith('RssAnon:'):\n                peak[0] = max(peak[0], int(ln.split()[1]))\n"
             "        time.sleep(0.005)\n"
             "threading.Thread(target=watch, daemon=True).start()\n"
             "sys.argv = ['capsule', 'pull', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
             "print('maxrss', peak[0], file=sys.stderr)\nsys.exit(code)\n")
    r = subprocess.run([sys.executable, "-c", probe, url, str(b)], capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    rss_kib = int(r.stderr.rsplit("maxrss", 1)[1].split()[0])
    assert rss_kib < 300 * 1024, rss_kib  # well under the 512 MiB segment
    assert b.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.capsule.pull-")]


@pytest.mark.parametrize("value", ["abc", "1e3", "١٢", "-5"])
def test_a_scrypt_work_factor_that_is_no_number_is_refused(tmp_path: Path, value: str) -> None:
    """`CAPSULE_SCRYPT_LOG_N=abc` was ignored (the default used); 9 and 21 were refused (out of 10.4's bounds)."""
    f = tmp_path / "s.capsule"
    r = cli("init", f, "--encrypt", "--passphrase-env", "PP", env={"PP": "x", "CAPSULE_SCRYPT_LOG_N": value})
    assert r.returncode == 2 and "CAPSULE_SCRYPT_LOG_N" in r.stderr and not f.exists(), r.stderr


def test_compaction_sweeps_only_names_a_pull_makes_and_the_journals_temporary(tmp_path: Path) -> None:
    """Attack on the sweep: any `.NAME.pull-*` went at once (a user's `.NAME.pull-backup` too), and the
    journal's own temporary file (`.NAME.append.tmp-*`, the tail's bytes) stayed."""
    f = tmp_path / "b.capsule"
    with capsule.create(f) as cap:
        with cap.commit() as tx:
            leak = tx.remember("SECRET-hunter2-token")
        with cap.commit() as tx:
            tx.redact(leak)
    tmp_journal = tmp_path / ".b.capsule.append.tmp-0123456789ab"
    tmp_journal.write_bytes(f.read_bytes())
    mine = [tmp_path / ".b.capsule.pull-backup-2026-01", tmp_path / ".b.capsule.pull-notes.txt"]
    for p in mine:
        p.write_bytes(b"the user's own")
    with capsule.open(f, "a") as cap:
        cap.compact()
    assert not tmp_journal.exists() and all(p.exists() for p in mine)
    assert [p.name for p in tmp_path.iterdir() if b"hunter2" in p.read_bytes()] == []


def test_a_pull_with_a_key_that_opens_nothing_keeps_the_journal(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack on the keyed pull: it set the journal aside before it knew the key was wrong."""
    url, a, b = _encrypted_copy_after_a_killed_pull(tmp_path, monkeypatch, "right")
    torn = b.read_bytes()
    r = cli("pull", url, b, "--passphrase-env", "PP", env={"PP": "wrong"})
    assert r.returncode == 2 and "no key slot opens" in r.stderr, r.stderr
    assert journal_path(b).exists() and b.read_bytes() == torn
    r = cli("pull", url, b, "--passphrase-env", "PP", env={"PP": "right"})
    assert r.returncode == 0 and b.read_bytes() == a.read_bytes(), r.stderr


def test_a_scrypt_work_factor_matters_only_where_a_passphrase_is_used(tmp_path: Path) -> None:
    """Third attack: a recipient-only capsule (no scrypt) was refused over the variable, and a
    5000-digit value was an internal error."""
    assert cli("keygen", "-o", tmp_path / "k.key").returncode == 0
    bad = {"CAPSULE_SCRYPT_LOG_N": "abc"}
    r = cli("init", tmp_path / "r.capsule", "--encrypt", "--recipient", tmp_path / "k.key.pub", env=bad)
    assert r.returncode == 0, r.stderr
    r = cli("init", tmp_path / "p.capsule", "--encrypt", "--passphrase-env", "PP",
            env={"PP": "x", "CAPSULE_SCRYPT_LOG_N": "9" * 5000})
    assert r.returncode == 2 and "CAPSULE_SCRYPT_LOG_N" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_a_folder_named_like_a_pull_lock_does_not_stop_pulls(tmp_path: Path) -> None:
    a, b = tmp_path / "a.capsule", tmp_path / "b.capsule"
    with capsule.create(a) as cap, cap.commit() as tx:
        tx.remember("x")
    url = (tmp_path / "rem").as_uri()
    sync.push(a, url)
    odd = tmp_path / ".b.capsule.pull-aaaaaaaaaaaa.lock"
    odd.mkdir()
    os.utime(odd, (1, 1))
    r = cli("pull", url, b)
    assert r.returncode == 0 and odd.is_dir(), r.stderr


def test_a_zero_padded_scrypt_work_factor_is_a_number(tmp_path: Path) -> None:
    r = cli("init", tmp_path / "p.capsule", "--encrypt", "--passphrase-env", "PP",
            env={"PP": "x", "CAPSULE_SCRYPT_LOG_N": "00012"})
    assert r.returncode == 0, r.stderr
