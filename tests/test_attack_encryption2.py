"""Second attack round on encryption at rest (spec 10), aimed at the fixes of round one:
commit MACs (10.7), sealed checkpoint runtime blobs (10.2), key slots (10.3), reproducible
keys (10.5), keyless push/pull (10.6, 19) and the CLI's key options.

Each finding is a strict xfail whose reason starts with "FINDING"; the other tests are
guards for what held. The attacker either has write access to the file or the bucket and
no key (he forges frames with this module's helpers, from the spec alone), or holds the
file key but no signing key (a recipient that is not a signer).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import capsule
import capsule.sync
from capsule.core import constants as C
from capsule.format import canonical as canon
from capsule.format.checkpoint import parse_checkpoint
from capsule.format.commit import CommitInfo, encode_commit_payload, parse_commit_payload
from capsule.format.crypto import KeySlots, Slot, hkdf, parse_keyslots
from capsule.format.frames import Merkle, encode_frame, leaf_hash
from capsule.format.records import _REGISTRY, encode_record


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSULE_SCRYPT_LOG_N", "10")
    for var in ("SOURCE_DATE_EPOCH", "CAPSULE_IDENTITY", "CAPSULE_KEY_PASSPHRASE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def owner() -> capsule.PrivateKey:
    return capsule.generate_key()


@pytest.fixture(scope="module")
def bob() -> capsule.PrivateKey:
    return capsule.generate_key()


@pytest.fixture(scope="module")
def mallory() -> capsule.PrivateKey:
    return capsule.generate_key()


# --- forging from the spec alone -----------------------------------------------------------


Frame = tuple[int, int, int, int, int]  # offset, type, flags, seq, total length


def frames_of(data: bytes) -> list[Frame]:
    out, off = [], C.HEADER_SIZE
    while off + C.FRAME_HEADER_SIZE <= len(data):
        total, ftype, flags, _, seq = struct.unpack_from("<IBBHQ", data, off)
        if total < C.FRAME_OVERHEAD or off + total > len(data):
            break
        out.append((off, ftype, flags, seq, total))
        off += total
    return out


def commit_at(data: bytes, off: int) -> CommitInfo:
    total, _, _, _, seq = struct.unpack_from("<IBBHQ", data, off)
    return parse_commit_payload(data[off + 32 : off + total - 32], off, seq, off + total, data[off + total - 32 : off + total])


def commits_of(data: bytes) -> list[CommitInfo]:
    return [commit_at(data, f[0]) for f in frames_of(data) if f[1] == C.FT_COMMIT]


def root_before(data: bytes, seq: int) -> bytes:
    m = Merkle()
    for off, _, _, s, total in frames_of(data):
        if s >= seq:
            break
        m.append(leaf_hash(data[off : off + 32], hashlib.sha256(data[off + 32 : off + total - 32]).digest()))
    return m.root()


def append_commit(data: bytes, extra: list[tuple[int, bytes]], *, mac: bytes | None = None,
                  mac_fn: Callable[[bytes, bytes], bytes] | None = None, crypt: object = None,
                  keyslots: int | None = None) -> bytes:
    """``data`` (cut at a COMMIT) + ``extra`` frames + a COMMIT whose chain, root, counts and
    pointers are right (4.2, 4.3, 6.1): only its `mac` is what the caller gives."""
    fr = frames_of(data)
    last = commits_of(data)[-1]
    out, chain, seq = bytearray(data), data[-32:], fr[-1][3] + 1
    for ftype, payload in extra:
        f = encode_frame(ftype, seq, payload, chain, crypt=crypt)  # type: ignore[arg-type]
        out += f.data
        chain, seq = f.chain, seq + 1
    info = CommitInfo(offset=len(out), end=0, seq=seq, time=last.time + 1, root=root_before(bytes(out), seq),
                      records=last.records, commits=last.commits + 1, prev=last.offset, index=last.index,
                      index_hash=last.index_hash, keyslots=last.keyslots if keyslots is None else keyslots,
                      mac=b"\0" * 32)
    m = mac_fn(chain, canon.pack(info.to_value(mac=False))) if mac_fn else mac if mac is not None else last.mac
    info = dataclasses.replace(info, mac=m)
    out += encode_frame(C.FT_COMMIT, seq, encode_commit_payload(info), chain).data
    return bytes(out)


def newest_keyslots(data: bytes) -> tuple[int, KeySlots]:
    off, _, _, seq, total = [f for f in frames_of(data) if f[1] == C.FT_KEYSLOT][-1]
    return off, parse_keyslots(data[off + 32 : off + total - 32], off, seq)


def evil_keyslot_frame(data: bytes, mallory: capsule.PrivateKey, *, keep: bool = True) -> bytes:
    """A KEYSLOT frame anyone can write without the key (10.3): the first frame's key id, `prev`
    right, the file's own slots copied byte for byte (or not), plus one for mallory that wraps
    nothing (he cannot wrap a key he does not know)."""
    at, ks = newest_keyslots(data)
    mine = Slot("x25519", os.urandom(48), recipient=mallory.public_key.raw, epk=os.urandom(32))
    xs = sorted([s for s in ks.slots if s.type == "x25519" and keep] + [mine], key=lambda s: s.recipient)
    evil = KeySlots(ks.key_id, tuple(xs + [s for s in ks.slots if s.type == "scrypt" and keep]), at)
    return encode_frame(C.FT_KEYSLOT, frames_of(data)[-1][3] + 1, evil.encode(), data[-32:]).data


def sealed_file(path: Path, key: capsule.PrivateKey, *others: capsule.PrivateKey, texts: tuple[str, ...] = ("s1",),
                **kw: object) -> None:
    with capsule.create(path, recipients=[key.public_key, *(o.public_key for o in others)], identity=key,
                        **kw) as cap:  # type: ignore[arg-type]
        for t in texts:
            with cap.commit() as tx:
                tx.remember(t)


def memories(path: Path, **kw: object) -> list[str]:
    with capsule.open(path, **kw) as cap:  # type: ignore[arg-type]
        return [r.text for r in cap.records(kind="memory")]


# --- 10.3: a KEYSLOT frame in a torn tail (no COMMIT, so no MAC) ------------------------------


@pytest.mark.parametrize("how", ["fork", "compact", "rekey-remove"])
def test_torn_tail_keyslot_does_not_enrol_the_attacker(tmp_path: Path, owner: capsule.PrivateKey,
                                                        bob: capsule.PrivateKey, mallory: capsule.PrivateKey,
                                                        how: str) -> None:
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, bob, texts=("only for owner and bob",))
    data = a.read_bytes()
    a.write_bytes(data + evil_keyslot_frame(data, mallory))
    assert memories(a, identity=owner) == ["only for owner and bob"]  # a torn tail: the file still opens
    out = tmp_path / "new.capsule"
    if how == "fork":
        capsule.fork(a, out, identity=owner).close()
    elif how == "compact":
        capsule.compact(a, out, identity=owner)
    else:
        capsule.rekey(a, identity=owner, remove=[bob.public_key], out=out)
    assert memories(out, identity=owner) == ["only for owner and bob"]
    with pytest.raises(capsule.WrongKey):
        memories(out, identity=mallory)


def test_torn_tail_keyslot_is_not_laundered_by_rekey_add(tmp_path: Path, owner: capsule.PrivateKey,
                                                         bob: capsule.PrivateKey,
                                                         mallory: capsule.PrivateKey) -> None:
    a = tmp_path / "a.capsule"
    sealed_file(a, owner)
    data = a.read_bytes()
    a.write_bytes(data + evil_keyslot_frame(data, mallory))
    capsule.rekey(a, identity=owner, add=[bob.public_key])
    assert capsule.verify(a, identity=owner).ok
    _, ks = newest_keyslots(a.read_bytes())
    assert mallory.public_key.raw not in ks.recipients


def test_forged_tail_keyslot_is_damage_not_a_wrong_key(tmp_path: Path, owner: capsule.PrivateKey,
                                                        mallory: capsule.PrivateKey) -> None:
    a = tmp_path / "a.capsule"
    sealed_file(a, owner)
    data = a.read_bytes()
    ks_frame = evil_keyslot_frame(data, mallory, keep=False)
    a.write_bytes(append_commit(data + ks_frame, [], keyslots=len(data), mac=os.urandom(32)))
    with pytest.raises(capsule.CorruptError):
        memories(a, identity=owner)


def test_slot_order_and_key_id_hold(tmp_path: Path, owner: capsule.PrivateKey, bob: capsule.PrivateKey) -> None:
    """10.3: recipients sorted, each once, then at most one passphrase slot; a slot that opens
    another key than the first KEYSLOT names is refused."""
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, bob, passphrase="pw")
    at, ks = newest_keyslots(a.read_bytes())
    x = [s for s in ks.slots if s.type == "x25519"]
    p = [s for s in ks.slots if s.type == "scrypt"]
    for bad in ([*p, *x], [x[1], x[0], *p], [x[0], x[0], *p], [*x, *p, *p]):
        with pytest.raises(capsule.CorruptError, match="KEYSLOT"):
            parse_keyslots(KeySlots(ks.key_id, tuple(bad), None).encode(), at, 0)
    # a passphrase slot wrapping another file key (same passphrase), in a torn-tail KEYSLOT frame
    b = tmp_path / "b.capsule"
    with capsule.create(b, passphrase="pw") as cap, cap.commit() as tx:
        tx.remember("b")
    other = newest_keyslots(b.read_bytes())[1].slots[0]
    data = a.read_bytes()
    graft = KeySlots(ks.key_id, (other,), at)
    fr = encode_frame(C.FT_KEYSLOT, frames_of(data)[-1][3] + 1, graft.encode(), data[-32:]).data
    a.write_bytes(data + fr)  # torn tail: its slot opens nothing of this file (another file id in its AAD)
    # the reader falls back to the file's own slots (10.3) and reads the committed records; the
    # grafted key never reads anything, and the torn tail is not part of the file
    assert memories(a, passphrase="pw") == ["s1"]
    with capsule.open(a, passphrase="pw") as cap:
        assert cap._h.keyslots is not None and cap._h.keyslots.slots[-1] != other


# --- 10.7: commit MACs ------------------------------------------------------------------------


def test_copied_mac_is_refused(tmp_path: Path, owner: capsule.PrivateKey) -> None:
    """A COMMIT after frames anyone can write (a non-critical RECOVERY-typed frame) with the
    previous COMMIT's `mac`: every unkeyed field right, so only 10.7 can refuse it."""
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, texts=("one", "two"))
    data = a.read_bytes()
    junk = canon.pack({"length": 1, "offset": len(data), "sha256": bytes(32)})
    a.write_bytes(append_commit(data, [(C.FT_RECOVERY, junk)]))
    with pytest.raises(capsule.CorruptError) as e:
        memories(a, identity=owner)
    assert e.value.check == "commit-mac"
    rep = capsule.verify(a, identity=owner)
    assert not rep.ok and rep.first_error is not None and rep.first_error["check"] == "commit-mac"
    keyless = capsule.verify(a)  # 10.6: only the mac's presence is checked, and it says so
    assert keyless.ok and not keyless.contents_checked


