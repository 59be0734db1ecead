"""An independent reader of `spec/vectors/encrypted.capsule`, written from spec/format.md alone.

Theory of operation: nothing here imports `capsule`. The reader below follows the spec's
sections (2 header, 3 frames, 4.2 chain, 4.3 Merkle tree, 5.3 content ids, 6.1 COMMIT, 9.1-9.2
tables and INDEX, 10 encryption, 14.1 key ids and text form) using only hashlib, hmac, struct,
zlib, msgpack, zstandard and `cryptography`'s hazmat primitives, and checks the result against
the vector's entry in `spec/vectors/vectors.json`. If the spec left something out, this file is
where a second implementation would have had to guess; each guess is marked "GUESS".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

VEC = Path(__file__).resolve().parent.parent / "spec" / "vectors"
DATA = (VEC / "encrypted.capsule").read_bytes()
WANT: dict[str, Any] = json.loads((VEC / "vectors.json").read_text())["encrypted"]

MAGIC = b"\x89CAP\r\n\x1a\n"  # 2.1
P25519 = 2**255 - 19
RECORDS, COMMIT, INDEX, TABLE, BLOB, KEYSLOT = 0x81, 0x82, 0x03, 0x0B, 0x0A, 0x87  # 3.2
F_ZSTD, F_AEAD = 0x01, 0x02  # 3.3
SEALED_TYPES = {RECORDS, INDEX, TABLE, BLOB}  # 10.2
AEAD_OVERHEAD = 28  # 10.2: nonce 12 + tag 16
COMMIT_KEYS = {"commits", "index", "prev", "records", "root", "time", "tree_size"}  # 6.1


# ---------------------------------------------------------------------------------------------
# Format: header, frames, chain (2, 3, 4)


@dataclass(frozen=True, slots=True)
class Header:
    flags: int
    file_id: bytes
    aead: int
    max_frame: int


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    header: bytes  # the 32 stored header bytes
    type: int
    flags: int
    seq: int
    payload_len: int
    raw_len: int
    payload: bytes  # stored payload (sealed bytes for a sealed frame)
    chain: bytes


def parse_header(data: bytes) -> Header:
    """2.1-2.3, in the order 2.2 gives."""
    h = data[:64]
    assert len(h) == 64
    assert h[:8] == MAGIC
    assert struct.unpack_from("<I", h, 60)[0] == zlib.crc32(h[:60])
    assert h[8] == 1  # major
    flags = struct.unpack_from("<H", h, 10)[0]
    assert flags & ~0x0001 == 0, "unknown header flag"
    hash_alg, aead, sig_alg, codec = h[28], h[29], h[30], h[31]
    assert (hash_alg, sig_alg, codec) == (1, 1, 1)
    assert aead in (0, 1)
    max_frame = struct.unpack_from("<I", h, 32)[0]
    assert 65 <= max_frame <= 2**30
    assert h[36:60] == bytes(24)
    # 10.1: flag bit 0 and AEAD 1 come together or not at all
    assert (flags & 1 == 1) == (aead == 1)
    return Header(flags=flags, file_id=h[12:28], aead=aead, max_frame=max_frame)


def chain_seed(data: bytes) -> bytes:
    return hashlib.sha256(b"capsule/v1/chain-seed\0" + data[:64]).digest()  # 4.2


def walk_frames(data: bytes, hdr: Header) -> list[Frame]:
    """3.1 and 4.2: follow lengths from offset 64, checking each header and chain link."""
    frames: list[Frame] = []
    off, seq, prev_chain = 64, 0, chain_seed(data)
    while off < len(data):
        assert off + 32 <= len(data)
        fh = data[off : off + 32]
        assert struct.unpack_from("<I", fh, 28)[0] == zlib.crc32(fh[:28]), f"header CRC @{off}"
        total, ftype, flags, reserved, fseq, plen, rlen, epoch = struct.unpack_from(
            "<IBBHQIII", fh, 0
        )
        assert total == 64 + plen
        assert total <= hdr.max_frame
        assert off + total <= len(data)
        assert fseq == seq
        assert reserved == 0 and epoch == 0
        assert flags & ~(F_ZSTD | F_AEAD) == 0
        assert rlen <= 256 * 2**20
        if flags & F_AEAD:
            assert plen >= AEAD_OVERHEAD
            if not flags & F_ZSTD:
                assert rlen == plen - AEAD_OVERHEAD
        elif not flags & F_ZSTD:
            assert rlen == plen
        payload = data[off + 32 : off + 32 + plen]
        chain = data[off + 32 + plen : off + total]
        want = hashlib.sha256(
            b"capsule/v1/chain\0" + prev_chain + fh + hashlib.sha256(payload).digest()
        ).digest()
        assert chain == want, f"chain @{off} seq {fseq}"
        frames.append(Frame(off, fh, ftype, flags, fseq, plen, rlen, payload, chain))
        off += total
        seq += 1
        prev_chain = chain
    assert off == len(data)
    return frames


def merkle_root(leaves: list[bytes]) -> bytes:
    """4.3: RFC 6962 MTH."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + merkle_root(leaves[:k]) + merkle_root(leaves[k:])).digest()


