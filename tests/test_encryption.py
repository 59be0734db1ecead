"""Encryption at rest through the library (spec 10): nothing readable on disk, round trips,
keys, reproducible mode, rekey, threads and crashes.

Every "nothing on disk" check has a positive control: the same operations on a plain
capsule must reveal the same needles to the same scanner, so a scanner that cannot see
anything (or needles that never reach the file) fails the test instead of passing it.
The scanner reads the raw bytes and the output of every zstd frame it can find in them,
so a compressed RECORDS payload left unsealed is caught too.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

import capsule
from capsule.core import constants as C

# --- helpers (test_encryption_cli.py and test_encryption_tamper.py import them) ---------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
CONTENT_TYPES = {C.FT_RECORDS, C.FT_INDEX, C.FT_TABLE, C.FT_BLOB}  # 10.2: the sealed ones

TEXT = "SECRET-TEXT-9f1c the quarterly numbers are confidential"
TAG = "SECRET-TAG-77ab"
META = "SECRET-META-0d3e"
# float32 values whose little-endian bytes are distinctive; each vector is stored as
# float32 (records and the vector snapshot), so 4 consecutive values as bytes is a needle
EMBEDDING = [0.1234567, -0.7654321, 0.3141592, 0.2718281, -0.5772156, 0.6931471, 0.1414213, -0.1732050]
EMB_NEEDLE = struct.pack("<4f", *EMBEDDING[:4])
NEEDLES = [TEXT.encode(), TAG.encode(), META.encode(), EMB_NEEDLE]


@pytest.fixture(autouse=True)
def _fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSULE_SCRYPT_LOG_N", "10")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    monkeypatch.delenv("CAPSULE_IDENTITY", raising=False)


@pytest.fixture(scope="module")
def key() -> capsule.PrivateKey:
    return capsule.generate_key()


@pytest.fixture(scope="module")
def other() -> capsule.PrivateKey:
    return capsule.generate_key()


def frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """(offset, type, flags, seq) of every whole frame after the header."""
    out, off = [], C.HEADER_SIZE
    while off + C.FRAME_HEADER_SIZE <= len(data):
        total, ftype, flags, _, seq = struct.unpack_from("<IBBHQ", data, off)
        if total < C.FRAME_OVERHEAD or off + total > len(data):
            break
        out.append((off, ftype, flags, seq))
        off += total
    return out


def revealed(data: bytes) -> bytes:
    """The bytes plus whatever every zstd frame found anywhere in them decompresses to."""
    out = [data]
    start = 0
    while (i := data.find(ZSTD_MAGIC, start)) >= 0:
        start = i + 1
        try:
            obj = zstandard.ZstdDecompressor().decompressobj()
            out.append(obj.decompress(data[i : i + (1 << 22)]))
        except zstandard.ZstdError:
            continue
    return b"".join(out)


def leaks(path: Path, needles: list[bytes] = NEEDLES) -> list[bytes]:
    seen = revealed(path.read_bytes())
    return [n for n in needles if n in seen]


def assert_sealed(path: Path) -> None:
    """10.1-10.2: header flags, every content frame sealed, nothing else sealed, KEYSLOT first."""
    data = path.read_bytes()
    flags, aead = struct.unpack_from("<H", data, 10)[0], data[29]
    assert flags & C.HFLAG_ENCRYPTED and aead == C.AEAD_CHACHA20_POLY1305
    fr = frames(data)
    assert C.FT_KEYSLOT in {t for _, t, _, s in fr if s <= 1}
    for off, ftype, fl, _ in fr:
        assert bool(fl & C.FFLAG_AEAD) == (ftype in CONTENT_TYPES), (off, hex(ftype), fl)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill(cap: capsule.Capsule, commits: int = 3, per: int = 6) -> list[str]:
    """Compressible memories carrying every needle, a vector snapshot (BLOB), an INDEX."""
    ids = []
    for i in range(commits):
        with cap.commit() as tx:
            for j in range(per):
                rng = random.Random(i * per + j)
                emb = [rng.uniform(-1, 1) for _ in EMBEDDING] if i or j else EMBEDDING
                ids.append(tx.remember(f"{TEXT} #{i}.{j} " + "lorem ipsum dolor " * 40, tags=[TAG, "t"],
                                       meta={"m": META, "i": i}, embedding=emb))
    cap.save_index()
    return ids


def make(path: Path, key: capsule.PrivateKey | None, **kw: Any) -> list[str]:
    enc: dict[str, Any] = {"recipients": [key.public_key]} if key is not None else {}
    with capsule.create(path, **enc, **kw) as cap:
        return fill(cap)


# --- nothing readable on disk ----------------------------------------------------------


def test_plain_control_reveals_every_needle_and_sealed_file_none(tmp_path: Path, key: capsule.PrivateKey) -> None:
    plain, sealed = tmp_path / "plain.capsule", tmp_path / "sealed.capsule"
    make(plain, None)
    make(sealed, key)
    # the control: the same writes in the clear show every needle (the text only once decompressed)
    assert leaks(plain) == NEEDLES
    assert TEXT.encode() not in plain.read_bytes()  # so the zstd path of the scanner is what found it
    assert leaks(sealed) == []
    assert_sealed(sealed)
    kinds = {(t, fl) for _, t, fl, _ in frames(sealed.read_bytes())}
    # every kind of content frame was written and sealed; RECORDS compressed before sealing
    assert (C.FT_RECORDS, C.FFLAG_AEAD | C.FFLAG_ZSTD) in kinds
    assert {t for t, _ in kinds} >= {C.FT_INDEX, C.FT_BLOB, C.FT_KEYSLOT, C.FT_COMMIT}


def test_sealed_file_reads_back(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    ids = make(path, key)
    with capsule.open(path, identity=key) as cap:
        assert cap.encrypted and len(cap) == len(ids)
        m = cap.get(ids[0])
        assert m.text.startswith(TEXT) and TAG in m.tags and m.meta["m"] == META
        assert [r.id for r in cap.records()] == ids
        assert cap.search("quarterly", k=3).__len__() == 3
        hit = cap.search(vector=EMBEDDING, k=1, mode="vector")[0]
        assert hit.id == ids[0]
        assert len(cap.log()) == 1 + 3 + 1  # create, three commits, the snapshot's
    rep = capsule.verify(path, identity=key)
    assert rep.ok and rep.contents_checked and rep.records == len(ids), rep.first_error


OPS: dict[str, Callable[[Path, Path, capsule.PrivateKey, capsule.PrivateKey], None]] = {}


def op(fn: Callable[[Path, Path, capsule.PrivateKey, capsule.PrivateKey], None]) -> Any:
    OPS[fn.__name__] = fn
    return fn


@op
def compaction(src: Path, out: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    capsule.compact(src, out, identity=key)


@op
def fork(src: Path, out: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    with capsule.fork(src, out, identity=key) as child, child.commit() as tx:
        tx.remember(TEXT + " written in the fork", tags=[TAG])


@op
def rekey_add(src: Path, out: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    capsule.rekey(src, identity=key, add=[other.public_key])
    out.write_bytes(src.read_bytes())


@op
def rekey_remove(src: Path, out: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    capsule.rekey(src, identity=key, add=[other.public_key])
    capsule.rekey(src, identity=key, remove=[other.public_key], out=out)


@op
def merge(src: Path, out: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    a, b = out.with_name(out.stem + "-a.capsule"), out.with_name(out.stem + "-b.capsule")
    for side in (a, b):
        with capsule.fork(src, side, identity=key) as child, child.commit() as tx:
            tx.remember(f"{TEXT} side {side.name}", tags=[TAG], meta={"m": META}, embedding=EMBEDDING)
    with capsule.unlocking(identity=key):
        capsule.merge(a, b, out)


@op
def torn_tail_recovery(src: Path, out: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    data = src.read_bytes()
    out.write_bytes(data + data[C.HEADER_SIZE : C.HEADER_SIZE + 40])  # a frame cut short
    with capsule.open(out, "a", identity=key) as cap, cap.commit() as tx:
        tx.remember(TEXT + " after recovery", tags=[TAG], meta={"m": META})


@pytest.mark.parametrize("name", sorted(OPS))
def test_no_plaintext_after(tmp_path: Path, key: capsule.PrivateKey, other: capsule.PrivateKey, name: str) -> None:
    src, out = tmp_path / "src.capsule", tmp_path / "out.capsule"
    make(src, key)
    OPS[name](src, out, key, other)
    for made in [out, *tmp_path.glob("out-*.capsule")]:  # merge: its two forks too
        assert leaks(made) == [], made
        assert_sealed(made)
    with capsule.open(out, identity=key) as cap:
        assert cap.encrypted and any(TEXT in (r.text or "") for r in cap.records())
    # control: the same operation on a plain source lets the needles through
    if name.startswith("rekey"):
        return  # rekey refuses a plain capsule (tested below)
    psrc, pout = tmp_path / "psrc.capsule", tmp_path / "pout.capsule"
    make(psrc, None)
    OPS[name](psrc, pout, key, other)
    assert leaks(pout) == NEEDLES


def test_pack_encrypt_reveals_nothing(tmp_path: Path, key: capsule.PrivateKey) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    for i in range(3):
        (src / f"n{i}.md").write_text(f"{TEXT} file {i}\n" + "compressible line\n" * 200)
    out, plain = tmp_path / "packed.capsule", tmp_path / "plain.capsule"
    rep = capsule.pack(src, out, embedder="hash", recipients=[key.public_key])
    assert rep.records >= 3
    capsule.pack(src, plain, embedder="hash")
    assert TEXT.encode() in revealed(plain.read_bytes())
    assert TEXT.encode() not in revealed(out.read_bytes())
    assert_sealed(out)
    with capsule.open(out, identity=key) as cap:
        assert len(cap.search("compressible", k=3)) == 3
    assert capsule.verify(out, identity=key).ok


@pytest.mark.parametrize("name", ["compaction", "merge", "rekey_remove"])
def test_keyless_verify_of_a_file_written_from_another(tmp_path: Path, key: capsule.PrivateKey,
                                                       other: capsule.PrivateKey, name: str) -> None:
    src, out = tmp_path / "src.capsule", tmp_path / "out.capsule"
    make(src, key)
    OPS[name](src, out, key, other)
    assert capsule.verify(out, identity=key).ok  # with the key: fine
    rep = capsule.verify(out)
    assert rep.ok and rep.contents_checked is False, rep.first_error


# --- keys -----------------------------------------------------------------------------


def test_missing_and_wrong_keys_are_usage_errors_and_write_nothing(tmp_path: Path, key: capsule.PrivateKey,
                                                                  other: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, recipients=[key.public_key], passphrase="right") as cap, cap.commit() as tx:
        tx.remember(TEXT)
    # a torn tail a writer would truncate: a refused writer must not touch it either
    with path.open("ab") as f:
        f.write(b"\x00" * 20)
    before = sha(path)
    cases: list[tuple[type[Exception], dict[str, Any]]] = [
        (capsule.KeyRequired, {}),
        (capsule.WrongKey, {"identity": other}),
        (capsule.WrongKey, {"passphrase": "wrong"}),
        (capsule.WrongKey, {"identity": other, "passphrase": "wrong"}),
    ]
    for err, kw in cases:
        for mode in ("r", "a"):
            with pytest.raises(err) as e:
                capsule.open(path, mode, **kw)
            assert isinstance(e.value, capsule.UsageError)
            assert str(path) in str(e.value) and "\n" not in str(e.value)
            assert sha(path) == before, (err, kw, mode)
    with pytest.raises(capsule.KeyRequired):
        capsule.fork(path, tmp_path / "f.capsule")
    with pytest.raises(capsule.WrongKey):
        capsule.compact(path, tmp_path / "c.capsule", identity=other)
    assert not (tmp_path / "f.capsule").exists() and not (tmp_path / "c.capsule").exists()
    assert sha(path) == before
    # either key alone opens it (and the writer then recovers the tail)
    with capsule.open(path, identity=other, passphrase="right") as cap:
        assert len(cap) == 1
    with capsule.open(path, identity=key) as cap:
        assert len(cap) == 1


def test_unlocking_is_the_default_for_opens_by_path_in_this_thread_only(tmp_path: Path,
                                                                        key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    make(path, key)
    with capsule.unlocking(identity=key):
        with capsule.open(path) as cap:
            assert cap.encrypted
        assert capsule.verify(path).contents_checked
        capsule.compact(path, tmp_path / "c.capsule")  # opens by path: uses the default key
        got: list[BaseException] = []

        def other_thread() -> None:
            try:
                capsule.open(path).close()
            except BaseException as e:
                got.append(e)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(got) == 1 and isinstance(got[0], capsule.KeyRequired)
    with pytest.raises(capsule.KeyRequired):
        capsule.open(path)
    assert capsule.verify(tmp_path / "c.capsule", identity=key).ok


def test_passphrase_only_capsule(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, passphrase="correct horse") as cap, cap.commit() as tx:
        rid = tx.remember(TEXT)
    assert leaks(path, [TEXT.encode()]) == []
    with pytest.raises(capsule.WrongKey):
        capsule.open(path, identity=key)
    with capsule.open(path, passphrase=b"correct horse") as cap:
        assert cap.get(rid).text == TEXT


def test_create_refuses_bad_encryption_arguments(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with pytest.raises(capsule.UsageError):
        capsule.create(path, recipients=["not a key"])  # type: ignore[list-item]
    with pytest.raises(capsule.UsageError):
        capsule.create(path, passphrase="")
    with pytest.raises(capsule.UsageError):
        capsule.create(path, passphrase="pw", scrypt_log_n=30)
    assert not path.exists()


def test_plain_and_encrypted_copies_have_the_same_ids_and_state_root(tmp_path: Path,
                                                                     key: capsule.PrivateKey) -> None:
    """10.4: content ids and state roots do not depend on encryption."""
    plain, sealed = tmp_path / "p.capsule", tmp_path / "s.capsule"
    ids_p = make(plain, None, clock=iter(range(10**18, 10**18 + 10**6)).__next__)
    ids_s = make(sealed, key, clock=iter(range(10**18, 10**18 + 10**6)).__next__)
    assert ids_p == ids_s
    with capsule.open(plain) as p, capsule.open(sealed, identity=key) as s:
        assert p.state_root == s.state_root


# --- reproducible mode (10.5) ---------------------------------------------------------


def _repro(path: Path, **kw: Any) -> bytes:
    with capsule.create(path, **kw) as cap:
        with cap.commit() as tx:
            tx.remember(TEXT, tags=[TAG], embedding=EMBEDDING)
        with cap.commit() as tx:
            tx.remember("more " * 50)
    return path.read_bytes()


def test_reproducible_mode_is_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    kw = {"recipients": [key.public_key, other.public_key], "identity": key, "passphrase": "pw"}
    a = _repro(tmp_path / "a.capsule", **kw)
    b = _repro(tmp_path / "elsewhere-b.capsule", **kw)
    assert a == b
    assert leaks(tmp_path / "a.capsule", [TEXT.encode(), TAG.encode(), EMB_NEEDLE]) == []
    c = _repro(tmp_path / "c.capsule", passphrase="pw")  # a passphrase alone is a secret too
    assert c == _repro(tmp_path / "d.capsule", passphrase="pw") and c != a
    with capsule.open(tmp_path / "elsewhere-b.capsule", identity=other) as cap:
        assert next(iter(cap.records())).text == TEXT
    # another secret gives another file key: the same records, other bytes
    assert _repro(tmp_path / "e.capsule", recipients=[key.public_key], identity=other) != \
        _repro(tmp_path / "f.capsule", recipients=[key.public_key], identity=key)


def test_reproducible_mode_without_a_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       key: capsule.PrivateKey) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    path = tmp_path / "a.capsule"
    with pytest.raises(capsule.UsageError, match="SOURCE_DATE_EPOCH"):
        capsule.create(path, recipients=[key.public_key])
    assert not path.exists()


# --- rekey (10.3) --------------------------------------------------------------------------


def test_rekey_add_then_remove(tmp_path: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    path, out = tmp_path / "a.capsule", tmp_path / "b.capsule"
    ids = make(path, key)
    size = path.stat().st_size
    before = path.read_bytes()
    rep = capsule.rekey(path, identity=key, add=[other.public_key])
    assert rep["how"] == "appended" and set(rep["recipients"]) == {key.key_id, other.key_id}
    assert path.read_bytes()[:size] == before  # an append: nothing committed was rewritten
    for k in (key, other):
        with capsule.open(path, identity=k) as cap:
            assert [r.id for r in cap.records()] == ids
    assert capsule.verify(path, identity=other).ok
    with pytest.raises(capsule.UsageError):
        capsule.rekey(path, identity=key, add=[other.public_key])  # already a recipient
    # the added recipient writes; the original one reads it
    with capsule.open(path, "a", identity=other) as cap, cap.commit() as tx:
        late = tx.remember("written by the added recipient")
    with capsule.open(path, identity=key) as cap:
        assert cap.get(late).text == "written by the added recipient"

    rep = capsule.rekey(path, identity=key, remove=[other.public_key], out=out)
    assert rep["how"] == "compacted" and rep["recipients"] == [key.key_id]
    with pytest.raises(capsule.WrongKey):
        capsule.open(out, identity=other)
    with capsule.open(out, identity=key) as cap:
        assert {*ids, late} <= {r.id for r in cap.records()}
    vr = capsule.verify(out, parent=path, identity=key)
    assert vr.ok and vr.contents_checked, vr.first_error
    with capsule.open(path, identity=other) as cap:  # -o: the old file is left as it was
        assert len(cap) == len(ids) + 1
    # the new file key is not the old one: the removed key's old slot is worthless there
    assert leaks(out) == []


def test_rekey_remove_in_place(tmp_path: Path, key: capsule.PrivateKey, other: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, recipients=[key.public_key, other.public_key]) as cap, cap.commit() as tx:
        rid = tx.remember(TEXT)
    capsule.rekey(path, identity=other, remove=[key.public_key])
    with pytest.raises(capsule.WrongKey):
        capsule.open(path, identity=key)
    with capsule.open(path, identity=other) as cap:
        assert cap.get(rid).text == TEXT
    # written after the removal: the removed key cannot read it either
    with capsule.open(path, "a", identity=other) as cap, cap.commit() as tx:
        tx.remember("after removal")
    with pytest.raises(capsule.WrongKey):
        capsule.open(path, identity=key)


def test_rekey_passphrase_set_and_drop(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, recipients=[key.public_key], passphrase="old") as cap, cap.commit() as tx:
        rid = tx.remember(TEXT)
    with pytest.raises(capsule.UsageError):
        capsule.rekey(path, identity=key, new_passphrase="x", drop_passphrase=True)
    rep = capsule.rekey(path, identity=key, passphrase="old", new_passphrase="new")
    assert rep["passphrase"] is True
    with pytest.raises(capsule.WrongKey):
        capsule.open(path, passphrase="old")
    with capsule.open(path, passphrase="new") as cap:
        assert cap.get(rid).text == TEXT
    rep = capsule.rekey(path, identity=key, drop_passphrase=True)
    assert rep["passphrase"] is False
    with pytest.raises(capsule.WrongKey):
        capsule.open(path, passphrase="new")
    with capsule.open(path, identity=key) as cap:
        assert cap.get(rid).text == TEXT
    # nobody left: refused, file untouched
    before = sha(path)
    with pytest.raises(capsule.UsageError):
        capsule.rekey(path, identity=key, remove=[key.public_key])
    assert sha(path) == before


def test_rekey_refuses_a_plain_capsule(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    capsule.create(path).close()
    before = sha(path)
    with pytest.raises(capsule.UsageError, match="not encrypted"):
        capsule.rekey(path, add=[key.public_key])
    assert sha(path) == before


# --- threads ---------------------------------------------------------------------------------


def test_readers_search_while_a_writer_commits(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, recipients=[key.public_key]) as cap:
        with cap.commit() as tx:
            tx.remember("seed memory about quarterly numbers", embedding=EMBEDDING)
        stop = threading.Event()
        errors: list[BaseException] = []
        seen: list[int] = []

        def reader(shared: bool) -> None:
            try:
                while not stop.is_set():
                    if shared:
                        seen.append(len(cap.search("quarterly", k=5)))
                    else:
                        with capsule.open(path, identity=key) as r:
                            seen.append(len(r.search("quarterly", k=5)))
                            assert r.get(r.search(vector=EMBEDDING, k=1, mode="vector")[0].id).text
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=reader, args=(i % 2 == 0,)) for i in range(4)]
        for t in threads:
            t.start()
        for i in range(30):
            with cap.commit() as tx:
                tx.remember(f"quarterly numbers, commit {i}", embedding=[v + i for v in EMBEDDING])
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[0]
        assert len(seen) > 8 and max(seen) == 5
    assert capsule.verify(path, identity=key).ok


# --- crashes ---------------------------------------------------------------------------------

WRITER = r"""
import sys
import capsule