def test_cut_and_regrow_with_a_dropped_commits_mac_is_refused(tmp_path: Path, owner: capsule.PrivateKey) -> None:
    """Cut after commit k and append a COMMIT carrying the `mac` of the commit that stood there."""
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, texts=("one", "two", "three"))
    data = a.read_bytes()
    cs = commits_of(data)
    cut = data[: cs[-2].end]
    a.write_bytes(append_commit(cut, [], mac=cs[-1].mac))
    with pytest.raises(capsule.CorruptError):
        memories(a, identity=owner)
    a.write_bytes(cut)  # a rollback: still verifies (10.7 says it cannot stop one)
    assert capsule.verify(a, identity=owner).ok


def test_view_of_an_older_commit_checks_its_mac(tmp_path: Path, owner: capsule.PrivateKey,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An older COMMIT's map edited in place (its stored chain value kept, so the newest
    commit's replay, which starts at a later INDEX, does not read it): the view must refuse."""
    monkeypatch.setattr(C, "INDEX_EVERY_FRAMES", 4)  # an INDEX after the commit edited
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, texts=("one", "two", "three", "four", "five", "six"))
    data = bytearray(a.read_bytes())
    cs = commits_of(bytes(data))
    old = cs[2]
    assert cs[-1].index is not None and cs[-1].index > old.end
    payload = data[old.offset + 32 : old.end - 32]
    i = payload.find(b"\xa4time")
    assert i > 0
    t = payload[i + 5 : i + 14]
    assert t[0] == 0xCF  # uint64 ns
    data[old.offset + 32 + i + 6] ^= 0x01  # another commit time, same length
    a.write_bytes(bytes(data))
    with capsule.open(a, identity=owner) as cap:  # fast open reads from the newest INDEX on (6.3)
        assert cap.commit_count == len(cs)
        with pytest.raises(capsule.CorruptError):
            cap.view(old.seq).close()
    assert not capsule.verify(a, identity=owner).ok