def leaf(f: Frame) -> bytes:
    return hashlib.sha256(b"\x00" + f.header + hashlib.sha256(f.payload).digest()).digest()


def unpack_canonical(b: bytes) -> Any:
    """5.2, in part: one value, no trailing bytes, re-encodes to the same bytes."""
    value = msgpack.unpackb(b, raw=False, strict_map_key=True)
    assert msgpack.packb(value, use_bin_type=True) == b
    return value


def parse_commit(f: Frame) -> dict[str, Any]:
    """6.1-6.2: canonical map + 'CAPSTAIL' + u64 own offset."""
    assert f.type == COMMIT and f.flags == 0
    body, tail = f.payload[:-16], f.payload[-16:]
    assert tail[:8] == b"CAPSTAIL" and struct.unpack("<Q", tail[8:])[0] == f.offset
    m = unpack_canonical(body)
    assert isinstance(m, dict)
    return m


# ---------------------------------------------------------------------------------------------
# Keys (10.1, 10.3, 10.5, 14.1)


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    # GUESS: 10.3 (x25519-slot KEK), 10.5 (reproducible-file-key, ephemeral) give no length;
    # 32 bytes is the only length that fits a ChaCha20 key / an X25519 scalar.
    # GUESS: the info strings carry no trailing NUL, although 4.1 says domain tags end in one.
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


@dataclass(frozen=True, slots=True)
class FileKeys:
    file_key: bytes
    frame_key: bytes
    nonce_key: bytes
    key_id: bytes


def file_keys(fk: bytes, fid: bytes) -> FileKeys:
    return FileKeys(
        file_key=fk,
        frame_key=hkdf(fk, fid, b"capsule/v1/frame-key"),
        nonce_key=hkdf(fk, fid, b"capsule/v1/nonce-key"),
        key_id=hkdf(fk, fid, b"capsule/v1/key-id", 16),
    )


def ed25519_public(seed: bytes) -> bytes:
    return (
        Ed25519PrivateKey.from_private_bytes(seed)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


def ed25519_pub_to_x25519(pub: bytes) -> bytes:
    """10.3: u = (1 + y) / (1 - y) mod p, y = the key with its top (sign) bit cleared."""
    y = int.from_bytes(pub, "little") & ((1 << 255) - 1)
    assert y < P25519
    u = (1 + y) * pow(1 - y, P25519 - 2, P25519) % P25519
    return u.to_bytes(32, "little")


def ed25519_seed_to_x25519(seed: bytes) -> X25519PrivateKey:
    """10.3: the first 32 bytes of SHA-512(seed); X25519 clamps."""
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])


def key_id_hex(pub: bytes) -> str:
    return hashlib.sha256(b"capsule/v1/key\0" + pub).digest()[:16].hex()  # 14.1


def parse_public_line(line: str) -> bytes:
    """14.2: `capsule-ed25519 <base64 of the raw key> <key id>`."""
    scheme, b64, kid = line.split(" ")
    assert scheme == "capsule-ed25519"
    pub = base64.b64decode(b64, validate=True)
    assert len(pub) == 32 and key_id_hex(pub) == kid
    return pub