path, keyfile, tag = sys.argv[1], sys.argv[2], sys.argv[3]
key = capsule.load_private_key(keyfile)
cap = capsule.open(path, "a", identity=key)
import numpy  # noqa: F401  (loaded before READY, so the kill lands in commits)
print("READY", flush=True)
i = 0
while True:
    with cap.commit() as tx:
        ids = [tx.remember(f"{tag} commit {i} record {j} " + "pad " * 30, tags=[tag],
                           embedding=[float(i), float(j), 1.0, 0.5]) for j in range(1 + i % 5)]
        print("TRY", *ids, flush=True)
    print("ACK", *ids, flush=True)
    i += 1
"""


def _kill_round(script: Path, path: Path, keyfile: Path, tag: str, delay: float,
                tried: set[str], acked: set[str]) -> None:
    env = {**os.environ, "CAPSULE_SCRYPT_LOG_N": "10"}
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(keyfile), tag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    out: list[bytes] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        while b := proc.stdout.read1(1 << 16):  # type: ignore[attr-defined]
            out.append(b)
            if b"READY\n" in b"".join(out[:2]):
                ready.set()
        ready.set()

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    assert ready.wait(60), "writer never got ready"
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    t.join(30)
    err = proc.stderr.read().decode(errors="replace")
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    for line in b"".join(out).split(b"\n")[:-1]:
        word, *ids = line.decode().split(" ")
        if word == "TRY":
            tried.update(ids)
        elif word == "ACK":
            acked.update(ids)


def test_kill_9_writer_rounds(tmp_path: Path, key: capsule.PrivateKey) -> None:
    keyfile = tmp_path / "k.key"
    capsule.save_private_key(keyfile, key, passphrase=None)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "a.capsule"
    capsule.create(path, recipients=[key.public_key]).close()
    rng = random.Random(12)
    tried: set[str] = set()
    acked: set[str] = set()
    for r in range(5):
        _kill_round(script, path, keyfile, f"round{r}", rng.uniform(0.05, 0.3), tried, acked)
        rep = capsule.verify(path, identity=key)
        assert rep.ok and rep.contents_checked, rep.first_error
        assert capsule.verify(path).ok  # and without the key
        with capsule.open(path, identity=key) as cap:
            got = [m.id for m in cap.records()]
            assert len(got) == len(set(got))
            assert acked <= set(got), f"{len(acked - set(got))} acknowledged records lost"
            assert set(got) <= tried
    assert len(acked) > 10, "the writers never committed: the test proved nothing"
    with capsule.open(path, "a", identity=key) as cap:
        assert acked <= {m.id for m in cap.records()}
        with cap.commit() as tx:
            tx.remember("after the last kill")
        n = len(cap)
    rep = capsule.verify(path, identity=key)
    assert rep.ok and rep.torn_tail == 0 and rep.records == n, rep.first_error
    assert leaks(path, [b"round0 commit", b"after the last kill"]) == []


def test_torn_tail_rewritten_by_the_next_writer(tmp_path: Path, key: capsule.PrivateKey) -> None:
    path = tmp_path / "a.capsule"
    with capsule.create(path, recipients=[key.public_key]) as cap:
        with cap.commit() as tx:
            kept = tx.remember("kept " + TEXT)
        committed = path.stat().st_size
        with cap.commit() as tx:
            tx.remember("lost " + TEXT + " " + "x" * 500)
    data = path.read_bytes()
    # cut inside the last commit's sealed RECORDS frame: a torn tail
    rec = [(o, t) for o, t, _, _ in frames(data) if o >= committed and t == C.FT_RECORDS]
    assert rec
    cut = rec[0][0] + 300
    torn = data[rec[0][0] + C.FRAME_HEADER_SIZE : cut]
    path.write_bytes(data[:cut])
    rep = capsule.verify(path, identity=key)
    assert rep.ok and rep.torn_tail == cut - committed
    with capsule.open(path, identity=key) as cap:
        assert [m.id for m in cap.records()] == [kept]
    with capsule.open(path, "a", identity=key) as cap, cap.commit() as tx:
        new = tx.remember("new " + TEXT)
    after = path.read_bytes()
    assert after[:committed] == data[:committed]
    assert torn[40:200] not in after  # the torn ciphertext is gone
    rep = capsule.verify(path, identity=key)
    assert rep.ok and rep.torn_tail == 0 and rep.contents_checked, rep.first_error
    with capsule.open(path, identity=key) as cap:
        assert [m.id for m in cap.records()] == [kept, new]
        assert cap.get(new).text == "new " + TEXT
    assert leaks(path, [TEXT.encode()]) == []