def test_torn_tail_then_writer(tmp_path: Path, owner: capsule.PrivateKey) -> None:
    """A torn tail in an encrypted file: readers ignore it, the writer drops it with a
    RECOVERY frame and its commit's MAC covers that frame (8.3, 10.7)."""
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, texts=("one",))
    with a.open("ab") as f:
        f.write(os.urandom(300))
    assert memories(a, identity=owner) == ["one"]
    with capsule.open(a, "a", identity=owner) as cap, cap.commit() as tx:
        tx.remember("two")
    assert any(f[1] == C.FT_RECOVERY for f in frames_of(a.read_bytes()))
    assert sorted(memories(a, identity=owner)) == ["one", "two"]
    rep = capsule.verify(a, identity=owner)
    assert rep.ok and not rep.warnings, (rep.first_error, rep.warnings)


# --- 10.2: the sealed checkpoint runtime blob ---------------------------------------------------


def test_runtime_blob_is_sealed_as_specified_and_cannot_move(tmp_path: Path, owner: capsule.PrivateKey) -> None:
    a = tmp_path / "a.capsule"
    sealed_file(a, owner)
    with capsule.open(a, "a", identity=owner) as cap:
        cap.checkpoint("one", key=owner, runtime_state=b"RUNTIME-ONE-" * 8)
        cap.checkpoint("two", key=owner, runtime_state=b"RUNTIME-TWO-" * 8)
        fk, fid = cap._h.crypt.file_key, cap._h.crypt.file_id  # type: ignore[union-attr]
        assert [c.runtime for c in cap.checkpoints()] == [b"RUNTIME-ONE-" * 8, b"RUNTIME-TWO-" * 8]
    data = a.read_bytes()
    assert b"RUNTIME-" not in data
    cks = [(f, canon.decode(data[f[0] + 32 : f[0] + f[4] - 32])) for f in frames_of(data) if f[1] == C.FT_CHECKPOINT]
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    ad = b"capsule/v1/aead\x00" + fid + b"checkpoint-runtime"
    nonce_key = hkdf(fk, fid, b"capsule/v1/nonce-key")
    for (_, v), want in zip(cks, (b"RUNTIME-ONE-" * 8, b"RUNTIME-TWO-" * 8), strict=True):
        stored = v["runtime"]
        assert stored[:12] == hmac.digest(nonce_key, ad + want, "sha256")[:12]  # 10.2: the synthetic nonce
        got = ChaCha20Poly1305(hkdf(fk, fid, b"capsule/v1/frame-key")).decrypt(stored[:12], stored[12:], ad)
        assert got == want
    (f2, v2), v1 = cks[1], cks[0][1]
    moved = canon.pack({**v2, "runtime": v1["runtime"]})  # checkpoint one's blob under checkpoint two
    with pytest.raises(capsule.CorruptError, match="runtime"):
        parse_checkpoint(moved, f2[0], f2[3])