def unwrap(kek: bytes, wrapped: bytes, fid: bytes) -> bytes:
    return ChaCha20Poly1305(kek).decrypt(bytes(12), wrapped, fid)  # 10.3


def unwrap_x25519(slot: dict[str, Any], seed: bytes, fid: bytes) -> bytes:
    sk = ed25519_seed_to_x25519(seed)
    # the recipient's u, converted from the Ed25519 key in the slot (10.3); for the holder of
    # the matching seed it equals the public key of the converted private key
    u = ed25519_pub_to_x25519(slot["recipient"])
    shared = sk.exchange(X25519PublicKey.from_public_bytes(slot["epk"]))
    assert shared != bytes(32)
    kek = hkdf(shared, slot["epk"] + u, b"capsule/v1/x25519-slot")
    return unwrap(kek, slot["wrapped"], fid)


def open_any_x25519(slots: list[dict[str, Any]], seed: bytes, fid: bytes) -> bytes:
    for slot in slots:
        if slot["type"] == "x25519":
            try:
                return unwrap_x25519(slot, seed, fid)
            except InvalidTag:
                continue
    raise LookupError("no key slot opens with the key given")


def scrypt(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    assert 10 <= log_n <= 20  # 10.3: refuse more work before computing
    return Scrypt(salt=salt, length=32, n=2**log_n, r=8, p=1).derive(passphrase)


def unwrap_scrypt(slot: dict[str, Any], passphrase: str, fid: bytes) -> bytes:
    # GUESS: the passphrase enters scrypt as its UTF-8 bytes (10.3 does not say; no NFC step).
    kek = scrypt(passphrase.encode(), slot["salt"], slot["log_n"])
    return unwrap(kek, slot["wrapped"], fid)


# ---------------------------------------------------------------------------------------------
# Sealed frames (10.2) and records (5.3, 7.0)


def aad(fid: bytes, header: bytes) -> bytes:
    return b"capsule/v1/aead\0" + fid + header


def open_sealed(keys: FileKeys, fid: bytes, header: bytes, stored: bytes) -> bytes:
    """10.2: authenticate, then check the synthetic nonce; returns the plaintext."""
    a = aad(fid, header)
    nonce, sealed = stored[:12], stored[12:]
    pt = ChaCha20Poly1305(keys.frame_key).decrypt(nonce, sealed, a)
    assert hmac.new(keys.nonce_key, a + pt, hashlib.sha256).digest()[:12] == nonce
    return pt


def undo_codec(f: Frame, pt: bytes) -> bytes:
    """3.3: declared content size == raw_len, checked before decompressing; one frame only."""
    assert len(pt) == f.payload_len - AEAD_OVERHEAD
    if not f.flags & F_ZSTD:
        assert f.raw_len == len(pt)
        return pt
    assert f.type == RECORDS
    params = zstandard.get_frame_parameters(pt)
    assert params.content_size == f.raw_len
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = dobj.decompress(pt)
    assert dobj.eof and dobj.unused_data == b"", "bytes after the zstd frame"
    assert len(out) == f.raw_len
    return out


def split_records(plain: bytes) -> list[bytes]:
    """7.0: the canonical bytes of each element of the RECORDS array, as stored."""
    up = msgpack.Unpacker(raw=False, strict_map_key=True)
    up.feed(plain)
    n = up.read_array_header()
    assert n >= 1
    out, start = [], up.tell()
    for _ in range(n):
        up.skip()
        end = up.tell()
        out.append(plain[start:end])
        start = end
    assert start == len(plain), "trailing bytes after the RECORDS array"
    return out


def content_id(rec: bytes) -> bytes:
    m = unpack_canonical(rec)
    kind = m["kind"]
    assert isinstance(kind, str) and isinstance(m["time"], int)
    return hashlib.sha256(b"capsule/v1/record\0" + kind.encode() + b"\0" + rec).digest()  # 5.3


# ---------------------------------------------------------------------------------------------
# The reader


@dataclass(frozen=True, slots=True)
class Opened:
    hdr: Header
    frames: list[Frame]
    keyslots: list[tuple[Frame, dict[str, Any]]]
    keys: FileKeys
    plain: dict[int, bytes]  # frame offset -> plaintext with the codec undone
    ids: list[bytes]  # committed record ids, commit order
    places: dict[bytes, tuple[int, int]]  # id -> (RECORDS frame offset, slot)


SEED_K1 = bytes.fromhex(WANT["identity_seed"])


def read(data: bytes, seed: bytes = SEED_K1) -> Opened:
    hdr = parse_header(data)
    frames = walk_frames(data, hdr)
    fid = hdr.file_id
    keyslots = [(f, unpack_canonical(f.payload)) for f in frames if f.type == KEYSLOT]
    assert keyslots and keyslots[0][0].seq == 0  # 10.3: frame 0 (no LINEAGE here)
    # 10.3: the slots are found through the last COMMIT; the newest KEYSLOT keeps the first's
    # key_id, the first slot the key opens gives FK, and key_id MUST derive from that FK.
    by_offset = {f.offset: f for f in frames}
    newest = unpack_canonical(by_offset[parse_commit(frames[-1])["keyslots"]].payload)
    assert newest["key_id"] == keyslots[0][1]["key_id"]
    keys = file_keys(open_any_x25519(newest["slots"], seed, fid), fid)
    assert keys.key_id == newest["key_id"]

    plain: dict[int, bytes] = {}
    ids: list[bytes] = []
    pending: list[bytes] = []
    places: dict[bytes, tuple[int, int]] = {}
    for f in frames:
        assert (f.type in SEALED_TYPES) == bool(f.flags & F_AEAD), f"seal rule @{f.offset}"
        if f.flags & F_AEAD:
            plain[f.offset] = undo_codec(f, open_sealed(keys, fid, f.header, f.payload))
        if f.type == RECORDS:
            for slot, rec in enumerate(split_records(plain[f.offset])):
                rid = content_id(rec)
                pending.append(rid)
                places[rid] = (f.offset, slot)
        elif f.type == COMMIT:
            ids += pending
            pending = []
    return Opened(hdr, frames, keyslots, keys, plain, ids, places)


@pytest.fixture(scope="module")
def opened() -> Opened:
    return read(DATA)


# ---------------------------------------------------------------------------------------------
# 1. header and frames


def test_file_bytes_and_header(opened: Opened) -> None:
    assert len(DATA) == WANT["bytes"]
    assert hashlib.sha256(DATA).hexdigest() == WANT["sha256"]
    assert opened.hdr.flags == 0x0001 and opened.hdr.aead == 1
    assert opened.hdr.file_id.hex() == WANT["file_id"]


def test_commits_roots_and_keyslots_pointer(opened: Opened) -> None:
    """6.1 with 10.3's `keyslots`; 4.3 roots over the stored (sealed) bytes."""
    leaves: list[bytes] = []
    roots, prev_commit, newest_keyslot, n_commits, n_records = [], None, None, 0, 0
    last_index: tuple[int, bytes] | None = None
    fk, fid = bytes.fromhex(WANT["file_key"]), opened.hdr.file_id
    commit_key = hkdf(fk, fid, b"capsule/v1/commit-key")  # 10.7
    chain_before = b""
    for f in opened.frames:
        if f.type == COMMIT:
            m = parse_commit(f)
            n_commits += 1
            # 6.1's closed key set plus `keyslots` (10.3) and `mac` (10.7)
            assert set(m) == {*COMMIT_KEYS, "keyslots", "mac"}
            rest = msgpack.packb({k: m[k] for k in sorted(m) if k != "mac"}, use_bin_type=True)
            assert f.payload[:-16] != rest  # the stored map holds `mac`; M is the map without it
            assert m["mac"] == hmac.digest(commit_key, chain_before + rest, "sha256")
            assert m["tree_size"] == f.seq
            assert m["root"] == merkle_root(leaves)
            assert m["commits"] == n_commits and m["prev"] == prev_commit
            assert m["records"] == n_records
            assert m["keyslots"] == newest_keyslot
            want_index = None if last_index is None else [last_index[0], last_index[1]]
            assert m["index"] == want_index
            roots.append(m["root"].hex())
            prev_commit = f.offset
        elif f.type == KEYSLOT:
            newest_keyslot = f.offset
        elif f.type == RECORDS:
            n_records += len(split_records(opened.plain[f.offset]))
        elif f.type == INDEX:
            last_index = (f.offset, hashlib.sha256(opened.plain[f.offset]).digest())
        leaves.append(leaf(f))
        chain_before = f.chain
    assert roots == WANT["commit_roots"]
    assert opened.frames[-1].type == COMMIT
    # the last COMMIT names the newest KEYSLOT, which is the second one
    assert parse_commit(opened.frames[-1])["keyslots"] == opened.keyslots[-1][0].offset


# ---------------------------------------------------------------------------------------------
# 2. keys


def test_both_slots_open_to_the_file_key(opened: Opened) -> None:
    fid = opened.hdr.file_id
    first = opened.keyslots[0][1]
    assert set(first) == {"key_id", "prev", "slots"} and first["prev"] is None
    types = [s["type"] for s in first["slots"]]
    assert types == ["x25519", "scrypt"]
    x, s = first["slots"]
    assert s["log_n"] == WANT["scrypt_log_n"]
    fk_x = unwrap_x25519(x, SEED_K1, fid)
    fk_s = unwrap_scrypt(s, WANT["passphrase"], fid)
    assert fk_x == fk_s == bytes.fromhex(WANT["file_key"])
    kid = file_keys(fk_x, fid).key_id
    assert kid.hex() == WANT["key_id"] == first["key_id"].hex()
    with pytest.raises(InvalidTag):
        unwrap_scrypt(s, WANT["passphrase"] + " ", fid)


def test_x25519_conversion_agrees_both_ways() -> None:
    """10.3: the u of the public key equals the public key of the converted seed."""
    for seed in (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32):
        u_pub = ed25519_pub_to_x25519(ed25519_public(seed))
        u_sk = (
            ed25519_seed_to_x25519(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        assert u_pub == u_sk


def test_reproducible_file_key_and_slot_material(opened: Opened) -> None:
    """10.5: FK, the ephemeral keys and the passphrase slot's salt are all derived."""
    fid = opened.hdr.file_id
    s = hashlib.sha256(b"capsule/v1/identity-secret\0" + SEED_K1).digest()
    # R: the readers the file was created for, from its first KEYSLOT frame (rekey appended k2 later)
    first = opened.keyslots[0][1]["slots"]
    recips = sorted(sl["recipient"] for sl in first if sl["type"] == "x25519")
    has_pw = any(sl["type"] == "scrypt" for sl in first)
    r = hashlib.sha256(b"".join(recips) + (b"\x01" if has_pw else b"\x00")).digest()
    fk = hkdf(s, fid, b"capsule/v1/reproducible-file-key" + r)
    assert fk.hex() == WANT["file_key"]
    for _, ks in opened.keyslots:
        for slot in ks["slots"]:
            if slot["type"] == "x25519":
                esk = hkdf(fk, fid + slot["recipient"], b"capsule/v1/ephemeral")
                epk = X25519PrivateKey.from_private_bytes(esk).public_key()
                assert epk.public_bytes(Encoding.Raw, PublicFormat.Raw) == slot["epk"]
            else:
                assert slot["salt"] == hkdf(fk, fid, b"capsule/v1/scrypt-salt", 16)


def test_second_keyslot_adds_k2(opened: Opened) -> None:
    fid = opened.hdr.file_id
    assert len(opened.keyslots) == 2
    (f1, first), (f2, second) = opened.keyslots
    assert second["prev"] == f1.offset and second["key_id"] == first["key_id"]
    recips = [s["recipient"] for s in second["slots"] if s["type"] == "x25519"]
    want = [parse_public_line(line) for line in WANT["recipients"]]
    assert recips == want == sorted(want)  # 10.3: ordered by public key bytes
    assert set(recips) == {ed25519_public(SEED_K1), ed25519_public(b"\x02" * 32)}
    assert [s["type"] for s in second["slots"]] == ["x25519", "x25519", "scrypt"]
    fk = bytes.fromhex(WANT["file_key"])
    for seed in (SEED_K1, b"\x02" * 32):
        slot = next(s for s in second["slots"] if s.get("recipient") == ed25519_public(seed))
        assert unwrap_x25519(slot, seed, fid) == fk
    assert unwrap_scrypt(second["slots"][-1], WANT["passphrase"], fid) == fk
    # k3 is no recipient: no slot opens with it
    with pytest.raises(LookupError):
        open_any_x25519(second["slots"], b"\x03" * 32, fid)
    with pytest.raises(LookupError):
        read(DATA, b"\x03" * 32)
    # k2 opens no slot of the first KEYSLOT frame: it was added later
    with pytest.raises(LookupError):
        open_any_x25519(first["slots"], b"\x02" * 32, fid)
    # a reader holding only k2 (added late) opens the whole file the same way
    assert read(DATA, b"\x02" * 32).ids == opened.ids


# ---------------------------------------------------------------------------------------------
# 3. sealed frames and records


def test_records_ids_match_vectors(opened: Opened) -> None:
    assert len(opened.ids) == WANT["record_count"]
    joined = "\n".join(i.hex() for i in opened.ids).encode("ascii")
    assert hashlib.sha256(joined).hexdigest() == WANT["records_sha256"]
    kinds = {f.type for f in opened.frames if f.flags & F_AEAD}
    assert kinds == SEALED_TYPES  # the vector holds every sealed type
    assert any(f.type == RECORDS and f.flags & F_ZSTD for f in opened.frames)


def test_sealed_tables_and_index_agree(opened: Opened) -> None:
    """9.1-9.2 read through 10.2: table offsets are stored payload offsets, hashes of plaintext."""
    by_offset = {f.offset: f for f in opened.frames}
    index_frames = [f for f in opened.frames if f.type == INDEX]
    assert index_frames
    last = index_frames[-1]
    m = unpack_canonical(opened.plain[last.offset])
    assert m["tree_size"] == last.seq
    assert m["frontier"] == frontier([leaf(f) for f in opened.frames[: last.seq]])
    named: dict[bytes, tuple[int, int]] = {}
    for toff, count, digest in m["segments"]:
        tf = by_offset[toff - 32]
        assert tf.type == TABLE
        table = opened.plain[tf.offset]
        assert len(table) == 52 * count and hashlib.sha256(table).digest() == digest
        for i in range(count):
            rid = table[8 * count + 32 * i : 8 * count + 32 * (i + 1)]
            prefix = struct.unpack_from("<Q", table, 8 * i)[0]
            assert prefix == int.from_bytes(rid[:8], "big")
            fo = struct.unpack_from("<Q", table, 40 * count + 8 * i)[0]
            slot = struct.unpack_from("<I", table, 48 * count + 4 * i)[0]
            named[rid] = (fo, slot)
    before = {rid: p for rid, p in opened.places.items() if p[0] < last.offset}
    assert named == before and m["records"] == len(before)
    # blobs (3.4): every part's header agrees and the assembled content hashes to its id
    for btype, first_off, parts, size, digest in m.get("blobs", []):
        seqs = by_offset[first_off].seq
        content = b""
        for i in range(parts):
            bf = opened.frames[seqs + i]
            assert bf.type == BLOB
            pt = opened.plain[bf.offset]
            n = struct.unpack_from("<H", pt, 0)[0]
            bh = unpack_canonical(pt[2 : 2 + n])
            assert bh == {"id": digest, "part": i, "parts": parts, "size": size, "type": btype}
            content += pt[2 + n :]
        assert len(content) == size and hashlib.sha256(content).digest() == digest


def frontier(leaves: list[bytes]) -> list[bytes]:
    out, start, n = [], 0, len(leaves)
    while n:
        k = 1 << (n.bit_length() - 1)
        out.append(merkle_root(leaves[start : start + k]))
        start += k
        n -= k
    return out


# ---------------------------------------------------------------------------------------------
# 4. negative cases on copies


def first_sealed(opened: Opened, ftype: int) -> Frame:
    return next(f for f in opened.frames if f.type == ftype and f.flags & F_AEAD)


def rechain(data: bytes) -> bytes:
    """What anyone can do without a key: recompute every chain value (4.2 is unkeyed)."""
    out = bytearray(data)
    off, prev = 64, chain_seed(data)
    while off < len(out):
        total, plen = (
            struct.unpack_from("<I", out, off)[0],
            struct.unpack_from("<I", out, off + 16)[0],
        )
        fh = bytes(out[off : off + 32])
        payload = bytes(out[off + 32 : off + 32 + plen])
        prev = hashlib.sha256(
            b"capsule/v1/chain\0" + prev + fh + hashlib.sha256(payload).digest()
        ).digest()
        out[off + 32 + plen : off + total] = prev
        off += total
    return bytes(out)


def test_flipped_ciphertext_byte_fails(opened: Opened) -> None:
    f = first_sealed(opened, RECORDS)
    copy = bytearray(DATA)
    copy[f.offset + 32 + 12 + 5] ^= 0x01  # a ciphertext byte (after the nonce)
    fid = opened.hdr.file_id
    stored = bytes(copy[f.offset + 32 : f.offset + 32 + f.payload_len])
    with pytest.raises(InvalidTag):
        open_sealed(opened.keys, fid, f.header, stored)
    # the whole-file reader stops at the chain first (4.2), before any key is used ...
    with pytest.raises(AssertionError, match="chain"):
        read(bytes(copy))
    # ... and with the chain recomputed by the forger, the AEAD still refuses the frame
    with pytest.raises(InvalidTag):
        read(rechain(bytes(copy)))


def test_sealed_payload_at_another_seq_fails(opened: Opened) -> None:
    """10.2: the AAD binds seq, so the same stored payload under a header naming another seq
    (a valid header: its CRC is recomputed) does not authenticate."""
    f = first_sealed(opened, RECORDS)
    fid = opened.hdr.file_id
    assert open_sealed(opened.keys, fid, f.header, f.payload)  # the control opens
    moved = bytearray(f.header)
    struct.pack_into("<Q", moved, 8, opened.frames[-1].seq + 1)
    struct.pack_into("<I", moved, 28, zlib.crc32(bytes(moved[:28])))
    with pytest.raises(InvalidTag):
        open_sealed(opened.keys, fid, bytes(moved), f.payload)
    # in a copy of the file: the frame replayed after the last COMMIT as the next seq and
    # committed by a forged COMMIT. Everything a forger needs is in the clear (4.2 and 4.3 are
    # unkeyed), so headers, chain, root and counts all pass; only the AEAD catches the move.
    forged = forge_commit(DATA + bytes(moved) + f.payload + bytes(32), opened, extra=1)
    walk_frames(forged, opened.hdr)  # structurally sound
    with pytest.raises(InvalidTag):
        read(forged)
    # the control: the same forgery of a plain COMMIT alone is read without complaint
    assert read(forge_commit(DATA, opened, extra=0)).ids == opened.ids


def forge_commit(data: bytes, opened: Opened, extra: int) -> bytes:
    """Append a COMMIT (6.1, with 10.3's `keyslots`) over `data`, re-chained, as a keyless
    forger could; `extra` records are claimed beyond the last genuine COMMIT's."""
    frames = walk_frames(rechain(data), opened.hdr)
    last = parse_commit(next(f for f in reversed(frames) if f.type == COMMIT))
    off, seq = len(data), len(frames)
    m = {
        "commits": last["commits"] + 1,
        "index": last["index"],
        "keyslots": last["keyslots"],
        "prev": max(f.offset for f in frames if f.type == COMMIT),
        "records": last["records"] + extra,
        "root": merkle_root([leaf(f) for f in frames]),
        "time": last["time"],
        "tree_size": seq,
    }
    payload = msgpack.packb(m, use_bin_type=True) + b"CAPSTAIL" + struct.pack("<Q", off)
    fh = bytearray(
        struct.pack(
            "<IBBHQIII", 64 + len(payload), COMMIT, 0, 0, seq, len(payload), len(payload), 0
        )
    )
    fh += struct.pack("<I", zlib.crc32(bytes(fh)))
    return rechain(data + bytes(fh) + payload + bytes(32))


def test_another_file_id_fails(opened: Opened) -> None:
    """10.2/10.3: the file id is in the AAD and the slot's AAD."""
    f = first_sealed(opened, INDEX)
    other = bytes(16)
    with pytest.raises(InvalidTag):
        open_sealed(opened.keys, other, f.header, f.payload)
    x = opened.keyslots[0][1]["slots"][0]
    with pytest.raises(InvalidTag):
        unwrap_x25519(x, SEED_K1, other)
