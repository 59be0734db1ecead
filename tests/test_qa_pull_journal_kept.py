"""A pull with a key at hand keeps a killed pull's journal until it has a tail of its own (a review's finding 4).

A pull killed midway leaves a torn tail and its journal (19.7), which the next pull finishes. With
``CAPSULE_IDENTITY`` set (docs/encryption.md suggests it as every command's default key) a pull
onto a *plain* copy set the journal aside ("this pull checks the tail with the key") before it
downloaded anything; when the store then failed, the journal was gone, the next writer dropped the
torn tail with a RECOVERY frame, and every later pull said "diverged". A key matters only for an
encrypted copy, and even then the journal goes only once the keyed pull has checked its own tail.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import capsule
import capsule.sync
from capsule.format.pending import journal_path

from .test_qa_encsync_review import (
    KILLED_PULL,
    _encrypted_copy_after_a_killed_pull,
    _remote_with_three_new_commits,
    cli,
)


def test_a_default_identity_changes_nothing_for_a_plain_copy(tmp_path: Path) -> None:
    url, a, b = _remote_with_three_new_commits(tmp_path)
    p = subprocess.run([sys.executable, "-c", KILLED_PULL, url, str(b)], capture_output=True, timeout=120,
                       check=False)
    assert p.returncode == -signal.SIGKILL and journal_path(b).exists()
    key = capsule.generate_key()
    capsule.save_private_key(tmp_path / "k.key", key, passphrase=None)
    segs = Path(url.removeprefix("file://")) / "segments"
    shutil.move(segs, tmp_path / "segments.away")  # the store fails: every segment is gone
    # a plain copy: the key changes nothing, the journal holds the whole tail, the pull finishes it
    r = cli("pull", url, b, "--json", env={"CAPSULE_IDENTITY": str(tmp_path / "k.key")})
    assert r.returncode == 0 and "set aside" not in r.stderr, r.stderr
    assert b.read_bytes() == a.read_bytes() and not journal_path(b).exists()


def test_a_keyed_pull_that_fails_keeps_the_journal_of_an_encrypted_copy(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    url, a, b = _encrypted_copy_after_a_killed_pull(tmp_path, monkeypatch, "pw")
    torn = b.read_bytes()
    segs = Path(url.removeprefix("file://")) / "segments"
    shutil.move(segs, tmp_path / "segments.away")
    with pytest.raises(capsule.CapsuleError), capsule.unlocking(passphrase="pw"):
        capsule.sync.pull(url, b)
    assert journal_path(b).exists() and b.read_bytes() == torn  # still there for a pull that can finish
    shutil.move(tmp_path / "segments.away", segs)
    with capsule.unlocking(passphrase="pw"):
        assert capsule.sync.pull(url, b).status == "pulled"
    assert b.read_bytes() == a.read_bytes() and not journal_path(b).exists()


def test_a_pull_that_only_finished_a_journal_says_so(tmp_path: Path) -> None:
    """It said "N bytes downloaded" though every segment had just been deleted from the store."""
    url, a, b = _remote_with_three_new_commits(tmp_path)
    p = subprocess.run([sys.executable, "-c", KILLED_PULL, url, str(b)], capture_output=True, timeout=120,
                       check=False)
    assert p.returncode == -signal.SIGKILL and journal_path(b).exists()
    segs = Path(url.removeprefix("file://")) / "segments"
    shutil.move(segs, tmp_path / "segments.away")
    r = cli("pull", url, b)
    assert r.returncode == 0, r.stderr
    assert "bytes appended from an interrupted pull's journal" in r.stdout and "downloaded" not in r.stdout, r.stdout
    assert b.read_bytes() == a.read_bytes()