# --- 10.5: reproducible mode ------------------------------------------------------------------


def test_reproducible_keys_differ_per_reader_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 owner: capsule.PrivateKey, bob: capsule.PrivateKey) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    made = {}
    for name, others, pw in (("a", (), None), ("a2", (), None), ("b", (bob,), None), ("c", (), "pw")):
        p = tmp_path / f"{name}.capsule"
        sealed_file(p, owner, *others, passphrase=pw)
        made[name] = p.read_bytes()
    assert made["a"] == made["a2"]  # 10.5: the same operations give the same bytes
    ids = {n: newest_keyslots(d)[1].key_id for n, d in made.items()}
    fids = {d[12:28] for d in made.values()}
    assert len(fids) == 1  # one epoch, one file id: only the reader binding keeps the keys apart
    assert len({ids["a"], ids["b"], ids["c"]}) == 3
    assert memories(tmp_path / "c.capsule", passphrase="pw") == ["s1"]
    with pytest.raises(capsule.WrongKey):
        memories(tmp_path / "a.capsule", identity=bob)


# --- 19: push and pull of encrypted capsules ----------------------------------------------------


def _published(tmp_path: Path, owner: capsule.PrivateKey, signer: capsule.PrivateKey) -> tuple[Path, str]:
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, texts=("signed",))
    with capsule.open(a, "a", identity=owner) as cap:
        cap.checkpoint("day-1", key=signer)
    url = f"file://{tmp_path}/remote"
    capsule.sync.push(a, url)
    return a, url


