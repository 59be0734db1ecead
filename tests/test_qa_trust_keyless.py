"""A key-less ``pull --trust`` of an encrypted capsule takes nothing past the signed commit (a review's finding 3).

A bucket writer with no key pulled the remote, appended one bare COMMIT (chain and Merkle root
right, no record, a MAC of zeros), verified it key-less (ok) and pushed it. The victim's
``pull --trust owner.pub`` took it, since it added no record the signature had to cover, and from
then on every read and write of the copy by the key holder failed its MAC (10.7), and no command
cut it back. Without the key a COMMIT's MAC cannot be checked, so with an anchor and no key a
pull now refuses any commit after the last trusted checkpoint; with the key it checks them.
"""

from __future__ import annotations

from pathlib import Path

import capsule
import capsule.sync

from .test_encryption_tamper import append


def _signed_copy(tmp_path: Path, text: str) -> tuple[capsule.PrivateKey, Path, str, Path]:
    """An encrypted capsule with one memory and a signed checkpoint last, pushed, and pulled
    key-less with --trust into host.capsule: (key, source, remote URL, host copy)."""
    key = capsule.generate_key()
    src, rem = tmp_path / "v.capsule", f"file://{tmp_path}/rem"
    with capsule.create(src, recipients=[key.public_key]) as cap:
        with cap.commit() as tx:
            tx.remember(text)
        cap.checkpoint("c1", key=key)
    capsule.sync.push(src, rem)
    host = tmp_path / "host.capsule"
    assert capsule.sync.pull(rem, host, trust=key.public_key).status == "created"
    return key, src, rem, host


def test_a_bare_commit_past_the_signature_is_refused_without_the_key(tmp_path: Path) -> None:
    key, src, rem, host = _signed_copy(tmp_path, "secret one")
    # the attacker: no key, write access to the bucket
    evil = tmp_path / "evil.capsule"
    capsule.sync.pull(rem, evil)
    append(evil, [])
    assert capsule.verify(evil).ok  # key-less, it checks what anyone can: it passes
    capsule.sync.push(evil, rem)
    before = host.read_bytes()
    for target in (host, tmp_path / "new.capsule"):
        try:
            capsule.sync.pull(rem, target, trust=key.public_key)
            raise AssertionError("a commit no key holder can open was taken")
        except capsule.sync.RemoteUntrusted as e:
            assert "cannot be authenticated without its key" in str(e)
    assert host.read_bytes() == before and not (tmp_path / "new.capsule").exists()
    with capsule.open(host, identity=key) as cap:  # the copy the key holder has still opens
        assert [m.text for m in cap.records()] == ["secret one"]
    # with the key, the pull checks the MAC itself and names the forgery
    try:
        with capsule.unlocking(identity=key):
            capsule.sync.pull(rem, host, trust=key.public_key)
        raise AssertionError("the forged commit was taken with the key")
    except capsule.CapsuleError as e:
        assert "mac" in str(e).lower() or "authenticat" in str(e).lower(), e
    assert host.read_bytes() == before


def test_a_signed_remote_still_pulls_without_the_key(tmp_path: Path) -> None:
    key, src, rem, host = _signed_copy(tmp_path, "one")
    with capsule.open(src, "a", identity=key) as cap:
        with cap.commit() as tx:
            tx.remember("two")
        cap.checkpoint("c2", key=key)
    capsule.sync.push(src, rem)
    assert capsule.sync.pull(rem, host, trust=key.public_key).status == "pulled"
    with capsule.open(host, identity=key) as cap:
        assert sorted(m.text for m in cap.records()) == ["one", "two"]
