"""Remote URLs and local stores a push or pull must not misread (a review's findings, spec 19).

- ``s3://fleet//agent`` (an empty ``$PREFIX``) pushed under keys no listing finds: "pushed",
  then no pull could read it and every later push reported a race that never happened.
- ``s3:/fleet/x``, ``s3:fleet/x``, ``s3://``, ``file://`` pushed into the local disk (a folder
  named ``s3:``, or the current folder) and said "pushed"; from the command line
  ``memory://`` said "pushed" into a dict that died with the process.
- A ``file://`` remote whose manifest is /dev/zero was read until memory ran out, and a FIFO
  in its place hung the pull for ever.
- A private (0600) capsule was published 0644 on a ``file://`` remote.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

import capsule
import capsule.sync

from .clirun import CAPSULE_BIN, capsule_cli


def _capsule(p: Path) -> Path:
    with capsule.create(p) as cap, cap.commit() as tx:
        tx.remember("a memory to push")
    return p


@pytest.mark.parametrize("url", ["s3://fleet//agent", "s3://fleet/a//b", "s3:/fleet/x", "s3:fleet/x", "s3://",
                                 "file://", "memory://", "memory://fleet/agent", "MEMORY://x"])
def test_a_url_a_store_would_misread_is_refused_before_anything_is_written(tmp_path: Path, url: str) -> None:
    src = _capsule(tmp_path / "a.capsule")
    work = tmp_path / "cwd"
    work.mkdir()
    for args in (["push", str(src), url], ["pull", url, str(tmp_path / "b.capsule")]):
        r = subprocess.run([CAPSULE_BIN, *args], cwd=work, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("capsule: error: ") and r.stderr.count("\n") == 1, r.stderr
        assert list(work.iterdir()) == [], list(work.iterdir())  # nothing pushed into the local disk
        assert not (tmp_path / "b.capsule").exists()


@pytest.mark.parametrize("url", ["s3://fleet//agent", "s3:/fleet/x", "s3://", "file://"])
def test_the_library_refuses_them_too(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _capsule(tmp_path / "a.capsule")
    monkeypatch.chdir(tmp_path)  # where a misread URL would land (`s3:/...`, `manifests/`)
    with pytest.raises(capsule.UsageError):
        capsule.sync.push(src, url)


def test_a_local_path_with_a_doubled_slash_is_still_a_path(tmp_path: Path) -> None:
    src = _capsule(tmp_path / "a.capsule")
    assert capsule.sync.push(src, f"{tmp_path}//rem").status == "pushed"
    assert capsule.sync.pull(f"file://{tmp_path}/rem", tmp_path / "b.capsule").status == "created"
    # RFC 8089's short form, file:/abs/path, is a local path too (an attack found it refused)
    assert capsule.sync.pull(f"file:{tmp_path}/rem", tmp_path / "c.capsule").status == "created"


def _remote_with(tmp_path: Path) -> Path:
    src = _capsule(tmp_path / "a.capsule")
    capsule.sync.push(src, f"file://{tmp_path}/rem")
    [man] = (tmp_path / "rem" / "manifests").iterdir()
    return man


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_a_manifest_that_is_a_device_is_refused_not_read_without_end(tmp_path: Path) -> None:
    man = _remote_with(tmp_path)
    man.unlink()
    man.symlink_to("/dev/zero")
    t = time.monotonic()
    r = capsule_cli("pull", f"file://{tmp_path}/rem", str(tmp_path / "b.capsule"), ok=False, timeout=60)
    assert time.monotonic() - t < 30
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr
    assert not (tmp_path / "b.capsule").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_manifest_that_is_a_fifo_is_refused_not_waited_for(tmp_path: Path) -> None:
    man = _remote_with(tmp_path)
    man.unlink()
    os.mkfifo(man)
    r = capsule_cli("pull", f"file://{tmp_path}/rem", str(tmp_path / "b.capsule"), ok=False, timeout=60)
    assert r.returncode == 1 and "not a regular file" in r.stderr, r.stderr


def test_a_private_capsule_is_published_private_on_a_local_store(tmp_path: Path) -> None:
    src = _capsule(tmp_path / "a.capsule")
    os.chmod(src, 0o600)
    old = os.umask(0o022)
    try:
        capsule.sync.push(src, f"file://{tmp_path}/rem")
        os.chmod(src, 0o644)
        with capsule.open(src, "a") as cap, cap.commit() as tx:
            tx.remember("a second memory")
        capsule.sync.push(src, f"file://{tmp_path}/rem", as_name="open")
    finally:
        os.umask(old)
    private = [f for f in (tmp_path / "rem").rglob("*") if f.is_file()]
    shared = [f for f in (tmp_path / "open").rglob("*") if f.is_file()]
    assert private and shared
    assert {stat.S_IMODE(f.stat().st_mode) for f in private} == {0o600}
    assert {stat.S_IMODE(f.stat().st_mode) for f in shared} == {0o644}