def test_keyed_pull_refuses_a_tail_with_a_forged_mac(tmp_path: Path, owner: capsule.PrivateKey,
                                                      bob: capsule.PrivateKey) -> None:
    """A keyless push moves a tampered file (it cannot check MACs, 10.6); a pull with the key,
    onto a copy or into a new file, refuses it and writes nothing."""
    a, url = _published(tmp_path, owner, bob)
    copy = tmp_path / "copy.capsule"
    capsule.sync.pull(url, copy)
    before = copy.read_bytes()
    data = a.read_bytes()
    junk = canon.pack({"length": 1, "offset": len(data), "sha256": bytes(32)})
    a.write_bytes(append_commit(data, [(C.FT_RECOVERY, junk)], mac=os.urandom(32)))
    capsule.sync.push(a, url)  # keyless: moves the structure only
    with capsule.unlocking(identity=owner):
        with pytest.raises(capsule.CapsuleError):
            capsule.sync.pull(url, copy)
        with pytest.raises(capsule.CapsuleError):
            capsule.sync.pull(url, tmp_path / "new.capsule")
    assert copy.read_bytes() == before
    assert not (tmp_path / "new.capsule").exists()


def test_keyless_trusted_pull_refuses_honest_unsigned_records(tmp_path: Path, owner: capsule.PrivateKey,
                                                              bob: capsule.PrivateKey) -> None:
    a, url = _published(tmp_path, owner, bob)
    relay = tmp_path / "relay.capsule"
    capsule.sync.pull(url, relay, trust=bob.public_key)
    with capsule.open(a, "a", identity=owner) as cap, cap.commit() as tx:
        tx.remember("unsigned")
    capsule.sync.push(a, url)
    with pytest.raises(capsule.CapsuleError, match="not covered|unsigned"):
        capsule.sync.pull(url, relay, trust=bob.public_key)


def test_keyless_trusted_pull_refuses_uncounted_records(tmp_path: Path, owner: capsule.PrivateKey,
                                                        bob: capsule.PrivateKey) -> None:
    a, url = _published(tmp_path, owner, bob)
    relay = tmp_path / "relay.capsule"
    capsule.sync.pull(url, relay, trust=bob.public_key)
    before = relay.read_bytes()
    data = a.read_bytes()
    _, rec = encode_record(_REGISTRY["memory"].build(text="INJECTED", time=1))
    plain = canon.pack([canon.decode(rec)])
    sealed = os.urandom(12) + os.urandom(len(plain) + 16)  # looks sealed; nobody without the key can tell
    hdr_flags = C.FFLAG_AEAD
    seq = frames_of(data)[-1][3] + 1
    from capsule.format.frames import chain_next, encode_frame_header

    hdr = encode_frame_header(C.FT_RECORDS, hdr_flags, seq, len(sealed), len(plain))
    ch = chain_next(data[-32:], hdr, hashlib.sha256(sealed).digest())
    a.write_bytes(append_commit(data + hdr + sealed + ch, [], mac=os.urandom(32)))
    capsule.sync.push(a, url)
    with pytest.raises(capsule.CapsuleError):
        capsule.sync.pull(url, relay, trust=bob.public_key)
    assert relay.read_bytes() == before


# --- 20.7: who reads an encrypted merge -----------------------------------------------------------


def test_merge_reads_only_for_readers_of_both(tmp_path: Path, owner: capsule.PrivateKey, bob: capsule.PrivateKey,
                                              mallory: capsule.PrivateKey) -> None:
    """Two copies of one file; bob is added to one (10.3 append) and removed from... nothing:
    a merge admits only the recipients both parents' newest KEYSLOT frames name."""
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, texts=("base",))
    b = tmp_path / "b.capsule"
    b.write_bytes(a.read_bytes())
    capsule.rekey(b, identity=owner, add=[bob.public_key])
    with capsule.open(a, "a", identity=owner) as cap, cap.commit() as tx:
        tx.remember("only in a")
    with capsule.open(b, "a", identity=owner) as cap, cap.commit() as tx:
        tx.remember("only in b")
    out = tmp_path / "m.capsule"
    with capsule.unlocking(identity=owner):
        capsule.merge(a, b, out)
    assert sorted(memories(out, identity=owner)) == ["base", "only in a", "only in b"]
    for k in (bob, mallory):
        with pytest.raises(capsule.WrongKey):
            memories(out, identity=k)


# --- rekey while a reader holds the file ------------------------------------------------------------


def test_rekey_remove_while_a_reader_holds_the_file(tmp_path: Path, owner: capsule.PrivateKey,
                                                     bob: capsule.PrivateKey) -> None:
    a = tmp_path / "a.capsule"
    sealed_file(a, owner, bob, texts=("before",))
    with capsule.open(a, identity=bob) as reader:
        capsule.rekey(a, identity=owner, remove=[bob.public_key])
        assert [r.text for r in reader.records(kind="memory")] == ["before"]  # its own snapshot, its inode
        with pytest.raises(capsule.UsageError, match="was replaced"):  # it says so, and stays on its inode
            reader.refresh()
        with capsule.open(a, "a", identity=owner) as cap, cap.commit() as tx:
            tx.remember("after")
        with pytest.raises(capsule.UsageError, match="was replaced"):
            reader.refresh()
        assert [r.text for r in reader.records(kind="memory")] == ["before"]  # never the new file's
    with pytest.raises(capsule.WrongKey):
        memories(a, identity=bob)
    assert sorted(memories(a, identity=owner)) == ["after", "before"]


# --- CLI -------------------------------------------------------------------------------------------


def _cli(*args: str | Path, cwd: Path, stdin: bytes | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("capsule")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "capsule_cli.main"]
    base = {k: v for k, v in os.environ.items()
            if k not in ("CAPSULE_IDENTITY", "SOURCE_DATE_EPOCH", "CAPSULE_KEY_PASSPHRASE")}
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=stdin is None, timeout=120, cwd=cwd,
                          input=stdin, env={**base, "CAPSULE_SCRYPT_LOG_N": "10", "COLUMNS": "200", **env})


def _one_line(p: subprocess.CompletedProcess[str]) -> str:
    err = p.stderr if isinstance(p.stderr, str) else p.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("capsule: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    env = {"CAPSULE_SCRYPT_LOG_N": "10", "SK": "key pass", "CP": "capsule pass"}
    for args in (("keygen", "-o", "k.key"), ("keygen", "-o", "s.key", "--passphrase-env", "SK"),
                 ("init", "r.capsule", "--encrypt", "--recipient", "k.key.pub", "--recipient", "s.key.pub"),
                 ("put", "r.capsule", "--text", "cli secret", "-i", "k.key"),
                 ("init", "p.capsule", "--encrypt", "--passphrase-env", "CP"),
                 ("put", "p.capsule", "--text", "pass secret", "--passphrase-env", "CP")):
        p = _cli(*args, cwd=d, **env)
        assert p.returncode == 0, (args, p.stderr)
    return d


def test_cli_identity_odd_paths_are_one_line_errors(cli_dir: Path) -> None:
    for ident in ("missing.key", ".", "/dev/stdin"):
        p = _cli("list", "r.capsule", "-i", ident, cwd=cli_dir, stdin=b"")
        assert p.returncode in (1, 2)
        _one_line(p)
    with (cli_dir / "k.key").open("rb") as f:  # a key piped in works
        p = _cli("list", "r.capsule", "-i", "/dev/stdin", cwd=cli_dir, stdin=f.read())
    assert p.returncode == 0 and b"cli secret" in p.stdout


@pytest.mark.parametrize("ident", ["k.key.pub", "."])
def test_cli_identity_wrong_file_is_a_usage_error(cli_dir: Path, ident: str) -> None:
    p = _cli("list", "r.capsule", "-i", ident, cwd=cli_dir)
    _one_line(p)
    assert p.returncode == 2


def test_cli_sealed_identity_names_the_variable(cli_dir: Path) -> None:
    p = _cli("list", "r.capsule", "-i", "s.key", cwd=cli_dir)
    assert p.returncode == 2
    assert "CAPSULE_KEY_PASSPHRASE" in _one_line(p)


def test_cli_sealed_identity_works_with_the_variable(cli_dir: Path) -> None:
    p = _cli("list", "r.capsule", "-i", "s.key", cwd=cli_dir, CAPSULE_KEY_PASSPHRASE="key pass")
    assert p.returncode == 0 and "cli secret" in p.stdout
    p = _cli("list", "r.capsule", "-i", "s.key", cwd=cli_dir, CAPSULE_KEY_PASSPHRASE="wrong")
    assert p.returncode == 2
    _one_line(p)


@pytest.mark.parametrize("args", [("checkpoint", "p.capsule", "--label", "x", "--key", "k.key"),
                                  ("compact", "p.capsule", "--passphrase-env", "CP", "-o", "q.capsule")])
def test_cli_key_hint_names_the_option_of_that_command(cli_dir: Path, args: tuple[str, ...]) -> None:
    p = _cli(*args, cwd=cli_dir, CP="capsule pass")
    assert p.returncode == 2
    assert "--capsule-passphrase-env" in _one_line(p)


def test_cli_capsule_passphrase_option_on_checkpoint_and_compact(cli_dir: Path) -> None:
    p = _cli("checkpoint", "p.capsule", "--label", "ok", "--key", "k.key", "--capsule-passphrase-env", "CP",
             cwd=cli_dir, CP="capsule pass")
    assert p.returncode == 0, p.stderr
    p = _cli("checkpoint", "p.capsule", "--label", "x", "--key", "k.key", "--passphrase-env", "CP", cwd=cli_dir,
             CP="capsule pass")
    assert p.returncode == 2 and "not encrypted" in _one_line(p)  # the key's passphrase, for an unsealed key
    p = _cli("compact", "p.capsule", "--capsule-passphrase-env", "CP", "-o", "c.capsule", cwd=cli_dir,
             CP="capsule pass")
    assert p.returncode == 0, p.stderr
    assert memories(cli_dir / "c.capsule", passphrase="capsule pass") == ["pass secret"]
